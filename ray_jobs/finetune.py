"""Persona tokens + two-stage fine-tuning (run command: configs/finetune.yaml)."""

from __future__ import annotations

import os

# before torch loads OpenMP: busy-waiting threads collapse when the cores are shared (finetune.worker_env)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from simpersona.jobs import stage_job  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return stage_job("finetune", argv, "model: {out}/model  summary: {out}/summary.json",
                     keys=("base_model", "stage1_loss", "stage2_loss", "heldout_acc_persona",
                           "heldout_acc_no_persona", "type_conversion_spearman", "wall_s"))


if __name__ == "__main__":
    main()
