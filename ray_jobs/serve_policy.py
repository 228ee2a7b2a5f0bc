"""Deploy the persona policy as a Ray Serve app for outside clients (run command: configs/serve_policy.yaml).

    python ray_jobs/serve_policy.py run_dir=DIR [serve.port=8000] [serve.num_replicas=N] [key=value ...]

On a cluster (RAY_ADDRESS / ray.address) the app keeps running after this script exits (Serve apps are
detached); with a local Ray the script serves until interrupted, since the local Ray ends with it.
"""

from __future__ import annotations

import json
import os

from simpersona.jobs import job_config
from simpersona.runtime import init_ray
from simpersona.serve.app import deploy, model_dir_of


def main(argv: list[str] | None = None) -> str:
    cfg = job_config("serve_policy", argv)
    on_cluster = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    init_ray(cfg)
    s = cfg.serve
    url = f"http://{s.host}:{s.port}{s.route_prefix}"
    print(json.dumps({"app": s.app_name, "url": url, "model_dir": model_dir_of(cfg)}), flush=True)
    deploy(cfg, blocking=not on_cluster)  # returns at once on a cluster; blocks until Ctrl-C locally
    return url


if __name__ == "__main__":
    main()
