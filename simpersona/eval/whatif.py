"""What-if experiments: one agent population, several storefront variants, paired deltas.

The stage (simpersona.sim.experiments.run_whatif) simulates the unchanged storefront
(`whatif.base_variant`) and every variant of `whatif.variants` (name -> store knobs, e.g.
{price_multiplier: 1.1}, handed to the storefront as store.variants[name]) plus a grid sweeping one knob (`whatif.grid_knob` over `whatif.grid_values`),
each through the simulate stage on the same merchants with the same agents. Agents are drawn from
(seed, merchant, index) only, so every variant runs the same agents with the same seeds (common
random numbers) and a variant's effect is measured agent by agent: per-merchant and overall deltas
of conversion and engagement with paired bootstrap intervals (simpersona.eval.bootstrap). Beside each
variant: how much the knobs it changes varied in the training traces and, on a planted world with
knobs, its true effect and whether the simulation found it (simpersona.eval.whatif_truth).
`score_whatif` then writes <run_dir>/whatif/deltas.json and summary.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from simpersona.data.storefront import replayed_store
from simpersona.data.traces import as_mapping
from simpersona.eval import bootstrap, metrics
from simpersona.eval import whatif_truth as truth
from simpersona.eval.artifacts import json_safe
from simpersona.eval.simruns import SimRun
from simpersona.storage import write_json
from simpersona.store.shops import KNOB_NAMES, knobs_for


class WhatifError(ValueError):
    """A what-if setting that cannot run; the message names it."""


def _value_name(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


FOREIGN_KEYS = ("base_url", "page_patches")  # a foreign shop's variant: another deployment, or its pages patched


def _check_foreign(spec: dict, where: str) -> None:
    from simpersona.sim.page_patch import parse_patches

    bad = [k for k in spec if k not in FOREIGN_KEYS]
    if bad or not spec:
        raise WhatifError(f"{where}: on a foreign shop (sim.storefront) a variant is {' and/or '.join(FOREIGN_KEYS)} "
                          f"(store knobs change only the project storefront); got {sorted(spec) or 'nothing'}")
    parse_patches(spec.get("page_patches"))


def _check_knobs(knobs: dict, where: str) -> None:
    bad = [k for k in knobs if k not in KNOB_NAMES and k != "merchant_overrides"]
    if bad:
        raise WhatifError(f"{where}: unknown store knob(s) {bad}; knobs: {', '.join(KNOB_NAMES)}")
    if not knobs:
        raise WhatifError(f"{where} changes no store knob")


def variant_specs(cfg) -> dict[str, dict]:
    """name -> store knobs for every variant to run, the base variant first (no knobs changed)."""
    w = cfg.whatif
    variants = OmegaConf.to_container(w.variants, resolve=True) if OmegaConf.is_config(w.variants) else w.variants
    chosen = list(w.only) or list(variants)
    unknown = [n for n in chosen if n not in variants]
    if unknown:
        raise WhatifError(f"whatif.only names unknown variants {unknown}; defined: {list(variants)}")
    specs: dict[str, dict] = {w.base_variant: {}}
    for name in chosen:
        knobs = dict(variants[name] or {})
        (_check_foreign if cfg.sim.storefront else _check_knobs)(knobs, f"whatif.variants.{name}")
        specs[name] = knobs
    if w.grid_knob and cfg.sim.storefront:
        raise WhatifError(f"whatif.grid_knob={w.grid_knob!r} sweeps a knob of the project storefront; "
                          "set whatif.grid_knob='' for a foreign shop (sim.storefront)")
    if w.grid_knob:
        if w.grid_knob not in KNOB_NAMES:
            raise WhatifError(f"whatif.grid_knob={w.grid_knob!r} is not a store knob; knobs: {', '.join(KNOB_NAMES)}")
        for value in w.grid_values:
            specs[f"grid_{w.grid_knob}_{_value_name(value)}"] = {w.grid_knob: value}
    if w.base_variant in variants or len(specs) < 2:
        raise WhatifError("what-if needs whatif.base_variant plus at least one other variant "
                          "(whatif.variants / whatif.grid_knob), and the base must not be among the variants")
    return specs


def load_outcomes(folder: Path):
    """Per-agent outcomes (metrics.agent_outcomes) and the crash rate of one simulated variant."""
    run = SimRun(folder)
    return metrics.agent_outcomes(run.events, run.agents), metrics.crash_rate(run.results)


def compute_deltas(cfg, specs: dict[str, dict]) -> dict:
    """deltas.json content from the simulated variant folders of `specs` (the base first)."""
    w = cfg.whatif
    bad = [o for o in w.outcomes if o not in metrics.OUTCOMES]
    if bad:
        raise WhatifError(f"whatif.outcomes: unknown {bad}; choose from {', '.join(metrics.OUTCOMES)}")
    outcomes = tuple(w.outcomes)
    sim_root = Path(cfg.run_dir) / "simulate"
    names = list(specs)
    base_name = names[0]
    base, base_crash = load_outcomes(sim_root / base_name)
    out = {"base_variant": base_name, "outcomes": list(outcomes), "agents": base.height,
           "merchants": sorted(set(base["merchant_id"].to_list())), "ci_level": w.ci_level,
           "bootstrap": w.bootstrap, "crash_rate": {base_name: base_crash}, "variants": {}, "grid": None,
           "noise_se": w.noise_se, "ratio_band": list(w.ratio_band)}
    foreign = bool(cfg.sim.storefront)  # a foreign shop's variants change no store knob: no truth, no support
    world = truth.planted_world(cfg.run_dir) if w.true_effect and not foreign else None
    traced = truth.traced_knobs(cfg.run_dir, as_mapping(cfg.store))
    logged = truth.logged_knobs(cfg.run_dir)
    out["planted"] = world is not None
    agents_at = dict(base.group_by("merchant_id").len().sort("merchant_id").iter_rows())
    for name in names[1:]:
        var, crash = load_outcomes(sim_root / name)
        out["crash_rate"][name] = crash
        table = bootstrap.delta_table(base, var, outcomes, w.bootstrap, w.ci_level, cfg.seed)
        entry = out["variants"][name] = {"knobs": specs[name], **table}
        if not foreign:
            entry["training_variation"] = truth.training_variation(traced, specs[name], out["merchants"], logged)
        if world is not None:
            entry["true_effect"] = truth.true_effects(world, specs[name], agents_at, logged)
            entry["validity"] = truth.validity(entry, entry["true_effect"], w.noise_se, tuple(w.ratio_band))
    if world is not None:
        out["agreement"] = truth.agreement(out["variants"])
    if w.grid_knob:
        # the base arm is every merchant's own setup: where merchants differ (store.merchant_overrides,
        # a planted world's knobs) its point sits at their mean value
        own = [knobs_for(replayed_store(cfg), m, w.base_variant) for m in out["merchants"]]
        base_value = float(np.mean([float(getattr(k, w.grid_knob)) for k in own])) if own else cfg.store[w.grid_knob]
        points = [{"value": base_value, "variant": base_name, "overall": None, "true": None}]
        for name, knobs in specs.items():
            if name.startswith(f"grid_{w.grid_knob}_"):
                v = out["variants"][name]
                true = {o: t["effect"] for o, t in v["true_effect"].items()} if "true_effect" in v else None
                points.append({"value": knobs[w.grid_knob], "variant": name, "overall": v["overall"], "true": true})
        out["grid"] = {"knob": w.grid_knob, "base_value": base_value, "points": sorted(points, key=lambda p: p["value"])}
    return out


def _variant_summary(v: dict, outcomes: list[str]) -> dict:
    """A variant in summary.json: each outcome's overall delta, the true effect beside it (planted world)
    and the training variation of every knob it changes."""
    row = {o: {k: v["overall"][o][k] for k in ("delta", "lo", "hi")} for o in outcomes}
    if "true_effect" in v:
        row["true_effect"] = {o: {"effect": t["effect"], "se": t["se"]} for o, t in v["true_effect"].items()}
        row["validity"] = v["validity"]
    row["training_variation"] = {k: {"supported": t["supported"], "note": t["note"]}
                                 for k, t in (v.get("training_variation") or {}).items()}
    return row


def score_whatif(cfg, specs: dict[str, dict], seconds_per_variant: dict[str, float] | None = None,
                 started: float | None = None) -> dict:
    """Paired deltas of the simulated variants of `specs` (the base first): writes
    <run_dir>/whatif/deltas.json and summary.json, returns the summary."""
    t0 = time.time() if started is None else started
    deltas = compute_deltas(cfg, specs)
    deltas["seconds_per_variant"] = seconds_per_variant or {}
    out = Path(cfg.run_dir) / "whatif"
    write_json(out / "deltas.json", json_safe(deltas))
    summary = json_safe({"deltas": str(out / "deltas.json"), "seconds": round(time.time() - t0, 2),
                         "agents": deltas["agents"], "merchants": len(deltas["merchants"]),
                         "variants": {n: _variant_summary(v, deltas["outcomes"]) for n, v in deltas["variants"].items()},
                         "agreement": deltas.get("agreement"), "crash_rate": deltas["crash_rate"]})
    write_json(out / "summary.json", json_safe(summary))
    return summary
