"""What-if experiments: one agent population, several storefront variants, paired deltas.

`run_whatif(cfg)` simulates the unchanged storefront (`whatif.base_variant`) and every variant of
`whatif.variants` (name -> store knobs, e.g. {price_multiplier: 1.1}) plus a grid sweeping one
knob (`whatif.grid_knob` over `whatif.grid_values`), each through the simulate stage with the same
population settings. Agents are drawn from (seed, merchant, index) only, so every variant runs the
same agents with the same seeds (common random numbers) and a variant's effect is measured agent by
agent: per-merchant and overall deltas of conversion and engagement with paired bootstrap
intervals (simpersona.eval.bootstrap). Writes <run_dir>/whatif/deltas.json and summary.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
from omegaconf import OmegaConf

from simpersona.config import StoreConfig
from simpersona.eval import bootstrap, metrics
from simpersona.eval.artifacts import json_safe, read_events, read_parquet_folder, write_json

STORE_KNOBS = tuple(StoreConfig.__dataclass_fields__)


class WhatifError(ValueError):
    """A what-if setting that cannot run; the message names it."""


def _value_name(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def variant_specs(cfg) -> dict[str, dict]:
    """name -> store knob overrides for every variant to run (the base variant first, no overrides)."""
    w = cfg.whatif
    specs: dict[str, dict] = {w.base_variant: {}}
    variants = OmegaConf.to_container(w.variants, resolve=True) if not isinstance(w.variants, dict) else w.variants
    chosen = list(w.only) or list(variants)
    unknown_only = [n for n in chosen if n not in variants]
    if unknown_only:
        raise WhatifError(f"whatif.only names unknown variants {unknown_only}; defined: {list(variants)}")
    for name in chosen:
        knobs = dict(variants[name] or {})
        bad = [k for k in knobs if k not in STORE_KNOBS]
        if bad:
            raise WhatifError(f"whatif.variants.{name}: unknown store knob(s) {bad}; knobs: {', '.join(STORE_KNOBS)}")
        if not knobs:
            raise WhatifError(f"whatif.variants.{name} changes no store knob")
        specs[name] = knobs
    if w.grid_knob:
        if w.grid_knob not in STORE_KNOBS:
            raise WhatifError(f"whatif.grid_knob={w.grid_knob!r} is not a store knob; knobs: {', '.join(STORE_KNOBS)}")
        for value in w.grid_values:
            specs[f"grid_{w.grid_knob}_{_value_name(value)}"] = {w.grid_knob: value}
    if len(specs) < 2:
        raise WhatifError("no what-if variants to run: set whatif.variants or whatif.grid_knob/grid_values")
    return specs


def variant_config(cfg, name: str, knobs: dict):
    """A copy of `cfg` that simulates variant `name`: sim.variant set, store knobs overridden."""
    vcfg = cfg.copy()
    vcfg.sim.variant = name
    for k, v in knobs.items():
        vcfg.store[k] = v
    return vcfg


def load_outcomes(folder: Path) -> tuple[pl.DataFrame, float]:
    """Per-agent outcomes (metrics.agent_outcomes) and the crash rate of one simulated variant."""
    agents = read_parquet_folder(folder / "agents.parquet", "agent specs")
    events = read_events(folder / "events")
    results = read_parquet_folder(folder / "results", "agent results")
    return metrics.agent_outcomes(events, agents), metrics.crash_rate(results)


def compute_deltas(cfg, specs: dict[str, dict]) -> dict:
    """deltas.json content from the simulated variant folders of `specs` (the base first)."""
    w = cfg.whatif
    sim_root = Path(cfg.run_dir) / "simulate"
    names = list(specs)
    base_name = names[0]
    bad = [o for o in w.outcomes if o not in metrics.OUTCOMES]
    if bad:
        raise WhatifError(f"whatif.outcomes: unknown {bad}; choose from {', '.join(metrics.OUTCOMES)}")
    outcomes = tuple(w.outcomes)
    base, base_crash = load_outcomes(sim_root / base_name)
    out = {"base_variant": base_name, "outcomes": list(outcomes), "agents": base.height,
           "merchants": sorted(set(base["merchant_id"].to_list())), "ci_level": w.ci_level,
           "bootstrap": w.bootstrap, "crash_rate": {base_name: base_crash}, "variants": {}, "grid": None}
    for name in names[1:]:
        var, crash = load_outcomes(sim_root / name)
        out["crash_rate"][name] = crash
        table = bootstrap.delta_table(base, var, outcomes, w.bootstrap, w.ci_level, cfg.seed)
        out["variants"][name] = {"knobs": specs[name], **table}
    if w.grid_knob:
        points = [{"value": cfg.store[w.grid_knob], "variant": base_name, "overall": None}]
        for name, knobs in specs.items():
            if name.startswith(f"grid_{w.grid_knob}_"):
                points.append({"value": knobs[w.grid_knob], "variant": name,
                               "overall": out["variants"][name]["overall"]})
        out["grid"] = {"knob": w.grid_knob, "base_value": cfg.store[w.grid_knob],
                       "points": sorted(points, key=lambda p: p["value"])}
    return out


def run_whatif(cfg, simulate=None) -> dict:
    """Simulate the base and every variant, then write <run_dir>/whatif/deltas.json.

    `simulate(cfg)` runs one variant (default: simpersona.sim.simulate.run_simulation)."""
    t0 = time.time()
    if simulate is None:
        from simpersona.sim.simulate import run_simulation as simulate
    specs = variant_specs(cfg)
    timings = {}
    for name, knobs in specs.items():
        t = time.time()
        simulate(variant_config(cfg, name, knobs))
        timings[name] = round(time.time() - t, 2)
    deltas = compute_deltas(cfg, specs)
    deltas["seconds_per_variant"] = timings
    out = Path(cfg.run_dir) / "whatif"
    write_json(deltas, out / "deltas.json")
    summary = {"deltas": str(out / "deltas.json"), "seconds": round(time.time() - t0, 2),
               "variants": {n: v["overall"] for n, v in deltas["variants"].items()},
               "crash_rate": deltas["crash_rate"]}
    write_json(summary, out / "summary.json")
    return json_safe(deltas)
