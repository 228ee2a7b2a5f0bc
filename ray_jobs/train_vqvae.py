"""Buyer features -> behaviour-aware VQ-VAE (Ray Train) + k-means peer (run command: configs/train_vqvae.yaml)."""

from __future__ import annotations

import json
import sys

from simpersona.config import load
from simpersona.stages import run_stage


def main(argv: list[str] | None = None) -> dict:
    cfg = load("train_vqvae", sys.argv[1:] if argv is None else argv)
    summary = run_stage("vqvae", cfg, force=True)  # starts or joins Ray; writes the manifest last
    print(json.dumps({k: v for k, v in summary.items() if k not in ("phases_s", "latent_space")}, indent=1))
    print(f"artifacts: {summary['out']}  (model/, codebook.npy, metrics.json, summary.json); "
          f"checkpoints: {summary['training']['checkpoints']}")
    return summary


if __name__ == "__main__":
    main()
