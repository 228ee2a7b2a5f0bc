"""What every `ray_jobs/<stage>.py` does, in one place: read the job's config from the command line,
join the cluster at RAY_ADDRESS / ray.address or start a local Ray (runtime.init_ray, which checks the
storage root first), run the stage (an s3:// root on a local mirror, uploaded after), print its summary
and where its artifacts went."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

from omegaconf import DictConfig

from simpersona.config import load
from simpersona.runtime import init_ray
from simpersona.stages import is_remote, mirrored, run_job_stage, run_stage, stage_uri


def job_config(job: str, argv: list[str] | None, aliases: dict[str, str] | None = None) -> DictConfig:
    return load(job, sys.argv[1:] if argv is None else argv, aliases=aliases)


def stage_job(stage: str, argv: list[str] | None, artifacts: str, *, keys: Iterable[str] = (),
              drop: Iterable[str] = (), manifest: bool = False, report: bool = False) -> dict:
    """Run `stage` as a job and print its summary (only `keys` when given, without `drop`), then
    `artifacts` formatted with out (the stage's folder or URI), report (the report's) and summary.

    manifest: run through the stage runner on a local root too (partial folder, manifest last), as
    the first stages do; the later ones run their function directly there, so hand-made run folders
    without upstream manifests still work. On a remote root every stage goes through the runner.
    report: write the HTML report after the stage."""
    cfg = job_config(stage, argv)
    if manifest:
        summary = run_stage(stage, cfg, force=True, before_run=lambda: init_ray(cfg))
    else:
        summary = run_job_stage(stage, cfg, lambda: init_ray(cfg))
    report_at = ""
    if report:
        from simpersona.report.html import run_report

        with mirrored(cfg, writes=("report",)) as local:
            written = run_report(local)["report"]
        report_at = f"{stage_uri(cfg, 'report')}/report.html" if is_remote(cfg) else written
    keys, drop = list(keys), set(drop)
    shown = {k: summary[k] for k in keys} if keys else {k: v for k, v in summary.items() if k not in drop}
    print(json.dumps(shown, default=str))  # one line: what a script reading the job's log parses
    print(artifacts.format(out=stage_uri(cfg, stage), report=report_at, summary=summary), flush=True)
    return summary
