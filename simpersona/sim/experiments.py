"""The evaluate and what-if stages: their simulations, then their scoring (simpersona.eval).

run_evaluation simulates one population per persona mode on the held-out merchants
(<run_dir>/simulate/<eval.run_prefix><mode>/) and scores them with eval.evaluate; run_whatif simulates
one population per store variant (<run_dir>/simulate/<variant>/) and scores the paired deltas with
eval.whatif. Every population goes through the simulate stage (run_simulation); eval only reads them.

The simulate stage resumes a folder by skipping agents already committed there. That is right after
a crash, and wrong after the model, the storefront or the population changed: the folder would mix
agents of two setups. `simulate_folder` therefore records what a folder was made from
(eval_inputs.json: the sim/serve/store/browser config, the seed, the type distribution file, the
upstream stages' digests) and starts the folder afresh when that changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from simpersona import manifest
from simpersona.eval import evaluate, whatif
from simpersona.eval.simruns import heldout_variant
from simpersona.storage import write_json

log = logging.getLogger(__name__)
MARKER = "eval_inputs.json"


def _digest(stage_dir: Path) -> str:
    try:
        return manifest.digest(stage_dir)
    except FileNotFoundError:
        return ""  # an upstream stage run outside the pipeline: its config sections still count


def fingerprint(vcfg, types_path: Path | None) -> dict:
    """What a simulation folder's contents depend on."""
    run_dir = Path(vcfg.run_dir)
    sections = {k: OmegaConf.to_container(vcfg[k], resolve=True) for k in ("sim", "serve", "store", "browser")
                if k in vcfg}
    return {
        # the real values: redaction is by key name and inside URLs, so a changed `*token*` setting or a
        # base URL's credentials would otherwise leave a stale folder looking current (only the hash is kept)
        "config": manifest.stable_hash(sections),
        "seed": int(vcfg.seed),
        "merchant_types": hashlib.sha256(types_path.read_bytes()).hexdigest()[:16] if types_path else "",
        "upstream": {s: _digest(run_dir / s) for s in ("assign", "finetune")},
    }


def simulate_folder(vcfg, types_path: Path | None, simulate: Callable | None = None) -> Path:
    """Run (or resume) one simulation with `simulate(vcfg)` (default: the simulate stage); a folder made
    from other inputs is replaced first."""
    from simpersona.sim.simulate import run_simulation, variant_dir

    folder = variant_dir(vcfg)
    marker = folder / MARKER
    fp = fingerprint(vcfg, types_path)
    if folder.exists() and (not marker.exists() or json.loads(marker.read_text()) != fp):
        log.warning("%s was simulated from other inputs: starting it afresh", folder)
        shutil.rmtree(folder)
    write_json(marker, fp)
    (simulate or run_simulation)(vcfg)
    return folder


def simulate_each(configs: dict, types_path: Path | None, simulate: Callable | None = None) -> dict[str, float]:
    """`simulate_folder` for each name -> config, in order; returns name -> seconds."""
    seconds = {}
    for name, vcfg in configs.items():
        t = time.time()
        simulate_folder(vcfg, types_path, simulate)
        seconds[name] = round(time.time() - t, 2)
    return seconds


# ---- evaluation: one population per persona mode on the held-out merchants ----------------------

def run_evaluation(cfg, simulate: Callable | None = None) -> dict:
    """The evaluate stage: with eval.simulate, simulate vq, the baselines and the larger model (when
    eval.larger_model names one) on the held-out merchants; then score them (eval.evaluate). Returns
    the summary. `simulate(cfg)` runs one simulation (default: the simulate stage)."""
    t0 = time.time()
    plan = evaluate.plan_evaluation(cfg)
    seconds: dict[str, float] = {}
    if cfg.eval.simulate:
        larger_dir = str(evaluate.prepare_larger_model(cfg, plan.larger).resolve()) if plan.larger else ""
        types_path = evaluate.write_heldout_types(cfg, plan.split)  # after the model: a bad one fails first
        configs = {name: persona_mode_config(cfg, mode, plan.split.heldout, types_path)
                   for name, mode in plan.modes.items()}
        if plan.larger:
            configs[evaluate.LARGER] = persona_mode_config(cfg, "none", plan.split.heldout, types_path,
                                                           folder=evaluate.LARGER, model_dir=larger_dir)
        seconds = simulate_each(configs, types_path, simulate)
    return evaluate.score_evaluation(cfg, plan, seconds, t0)


def persona_mode_config(cfg, mode: str, merchants: list[str], types_path: Path, folder: str = "",
                        model_dir: str = ""):
    """The config that simulates persona mode `mode` on the held-out merchants (into simulate/<prefix><folder
    or mode>, with the policy model at `model_dir` when given)."""
    vcfg = copy.deepcopy(cfg)
    vcfg.sim.variant = heldout_variant(cfg, folder or mode)
    vcfg.sim.persona_mode = mode
    vcfg.sim.merchants = list(merchants)
    vcfg.sim.merchant_types = str(types_path)
    if model_dir:
        vcfg.serve.model_dir = model_dir
    return vcfg


# ---- what-if: one population per store variant ---------------------------------------------------

def run_whatif(cfg, simulate: Callable | None = None) -> dict:
    """The what-if stage: simulate the base and every variant on the same agents, then score the paired
    deltas (eval.whatif). Returns the summary. `simulate(cfg)` runs one variant (default: the simulate stage)."""
    t0 = time.time()
    specs = whatif.variant_specs(cfg)
    configs = {name: variant_config(cfg, name, knobs) for name, knobs in specs.items()}
    seconds = simulate_each(configs, whatif_types(cfg), simulate)
    return whatif.score_whatif(cfg, specs, seconds, t0)


def variant_config(cfg, name: str, knobs: dict):
    """A copy of `cfg` that simulates variant `name` (store knobs, or a foreign shop's base_url and
    page_patches) on the what-if population."""
    vcfg = copy.deepcopy(cfg)
    vcfg.sim.variant = name
    merchants = cfg.whatif.merchants
    # merchant ids are strings even where YAML or the command line reads them as numbers
    vcfg.sim.merchants = merchants if isinstance(merchants, int) else [str(m) for m in merchants]
    if cfg.whatif.agents_per_merchant:
        vcfg.sim.agents_per_merchant = cfg.whatif.agents_per_merchant
    if cfg.sim.storefront:  # a foreign shop: another deployment's URL and/or patched pages
        vcfg.sim.base_url = knobs.get("base_url", cfg.sim.base_url)
        vcfg.browser.page_patches = list(cfg.browser.page_patches) + list(knobs.get("page_patches") or ())
    elif knobs:
        vcfg.store.variants[name] = knobs
    return vcfg


def whatif_types(cfg) -> Path | None:
    """The type distribution file the what-if population samples (None: the simulate stage's default)."""
    path = Path(cfg.sim.merchant_types or Path(cfg.run_dir) / "assign" / "merchant_types.parquet")
    return path if path.exists() else None
