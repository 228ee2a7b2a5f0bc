"""The evaluation stage: simulated held-out storefronts against their real buyers.

The stage itself is simpersona.sim.experiments.run_evaluation: plan_evaluation (1), the simulations (2, 3),
then score_evaluation (4).
  1. real events (eval.real_events, else <run_dir>/preprocess/events, else data.*) and the run's
     held-out split (simpersona.eval.holdout, eval.holdout.*)
  2. each held-out merchant's type distribution from its types half only
     -> <run_dir>/evaluate/heldout_merchant_types.parquet (what the simulated populations sample)
  3. with eval.simulate: one simulation per persona mode on the held-out merchants, through the
     simulate stage, into <run_dir>/simulate/<eval.run_prefix><mode>/: vq (the product) and the
     baselines of eval.baselines (no_persona -> none, mismatch, prompt_persona -> prompt, kmeans), and
     larger_model when eval.larger_model.name_or_path names one: that base LM, as it is (no persona
     tokens, no fine-tuning), copied once to <run_dir>/evaluate/larger_model/<source hash>/
  4. the same metric code on each run's storefront log and on the real rates half; alignment,
     ceiling (real types half vs real rates half), bootstrap intervals, targets
     -> <run_dir>/evaluate/metrics.json and summary.json

A re-run resumes a simulation folder made from the same inputs and starts it afresh otherwise
(simpersona.sim.experiments), so an evaluation never mixes agents of two different models. This module
only reads the folders back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import OmegaConf

from simpersona.eval import alignment, bootstrap, holdout, metrics, type_alignment
from simpersona.eval.artifacts import ArtifactError, json_safe
from simpersona.eval.holdout import HALF_RATES, HoldoutSplit
from simpersona.eval.signal_budget import signal_budget
from simpersona.eval.simruns import SimRun, heldout_folder
from simpersona.storage import write_json

log = logging.getLogger(__name__)

MAIN_MODE = "vq"
BASELINE_MODES = {"no_persona": "none", "mismatch": "mismatch", "prompt_persona": "prompt", "kmeans": "kmeans"}
LARGER = "larger_model"  # baseline: a larger base LM without personas (eval.larger_model), folder eval_larger_model
HEADLINE = ("ara_overall", "ara_minmax_overall", "ara_pooled", "spearman_cr", "crash_rate")


class EvaluationError(ArtifactError):
    """Missing or inconsistent inputs of the evaluation; the message names the file or setting."""


# ---- the simulated populations ------------------------------------------------------------------

def _types_table(run_dir: Path) -> pl.DataFrame | None:
    path = run_dir / "assign" / "types.parquet"
    return pl.read_parquet(path) if path.exists() else None


def n_types(run_dir: Path, types: pl.DataFrame) -> int:
    """Codebook size (DIR/vqvae/codebook.npy), else the largest type id + 1."""
    codebook = run_dir / "vqvae" / "codebook.npy"
    if codebook.exists():
        return int(np.load(codebook, mmap_mode="r").shape[0])
    return int(types["type_id"].max()) + 1


def write_heldout_types(cfg, split: HoldoutSplit) -> Path:
    """The held-out merchants' type distributions from their types halves (assign/types.parquet)."""
    run_dir = Path(cfg.run_dir)
    types = _types_table(run_dir)
    if types is None:
        raise EvaluationError(f"no buyer types at {run_dir / 'assign' / 'types.parquet'} (run the assign stage)")
    dist = holdout.heldout_distribution(types, split, n_types(run_dir, types), cfg.eval.type_smoothing)
    path = run_dir / "evaluate" / "heldout_merchant_types.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    dist.write_parquet(path)
    return path


def larger_model_source(cfg) -> dict | None:
    """eval.larger_model as {name_or_path, gguf_file, revision}; None when not configured."""
    lm = cfg.eval.get("larger_model") or {}
    name = str(lm.get("name_or_path") or "").strip()
    if not name:
        return None
    return {"name_or_path": name, "gguf_file": str(lm.get("gguf_file") or ""), "revision": str(lm.get("revision") or ""),
            "trust_remote_code": bool(lm.get("trust_remote_code", False))}


def prepare_larger_model(cfg, source: dict) -> Path:
    """The larger base model as a save_pretrained folder the policy loads (GGUF dequantised once), with a
    persona.json of no persona tokens and the main model's history length. Reused while the source is
    the same; another source gets another folder (so its simulation's fingerprint differs too)."""
    from simpersona.persona.model_loading import load_pretrained, save
    from simpersona.persona.scoring import read_persona_info

    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cfg.run_dir) / "evaluate" / LARGER / key
    if (folder / "config.json").exists() and (folder / "source.json").exists():
        return folder
    main_info = read_persona_info(Path(cfg.serve.model_dir or Path(cfg.run_dir) / "finetune" / "model"))
    history_len = main_info.get("history_len", OmegaConf.select(cfg, "persona.history_len", default=None))
    try:
        model, tokenizer = load_pretrained(source["name_or_path"], source["gguf_file"], source["revision"],
                                           source["trust_remote_code"])
    except Exception as exc:  # a hub id offline, a missing folder, a model that is not causal
        raise EvaluationError(f"eval.larger_model.name_or_path={source['name_or_path']!r}: could not load it as a "
                              f"causal LM ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]})") from exc
    tmp = folder.with_name(f".{key}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tokenizer, tmp)
    info = {"persona_tokens": [], "persona_token_ids": [], "codebook_size": 0, "base_model": source["name_or_path"]}
    if history_len is not None:
        info["history_len"] = int(history_len)
    write_json(tmp / "persona.json", json_safe(info))
    write_json(tmp / "source.json", json_safe({**source, "parameters": int(sum(p.numel() for p in model.parameters()))}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # complete or absent: a crash mid-save leaves only the .tmp folder
    return folder


# ---- figures --------------------------------------------------------------------------------------

def _converters(table: pl.DataFrame, rate: str) -> dict[str, tuple[int, int]]:
    """merchant -> (units with the rate's event, units) for a 0/1 rate, from merchant_metrics rows."""
    w = metrics.weight_column(rate)
    return {m: (int(round(r * n)), int(n)) for m, r, n in table.select("merchant_id", rate, w).iter_rows()
            if r is not None and n}


def _type_mix_js(run: SimRun, types: pl.DataFrame | None, split: HoldoutSplit) -> float | None:
    """Mean over merchants of JS(sampled type mix, empirical type mix of the types half)."""
    col = "kmeans_type_id" if run.persona_mode == "kmeans" else "type_id"
    if run.persona_mode == "none" or types is None or col not in types.columns:
        return None
    empirical = holdout.types_half_types(types, split, col)
    if empirical.height == 0:
        return None
    sampled = run.agents.select("merchant_id", pl.col("type_id").cast(pl.Int32))
    js = alignment.type_mix_js(sampled, empirical)
    return float(js["js"].mean()) if js.height else None


def evaluate_run(run: SimRun, real_rates: pl.DataFrame, split: HoldoutSplit, cfg,
                 types: pl.DataFrame | None) -> tuple[dict, pl.DataFrame]:
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
        "failure_rates": metrics.failure_rates(run.results, run.step_errors()),
        "sim_pooled": cmp["sim_pooled"],
        "agent_conversion": float(outcomes["converted"].mean()),
        "agents": run.agents.height,
        "visiting_agents": int(sim["buyers"].sum()) if sim.height else 0,
        "type_mix_js": _type_mix_js(run, types, split),
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
        salt = f"{split.salt}-repeat{r}"
        alt = HoldoutSplit(split.heldout, holdout.split_halves(sub, split.heldout, "hash", salt), "hash",
                           split.seed, salt)
        c = holdout.ceiling(sub, alt, cfg.eval.rate, cfg.eval.stratum_unit)
        for k in vals:
            if c[k] is not None:
                vals[k].append(c[k])
    return {k: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "n": len(v)} for k, v in vals.items() if v}


def _targets(main: dict, ceiling: dict, baselines: dict, ci: dict, e) -> dict:
    """Each target of the issue, with the figures it was judged on."""
    ara = main["ara_overall"]
    ceil = ceiling["ara_overall"]
    out = {
        "ara_at_least": {"target": e.target_ara, "value": ara, "met": ara >= e.target_ara},
        "ceiling_fraction": {"target": e.target_ceiling_fraction, "ceiling": ceil,
                             "value": ara / ceil if ceil else None},
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
        other = r["real_types_half"]
        r["ara_ceiling"] = float(alignment.ara(np.nan if other is None else other, r["real"])[0])
    return out


# ---- the stage ------------------------------------------------------------------------------------

def _check(cfg) -> None:
    e = cfg.eval
    if e.rate not in metrics.RATE_NAMES:
        raise EvaluationError(f"eval.rate={e.rate!r} is not a metric; choose one of {', '.join(metrics.RATE_NAMES)}")
    unknown = [b for b in e.baselines if b not in BASELINE_MODES]
    if unknown:
        hint = f" ({LARGER} runs when eval.larger_model.name_or_path is set)" if LARGER in unknown else ""
        raise EvaluationError(f"eval.baselines: unknown {unknown}; choose from {', '.join(BASELINE_MODES)}{hint}")


@dataclass(frozen=True)
class EvaluationPlan:
    """What an evaluation simulates and scores: the held-out split, the held-out merchants' real events,
    the persona mode of each simulated population (name -> mode: vq and the eval.baselines) and the
    larger base model's source (or None)."""

    split: HoldoutSplit
    events: pl.DataFrame
    modes: dict[str, str]
    larger: dict | None


def plan_evaluation(cfg) -> EvaluationPlan:
    """The evaluation's settings checked, its held-out split made or read and the real events read (before
    any simulation, so that bad inputs fail at once)."""
    _check(cfg)
    split = holdout.holdout_for(cfg)
    events = holdout.load_real_events(cfg, split.heldout)  # only the held-out merchants are scored
    modes = {"vq": MAIN_MODE, **{b: BASELINE_MODES[b] for b in cfg.eval.baselines}}
    return EvaluationPlan(split, events, modes, larger_model_source(cfg))


def score_evaluation(cfg, plan: EvaluationPlan, sim_seconds: dict[str, float] | None = None,
                     started: float | None = None) -> dict:
    """Score the simulated held-out storefronts (<run_dir>/simulate/<eval.run_prefix><mode>/) against
    their real buyers; writes metrics.json and summary.json, returns the summary."""
    t0 = time.time() if started is None else started
    run_dir = Path(cfg.run_dir)
    e = cfg.eval
    split, events, larger = plan.split, plan.events, plan.larger
    types = _types_table(run_dir)
    baseline_names = [*e.baselines, *([LARGER] if larger else [])]

    types_half, rates_half = holdout.real_half_metrics(events, split)
    ceil = holdout.ceiling(events, split, e.rate, e.stratum_unit, halves=(types_half, rates_half))
    runs = {MAIN_MODE: SimRun(heldout_folder(cfg, MAIN_MODE), split.heldout)}
    main, main_sim = evaluate_run(runs[MAIN_MODE], rates_half, split, cfg, types)
    baselines: dict[str, dict | None] = {}
    sims = {"sim": main_sim}
    for name in baseline_names:
        folder = heldout_folder(cfg, BASELINE_MODES.get(name, name))
        if not (folder / "agents.parquet").exists():
            if e.require_baselines:
                raise EvaluationError(f"baseline {name}: no simulation at {folder} (eval.require_baselines=true)")
            log.warning("baseline %s: no simulation at %s; reported as null", name, folder)
            baselines[name] = None
            continue
        runs[name] = SimRun(folder, split.heldout)
        baselines[name], sims[name] = evaluate_run(runs[name], rates_half, split, cfg, types)
        if name == LARGER:
            baselines[name]["model"] = larger

    ci = bootstrap.ara_bootstrap(
        _converters(main_sim, e.rate), _converters(rates_half, e.rate), split.heldout, e.bootstrap, e.ci_level,
        cfg.seed, others={n: _converters(sims[n], e.rate) for n, b in baselines.items() if b is not None})
    main["ara_ci"], main["ara_minmax_ci"] = ci["ara"], ci["ara_minmax"]
    for name, b in baselines.items():
        if b is not None:
            d = ci["deltas"][name]
            b["ara_ci"], b["ara_minmax_ci"], b["ara_delta_vs_main_ci"] = d["other_ara"], d["other_ara_minmax"], d["ara"]
            b["ara_ceiling"] = ceil["ara_overall"]  # the same ceiling: same merchants, same real halves
            b["heldout_merchants"] = split.heldout  # metrics.json contract: the headline fields per baseline

    result = {
        "heldout_merchants": split.heldout,
        "split": {"method": split.method, "seed": split.seed, "salt": split.salt,
                  "buyers_types_half": int(types_half["buyers"].sum()),
                  "buyers_rates_half": int(rates_half["buyers"].sum())},
        "rate": e.rate,
        "stratum_unit": e.stratum_unit,
        "strata_defs": dict(metrics.STRATA),
        **{k: main[k] for k in HEADLINE},
        "ara_ci": main["ara_ci"],
        "ara_minmax_ci": main["ara_minmax_ci"],
        "ci_method": ci["method"],
        "ara_ceiling": ceil["ara_overall"],
        "ara_minmax_ceiling": ceil["ara_minmax_overall"],
        "ara_pooled_ceiling": ceil["ara_pooled"],
        "spearman_ceiling": ceil["spearman_cr"],
        "ceiling_spread": ceiling_spread(events, split, cfg),
        # the ceiling with as many agents per merchant as the simulation ran (ideal agents = real buyers)
        "ceiling_at_sim_size": bootstrap.ceiling_at_sample_size(
            _converters(types_half, e.rate), _converters(rates_half, e.rate),
            {m: n for m, (_, n) in _converters(main_sim, e.rate).items()}, split.heldout, e.bootstrap,
            e.ci_level, cfg.seed),
        "real_pooled": ceil["real_pooled"],
        "main": main,
        "ceiling": {k: v for k, v in ceil.items() if k != "per_merchant"},
        "baselines": baselines,
        "per_merchant": _per_merchant(split, types_half, rates_half, sims, e.rate),
        "real_behaviour": metrics.overall_metrics(holdout.half_events(events, split, HALF_RATES)),
        "simulation_seconds": sim_seconds or {},
        "type_alignment": type_alignment.evaluate_types(runs, MAIN_MODE, events, split, types,
                                                        run_dir / "preprocess" / "traces", e.types, cfg.seed),
    }
    result["signal_budget"] = signal_budget(run_dir, result["type_alignment"])
    result["targets"] = _targets(main, ceil, baselines, ci, e)
    out = run_dir / "evaluate"
    write_json(out / "metrics.json", json_safe(result))
    summary = json_safe({
        "metrics": str(out / "metrics.json"), "seconds": round(time.time() - t0, 2),
        **{k: result[k] for k in (*HEADLINE, "ara_ceiling")},
        "baselines": {n: None if b is None else {k: b[k] for k in HEADLINE} for n, b in baselines.items()},
        "targets_met": {k: v.get("met") for k, v in result["targets"].items() if k != "above_baselines"}
        | {f"above_{n}": v["met"] for n, v in result["targets"]["above_baselines"].items()},
    })
    write_json(out / "summary.json", json_safe(summary))
    return summary
