"""The simulation folders that the evaluation and what-if stages read, and how each is (re)made.

Evaluation runs one population per persona mode on the held-out merchants
(<run_dir>/simulate/<eval.run_prefix><mode>/); what-if runs one population per store variant
(<run_dir>/simulate/<variant>/). Both go through the simulate stage (run_simulation).

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

def heldout_folder(cfg, name: str) -> Path:
    """<run_dir>/simulate/<eval.run_prefix><name>: the evaluation's simulation of persona mode (or
    baseline folder) `name`."""
    return Path(cfg.run_dir) / "simulate" / f"{cfg.eval.run_prefix}{name}"


def persona_mode_config(cfg, mode: str, merchants: list[str], types_path: Path, folder: str = "",
                        model_dir: str = ""):
    """The config that simulates persona mode `mode` on the held-out merchants (into simulate/<prefix><folder
    or mode>, with the policy model at `model_dir` when given)."""
    vcfg = copy.deepcopy(cfg)
    vcfg.sim.variant = f"{cfg.eval.run_prefix}{folder or mode}"
    vcfg.sim.persona_mode = mode
    vcfg.sim.merchants = list(merchants)
    vcfg.sim.merchant_types = str(types_path)
    if model_dir:
        vcfg.serve.model_dir = model_dir
    return vcfg


# ---- what-if: one population per store variant ---------------------------------------------------

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
