"""The whole pipeline: preprocess → vqvae → assign → finetune → evaluate → whatif → report.

Each stage goes through `simpersona.stages.run_stage`, so a stage whose config and inputs are
unchanged since it last finished is skipped, and an interrupted run picks up at the first stage
without a manifest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig

from simpersona.runtime import init_ray
from simpersona.stages import run_stage


def run_pipeline(cfg: DictConfig) -> dict:
    init_ray(cfg)
    start = time.time()
    stages = list(cfg.pipeline.get("stages") or
                  ["preprocess", "vqvae", "assign", "finetune", "evaluate", "whatif", "report"])
    timings: dict[str, dict] = {}
    for name in stages:
        t0 = time.time()
        print(f"[pipeline] {name} ...", flush=True)
        summary = run_stage(name, cfg)
        timings[name] = {"wall_s": round(time.time() - t0, 1), "skipped": bool(summary.get("skipped"))}
        print(f"[pipeline] {name} {'skipped' if summary.get('skipped') else 'done'} "
              f"in {timings[name]['wall_s']} s", flush=True)
    report = Path(cfg.report.path or Path(cfg.run_dir) / "report" / "report.html")
    result = {"stages": timings, "wall_s": round(time.time() - start, 1), "report": str(report.resolve())}
    (Path(cfg.run_dir) / "pipeline.json").write_text(json.dumps(result, indent=2))
    return result
