"""Generate a synthetic clickstream with planted buyer types (run command: configs/synthetic.yaml)."""

from __future__ import annotations

import json
import sys

import ray
from omegaconf import OmegaConf

from simpersona.config import load
from simpersona.data.io import join_uri
from simpersona.data.synthetic import generate


def main(argv: list[str] | None = None) -> dict:
    cfg = load("synthetic", sys.argv[1:] if argv is None else argv)
    out = cfg.synth.out or join_uri(cfg.storage_path, "synthetic")
    if not ray.is_initialized():  # joins RAY_ADDRESS / ray.address when set, else starts a local Ray
        local = {} if cfg.ray.address else {"num_cpus": cfg.ray.num_cpus or None}
        ray.init(address=cfg.ray.address or None, include_dashboard=cfg.ray.include_dashboard, **local)
    summary = generate(cfg.synth, out, progress=cfg.progress, s3=OmegaConf.to_object(cfg.data.s3))
    print(json.dumps(summary))
    print(f"events: {join_uri(out, 'events')}  planted types: {join_uri(out, 'planted')}")
    return summary


if __name__ == "__main__":
    main()
