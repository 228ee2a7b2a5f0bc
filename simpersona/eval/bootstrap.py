"""Bootstrap confidence intervals: paired what-if deltas, and alignment scores.

What-if variants run the same agents (same ids, types and seeds: common random numbers), so a
variant's effect is estimated from per-agent differences d_i = y_variant_i - y_base_i, and the
bootstrap resamples agents (within merchant, so every merchant keeps its size), not the two runs
independently. Pairing removes the between-agent variance from the interval.

Alignment scores (ARA) depend on per-merchant conversion rates of a simulated and a real sample;
`ara_bootstrap` resamples the buyers of each side within each merchant (for a 0/1 outcome,
resampling n buyers with replacement from k converters gives Binomial(n, k/n) converters exactly,
which is what it draws) and reports normal intervals from the bootstrap standard error.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from simpersona.eval import alignment

MAX_CELLS = 4_000_000  # resample indices drawn per chunk (memory: 8 bytes each)


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def resampled_means(values: np.ndarray, groups: np.ndarray | None, n_boot: int,
                    rng: np.random.Generator) -> np.ndarray:
    """`n_boot` bootstrap replicates of the mean of `values`, resampling within each group."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("bootstrap needs a non-empty 1-d array of values")
    if groups is None:
        groups = np.zeros(len(values), dtype=np.int64)
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    totals = np.zeros(n_boot)
    for g in range(codes.max() + 1):
        v = values[codes == g]
        n = len(v)
        chunk = max(1, MAX_CELLS // n)
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            idx = rng.integers(0, n, size=(stop - start, n))
            totals[start:stop] += v[idx].sum(axis=1)
    return totals / len(values)


def paired_delta(base, variant, groups=None, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of variant - base over paired agents with a percentile bootstrap interval.

    `base[i]` and `variant[i]` are the same agent's outcome in the two runs; `groups` (e.g. the
    merchant of each agent) makes the resampling stratified."""
    base = np.asarray(base, dtype=float)
    variant = np.asarray(variant, dtype=float)
    if base.shape != variant.shape:
        raise ValueError(f"paired outcomes differ in length: {base.shape} vs {variant.shape}")
    diff = variant - base
    reps = resampled_means(diff, groups, n_boot, np.random.default_rng(seed))
    lo, hi = _percentile_ci(reps, level)
    return {"base": float(base.mean()), "variant": float(variant.mean()), "delta": float(diff.mean()),
            "lo": lo, "hi": hi, "n": int(len(diff)), "significant": bool(lo > 0 or hi < 0)}


def delta_table(base: pl.DataFrame, variant: pl.DataFrame, outcomes: tuple[str, ...], n_boot: int = 2000,
                level: float = 0.95, seed: int = 0) -> dict:
    """Paired deltas per merchant and overall for each outcome (agent_outcomes tables of two runs).

    Agents are matched by agent_id; an agent present in only one run is an error, because then the
    populations differ and the pairing (and the interval) would be wrong."""
    joined = base.join(variant, on="agent_id", how="full", suffix="_v", coalesce=True)
    unmatched = joined.filter(pl.col("merchant_id").is_null() | pl.col("merchant_id_v").is_null())
    if unmatched.height:
        raise ValueError(f"{unmatched.height} agents are not in both runs (e.g. {unmatched['agent_id'][0]}); "
                         "what-if variants must share one population")
    joined = joined.sort("agent_id")
    merchants = joined["merchant_id"].to_numpy()
    out: dict = {"overall": {}, "per_merchant": {}}
    for k, name in enumerate(outcomes):
        b, v = joined[name].to_numpy(), joined[f"{name}_v"].to_numpy()
        out["overall"][name] = paired_delta(b, v, merchants, n_boot, level, seed + k)
        for mid in sorted(set(merchants.tolist())):
            sel = merchants == mid
            row = out["per_merchant"].setdefault(mid, {})
            row[name] = paired_delta(b[sel], v[sel], None, n_boot, level, seed + k)
    return out


def _normal_ci(point: float, replicates: np.ndarray, level: float, bounds=(-1.0, 1.0)) -> tuple[float, float]:
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    se = float(np.std(replicates, ddof=1))
    return max(bounds[0], point - z * se), min(bounds[1], point + z * se)


def ara_bootstrap(sim: dict[str, tuple[int, int]], real: dict[str, tuple[int, int]], merchants: list[str],
                  n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                  others: dict[str, dict[str, tuple[int, int]]] | None = None) -> dict:
    """Bootstrap intervals of mean per-merchant ARA of conversion, from (converters, buyers) counts.

    Both the simulated and the real buyers of each merchant are resampled. `others` (name -> sim
    counts of another run, e.g. a baseline) are resampled in the same replicates against the same
    real resample, giving intervals for ara(main) - ara(other).

    ARA peaks where the two rates agree, so resampling noise only ever lowers it: the replicates
    sit below the estimate and a percentile interval can miss the estimate altogether. The
    intervals are therefore normal ones, point estimate +- z x the bootstrap standard error."""
    rng = np.random.default_rng(seed)

    def rates(counts: dict[str, tuple[int, int]]) -> np.ndarray:
        return np.array([counts[m][0] / counts[m][1] if counts.get(m, (0, 0))[1] else np.nan for m in merchants])

    def draw(counts: dict[str, tuple[int, int]]) -> np.ndarray:
        cols = []
        for m in merchants:
            k, n = counts.get(m, (0, 0))
            if n == 0:
                cols.append(np.full(n_boot, np.nan))  # no simulated buyer: scores 0, as in `compare`
            else:
                cols.append(rng.binomial(n, k / n, size=n_boot) / n)
        return np.stack(cols, axis=1)

    r = draw(real)
    if np.isnan(r).any():
        raise ValueError("every held-out merchant needs real buyers for the ARA bootstrap")
    r_obs = rates(real)

    def scores(counts) -> tuple[float, float, np.ndarray, np.ndarray]:
        s = draw(counts)
        s_obs = rates(counts)
        reps = (alignment.ara(s.ravel(), r.ravel()).reshape(s.shape).mean(axis=1),
                alignment.ara_minmax(s.ravel(), r.ravel()).reshape(s.shape).mean(axis=1))
        return (float(alignment.ara(s_obs, r_obs).mean()), float(alignment.ara_minmax(s_obs, r_obs).mean()), *reps)

    a, mm, a_reps, mm_reps = scores(sim)
    out = {"ara": _normal_ci(a, a_reps, level, (0.0, 1.0)), "ara_minmax": _normal_ci(mm, mm_reps, level, (0.0, 1.0)),
           "method": "normal, bootstrap standard error", "deltas": {}}
    for name, counts in (others or {}).items():
        oa, omm, oa_reps, omm_reps = scores(counts)
        out["deltas"][name] = {"ara": _normal_ci(a - oa, a_reps - oa_reps, level),
                               "ara_minmax": _normal_ci(mm - omm, mm_reps - omm_reps, level),
                               "other_ara": _normal_ci(oa, oa_reps, level, (0.0, 1.0)),
                               "other_ara_minmax": _normal_ci(omm, omm_reps, level, (0.0, 1.0))}
    return out


def ceiling_at_sample_size(types_half: dict[str, tuple[int, int]], real: dict[str, tuple[int, int]],
                           sim_units: dict[str, int], merchants: list[str], draws: int = 1000,
                           level: float = 0.95, seed: int = 0) -> dict:
    """What an ideal simulator scores with the simulation's own number of agents per merchant.

    The ideal simulator's agents behave exactly like the merchant's real buyers of the types half:
    each converts with that half's rate (its agents are drawn i.i.d. from those buyers). With the
    n agents the simulation ran at a merchant, its rate is Binomial(n, p_types) / n; scored against the
    rates half's observed rate like a simulation. ARA punishes sampling noise (a storefront whose real
    rate is 0.1 scores 0 with 0 or 2 of 8 agents converting), so this is the ceiling that the
    simulation's sample size leaves, apart from the real halves' own disagreement (the plain ceiling).
    Returns the mean over draws of ara_overall / ara_minmax_overall, with the central `level` range."""
    rng = np.random.default_rng(seed)
    missing = [m for m in merchants if not types_half.get(m, (0, 0))[1] or not real.get(m, (0, 0))[1]]
    if missing:
        raise ValueError(f"merchants without real buyers in both halves: {missing[:5]}")
    n = np.array([int(sim_units.get(m, 0)) for m in merchants])
    p = np.array([types_half[m][0] / types_half[m][1] for m in merchants])
    r = np.array([real[m][0] / real[m][1] for m in merchants])
    with np.errstate(invalid="ignore", divide="ignore"):  # a merchant with no agent scores 0, as in `compare`
        s = np.where(n > 0, rng.binomial(np.maximum(n, 1), p, size=(draws, len(merchants))) / np.maximum(n, 1), np.nan)
    rr = np.broadcast_to(r, s.shape)
    a = alignment.ara(s.ravel(), rr.ravel()).reshape(s.shape).mean(axis=1)
    mm = alignment.ara_minmax(s.ravel(), rr.ravel()).reshape(s.shape).mean(axis=1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {"ara_overall": float(a.mean()), "ara_overall_range": [float(np.percentile(a, lo)), float(np.percentile(a, hi))],
            "ara_minmax_overall": float(mm.mean()),
            "ara_minmax_overall_range": [float(np.percentile(mm, lo)), float(np.percentile(mm, hi))],
            "units_per_merchant_mean": float(n.mean()), "draws": draws}
