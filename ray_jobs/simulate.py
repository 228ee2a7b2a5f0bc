"""Simulate a variant's buyer population in Chromium (run command: configs/simulate.yaml).

    python ray_jobs/simulate.py run_dir=DIR [merchants=N|[ids]] [agents_per_merchant=N] [variant=NAME]
        [workers=N] [contexts_per_worker=N] [max_steps=N] [key=value ...]
    ray job submit --working-dir . -- python ray_jobs/simulate.py run_dir=DIR ...   (on a cluster)
"""

from __future__ import annotations

import json

from simpersona.jobs import job_config
from simpersona.runtime import init_ray
from simpersona.sim.simulate import run_simulation, variant_dir
from simpersona.stages import mirrored

ALIASES = {k: f"sim.{k}" for k in
           ("merchants", "agents_per_merchant", "variant", "workers", "contexts_per_worker", "max_steps")}


def main(argv: list[str] | None = None) -> dict:
    cfg = job_config("simulate", argv, aliases=ALIASES)
    init_ray(cfg)  # joins RAY_ADDRESS / ray.address when set, else starts a local Ray
    # an s3:// root: run on a local mirror with the finished stages fetched, then upload simulate/
    with mirrored(cfg, reads=("assign", "finetune"), writes=("simulate",)) as local:
        summary = run_simulation(local)
    print(json.dumps(summary))
    print(f"simulation: {variant_dir(cfg) if local is cfg else f'{cfg.storage_path}/simulate/{cfg.sim.variant}'}")
    return summary


if __name__ == "__main__":
    main()
