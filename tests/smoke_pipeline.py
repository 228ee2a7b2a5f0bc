"""`python ray_jobs/pipeline.py run_dir=DIR config=smoke`, exactly as a user runs it, in a session of its own.

The session's one clean smoke run (`smoke_run` in tests/conftest.py) is read by tests/test_pipeline_e2e.py
and is the reference that tests/cluster/test_pipeline_storage.py's S3 run must equal: running the whole
pipeline costs minutes of CI, so no module runs a second clean copy of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PY if VENV_PY.exists() else Path(sys.executable))
RUN_TIMEOUT_S = 900  # ~3 min on an idle 2-core box; several times that when the box is shared
# Credentials every smoke run of this session carries, in its config (S3 keys a local run never uses) and
# its environment (the AWS chain): no file any stage writes and nothing the run prints may hold one
PLANTED_SECRETS = {name: f"planted-{name}-{uuid.uuid4().hex}" for name in ("access_key", "secret_key", "env_secret",
                                                                           "env_token")}


def pipeline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               AWS_SECRET_ACCESS_KEY=PLANTED_SECRETS["env_secret"], AWS_SESSION_TOKEN=PLANTED_SECRETS["env_token"])
    return env


def start_pipeline(run_dir: Path, *overrides: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    """The pipeline in a session of its own, so that what it starts (its local Ray, Chromium) can be ended."""
    command = [PYTHON, "ray_jobs/pipeline.py", f"run_dir={run_dir}", "config=smoke",
               f"data.s3.access_key={PLANTED_SECRETS['access_key']}", f"data.s3.secret_key={PLANTED_SECRETS['secret_key']}",
               *overrides]
    return subprocess.Popen(command, cwd=ROOT, env=pipeline_env(), stdout=stdout, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def end_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_pipeline(run_dir: Path, *overrides: str) -> tuple[str, float]:
    t0 = time.time()
    proc = start_pipeline(run_dir, *overrides)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        end_session(proc)
    assert proc.returncode == 0, f"pipeline failed ({proc.returncode}):\n{out[-6000:]}"
    return out, time.time() - t0
