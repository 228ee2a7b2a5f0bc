"""`ray job submit -- python ray_jobs/simulate.py ...` (short aliases) against a local `ray start --head`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_ray_under(temp_dir: str) -> None:
    """Stop only the Ray processes of this test's head (`ray stop` would stop every Ray on the box)."""
    mine = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    procs = {p.pid: p for p in mine}
    for p in mine:
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    for p in procs.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def test_ray_job_submit_against_a_local_head(run_dir):
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="spjob", dir="/tmp")  # short: Ray's socket paths are length-limited
    dash = free_port()
    start = [f"{venv_bin}/ray", "start", "--head", f"--port={free_port()}", "--num-cpus=2",
             f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
    try:
        subprocess.run(start, env=env, cwd=ROOT, check=True, capture_output=True, timeout=180)
        t0 = time.monotonic()
        job = subprocess.run(
            [f"{venv_bin}/ray", "job", "submit", f"--address=http://127.0.0.1:{dash}", "--",
             "python", "ray_jobs/simulate.py", *job_args(run_dir, "job")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout.lower(), job.stdout[-2000:]
    finally:
        stop_ray_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
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
