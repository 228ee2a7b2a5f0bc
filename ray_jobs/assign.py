"""Trained VQ-VAE + features -> type per history, merchant type distributions, type profiles (run command: configs/assign.yaml)."""

from __future__ import annotations

from simpersona.jobs import stage_job


def main(argv: list[str] | None = None) -> dict:
    return stage_job("assign", argv, "artifacts: {out}  (types.parquet, merchant_types.parquet, "
                                     "type_profiles.parquet/.json)", manifest=True)


if __name__ == "__main__":
    main()
