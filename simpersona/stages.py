"""The pipeline's stages, what each one reads, and the wrapper that makes a stage skippable and atomic.

`run_stage(name, cfg)` computes the stage's manifest (its config sections and the identities of
its inputs) and returns the stored summary when the stage already finished with the same manifest.

Local storage root (run_dir): the stage runs into a fresh temporary sibling `DIR/.<stage>.partial-<id>`
(the stage's own path `DIR/<stage>` is a symlink to it while it runs, so the stage's code writes where
it always does), which is renamed to `DIR/<stage>` only when the stage succeeded; the manifest is
written last. So `DIR/<stage>` holds either the previous complete output or the new complete output,
never a mix, an interrupted stage never looks finished, and a re-run skips the finished ones.
Clearing what a killed run left is safe because a run holds the run directory's lock (simpersona.runlock)
while it runs: a second run on the same run_dir stops in one line naming the holder.

Remote storage root (s3://bucket/prefix, from storage_path or run_dir): object stores have no rename,
so the manifest alone marks completion. The stage's old manifest is deleted before anything of it is
written, its outputs are written, and its manifest is uploaded LAST. The stage itself runs against a
local working mirror of the root (`cache_dir`): the upstream stages' folders are fetched into it
(skipped when the mirror's copy has the remote manifest), the stage runs there exactly as on a local
run_dir (same code, same atomic publish), and its finished folder is uploaded to `ROOT/<stage>/`.
A stage that writes its outputs to `storage_path` itself (preprocess, through Ray Data and the S3
settings of data.s3) streams them to S3 directly. The others get run_dir = storage_path = the mirror,
so their code (and Ray Train's checkpoints) never needs S3 credentials beyond the driver's runner.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from simpersona import manifest, runlock, storage
from simpersona.data import io
from simpersona.storage import write_summary


@dataclass(frozen=True)
class Stage:
    name: str  # also the folder under run_dir
    function: str  # "module:function", called with the resolved config, returns the summary dict
    sections: tuple[str, ...]  # config sections whose values decide the stage's output
    upstream: tuple[str, ...]  # stages whose outputs it reads
    streams: bool = False  # writes its outputs to <storage_path>/<name> itself (s3:// included)
    side: tuple[str, ...] = ()  # folders beside its own that it fills (uploaded with it to a remote root)
    # stages it reads when they have finished and goes without otherwise (the report without a what-if);
    # one that finishes later makes the stage stale, as a changed upstream does
    optional: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("synthetic", "simpersona.data.synthetic:run_synthetic", ("synth",), (), streams=True),
        Stage("preprocess", "simpersona.data.pipeline:run_preprocess",
              ("data", "sessions", "features", "traces", "store"), (), streams=True),
        Stage("vqvae", "simpersona.vq.train:run_training", ("vq", "eval.holdout"), ("preprocess",)),
        Stage("assign", "simpersona.vq.assign:run_assign", ("vq",), ("preprocess", "vqvae")),
        Stage("finetune", "simpersona.persona.job:run", ("persona", "eval.holdout"),
              ("preprocess", "vqvae", "assign")),
        Stage("evaluate", "simpersona.sim.experiments:run_evaluation",
              ("eval", "sim", "serve", "store", "browser"), ("preprocess", "assign", "finetune"),
              side=("simulate",)),
        Stage("whatif", "simpersona.sim.experiments:run_whatif", ("whatif", "sim", "serve", "store", "browser"),
              ("assign", "finetune"), side=("simulate",)),
        Stage("report", "simpersona.report.html:run_report", ("report",), ("assign",),
              optional=("evaluate", "whatif")),
    ]
}


def resolve_function(spec: str) -> Callable[[DictConfig], dict]:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _select(cfg: DictConfig, dotted: str) -> Any:
    value = OmegaConf.select(cfg, dotted)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


# ---------------------------------------------------------------------------------------------------
# Where a stage's output lives


def storage_root(cfg: DictConfig) -> str:
    """The run's storage root: storage_path (which defaults to run_dir)."""
    return str(cfg.get("storage_path") or cfg.run_dir)


def is_remote(cfg: DictConfig) -> bool:
    return storage.is_s3(storage_root(cfg))


def stage_dir(cfg: DictConfig, name: str) -> Path:
    """The stage's local folder: under run_dir (for a remote root, the stage runs with run_dir = mirror)."""
    return Path(cfg.run_dir) / name


def stage_uri(cfg: DictConfig, name: str) -> str:
    """Where the stage's finished output and manifest live: ROOT/<name>, local or s3://."""
    return storage.join_uri(storage_root(cfg), name) if is_remote(cfg) else str(stage_dir(cfg, name))


def mirror_dir(cfg: DictConfig) -> Path:
    """The local working mirror of a remote root: <cache_dir>/<digest of the root URI and its endpoint>."""
    base = Path(cfg.get("cache_dir") or Path(tempfile.gettempdir()) / "simpersona").expanduser()
    where = f"{cfg.data.s3.endpoint_url}|{storage_root(cfg).rstrip('/')}"  # the same bucket name elsewhere differs
    return base.absolute() / hashlib.sha256(where.encode()).hexdigest()[:16]


def run_lock(cfg: DictConfig) -> contextlib.AbstractContextManager:
    """The lock of the folder a run works in (its storage root when remote, else run_dir), taken after a
    bad run_dir/storage_path has stopped in one line; re-entrant, so the pipeline holds it across stages."""
    storage.check_storage_root(storage_root(cfg), cfg.data.s3)
    return runlock.hold(storage_root(cfg) if is_remote(cfg) else str(cfg.run_dir), cfg.data.s3)


def upstream_closure(name: str) -> list[str]:
    """Every stage `name` reads from, directly or through the ones it reads (in pipeline order)."""
    seen: set[str] = set()
    todo = list(STAGES[name].upstream)
    while todo:
        up = todo.pop()
        if up not in seen:
            seen.add(up)
            todo += STAGES[up].upstream
    return [s for s in STAGES if s in seen]


# ---------------------------------------------------------------------------------------------------
# Manifests and the runner


def stage_manifest(cfg: DictConfig, stage: Stage) -> dict[str, Any]:
    sections = {s: _select(cfg, s) for s in stage.sections}
    sections["seed"] = cfg.seed
    inputs: dict[str, str] = {}
    sources: list[str] = []
    for up in stage.upstream:
        inputs[up] = manifest.digest(stage_uri(cfg, up), cfg.data.s3)
        sources.append(stage_uri(cfg, up))
    for up in stage.optional:
        finished = manifest.read(stage_uri(cfg, up), cfg.data.s3) is not None
        inputs[up] = manifest.digest(stage_uri(cfg, up), cfg.data.s3) if finished else "absent"
        sources += [stage_uri(cfg, up)] if finished else []
    if stage.name == "preprocess":
        listing = io.list_inputs(cfg.data.input, cfg.data.s3, cfg.data.format)
        uris = [f.uri for f in listing.files]
        from simpersona.data.transform import resolve_merchant_knobs

        knobs = resolve_merchant_knobs(cfg)  # a synthetic input's merchant knobs shape its traces too
        if knobs is not None:
            uris.append(knobs)
        # content, not location: the same bytes from another folder, machine or bucket are the same input
        inputs["raw"] = manifest.file_fingerprint(uris, cfg.data.s3)
        sources += uris
    return manifest.build(stage.name, sections, inputs, sources)


def run_stage(name: str, cfg: DictConfig, force: bool = False,
              before_run: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run stage `name` unless it finished before with the same manifest (`force` runs it anyway).

    `before_run()` is called only when the stage does run (the pipeline starts Ray there, so a
    re-run whose stages are all current never starts it)."""
    with run_lock(cfg):  # a bad run_dir/storage_path stops here, in one line, before anything is created
        return _run_stage(STAGES[name], cfg, force, before_run)


def _run_stage(stage: Stage, cfg: DictConfig, force: bool, before_run: Callable[[], None] | None) -> dict[str, Any]:
    name = stage.name
    remote = is_remote(cfg)
    out = stage_uri(cfg, name)
    if not remote:
        storage.recover_folder(Path(out))
    m = stage_manifest(cfg, stage)
    if not force and manifest.is_current(out, m, cfg.data.s3):
        summary = _read_json(storage.join_uri(out, "summary.json"), cfg.data.s3)
        print(f"[{name}] up to date, skipped ({out})", flush=True)
        return {**summary, "skipped": True}
    function = resolve_function(stage.function)
    if before_run is not None:
        before_run()
    start = time.time()
    if remote:
        summary = _run_remote(stage, cfg, lambda c: function(c) or {})
    else:
        summary = publish_stage(Path(out), lambda: function(cfg) or {})
    m["wall_s"] = round(time.time() - start, 2)
    manifest.write(out, m, cfg.data.s3)  # last: only now does the stage count as finished
    if remote and not stage.streams:
        manifest.write(stage_dir(_on_mirror(cfg), name), m)  # the mirror's copy is current too
    return summary


def _read_json(uri: str, s3cfg=None) -> dict:
    fs, path = storage.resolve(uri, s3cfg)
    try:
        with fs.open_input_stream(path) as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return {}


def _on_mirror(cfg: DictConfig, streams: bool = False) -> DictConfig:
    """`cfg` with run_dir = the local mirror; storage_path too, unless the stage streams its outputs to
    the remote root itself (then its code is given that root and its S3 settings)."""
    local = copy.deepcopy(cfg)  # a DictConfig's shallow copy shares its value nodes with the original
    local.storage_path = storage_root(cfg) if streams else str(mirror_dir(cfg))
    local.run_dir = str(mirror_dir(cfg))
    # training checkpoints stay on the remote root: another machine (an empty mirror) resumes them
    local.checkpoint_root = cfg.get("checkpoint_root") or storage_root(cfg)
    return local


def _run_remote(stage: Stage, cfg: DictConfig, run: Callable[[DictConfig], dict]) -> dict:
    """Run `stage` for a remote root: fetch its inputs into the mirror, invalidate the remote copy, run,
    upload. The caller uploads the manifest afterwards (last)."""
    s3 = cfg.data.s3
    local = _on_mirror(cfg, stage.streams)
    mirror = Path(local.run_dir)
    for up in upstream_closure(stage.name):
        fetch(cfg, up, mirror)
    for up in stage.optional:
        if manifest.read(stage_uri(cfg, up), s3) is not None:
            fetch(cfg, up, mirror)
    remote = stage_uri(cfg, stage.name)
    manifest.remove(remote, s3)  # from here until the new manifest lands, the stage is unfinished
    if stage.streams:
        return run(local)
    out = mirror / stage.name
    storage.recover_folder(out)
    summary = publish_stage(out, lambda: run(local))
    storage.upload(out, remote, s3)
    for side in stage.side:
        if (mirror / side).is_dir():
            storage.upload(mirror / side, storage.join_uri(storage_root(cfg), side), s3, replace=False)
    return summary


def run_job_stage(name: str, cfg: DictConfig, start_ray: Callable[[], None]) -> dict[str, Any]:
    """A single-stage job (ray_jobs/<stage>.py): on a remote root through run_stage (fetch, run on the
    mirror, upload, manifest last; always run, as a job asks); on a local run_dir the stage's function
    directly, as it always did (hand-made run folders, e.g. planted test data, have no upstream manifests)."""
    if is_remote(cfg):
        return run_stage(name, cfg, force=True, before_run=start_ray)
    with run_lock(cfg):
        start_ray()
        return resolve_function(STAGES[name].function)(cfg) or {}


@contextlib.contextmanager
def mirrored(cfg: DictConfig, reads: tuple[str, ...] = (), writes: tuple[str, ...] = ()) -> Iterator[DictConfig]:
    """For work outside the stage runner (the single-stage jobs' simulate and report): the config to run
    it with. A local root: `cfg` itself. A remote root: `cfg` on the mirror, with the finished stages
    `reads` (and what they read) fetched first and the folders `writes` uploaded after the block."""
    if not is_remote(cfg):
        yield cfg
        return
    local = _on_mirror(cfg)
    mirror = Path(local.run_dir)
    for name in [*upstream_closure_of(reads)]:
        fetch(cfg, name, mirror)
    yield local
    for folder in writes:
        if (mirror / folder).is_dir():
            storage.upload(mirror / folder, storage.join_uri(storage_root(cfg), folder), cfg.data.s3, replace=False)


def upstream_closure_of(names: tuple[str, ...]) -> list[str]:
    wanted = set(names) | {up for n in names for up in upstream_closure(n)}
    return [s for s in STAGES if s in wanted]


def fetch(cfg: DictConfig, name: str, mirror: Path) -> None:
    """Make MIRROR/<name> a copy of the finished remote stage (no-op when it already has its manifest)."""
    remote = stage_uri(cfg, name)
    text = manifest.read_text(remote, cfg.data.s3)
    if text is None:
        raise FileNotFoundError(f"stage output {remote} is not finished (no manifest.json): run stage {name} first")
    if storage.fetch_folder(remote, mirror / name, manifest.FILENAME, text, cfg.data.s3):
        print(f"[{name}] fetched {remote} -> {mirror / name}", flush=True)


def publish_stage(out: Path, run: Callable[[], dict]) -> dict:
    """Run `run()` into a fresh partial folder that replaces `out` only on success
    (storage.publish_atomically); a stage that wrote no summary.json gets its returned summary as one."""
    def run_with_summary() -> dict:
        summary = run()
        if not (out / "summary.json").exists():  # the contract: every stage has one
            write_summary(str(out / "summary.json"), summary)
        return summary

    return storage.publish_atomically(out, run_with_summary)
