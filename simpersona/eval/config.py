"""Config sections of the evaluation (eval) and what-if (whatif) stages.

Defaults live here only; configs/*.yaml hold what a run changes. Merged by simpersona.config.load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class HoldoutConfig:
    """Held-out storefront protocol (simpersona.eval.holdout); training stages read it too."""

    merchants: int = 42  # the N merchants with the most buyers are held out
    seed: int = 0  # shuffles merchants with equal buyer counts before taking the top N
    split: str = "hash"  # hash (of buyer id) | time (earlier first visits -> types half)
    salt: str = ""  # salt of the buyer-id hash; "" = str(seed)


def _baselines() -> list[str]:
    return ["no_persona", "mismatch", "prompt_persona", "kmeans"]


@dataclass
class LargerModelConfig:
    """The larger_model baseline: a base LM without personas or fine-tuning (runs when name_or_path is set)."""

    name_or_path: str = ""  # "" = not run | hub id | local save_pretrained folder | smollm2
    gguf_file: str = ""  # a GGUF file inside name_or_path
    revision: str = ""
    trust_remote_code: bool = False


@dataclass
class TypeAlignmentConfig:
    """Per buyer type, simulated vs real (simpersona.eval.type_alignment)."""

    min_agents: int = 10  # a type counts when it has this many visiting simulated agents ...
    min_real: int = 10  # ... and this many real histories in the rates half
    js_min_steps: int = 20  # steps on a page kind, each side, for its action-verb JS
    ideal_repeats: int = 200  # draws of the ideal simulator at the simulation's agents per type


@dataclass
class EvalConfig:
    """Held-out storefront evaluation (simpersona.eval)."""

    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    rate: str = "buyer_conversion"  # the conversion rate ARA is computed on (simpersona.eval.metrics)
    stratum_unit: str = "buyer"  # buyer | session: unit of the funnel strata A-D
    real_events: str = ""  # canonical events (Parquet); "" = <run_dir>/preprocess/events, else data.*
    # run the simulations (true) or only read <run_dir>/simulate/<run_prefix><mode>/ made earlier (false)
    simulate: bool = True
    run_prefix: str = "eval_"  # simulation folders: eval_vq, eval_none, eval_mismatch, ...
    baselines: list[str] = field(default_factory=_baselines)  # of no_persona|mismatch|prompt_persona|kmeans
    larger_model: LargerModelConfig = field(default_factory=LargerModelConfig)
    require_baselines: bool = True  # with simulate=false: a missing baseline folder is an error (else null)
    type_smoothing: float = 0.1  # additive smoothing of a held-out merchant's type histogram (types half)
    bootstrap: int = 2000  # bootstrap replicates for intervals
    ci_level: float = 0.95
    ceiling_repeats: int = 20  # extra random hash splits to show the ceiling's own spread
    target_ara: float = 0.78  # the paper's headline
    target_ceiling_fraction: float = 0.9  # ara_overall >= this x ara_ceiling
    target_crash_ratio: float = 0.34  # crash rate with personas <= this x the no-persona baseline
    types: TypeAlignmentConfig = field(default_factory=TypeAlignmentConfig)


def _whatif_variants() -> dict[str, dict[str, Any]]:
    return {
        "price_up_10": {"price_multiplier": 1.1},
        "free_shipping": {"shipping_fee": 0.0},
        "extra_checkout_step": {"checkout_steps": 3},
        "no_recommendations": {"recommendations": False},
    }


@dataclass
class WhatifConfig:
    """What-if experiments: store variants on one agent population (simpersona.eval.whatif)."""

    base_variant: str = "whatif_base"  # sim.variant of the unchanged storefront
    # name -> store knobs (as in store.variants: {knob: value, merchant_overrides: {merchant: {knob: value}}})
    variants: dict[str, dict[str, Any]] = field(default_factory=_whatif_variants)
    only: list[str] = field(default_factory=list)  # run just these variants ([] = all of `variants`)
    grid_knob: str = "price_multiplier"  # store knob swept by the grid ("" = no grid)
    grid_values: list[float] = field(default_factory=lambda: [0.8, 0.9, 1.2])
    outcomes: list[str] = field(default_factory=lambda: ["converted", "carted", "product_pages", "events"])
    # the population: N merchants with the most typed buyers, or a list of ids (replaces sim.merchants)
    merchants: Any = 8
    agents_per_merchant: int = 0  # 0 = sim.agents_per_merchant
    bootstrap: int = 2000
    ci_level: float = 0.95
    # on a planted world with per-merchant knobs: each variant's true effect beside the simulated one
    true_effect: bool = True
    noise_se: float = 3.0  # a true effect beyond this many replay standard errors is "beyond noise"
    ratio_band: list[float] = field(default_factory=lambda: [0.67, 1.5])  # simulated/true that passes
