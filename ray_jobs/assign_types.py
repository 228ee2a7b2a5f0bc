"""Trained VQ-VAE + features -> type per history, merchant type distributions, type profiles (run command: configs/assign_types.yaml)."""

from __future__ import annotations

import json
import sys

from simpersona.config import load
from simpersona.stages import run_stage


def main(argv: list[str] | None = None) -> dict:
    cfg = load("assign_types", sys.argv[1:] if argv is None else argv)
    summary = run_stage("assign", cfg, force=True)  # starts or joins Ray; writes the manifest last
    print(json.dumps(summary, indent=1))
    print(f"artifacts: {summary['out']}  (types.parquet, merchant_types.parquet, type_profiles.parquet/.json)")
    return summary


if __name__ == "__main__":
    main()
