"""Alignment between simulated and real rates: ARA in both forms, Spearman, type-mix divergence.

ARA (absolute rate alignment) of one rate at one merchant:
    ara        = clip(1 - |r_sim - r_real| / r_real, 0, 1)
    ara_minmax = min(r_sim, r_real) / max(r_sim, r_real)
When r_real = 0 the relative error is undefined: both forms score 1 if r_sim is 0 too, else 0
(a simulator that invents buyers for a shop nobody buys from is fully wrong). A merchant whose
simulated rate is missing (no simulated buyer logged anything there) scores 0.
"Overall" figures average the per-merchant scores over the held-out merchants, so each storefront
counts once; `*_pooled` figures compare the rates pooled over all merchants.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats

from simpersona.eval.metrics import STRATA, weight_column


def ara(r_sim, r_real) -> np.ndarray:
    """1 - |r_sim - r_real| / r_real, clipped to [0, 1]; vectorised; NaN r_sim scores 0."""
    s = np.atleast_1d(np.asarray(r_sim, dtype=float))
    r = np.atleast_1d(np.asarray(r_real, dtype=float))
    if np.any(r < 0) or np.any(s[~np.isnan(s)] < 0):
        raise ValueError("rates must be non-negative")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.clip(1.0 - np.abs(s - r) / r, 0.0, 1.0)
    out = np.where(r > 0, rel, np.where(s == 0, 1.0, 0.0))
    return np.where(np.isnan(s), 0.0, out)


def ara_minmax(r_sim, r_real) -> np.ndarray:
    """min(r_sim, r_real) / max(r_sim, r_real); 1 when both are 0; vectorised; NaN r_sim scores 0."""
    s = np.atleast_1d(np.asarray(r_sim, dtype=float))
    r = np.atleast_1d(np.asarray(r_real, dtype=float))
    if np.any(r < 0) or np.any(s[~np.isnan(s)] < 0):
        raise ValueError("rates must be non-negative")
    hi = np.maximum(s, r)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(hi > 0, np.minimum(s, r) / hi, 1.0)
    return np.where(np.isnan(s), 0.0, out)


def spearman(x, y) -> float | None:
    """Spearman rank correlation of paired values; None when undefined (n < 3 or a constant side)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    rho = stats.spearmanr(x, y).statistic
    return None if math.isnan(rho) else float(rho)


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two non-negative weight vectors."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.shape != q.shape:
        raise ValueError(f"distributions differ in length: {p.shape} vs {q.shape}")
    if np.any(p < 0) or np.any(q < 0) or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("distributions need non-negative weights with a positive sum")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(max(0.5 * kl(p) + 0.5 * kl(q), 0.0), 1.0))


def type_mix_js(sampled: pl.DataFrame, empirical: pl.DataFrame) -> pl.DataFrame:
    """Per merchant JS divergence between the sampled agents' type mix and the empirical one.

    sampled: merchant_id, type_id (one row per agent) or with a `count` column;
    empirical: merchant_id, type_id, prob (or count). Merchants present in both are compared."""
    def weights(df: pl.DataFrame, col: str) -> pl.DataFrame:
        if col not in df.columns:
            df = df.group_by("merchant_id", "type_id").agg(pl.len().cast(pl.Float64).alias(col))
        return df.select("merchant_id", "type_id", pl.col(col).cast(pl.Float64).alias(col))

    s = weights(sampled, "count")
    emp_col = "prob" if "prob" in empirical.columns else "count"
    e = weights(empirical, emp_col).rename({emp_col: "emp"})
    both = sorted(set(s["merchant_id"].to_list()) & set(e["merchant_id"].to_list()))
    joined = s.join(e, on=["merchant_id", "type_id"], how="full", coalesce=True).fill_null(0.0)
    rows = []
    for mid, grp in joined.filter(pl.col("merchant_id").is_in(both)).group_by("merchant_id"):
        rows.append({"merchant_id": mid[0], "js": js_divergence(grp["count"].to_numpy(), grp["emp"].to_numpy())})
    return pl.DataFrame(rows, schema={"merchant_id": pl.Utf8, "js": pl.Float64}).sort("merchant_id")


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def pooled_rate(table: pl.DataFrame, rate: str) -> float | None:
    """A rate pooled over the table's merchants: the per-merchant rates weighted by their counts."""
    w = weight_column(rate)
    t = table.filter(pl.col(rate).is_not_null() & (pl.col(w) > 0))
    total = t[w].sum()
    return float((t[rate] * t[w]).sum() / total) if total else None


def compare(sim: pl.DataFrame, real: pl.DataFrame, merchants: list[str], rate: str = "buyer_conversion",
            stratum_unit: str = "buyer") -> dict:
    """Alignment of simulated against real per-merchant metrics (`merchant_metrics` tables).

    Returns ara_overall, ara_minmax_overall (means over `merchants`), ara_pooled and
    ara_minmax_pooled (on the rates pooled over `merchants`), spearman_cr, `strata`
    {A..D: {ara, ara_minmax, ...}} on the `<unit>_share_<s>` rates, and `per_merchant` rows with
    both rates and scores. Merchants absent from `real` are an error (the protocol guarantees
    real buyers); absent from `sim` score 0."""
    if stratum_unit not in ("buyer", "session"):
        raise ValueError(f"stratum_unit must be 'buyer' or 'session', got {stratum_unit!r}")
    frame = pl.DataFrame({"merchant_id": merchants}, schema={"merchant_id": pl.Utf8})
    share_cols = [f"{stratum_unit}_share_{s}" for s in STRATA]
    cols = [rate, *share_cols]
    real_rows = frame.join(real.select("merchant_id", *cols), on="merchant_id", how="left")
    lacking = real_rows.filter(pl.col(rate).is_null())["merchant_id"].to_list()
    if lacking:
        raise ValueError(f"no real buyers for merchants {lacking[:5]} (of {len(lacking)})")
    sim_rows = frame.join(sim.select("merchant_id", *cols), on="merchant_id", how="left")
    r_real = real_rows[rate].to_numpy().astype(float)
    r_sim = sim_rows[rate].to_numpy().astype(float)
    a, mm = ara(r_sim, r_real), ara_minmax(r_sim, r_real)
    sim_in = sim.filter(pl.col("merchant_id").is_in(merchants))
    real_in = real.filter(pl.col("merchant_id").is_in(merchants))

    def pooled(col: str) -> tuple[float, float | None]:
        ps, pr = pooled_rate(sim_in, col), pooled_rate(real_in, col)
        return (float("nan") if ps is None else ps), pr

    strata = {}
    for s, col in zip(STRATA, share_cols):
        rs, rr = sim_rows[col].to_numpy().astype(float), real_rows[col].to_numpy().astype(float)
        ps, pr = pooled(col)
        strata[s] = {"name": STRATA[s], "ara": _mean(ara(rs, rr)), "ara_minmax": _mean(ara_minmax(rs, rr)),
                     "ara_pooled": float(ara(ps, pr)[0]), "real_pooled": pr,
                     "sim_pooled": None if math.isnan(ps) else ps}
    per_merchant = [
        {"merchant_id": m, "real": float(rr), "sim": None if math.isnan(ss) else float(ss),
         "ara": float(x), "ara_minmax": float(y)}
        for m, rr, ss, x, y in zip(merchants, r_real, r_sim, a, mm)
    ]
    p_sim, p_real = pooled(rate)
    return {
        "rate": rate,
        "ara_overall": _mean(a),
        "ara_minmax_overall": _mean(mm),
        "ara_pooled": float(ara(p_sim, p_real)[0]),
        "ara_minmax_pooled": float(ara_minmax(p_sim, p_real)[0]),
        "real_pooled": p_real,
        "sim_pooled": None if math.isnan(p_sim) else p_sim,
        "spearman_cr": spearman(r_sim, r_real),
        "strata": strata,
        "missing_sim": [m for m, s in zip(merchants, r_sim) if math.isnan(s)],
        "per_merchant": per_merchant,
    }
