"""The evaluation stage: simulated held-out storefronts against their real buyers.

Reads
  real canonical events          eval.real_events, else <run_dir>/preprocess/events, else data.*
  <run_dir>/holdout/             the held-out split (made here when absent)
  <run_dir>/simulate/<run>/      agents.parquet, events/*.parquet, results/*.parquet for the main
                                 (VQ persona) run and each baseline run of eval.baseline_runs
  <run_dir>/assign/types.parquet the empirical type mixes (for the type-mix divergence)
Writes
  <run_dir>/evaluate/metrics.json   headline figures, per stratum, per merchant, baselines, targets
  <run_dir>/evaluate/summary.json

Every figure compares the simulated traffic of a held-out merchant with the real buyers of the
"rates" half; the same figures between the two real halves are the noise ceiling.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from simpersona.eval import alignment, bootstrap, holdout, metrics
from simpersona.eval.artifacts import ArtifactError, json_safe, read_events, read_parquet_folder, write_json
from simpersona.eval.holdout import HALF_RATES, HALF_TYPES, HoldoutSplit

log = logging.getLogger(__name__)

HEADLINE = ("ara_overall", "ara_minmax_overall", "ara_pooled", "spearman_cr", "crash_rate")


class EvaluationError(ArtifactError):
    """Missing or inconsistent inputs of the evaluation; the message names the file or setting."""


# ---- inputs -------------------------------------------------------------------------------------

def load_real_events(cfg) -> pl.DataFrame:
    """Real canonical events with session ids (see module doc for where they come from)."""
    run_dir = Path(cfg.run_dir)
    if cfg.eval.real_events:
        events = read_parquet_folder(Path(cfg.eval.real_events), "real events (eval.real_events)")
    else:
        events = read_parquet_folder(run_dir / "preprocess" / "events", "preprocessed events", required=False)
        if events is None:
            events = read_raw_events(cfg)
    if events["session_id"].null_count():
        raise EvaluationError("real events lack session ids; run the preprocess stage or sessionise them")
    return events


def read_raw_events(cfg) -> pl.DataFrame:
    """The raw input (data.*) through the adapters and validation, sessionised like preprocess does."""
    from simpersona.data.sessions import sessionize
    from simpersona.data.validate import read_canonical

    tables = list(read_canonical(cfg.data, progress=cfg.progress))
    if not tables:
        raise EvaluationError(f"no events in {cfg.data.input}")
    return sessionize(pa.concat_tables(tables), cfg.sessions)


def holdout_for(cfg, events: pl.DataFrame) -> HoldoutSplit:
    """The run's held-out split: <run_dir>/holdout when it exists (checked against eval.*), else made."""
    folder = Path(cfg.run_dir) / "holdout"
    e = cfg.eval
    salt = e.split_salt or str(e.holdout_seed)
    if (folder / "heldout.json").exists():
        split = HoldoutSplit.load(folder)
        want = (e.heldout_merchants, e.split, e.holdout_seed, salt)
        have = (len(split.heldout), split.method, split.seed, split.salt)
        if want != have:
            raise EvaluationError(
                f"{folder} was made with (merchants, split, seed, salt)={have} but eval.* asks for {want}; "
                "upstream stages trained on that split: match the config or start a new run_dir")
        return split
    split = holdout.make_split(events, e.heldout_merchants, e.holdout_seed, e.split, salt)
    split.save(folder)
    return split


class SimRun:
    """The artifacts of one simulation run folder, restricted to the held-out merchants."""

    def __init__(self, folder: Path, merchants: list[str]):
        self.folder = folder
        agents = read_parquet_folder(folder / "agents.parquet", "agent specs")
        self.agents = agents.filter(pl.col("merchant_id").is_in(merchants))
        if self.agents.height == 0:
            raise EvaluationError(f"{folder}/agents.parquet has no agents at the held-out merchants")
        ids = self.agents.select("agent_id")
        events = read_events(folder / "events")
        self.events = events.join(ids, left_on="buyer_id", right_on="agent_id", how="semi")
        results = read_parquet_folder(folder / "results", "agent results")
        self.results = results.join(ids, on="agent_id", how="semi")
        self.persona_mode = str(self.agents["persona_mode"][0]) if "persona_mode" in self.agents.columns else ""


def _converters(table: pl.DataFrame, rate: str) -> dict[str, tuple[int, int]]:
    """merchant -> (units with the rate's event, units) for a 0/1 rate, from merchant_metrics rows."""
    w = metrics.weight_column(rate)
    return {m: (int(round(r * n)), int(n)) for m, r, n in table.select("merchant_id", rate, w).iter_rows()
            if r is not None and n}


# ---- figures --------------------------------------------------------------------------------------

def _type_mix_js(run: SimRun, run_dir: Path, split: HoldoutSplit) -> float | None:
    """Mean over merchants of JS(sampled type mix, empirical type mix of the types half)."""
    col = "kmeans_type_id" if run.persona_mode == "kmeans" else "type_id"
    path = run_dir / "assign" / "types.parquet"
    if run.persona_mode == "none" or not path.exists():
        return None
    types = pl.read_parquet(path, columns=["buyer_id", "merchant_id", col])
    empirical = (types.join(split.buyers(HALF_TYPES), on=["merchant_id", "buyer_id"], how="semi")
                 .select("merchant_id", pl.col(col).alias("type_id")))
    if empirical.height == 0:
        return None
    sampled = run.agents.select("merchant_id", pl.col("type_id").cast(empirical["type_id"].dtype))
    js = alignment.type_mix_js(sampled, empirical)
    return float(js["js"].mean()) if js.height else None


def evaluate_run(run: SimRun, real_rates: pl.DataFrame, split: HoldoutSplit, cfg) -> tuple[dict, pl.DataFrame]:
    """Headline figures of one run against the real rates half, and its per-merchant metric table."""
    sim = metrics.merchant_metrics(run.events)
    cmp = alignment.compare(sim, real_rates, split.heldout, cfg.eval.rate, cfg.eval.stratum_unit)
    outcomes = metrics.agent_outcomes(run.events, run.agents)
    fig = {
        "ara_overall": cmp["ara_overall"],
        "ara_minmax_overall": cmp["ara_minmax_overall"],
        "ara_pooled": cmp["ara_pooled"],
        "ara_minmax_pooled": cmp["ara_minmax_pooled"],
        "spearman_cr": cmp["spearman_cr"],
        "crash_rate": metrics.crash_rate(run.results),
        "sim_pooled": cmp["sim_pooled"],
        "agent_conversion": float(outcomes["converted"].mean()),
        "agents": run.agents.height,
        "visiting_agents": int(sim["buyers"].sum()) if sim.height else 0,
        "type_mix_js": _type_mix_js(run, Path(cfg.run_dir), split),
        "persona_mode": run.persona_mode,
        "folder": str(run.folder),
        "missing_sim": cmp["missing_sim"],
        "strata": cmp["strata"],
        "behaviour": metrics.overall_metrics(run.events) if run.events.height else None,
    }
    return fig, sim


def ceiling_spread(events: pl.DataFrame, split: HoldoutSplit, cfg) -> dict | None:
    """The ceiling over `eval.ceiling_repeats` other hash salts: how much it moves with the split."""
    n = cfg.eval.ceiling_repeats
    if n <= 0:
        return None
    sub = events.filter(pl.col("merchant_id").is_in(split.heldout))
    vals: dict[str, list[float]] = {"ara_overall": [], "ara_minmax_overall": [], "spearman_cr": []}
    for r in range(n):
        halves = holdout.split_halves(sub, split.heldout, "hash", f"{split.salt}-repeat{r}")
        alt = HoldoutSplit(split.heldout, halves, "hash", split.seed, f"{split.salt}-repeat{r}")
        c = holdout.ceiling(sub, alt, cfg.eval.rate, cfg.eval.stratum_unit)
        for k in vals:
            if c[k] is not None:
                vals[k].append(c[k])
    return {k: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "n": len(v)} for k, v in vals.items() if v}


def _targets(main: dict, ceiling: dict, baselines: dict, ci: dict, e) -> dict:
    """Each target of the issue, with the figures it was judged on."""
    ara = main["ara_overall"]
    out = {
        "ara_at_least": {"target": e.target_ara, "value": ara, "met": ara >= e.target_ara},
        "ceiling_fraction": {"target": e.target_ceiling_fraction, "ceiling": ceiling["ara_overall"],
                             "value": ara / ceiling["ara_overall"] if ceiling["ara_overall"] else None},
        "above_baselines": {},
    }
    cf = out["ceiling_fraction"]
    cf["met"] = cf["value"] is not None and cf["value"] >= e.target_ceiling_fraction
    for name, b in baselines.items():
        if b is None:
            out["above_baselines"][name] = {"met": None, "reason": "baseline run missing"}
            continue
        lo, hi = ci["deltas"][name]["ara"]
        out["above_baselines"][name] = {"delta": ara - b["ara_overall"], "ci": [lo, hi], "met": lo > 0}
    none = baselines.get("no_persona")
    if none is not None and none["crash_rate"] > 0:
        ratio = main["crash_rate"] / none["crash_rate"]
        out["crash_ratio"] = {"target": e.target_crash_ratio, "value": ratio, "met": ratio <= e.target_crash_ratio}
    else:
        out["crash_ratio"] = {"target": e.target_crash_ratio, "value": None, "met": None,
                              "reason": "no no-persona baseline" if none is None else "no-persona baseline never crashed"}
    return out


def _per_merchant(split: HoldoutSplit, types_half: pl.DataFrame, rates_half: pl.DataFrame,
                  sims: dict[str, pl.DataFrame], rate: str) -> list[dict]:
    rows = pl.DataFrame({"merchant_id": split.heldout})
    rows = rows.join(rates_half.select("merchant_id", pl.col("buyers").alias("real_buyers"), pl.col(rate).alias("real")),
                     on="merchant_id", how="left")
    rows = rows.join(types_half.select("merchant_id", pl.col("buyers").alias("types_half_buyers"),
                                       pl.col(rate).alias("real_types_half")), on="merchant_id", how="left")
    for name, table in sims.items():
        rows = rows.join(table.select("merchant_id", pl.col("buyers").alias(f"{name}_buyers"),
                                      pl.col(rate).alias(name)), on="merchant_id", how="left")
    out = rows.to_dicts()
    for r in out:
        r["ara"] = float(alignment.ara(np.nan if r.get("sim") is None else r["sim"], r["real"])[0])
        r["ara_ceiling"] = float(alignment.ara(r["real_types_half"] if r["real_types_half"] is not None else np.nan,
                                               r["real"])[0])
    return out


def run_evaluation(cfg) -> dict:
    """Compute and write <run_dir>/evaluate/metrics.json; returns the metrics."""
    t0 = time.time()
    run_dir = Path(cfg.run_dir)
    e = cfg.eval
    if e.rate not in metrics.RATE_NAMES:
        raise EvaluationError(f"eval.rate={e.rate!r} is not a metric; choose one of {', '.join(metrics.RATE_NAMES)}")
    events = load_real_events(cfg)
    split = holdout_for(cfg, events)
    types_half, rates_half = holdout.real_half_metrics(events, split)
    ceil = holdout.ceiling(events, split, e.rate, e.stratum_unit, halves=(types_half, rates_half))

    main_run = SimRun(run_dir / "simulate" / e.main_run, split.heldout)
    main, main_sim = evaluate_run(main_run, rates_half, split, cfg)
    baselines: dict[str, dict | None] = {}
    sims = {"sim": main_sim}
    for name, folder in e.baseline_runs.items():
        path = run_dir / "simulate" / folder
        if not (path / "agents.parquet").exists():
            if e.require_baselines:
                raise EvaluationError(f"baseline {name}: no simulation at {path} (eval.require_baselines=true)")
            log.warning("baseline %s: no simulation at %s; reported as null", name, path)
            baselines[name] = None
            continue
        baselines[name], sims[name] = evaluate_run(SimRun(path, split.heldout), rates_half, split, cfg)

    ci = bootstrap.ara_bootstrap(
        _converters(main_sim, e.rate), _converters(rates_half, e.rate), split.heldout, e.bootstrap, e.ci_level,
        cfg.seed, others={n: _converters(sims[n], e.rate) for n, b in baselines.items() if b is not None})
    main["ara_ci"] = ci["ara"]
    main["ara_minmax_ci"] = ci["ara_minmax"]
    for name, b in baselines.items():
        if b is not None:
            b["ara_ci"] = ci["deltas"][name]["other_ara"]
            b["ara_minmax_ci"] = ci["deltas"][name]["other_ara_minmax"]
            b["ara_delta_vs_main_ci"] = ci["deltas"][name]["ara"]

    result = {
        "heldout_merchants": split.heldout,
        "split": {"method": split.method, "seed": split.seed, "salt": split.salt,
                  "buyers_types_half": int(types_half["buyers"].sum()),
                  "buyers_rates_half": int(rates_half["buyers"].sum())},
        "rate": e.rate,
        "stratum_unit": e.stratum_unit,
        "strata_defs": {s: n for s, n in metrics.STRATA.items()},
        **{k: main[k] for k in HEADLINE},
        "ara_ci": main["ara_ci"],
        "ara_minmax_ci": main["ara_minmax_ci"],
        "ara_ceiling": ceil["ara_overall"],
        "ara_minmax_ceiling": ceil["ara_minmax_overall"],
        "ara_pooled_ceiling": ceil["ara_pooled"],
        "spearman_ceiling": ceil["spearman_cr"],
        "ceiling_spread": ceiling_spread(events, split, cfg),
        "real_pooled": ceil["real_pooled"],
        "main": main,
        "ceiling": {k: v for k, v in ceil.items() if k != "per_merchant"},
        "baselines": baselines,
        "per_merchant": _per_merchant(split, types_half, rates_half, sims, e.rate),
        "real_behaviour": metrics.overall_metrics(holdout.half_events(events, split, HALF_RATES)),
    }
    result["targets"] = _targets(main, ceil, baselines, ci, e)
    result = json_safe(result)
    out = run_dir / "evaluate"
    write_json(result, out / "metrics.json")
    summary = {"metrics": str(out / "metrics.json"), "seconds": round(time.time() - t0, 2),
               **{k: result[k] for k in (*HEADLINE, "ara_ceiling")},
               "baselines": {n: None if b is None else {k: b[k] for k in HEADLINE} for n, b in baselines.items()}}
    write_json(summary, out / "summary.json")
    return result
