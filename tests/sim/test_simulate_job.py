"""`ray job submit --working-dir . -- python ray_jobs/simulate.py ...` (short aliases) against a local
`ray start --head` (the session's one, `ray_head` in tests/conftest.py): every agent exactly once, through
the Serve policy the job deploys."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cluster.test_jobs import submit

from .simrun import check_exactly_once, make_run_dir

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"agents", "completed", "crashed", "steps", "steps_per_s", "wall_s"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("job"))


def job_args(run_dir: Path, variant: str) -> list[str]:
    return [f"run_dir={run_dir}", "merchants=2", "agents_per_merchant=3", f"variant={variant}", "workers=1",
            "contexts_per_worker=3", "max_steps=6", "sim.worker_cpus=0.5", "serve.replica_cpus=0.5",
            "serve.temperature=2.5", "progress=false"]


def test_ray_job_submit_against_a_local_head(run_dir, ray_head):
    """The README's `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python ...` on the
    session's `ray start --head` (tests/conftest.py, shared with the cluster tests, whose pipeline test
    leaves simulate.py's job to this one)."""
    t0 = time.monotonic()
    job = submit(ray_head, ["ray_jobs/simulate.py", *job_args(run_dir, "job")], timeout=400)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout.lower(), job.stdout[-2000:]
    out = run_dir / "simulate" / "job"
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary["policy"] == "serve"  # actors used a Serve handle
    assert summary["agents"] == 6 and summary["completed"] == 6 and summary["crashed"] == 0
    assert json.dumps(summary) in job.stdout  # the job printed it
    specs = pq.read_table(out / "agents.parquet")  # the aliases reached sim.*
    assert set(specs.column("variant").to_pylist()) == {"job"} and set(specs.column("max_steps").to_pylist()) == {6}
    assert len(set(specs.column("merchant_id").to_pylist())) == 2
    check_exactly_once(out)
    print(f"job took {time.monotonic() - t0:.1f} s: {json.dumps(summary)}")
