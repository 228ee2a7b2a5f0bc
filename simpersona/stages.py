"""The pipeline's stages, what each one reads, and the wrapper that makes a stage skippable and atomic.

`run_stage(name, cfg)` computes the stage's manifest (its config sections and the identities of
its inputs) and returns the stored summary when the stage already finished with the same manifest.
Otherwise the stage runs into a fresh temporary sibling `DIR/.<stage>.partial-<id>` (the stage's own
path `DIR/<stage>` is a symlink to it while it runs, so the stage's code writes where it always does),
which is renamed to `DIR/<stage>` only when the stage succeeded; the manifest is written last. So
`DIR/<stage>` holds either the previous complete output or the new complete output, never a mix, an
interrupted stage never looks finished, and a re-run skips the finished ones.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from simpersona import manifest
from simpersona.data import io
from simpersona.runtime import write_summary

PARTIAL = "partial"  # DIR/.<stage>.partial-<id>: a run in progress (or killed)
PREVIOUS = "old"  # DIR/.<stage>.old-<id>: the previous output, moved aside while the stage runs


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
        Stage("evaluate", "simpersona.eval.evaluate:run_evaluation",
              ("eval", "sim", "serve", "store", "browser"), ("preprocess", "assign", "finetune")),
        Stage("whatif", "simpersona.eval.whatif:run_whatif", ("whatif", "sim", "serve", "store", "browser"),
              ("assign", "finetune")),
        Stage("report", "simpersona.report.html:run_report", ("report",), ("assign", "evaluate", "whatif")),
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


def run_stage(name: str, cfg: DictConfig, force: bool = False,
              before_run: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run stage `name` unless it finished before with the same manifest (`force` runs it anyway).

    `before_run()` is called only when the stage does run (the pipeline starts Ray there, so a
    re-run whose stages are all current never starts it)."""
    stage = STAGES[name]
    out = stage_dir(cfg, name)
    if not io.is_s3(str(cfg.run_dir)):
        recover_interrupted(out)
    m = stage_manifest(cfg, stage)
    if not force and manifest.is_current(out, m):
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        print(f"[{name}] up to date, skipped ({out})", flush=True)
        return {**summary, "skipped": True}
    function = resolve_function(stage.function)
    if before_run is not None:
        before_run()
    start = time.time()
    if io.is_s3(str(cfg.run_dir)):  # object stores have no rename: the manifest alone marks completion
        summary = function(cfg) or {}
    else:
        summary = _run_atomically(out, lambda: function(cfg) or {})
    m["wall_s"] = round(time.time() - start, 2)
    manifest.write(out, m)  # last: only now does the stage count as finished
    return summary


def _run_atomically(out: Path, run: Callable[[], dict]) -> dict:
    """Run `run()` with `out` pointing at a fresh temporary sibling; publish it as `out` on success.

    On failure the temporary folder is removed and the previous output (if any) is put back."""
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    partial = out.with_name(f".{out.name}.{PARTIAL}-{token}")
    previous = out.with_name(f".{out.name}.{PREVIOUS}-{token}")
    partial.mkdir()
    if out.exists():
        os.replace(out, previous)
    out.symlink_to(partial.name)  # relative: the run folder may be moved as a whole
    try:
        summary = run()
        if not (partial / "summary.json").exists():  # the contract: every stage has one
            write_summary(str(partial / "summary.json"), summary)
    except BaseException:
        out.unlink()
        shutil.rmtree(partial, ignore_errors=True)
        if previous.exists():
            os.replace(previous, out)
        raise
    out.unlink()
    os.replace(partial, out)
    shutil.rmtree(previous, ignore_errors=True)
    return summary


def recover_interrupted(out: Path) -> None:
    """Undo what a killed run of this stage left: its link and partial folder go, and the output it had
    moved aside comes back (complete, with its own manifest, so it may still be current)."""
    if out.is_symlink():
        out.unlink()
    for partial in out.parent.glob(f".{out.name}.{PARTIAL}-*"):
        shutil.rmtree(partial, ignore_errors=True)
    for previous in sorted(out.parent.glob(f".{out.name}.{PREVIOUS}-*")):
        if out.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(previous, out)
