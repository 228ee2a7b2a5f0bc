"""The pipeline's stages, what each one reads, and the wrapper that makes a stage skippable.

`run_stage(name, cfg)` computes the stage's manifest (its config sections and the identities of
its inputs), returns the stored summary when the stage already finished with the same manifest,
and otherwise clears the stage's folder, runs the stage's library function and writes the manifest
last (atomically), so an interrupted stage never looks finished and a re-run skips finished ones.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from simpersona import manifest


@dataclass(frozen=True)
class Stage:
    name: str  # also the folder under run_dir
    function: str  # "module:function", called with the resolved config, returns the summary dict
    sections: tuple[str, ...]  # config sections whose values decide the stage's output
    upstream: tuple[str, ...]  # stages whose outputs it reads


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("preprocess", "simpersona.data.pipeline:run_preprocess",
              ("data", "sessions", "features", "traces", "store"), ()),
        Stage("vqvae", "simpersona.vq.train:run_training", ("vq", "eval.holdout"), ("preprocess",)),
        Stage("assign", "simpersona.vq.assign:run_assign", ("vq",), ("preprocess", "vqvae")),
        Stage("finetune", "simpersona.persona.finetune:run_finetune", ("persona", "eval.holdout"),
              ("preprocess", "vqvae", "assign")),
        Stage("evaluate", "simpersona.eval.evaluate:run_evaluation", ("eval", "sim", "serve", "store"),
              ("preprocess", "assign", "finetune")),
        Stage("whatif", "simpersona.eval.whatif:run_whatif", ("whatif", "sim", "serve", "store"),
              ("assign", "finetune")),
        Stage("report", "simpersona.report.html:run_report", ("report",), ("evaluate", "whatif")),
    ]
}


def resolve_function(spec: str) -> Callable[[DictConfig], dict]:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _select(cfg: DictConfig, dotted: str) -> Any:
    value = OmegaConf.select(cfg, dotted)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def stage_dir(cfg: DictConfig, name: str) -> Path:
    return Path(cfg.run_dir) / name


def stage_manifest(cfg: DictConfig, stage: Stage) -> dict[str, Any]:
    sections = {s: _select(cfg, s) for s in stage.sections}
    sections["seed"] = cfg.seed
    inputs: dict[str, str] = {}
    for up in stage.upstream:
        inputs[up] = manifest.digest(stage_dir(cfg, up))
    if stage.name == "preprocess":
        from simpersona.data.io import list_inputs  # raw inputs: fingerprint of the file listing

        listing = list_inputs(cfg.data.input, cfg.data.s3, cfg.data.format)
        uris = [f.uri for f in listing.files]
        inputs["raw"] = manifest.stable_hash([[(f.uri, f.size) for f in listing.files],
                                              manifest.file_fingerprint(uris)])
    return manifest.build(stage.name, sections, inputs)


def run_stage(name: str, cfg: DictConfig, force: bool = False) -> dict[str, Any]:
    stage = STAGES[name]
    out = stage_dir(cfg, name)
    m = stage_manifest(cfg, stage)
    if not force and manifest.is_current(out, m):
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        print(f"[{name}] up to date, skipped ({out})")
        return {**summary, "skipped": True}
    if out.exists():
        shutil.rmtree(out)  # a half-written earlier attempt: start clean
    start = time.time()
    summary = resolve_function(stage.function)(cfg) or {}
    m["wall_s"] = round(time.time() - start, 2)
    manifest.write(out, m)
    return summary
