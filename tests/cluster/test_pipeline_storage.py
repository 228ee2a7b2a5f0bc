"""The smoke pipeline two ways on one local `ray start --head`, with the same seed: one `ray job submit
--working-dir .` per stage script (preprocess ... whatif, the uploaded copy of the project) on a local
run_dir, and `pipeline.py` run by a driver with run_dir on S3 (moto on loopback). The two metrics.json are
equal but for run-specific keys (wall times, folders); the S3 run is re-run from an empty cache (another
machine) and skips every stage; a VQ-VAE training killed on one machine resumes on another from its S3
checkpoint. Then, on the local run, serve_policy.py (the job deploys and ends; the detached app answers on
127.0.0.1). simulate.py's job is tests/sim/test_simulate_job.py (on the same session-wide head).

(`pipeline.py` on a local run_dir is tests/test_pipeline_e2e.py's subject; running it here too, and the
whole pipeline once more as one job, cost three minutes of CI and tested nothing the two runs here miss.)

The pipeline is the smoke config made cheaper (PIPELINE_ARGS), still running every stage: one baseline
instead of four, one what-if merchant, shorter agents and trainings.
"""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pyarrow.fs as pafs
import pytest
from s3_server import free_port

from cluster.conftest import BIN, ROOT, run_job
from cluster.outputs import metrics_results
from cluster.test_job_scripts import _json_line
from cluster.test_jobs import submit
from simpersona.data import io

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(1800)]

STAGES = ["preprocess", "vqvae", "assign", "finetune", "evaluate", "whatif", "report"]
PIPELINE_ARGS = [
    "config=smoke", "progress=false", "seed=3",
    "traces.history_fraction=0.1",
    "vq.train.workers=1", "vq.train.min_steps=10", "vq.train.em_init_steps=5",  # 1 worker: checkpoints on S3
    "persona.model.small.pretrain.max_steps=10", "persona.stage1.max_steps=5", "persona.stage2.max_steps=5",
    "persona.eval.max_steps=40", "persona.eval.rollouts_per_type=1",
    "sim.agents_per_merchant=2", "sim.max_steps=4",
    "eval.baselines=[kmeans]", "eval.bootstrap=50", "eval.ceiling_repeats=1",
    "whatif.merchants=1", "whatif.bootstrap=50",
]
TIMEOUT_S = 900
# the pipeline's stages as their own job scripts, in pipeline order (the report is written by pipeline.py)
STAGE_JOBS = ["preprocess", "vqvae", "assign", "finetune", "evaluate", "whatif"]


def _pipeline(ray_head, *args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    done = run_job(["ray_jobs/pipeline.py", *args, *PIPELINE_ARGS], ray_head.job_env(), timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout, time.perf_counter() - t0


def _s3_args(s3, root: str, cache) -> list[str]:
    c = s3.s3_config()
    return [f"run_dir={root}", f"cache_dir={cache}", f"data.s3.endpoint_url={c.endpoint_url}",
            f"data.s3.region={c.region}", f"data.s3.access_key={c.access_key}", f"data.s3.secret_key={c.secret_key}"]


@pytest.fixture(scope="module")
def local_run(ray_head, tmp_path_factory):
    """The reference: each stage's own script, one `ray job submit` after another on one local run_dir
    (also the finished run that test_serve_policy_job serves from)."""
    local = tmp_path_factory.mktemp("pipeline") / "stagewise"
    t0 = time.perf_counter()
    for script in STAGE_JOBS:
        done = submit(ray_head, [f"ray_jobs/{script}.py", f"run_dir={local}", *PIPELINE_ARGS], timeout=TIMEOUT_S)
        assert done.returncode == 0 and "succeeded" in done.stdout, (script, done.stdout[-3000:] + done.stderr[-3000:])
    return local, time.perf_counter() - t0


def test_stage_jobs_and_an_s3_driver_give_the_same_metrics(ray_head, s3, local_run, tmp_path):
    walls = {}
    local, walls["stage_jobs"] = local_run
    reference = json.loads((local / "evaluate" / "metrics.json").read_text())
    assert (local / "whatif" / "deltas.json").exists()
    assert reference["ara_ceiling"] > 0.0 and len(reference["heldout_merchants"]) == 3

    root = "s3://runs/smoke"
    assert not (ROOT / "s3:").exists()
    out, walls["s3"] = _pipeline(ray_head, *_s3_args(s3, root, tmp_path / "cache"))
    assert not (ROOT / "s3:").exists()  # nothing made in the working folder (a local "s3:/runs/smoke")
    assert out.strip().splitlines()[-1] == f"report: {root}/report/report.html"
    fs, path = io.resolve(root, s3.s3_config())

    def read(key: str) -> bytes:
        with fs.open_input_stream(f"{path}/{key}") as fh:
            return fh.read()

    for stage in STAGES:  # every stage finished on S3: its summary, and its manifest written last
        m = json.loads(read(f"{stage}/manifest.json"))
        assert m["stage"] == stage and json.loads(read(f"{stage}/summary.json"))
    assert json.loads(read("pipeline.json"))["report"] == f"{root}/report/report.html"
    on_s3 = json.loads(read("evaluate/metrics.json"))
    assert metrics_results(on_s3) == metrics_results(reference)
    # the jobs read the bundled data from their uploaded copy: the same input identity as the driver's
    job_pre = json.loads((local / "preprocess" / "manifest.json").read_text())
    driver_pre = json.loads(read("preprocess/manifest.json"))
    assert job_pre["inputs_hash"] == driver_pre["inputs_hash"] and job_pre["sources"] != driver_pre["sources"]

    # another machine (an empty cache) runs the same command again: every stage is current, none runs
    out, walls["s3_rerun"] = _pipeline(ray_head, *_s3_args(s3, root, tmp_path / "other_cache"))
    for stage in STAGES:
        assert f"[{stage}] up to date, skipped" in out, out[-3000:]
    assert not (tmp_path / "other_cache").exists()  # nothing had to be fetched to decide that

    # Ray Train's checkpoints live on the S3 root, not in one machine's cache ...
    on_root = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{path}/checkpoints", recursive=True))]
    # (finetune runs in Ray Train's local mode in this config, which keeps no checkpoints; its S3 checkpoints
    # are tested in tests/persona/test_stages.py)
    assert any("/checkpoints/vqvae/" in p and p.endswith("state.pt") for p in on_root), on_root[:5]
    assert not list((tmp_path / "cache").rglob("checkpoint_*"))
    # ... so a training killed on one machine resumes on another (an empty cache) from its last checkpoint
    t0 = time.perf_counter()
    kill = ["vq.train.name=killed", "vq.train.fail_at_step=6", "vq.train.checkpoint_every=3", "vq.train.max_failures=0"]
    failed = run_job(["ray_jobs/vqvae.py", *_s3_args(s3, root, tmp_path / "machine_a"), *PIPELINE_ARGS, *kill],
                     ray_head.job_env(), timeout=TIMEOUT_S)
    assert failed.returncode != 0 and "injected failure at step 6" in failed.stdout + failed.stderr
    resumed = run_job(["ray_jobs/vqvae.py", *_s3_args(s3, root, tmp_path / "machine_b"), *PIPELINE_ARGS, *kill],
                      ray_head.job_env(), timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    training = json.loads(read("vqvae/summary.json"))["training"]
    assert training["resumed_from_steps"] and training["resumed_from_steps"][0] in (3, 6), training
    assert training["steps"] >= 10
    walls["kill_resume"] = time.perf_counter() - t0
    print("wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))


def test_serve_policy_job(ray_head, local_run):
    """serve_policy.py on a finished run (the stage jobs' reference run). simulate.py's job (every agent
    exactly once, through the Serve policy it deploys) is tests/sim/test_simulate_job.py, on the same head."""
    run_dir, _ = local_run  # a finished run (the stage jobs' reference run) for the job to serve from

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
