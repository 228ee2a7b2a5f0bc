"""Every stage in order on one run directory; finished stages whose config and inputs are unchanged
are skipped. Run command: configs/pipeline.yaml (`make demo` runs it with config=demo)."""

from __future__ import annotations

import os

# Before torch loads: OpenMP threads that busy-wait turn a 50 ms training step into seconds when the
# cores are shared (with Chromium, Ray workers, other jobs); stages that train in this process need it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from simpersona.jobs import job_config  # noqa: E402
from simpersona.pipeline import run_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    cfg = job_config("pipeline", argv)
    result = run_pipeline(cfg)
    stages = ", ".join(f"{n} {'skipped' if t['skipped'] else str(t['wall_s']) + ' s'}"
                       for n, t in result["stages"].items())
    print(f"pipeline finished in {result['wall_s']} s ({stages})")
    print(f"report: {result['report']}", flush=True)
    return result


if __name__ == "__main__":
    main()
