"""A real local Ray cluster for tests: `ray start --head` (dashboard on, loopback only) in a temp dir,
stopped by the pids it started. tests/conftest.py's session fixture `ray_head` starts one for the whole
suite (the cluster tests and the simulate job test share it: a head costs seconds to start and stop).

`ray stop` is never used: it kills every Ray on the machine, not only this one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
from s3_server import free_port

ROOT = Path(__file__).resolve().parents[1]
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


def start_head(tmp_path_factory) -> RayHead:
    """`ray start --head` with 2 CPUs, the dashboard (needed for job submission) bound to 127.0.0.1, from
    the checkout (a job submitted without --working-dir runs there)."""
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
            done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as exc:
            done = subprocess.CompletedProcess(cmd, -1, "", f"ray start timed out after {exc.timeout} s")
        if done.returncode == 0:
            break
        stop_cluster(temp_dir)  # whatever this attempt started
        if attempt == 2:
            raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")
    return RayHead(address=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", temp_dir=temp_dir, env=env)
