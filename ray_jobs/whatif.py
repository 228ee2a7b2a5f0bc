"""What-if experiments: store variants on one agent population (run command: configs/whatif.yaml)."""

from __future__ import annotations

import json
import sys

from simpersona.config import load
from simpersona.eval.whatif import run_whatif
from simpersona.report.html import run_report
from simpersona.runtime import init_ray


def main(argv: list[str] | None = None) -> dict:
    cfg = load("whatif", sys.argv[1:] if argv is None else argv)
    init_ray(cfg)  # joins RAY_ADDRESS / ray.address when set, else starts a local Ray
    summary = run_whatif(cfg)
    report = run_report(cfg)
    print(json.dumps(summary, indent=1))
    print(f"deltas: {summary['deltas']}  report: {report['report']}")
    return summary


if __name__ == "__main__":
    main()
