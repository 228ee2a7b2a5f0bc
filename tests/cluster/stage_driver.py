"""A driver for the storage tests: runs stages' library functions in order on one run dir and prints
their summaries as one JSON line (`RESULT {...}`). It joins the cluster at RAY_ADDRESS.

    python tests/cluster/stage_driver.py preprocess,vqvae,assign run_dir=s3://bucket/run config=smoke ...

It calls the stage functions directly, without the stage runner (simpersona.stages, which runs them on a
local mirror of an s3:// root): so the functions' own S3 reads and writes are exercised. The driver's AWS_* variables (endpoint,
region, keys) go to every worker of the job through its runtime env, as on a cluster without instance
roles.
"""

from __future__ import annotations

import json
import os
import sys

import ray

from simpersona.config import load
from simpersona.stages import STAGES, resolve_function


def main(argv: list[str]) -> None:
    names, overrides = argv[0].split(","), argv[1:]
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ray.init(runtime_env={"env_vars": aws} if aws else None)  # joins RAY_ADDRESS; the stages reuse it
    summaries = {}
    for name in names:
        cfg = load(name, overrides)
        summaries[name] = resolve_function(STAGES[name].function)(cfg)
    print("RESULT " + json.dumps(summaries, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
