"""Faults a cluster brings, injected for real on a local `ray start --head`:

- a Ray worker process SIGKILLed while preprocessing runs: Ray retries its task and the output equals a
  clean run row for row (nothing lost, nothing duplicated);
- the VQ-VAE training job SIGKILLed after a checkpoint: running the same command again resumes from
  that checkpoint's step and finishes the planned steps.

A BrowserWorker killed mid-simulation (every agent exactly once) is tests/sim/test_actors.py
(`test_killing_a_worker_mid_run_completes_every_agent_exactly_once`); the interrupted pipeline re-run
is tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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


# planted features: 3000 histories, 1 worker of 256-row batches, 12 steps per epoch, 6 epochs
TRAIN_ARGS = ["config=vq_planted", "vq.train.workers=1", "vq.train.exclude_heldout=false", "vq.train.epochs=6",
              "vq.train.min_steps=0", "vq.train.batch_size=256", "vq.train.em_init_steps=10",
              "vq.train.checkpoint_every=10", "vq.train.max_failures=0", "vq.eval.max_rows=2000",
              "vq.eval.silhouette_rows=500", "progress=false"]
TOTAL_STEPS = 6 * 12


def _snapshot(run_dir) -> Path:
    """Ray Train's record of the reported checkpoints: a checkpoint folder counts once it is listed here
    (a folder uploaded but not yet recorded when the job dies is not resumed from)."""
    found = sorted((run_dir / "checkpoints" / "vqvae").glob("*/checkpoint_manager_snapshot.json"))
    return found[0] if found else run_dir / "checkpoints" / "vqvae" / "none" / "checkpoint_manager_snapshot.json"


def _latest_step(snapshot: Path) -> int:
    latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
    metrics = latest["metrics"] if isinstance(latest["metrics"], dict) else json.loads(latest["metrics"])
    return int(metrics["step"])


def test_training_job_killed_resumes_from_its_checkpoint(ray_head, tmp_path):
    from testkit.planted_vq import write_planted_features

    run_dir = tmp_path / "train"
    write_planted_features(str(run_dir), histories=3000, n_types=8, merchants=10, rows_per_file=1500, seed=5)
    args = ["ray_jobs/vqvae.py", f"run_dir={run_dir}", *TRAIN_ARGS]
    first = _driver(args, ray_head.job_env())
    deadline = time.monotonic() + 300
    while not _snapshot(run_dir).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, "training ended before a checkpoint was recorded: " + first.communicate()[0][-2000:]
    assert _snapshot(run_dir).exists(), "no checkpoint recorded within 300 s"
    first.send_signal(signal.SIGKILL)  # the driver: its Ray Train controller and workers die with the job
    first.communicate()
    assert not (run_dir / "vqvae" / "summary.json").exists()
    killed_at = _latest_step(_snapshot(run_dir))
    assert 10 <= killed_at < TOTAL_STEPS

    second = _driver(args, ray_head.job_env())
    log, _ = second.communicate(timeout=400)
    assert second.returncode == 0, log[-3000:]
    training = json.loads((run_dir / "vqvae" / "summary.json").read_text())["training"]
    assert training["resumed_from_steps"] == [killed_at], training
    assert training["steps"] == TOTAL_STEPS and training["epochs"] == 6
    print(f"killed after the checkpoint of step {killed_at}; resumed there, finished {TOTAL_STEPS} steps")
