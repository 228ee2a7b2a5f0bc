"""Held-out storefront evaluation + the HTML report (run command: configs/evaluate.yaml)."""

from __future__ import annotations

import json
import sys

from simpersona.config import load
from simpersona.report.html import run_report
from simpersona.runtime import init_ray
from simpersona.stages import is_remote, mirrored, run_job_stage, stage_uri


def main(argv: list[str] | None = None) -> dict:
    cfg = load("evaluate", sys.argv[1:] if argv is None else argv)
    # joins RAY_ADDRESS / ray.address when set, else starts a local Ray; s3:// roots run on a local mirror
    summary = run_job_stage("evaluate", cfg, lambda: init_ray(cfg))
    with mirrored(cfg, writes=("report",)) as local:
        report = run_report(local)
    print(json.dumps(summary, indent=1))
    if is_remote(cfg):  # where the outputs were uploaded, not the local mirror they were made in
        print(f"metrics: {stage_uri(cfg, 'evaluate')}/metrics.json  report: {stage_uri(cfg, 'report')}/report.html")
    else:
        print(f"metrics: {summary['metrics']}  report: {report['report']}")
    return summary


if __name__ == "__main__":
    main()
