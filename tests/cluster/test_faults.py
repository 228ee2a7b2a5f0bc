"""Faults a cluster brings, injected for real on a local `ray start --head`:

- a Ray worker process SIGKILLed while preprocessing runs: Ray retries its task and the output equals a
  clean run row for row (nothing lost, nothing duplicated).

The VQ-VAE training job SIGKILLed after a checkpoint, and resumed from it on another machine, is
tests/cluster/test_pipeline_storage.py (its checkpoints on an S3 root); a Ray Train worker failing
mid-training, with the group restarted from the last checkpoint, is tests/vq/conftest.py's `trained` run.

A BrowserWorker killed mid-simulation (every agent exactly once) is tests/sim/test_actors.py
(`test_killing_a_worker_mid_run_completes_every_agent_exactly_once`); the interrupted pipeline re-run
is tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from cluster.conftest import ROOT, _cluster_pids
from cluster.outputs import assert_same_output, summary_output

pytestmark = pytest.mark.slow


class WorkerKiller(threading.Thread):
    """SIGKILLs the first worker process of the cluster whose title shows it running `task` (Ray sets a
    worker's process title to `ray::<task name>` while it executes the task)."""

    def __init__(self, head, task: str, poll_s: float = 0.05, timeout_s: float = 240):
        super().__init__(daemon=True)
        self.head, self.task, self.poll_s, self.timeout_s = head, task, poll_s, timeout_s
        self.killed: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            for proc in _cluster_pids(self.head.temp_dir):
                try:
                    title = " ".join(proc.cmdline()).strip()
                    if title.startswith("ray::") and self.task in title:
                        proc.send_signal(signal.SIGKILL)
                        self.killed = f"{proc.pid} {title}"
                        return
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            time.sleep(self.poll_s)


def _driver(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_worker_killed_during_preprocessing_output_equals_clean_run(ray_head, clean_preprocess, tmp_path):
    run_dir = tmp_path / "killed"
    # the history transform is the longest task of the run (about 90% of its time)
    killer = WorkerKiller(ray_head, "_process_buckets")
    killer.start()
    driver = _driver(["ray_jobs/preprocess.py", f"run_dir={run_dir}", "config=smoke", "progress=false"],
                     ray_head.job_env())
    log, _ = driver.communicate(timeout=300)
    killer.stop.set()
    killer.join()
    assert killer.killed, "no worker ran the history transform while the test watched"
    assert driver.returncode == 0, log[-3000:]
    out = run_dir / "preprocess"
    counts = assert_same_output(str(clean_preprocess), str(out))
    assert counts["features"] == 57655 and counts["events"] == 182880
    assert summary_output((out / "summary.json").read_text()) == summary_output(
        (clean_preprocess / "summary.json").read_text())
    print(f"killed {killer.killed}; rows {counts}")
