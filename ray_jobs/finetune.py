"""Persona tokens + two-stage fine-tuning (run command: configs/finetune.yaml)."""

from __future__ import annotations

import json
import os
import sys

# before torch loads OpenMP: busy-waiting threads collapse when the cores are shared (finetune.worker_env)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ray

from simpersona.config import load
from simpersona.stages import run_job_stage, stage_uri


def main(argv: list[str] | None = None) -> dict:
    cfg = load("finetune", sys.argv[1:] if argv is None else argv)

    def start_ray() -> None:  # joins RAY_ADDRESS / ray.address when set, else starts a local Ray
        if not ray.is_initialized():
            local = {} if cfg.ray.address else {"num_cpus": cfg.ray.num_cpus or None}
            ray.init(address=cfg.ray.address or None, include_dashboard=cfg.ray.include_dashboard, **local)

    summary = run_job_stage("finetune", cfg, start_ray)  # an s3:// root: on a local mirror, then uploaded
    keys = ("base_model", "stage1_loss", "stage2_loss", "heldout_acc_persona", "heldout_acc_no_persona",
            "type_conversion_spearman", "wall_s")
    print(json.dumps({k: summary[k] for k in keys}))
    out = stage_uri(cfg, "finetune")
    print(f"model: {out}/model  summary: {out}/summary.json")
    return summary


if __name__ == "__main__":
    main()
