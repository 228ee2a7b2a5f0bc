"""A real local Ray cluster for the cluster tests: `ray start --head` (dashboard on, loopback only) in a
temp dir, stopped by the pids it started; and one clean preprocess run that the other runs must equal.

`ray stop` is never used: it kills every Ray on the machine, not only this one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from s3_server import MotoS3Server, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv: `ray`, and the `python` that jobs on this cluster run


@dataclass
class RayHead:
    address: str  # GCS address for ray.init / RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:<port>: job submission
    temp_dir: Path
    env: dict  # environment for subprocesses that join this cluster

    def job_env(self) -> dict:
        return {**self.env, "RAY_ADDRESS": self.address}


def base_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"  # Ray 2.60's token auth, off on both sides of this local cluster
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.pop("RAY_ADDRESS", None)
    return env


def _cluster_pids(temp_dir: Path) -> list[psutil.Process]:
    """Processes of this cluster: those naming its temp dir, and their descendants."""
    found: dict[int, psutil.Process] = {}
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid not in me and any(str(temp_dir) in arg for arg in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def stop_cluster(temp_dir: Path) -> None:
    procs = _cluster_pids(temp_dir)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> RayHead:
    """`ray start --head` with 2 CPUs, the dashboard (needed for job submission) bound to 127.0.0.1."""
    env = base_env()
    for attempt in range(3):  # on a loaded machine the raylet can miss its registration deadline: retry
        temp_dir = tmp_path_factory.mktemp("rayh")
        port, dash = free_port(), free_port()
        # every port this node listens on is a free one: Ray's fixed defaults (dashboard agent 52365, client
        # server 10001, ...) collide with any other Ray running on the machine
        extra_ports = [f"--{name}={free_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "ray-client-server-port")]
        cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
               f"--temp-dir={temp_dir}", "--disable-usage-stats", *extra_ports]
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as exc:
            done = subprocess.CompletedProcess(cmd, -1, "", f"ray start timed out after {exc.timeout} s")
        if done.returncode == 0:
            break
        stop_cluster(temp_dir)  # whatever this attempt started
        if attempt == 2:
            raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")
    head = RayHead(address=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", temp_dir=temp_dir, env=env)
    try:
        yield head
    finally:
        stop_cluster(temp_dir)


def run_job(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python <args>` from the repo root; the completed process (stdout and stderr captured)."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def clean_preprocess(ray_head, tmp_path_factory) -> Path:
    """The smoke preprocess run by a driver joined to the cluster, untouched: the reference output."""
    run_dir = tmp_path_factory.mktemp("clean")
    t0 = time.perf_counter()
    done = run_job(["ray_jobs/preprocess.py", f"run_dir={run_dir}", "config=smoke", "progress=false"],
                   ray_head.job_env())
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"clean preprocess: {time.perf_counter() - t0:.1f} s")
    return run_dir / "preprocess"


@pytest.fixture(scope="session")
def s3(tmall_csv):
    """moto's S3 server on loopback with buckets `raw` (the bundled Tmall CSV at raw/tmall/) and `runs`."""
    with MotoS3Server() as server:
        client = server.client()
        client.create_bucket(Bucket="raw")
        client.create_bucket(Bucket="runs")
        client.put_object(Bucket="raw", Key=f"tmall/{tmall_csv.name}", Body=tmall_csv.read_bytes())
        yield server


# distinctive values made at run time, so that any copy found by a plain text search came from the run
# (never from this file, which job submission uploads to the cluster with the rest of the checkout)
_RUN = uuid.uuid4().hex
CONFIG_KEY, CONFIG_SECRET = f"AKIACFG{_RUN[:13].upper()}", f"cfgSecret+{_RUN}"
ENV_KEY, ENV_SECRET, ENV_TOKEN = f"AKIAENV{_RUN[13:26].upper()}", f"envSecret+{_RUN}", f"envToken{_RUN[::-1]}"
SECRETS = (CONFIG_KEY, CONFIG_SECRET, ENV_KEY, ENV_SECRET, ENV_TOKEN)


@dataclass
class S3Run:
    done: subprocess.CompletedProcess  # the job's captured stdout/stderr
    run_dir: Path  # local run dir (the stage runner's manifest)
    uri: str  # storage root on S3: the stage's outputs


@pytest.fixture(scope="session")
def s3_preprocess(ray_head, s3, tmp_path_factory) -> S3Run:
    """The smoke preprocess from s3://raw/tmall to storage_path=s3://runs/pre, keys given in the config,
    other keys in the driver's environment (the credentials test looks for all of them)."""
    run_dir = tmp_path_factory.mktemp("s3pre")
    env = {**ray_head.job_env(), "AWS_ACCESS_KEY_ID": ENV_KEY, "AWS_SECRET_ACCESS_KEY": ENV_SECRET,
           "AWS_SESSION_TOKEN": ENV_TOKEN}
    args = ["ray_jobs/preprocess.py", f"run_dir={run_dir}", "storage_path=s3://runs/pre", "config=smoke",
            "data.input=s3://raw/tmall", f"data.s3.endpoint_url={s3.endpoint_url}", "data.s3.region=us-east-1",
            f"data.s3.access_key={CONFIG_KEY}", f"data.s3.secret_key={CONFIG_SECRET}", "progress=false"]
    done = run_job(args, env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return S3Run(done=done, run_dir=run_dir, uri="s3://runs/pre")
