"""The whole pipeline: preprocess → vqvae → assign → finetune → evaluate → whatif → report.

Each stage goes through `simpersona.stages.run_stage`, so a stage whose config and inputs are
unchanged since it last finished is skipped, and an interrupted run picks up at the first stage
without a manifest. DIR/pipeline.json records the run: per-stage wall time and whether it was
skipped, the resolved config (credentials redacted), the git revision and package versions.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from simpersona import manifest, storage
from simpersona.runtime import init_ray
from simpersona.stages import STAGES, is_remote, run_lock, run_stage, stage_uri, storage_root
from simpersona.storage import write_json

DEFAULT_STAGES = ["preprocess", "vqvae", "assign", "finetune", "evaluate", "whatif", "report"]
RAY_START_ATTEMPTS = 5  # a local Ray gives its raylet a fixed 30 s to register; a busy box can miss that


def start_ray(cfg: DictConfig) -> None:
    """init_ray, retried when a local Ray's start-up timed out (the message is Ray's own)."""
    import ray

    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            return init_ray(cfg)
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == RAY_START_ATTEMPTS:
                raise
            print(f"[pipeline] Ray start-up timed out (attempt {attempt}/{RAY_START_ATTEMPTS}); retrying",
                  flush=True)
            ray.shutdown()
            time.sleep(5.0 * attempt)


def pipeline_stages(cfg: DictConfig) -> list[str]:
    stages = list(cfg.pipeline.get("stages") or DEFAULT_STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"pipeline.stages: unknown stage(s) {unknown}; known: {list(STAGES)}")
    return stages


def run_pipeline(cfg: DictConfig) -> dict:
    with run_lock(cfg):  # one run at a time on a run_dir, from the first stage to pipeline.json
        return _run_pipeline(cfg)


def _run_pipeline(cfg: DictConfig) -> dict:
    stages = pipeline_stages(cfg)
    start = time.time()
    timings: dict[str, dict] = {}
    for name in stages:
        t0 = time.time()
        print(f"[pipeline] {name} ...", flush=True)
        summary = run_stage(name, cfg, before_run=lambda: start_ray(cfg))  # Ray only when needed
        timings[name] = {"wall_s": round(time.time() - t0, 1), "skipped": bool(summary.get("skipped"))}
        print(f"[pipeline] {name} {'skipped' if summary.get('skipped') else 'done'} "
              f"in {timings[name]['wall_s']} s", flush=True)
    result = {"stages": timings, "wall_s": round(time.time() - start, 1), "report": report_location(cfg),
              "config": manifest.redact(OmegaConf.to_container(cfg, resolve=True)),
              "git_revision": manifest.git_revision(), "packages": manifest.package_versions()}
    write_json(storage.join_uri(storage_root(cfg), "pipeline.json") if is_remote(cfg)
               else str(Path(cfg.run_dir) / "pipeline.json"), result, cfg.data.s3)
    return result


def report_location(cfg: DictConfig) -> str:
    """Where the report went: report.path, else ROOT/report/report.html (absolute, or an s3:// URI)."""
    if cfg.report.path:
        return str(Path(cfg.report.path).resolve())
    if is_remote(cfg):
        return stage_uri(cfg, "report") + "/report.html"
    return str((Path(cfg.run_dir) / "report" / "report.html").resolve())
