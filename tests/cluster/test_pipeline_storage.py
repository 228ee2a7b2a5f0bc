"""The smoke pipeline with its run_dir on S3 (moto on loopback), run by a driver on one local `ray start
--head`: its metrics.json equals the session's clean local smoke run's (tests/smoke_pipeline.py, same
config and seed) but for run-specific keys (wall times, folders); the S3 run is re-run from an empty cache
(another machine) and skips every stage; a VQ-VAE training killed on one machine resumes on another from
its S3 checkpoint. Then, on the clean local run, serve_policy.py (the job deploys and ends; the detached
app answers on 127.0.0.1). simulate.py's job is tests/sim/test_simulate_job.py (on the same session-wide
head); `ray job submit` of the uploaded checkout is tests/cluster/test_jobs.py's.

(A reference made here of one `ray job submit` per stage script cost about four minutes of CI and
compared nothing that the shared local run does not: every stage script is the same stage function
behind `simpersona.jobs.stage_job`.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pyarrow.fs as pafs
import pytest
from s3_server import free_port

from cluster.conftest import BIN, ROOT, run_job
from cluster.outputs import metrics_results
from cluster.test_job_scripts import _json_line
from cluster.test_jobs import submit
from simpersona import storage

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(1800)]

STAGES = ["preprocess", "vqvae", "assign", "finetune", "evaluate", "whatif", "report"]
PIPELINE_ARGS = ["config=smoke", "progress=false"]  # the clean local run's config (bars change no result)
TIMEOUT_S = 900


def _pipeline(ray_head, *args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    done = run_job(["ray_jobs/pipeline.py", *args, *PIPELINE_ARGS], ray_head.job_env(), timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout, time.perf_counter() - t0


def _s3_args(s3, root: str, cache) -> list[str]:
    c = s3.s3_config()
    return [f"run_dir={root}", f"cache_dir={cache}", f"data.s3.endpoint_url={c.endpoint_url}",
            f"data.s3.region={c.region}", f"data.s3.access_key={c.access_key}", f"data.s3.secret_key={c.secret_key}"]


def test_an_s3_run_dir_gives_the_local_runs_metrics(ray_head, s3, smoke_run, tmp_path):
    walls = {}
    reference = json.loads((smoke_run["run_dir"] / "evaluate" / "metrics.json").read_text())
    assert reference["ara_ceiling"] > 0.0 and len(reference["heldout_merchants"]) == 3

    root = "s3://runs/smoke"
    assert not (ROOT / "s3:").exists()
    out, walls["s3"] = _pipeline(ray_head, *_s3_args(s3, root, tmp_path / "cache"))
    assert not (ROOT / "s3:").exists()  # nothing made in the working folder (a local "s3:/runs/smoke")
    assert out.strip().splitlines()[-1] == f"report: {root}/report/report.html"
    fs, path = storage.resolve(root, s3.s3_config())

    def read(key: str) -> bytes:
        with fs.open_input_stream(f"{path}/{key}") as fh:
            return fh.read()

    for stage in STAGES:  # every stage finished on S3: its summary, and its manifest written last
        m = json.loads(read(f"{stage}/manifest.json"))
        assert m["stage"] == stage and json.loads(read(f"{stage}/summary.json"))
    assert json.loads(read("pipeline.json"))["report"] == f"{root}/report/report.html"
    on_s3 = json.loads(read("evaluate/metrics.json"))
    assert metrics_results(on_s3) == metrics_results(reference)

    # another machine (an empty cache) runs the same command again: every stage is current, none runs
    out, walls["s3_rerun"] = _pipeline(ray_head, *_s3_args(s3, root, tmp_path / "other_cache"))
    for stage in STAGES:
        assert f"[{stage}] up to date, skipped" in out, out[-3000:]
    assert not (tmp_path / "other_cache").exists()  # nothing had to be fetched to decide that

    # a training job SIGKILLed on one machine after a checkpoint resumes on another (an empty cache) from
    # that checkpoint on S3 (one Ray Train worker: the smoke config's local mode keeps no checkpoints)
    t0 = time.perf_counter()
    training_args = [*PIPELINE_ARGS, "vq.train.workers=1", "vq.train.name=killed", "vq.train.epochs=3",
                     "vq.train.checkpoint_every=5", "vq.train.max_failures=0"]
    first = subprocess.Popen([sys.executable, "ray_jobs/vqvae.py", *_s3_args(s3, root, tmp_path / "machine_a"),
                              *training_args], cwd=ROOT, env=ray_head.job_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while _recorded_checkpoint_step(fs, path) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "training ended before a checkpoint was recorded: " + first.communicate()[0][-2000:]
        first.send_signal(signal.SIGKILL)  # the driver: its Ray Train controller and workers die with the job
        first.communicate(timeout=60)
    finally:
        first.kill()
    killed_at = _recorded_checkpoint_step(fs, path)
    assert killed_at is not None and killed_at >= 5, killed_at
    assert not list((tmp_path / "machine_a").rglob("checkpoint_*"))  # on the root, not in that machine's cache
    resumed = run_job(["ray_jobs/vqvae.py", *_s3_args(s3, root, tmp_path / "machine_b"), *training_args],
                      ray_head.job_env(), timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    training = json.loads(read("vqvae/summary.json"))["training"]
    assert training["resumed_from_steps"] == [killed_at], training
    assert training["epochs"] == 3 and training["steps"] > killed_at, training
    walls["kill_resume"] = time.perf_counter() - t0
    print("wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))


def _recorded_checkpoint_step(fs, path: str) -> int | None:
    """The step of the latest checkpoint in Ray Train's record on the root (a checkpoint folder counts once
    it is listed there: one uploaded but not yet recorded when the job dies is not resumed from)."""
    found = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{path}/checkpoints/vqvae", recursive=True,
                                                                allow_not_found=True))
             if i.path.endswith("checkpoint_manager_snapshot.json")]
    if not found:
        return None
    with fs.open_input_stream(sorted(found)[0]) as fh:
        latest = json.loads(fh.read())["latest_checkpoint_result"]
    if not latest:
        return None
    metrics = latest["metrics"] if isinstance(latest["metrics"], dict) else json.loads(latest["metrics"])
    return int(metrics["step"])


def test_serve_policy_job(ray_head, smoke_run):
    """serve_policy.py on a finished run (the session's clean smoke run). simulate.py's job (every agent
    exactly once, through the Serve policy it deploys) is tests/sim/test_simulate_job.py, on the same head."""
    run_dir = smoke_run["run_dir"]

    port = free_port()
    done = submit(ray_head, ["ray_jobs/serve_policy.py", f"run_dir={run_dir}", "config=smoke", f"serve.port={port}"])
    try:
        assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
        url = _json_line(done.stdout, "url")["url"]
        assert url == f"http://127.0.0.1:{port}/policy"
        request = {"persona": 0, "observation": "page: home", "history": [], "allowed": ["search shoes", "leave"],
                   "seed": 1, "step": 0}
        resp = httpx.post(url, json=request, timeout=120)  # the job is over; its app still answers
        assert resp.status_code == 200 and resp.json()["action"] in request["allowed"], resp.text
    finally:
        subprocess.run([str(BIN / "serve"), "shutdown", "-y", "--address", ray_head.dashboard], cwd=ROOT,
                       env=ray_head.env, capture_output=True, timeout=120)
