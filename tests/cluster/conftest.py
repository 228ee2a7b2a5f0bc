"""Fixtures of the cluster tests: one clean preprocess run that the other runs must equal, moto's S3, and
the credentials the leak test looks for. The local `ray start --head` they run on (`ray_head`) is the
session's one, from tests/conftest.py (tests/local_cluster.py), shared with the simulate job test.

`ray stop` is never used: it kills every Ray on the machine, not only this one.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from local_cluster import BIN, ROOT, RayHead, _cluster_pids, base_env, stop_cluster  # noqa: F401 (re-exported)
from s3_server import MotoS3Server


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
