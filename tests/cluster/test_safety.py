"""Safe defaults: network services listen on loopback unless configured otherwise; credentials never reach
a log, summary, manifest or output; bad user-given paths and URIs stop with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from cluster.conftest import ROOT, SECRETS, run_job
from simpersona import storage
from simpersona.config import load
from simpersona.data import io
from simpersona.storage_config import S3Config


def _listening(proc: psutil.Process) -> set[tuple[str, int]]:
    out = set()
    for p in [proc, *proc.children(recursive=True)]:
        try:
            out |= {(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp") if c.status == "LISTEN"}
        except psutil.NoSuchProcess:
            continue
    return out


def test_defaults_bind_loopback():
    cfg = load("simulate", [])
    assert cfg.store.host == "127.0.0.1" and cfg.serve.host == "127.0.0.1"
    assert cfg.ray.dashboard_host == "127.0.0.1" and not cfg.ray.include_dashboard
    assert load("serve_policy", []).serve.host == "127.0.0.1"


@pytest.mark.slow
def test_storefront_listens_on_loopback_only(tmp_path):
    from simpersona.store.server import StoreServer

    with StoreServer(load("simulate", []), log_dir=tmp_path / "events", merchants=["m1"]) as server:
        sockets = _listening(psutil.Process(server.pid))
    assert sockets == {("127.0.0.1", server.port)}, sockets


def test_dashboard_of_the_documented_head_listens_on_loopback(ray_head):
    port = int(ray_head.dashboard.rsplit(":", 1)[1])
    hosts = {c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert hosts == {"127.0.0.1"}, hosts


@pytest.mark.slow
def test_local_ray_dashboard_listens_on_loopback(tmp_path):
    """init_ray with the dashboard switched on (a local Ray): its HTTP port binds 127.0.0.1."""
    code = (
        "import json, psutil, ray\n"
        "from simpersona.config import load\n"
        "from simpersona.runtime import init_ray\n"
        f"init_ray(load('preprocess', ['run_dir={tmp_path}', 'ray.include_dashboard=true', 'ray.num_cpus=1']))\n"
        "url = ray._private.worker.global_worker.node.webui_url\n"  # host:port of this Ray's dashboard
        "port = int(url.rsplit(':', 1)[1])\n"
        "hosts = sorted({c.laddr.ip for c in psutil.net_connections('tcp') if c.status == 'LISTEN' and c.laddr.port == port})\n"
        "print('DASHBOARD', url, json.dumps(hosts))\n"
        "ray.shutdown()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("DASHBOARD")), None)
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    _, url, hosts = line.split(" ", 2)
    assert url.startswith("127.0.0.1:") and hosts == '["127.0.0.1"]', line


# --- credentials ------------------------------------------------------------------------------------


def _grep_tree(root, needles) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {n}" for n in needles if n.encode() in data]
    return hits


@pytest.mark.slow
def test_credentials_never_reach_logs_outputs_or_manifests(ray_head, s3, s3_preprocess):
    """Preprocess read s3://raw and wrote s3://runs with keys from the config while other keys sat in the
    driver's environment; no copy of any of them may appear in its stdout/stderr, the cluster's logs
    (raylet, workers, driver), the local run dir (the stage manifest) or any object written to S3."""
    done = s3_preprocess.done
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="runs", Prefix="pre/")["Contents"]]
    assert "pre/preprocess/summary.json" in keys and any(k.startswith("pre/preprocess/features/") for k in keys)
    leaks = [f"captured output: {n}" for n in SECRETS if n in done.stdout + done.stderr]
    leaks += _grep_tree(s3_preprocess.run_dir, SECRETS)
    leaks += _grep_tree(ray_head.temp_dir, SECRETS)
    for key in keys:
        body = client.get_object(Bucket="runs", Key=key)["Body"].read()
        leaks += [f"s3://runs/{key}: {n}" for n in SECRETS if n.encode() in body]
    assert not leaks, leaks
    # the stage runner's manifest lives with the outputs, in the storage root
    manifest = client.get_object(Bucket="runs", Key="pre/preprocess/manifest.json")["Body"].read().decode()
    assert '"secret_key": "***"' in manifest and '"access_key": "***"' in manifest


# --- user-given paths and URIs -----------------------------------------------------------------------


def test_bad_input_paths_fail_with_one_clear_line(tmp_path):
    cases = {
        str(tmp_path / "nope.csv"): f"input not found: {tmp_path / 'nope.csv'}",
        "ftp://host/logs/x.csv": "unsupported URI scheme 'ftp' in 'ftp://host/logs/x.csv': use a local path or s3://",
        "s3://": "no bucket in 's3://': expected s3://bucket/key",
    }
    for uri, message in cases.items():
        with pytest.raises(io.DataError) as info:
            io.list_inputs(uri)
        assert str(info.value) == message


def test_missing_bucket_fails_with_one_clear_line(s3):
    cfg: S3Config = s3.s3_config()
    with pytest.raises(io.InputNotFoundError) as info:
        io.list_inputs("s3://nobucket/logs/x.csv", cfg)
    assert str(info.value) == "input not found: s3://nobucket/logs/x.csv"
    with pytest.raises(io.InputNotFoundError) as info:
        io.list_inputs("s3://raw/tmall/missing.csv", cfg)  # the bucket exists, the key does not
    assert str(info.value) == "input not found: s3://raw/tmall/missing.csv"
    with pytest.raises(io.InputNotFoundError) as info:
        storage.check_storage_root("s3://nobucket/run", cfg)
    assert str(info.value) == "storage_path=s3://nobucket/run: no bucket 'nobucket' at the S3 endpoint (create it first)"
    storage.check_storage_root("s3://runs/new/prefix", cfg)  # an existing bucket, a new prefix: fine


def test_bad_storage_roots_fail_with_one_clear_line(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = {
        "ftp://host/runs": "storage_path: unsupported URI scheme 'ftp' in 'ftp://host/runs': use a local path or s3://",
        str(tmp_path / "file"): f"storage_path={tmp_path / 'file'} is a file: expected a folder",
        "": "storage_path is empty: set run_dir (or storage_path) to a folder or s3://bucket/prefix",
    }
    for uri, message in cases.items():
        with pytest.raises(io.DataError) as info:
            storage.check_storage_root(uri)
        assert str(info.value) == message
    storage.check_storage_root(str(tmp_path / "new" / "run"))  # a folder still to be made: fine


@pytest.mark.slow
def test_a_job_with_a_bad_run_dir_stops_before_starting_ray(tmp_path):
    """The stage's entry point ends with one line naming the bad URI, before any Ray start-up, and makes
    nothing: no folder named after the URI (a local "ftp:/host/runs/x") in the working folder."""
    assert not (ROOT / "ftp:").exists()
    done = run_job(["ray_jobs/preprocess.py", "run_dir=ftp://host/runs/x"], dict(os.environ), timeout=120)
    assert not (ROOT / "ftp:").exists()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "simpersona.errors.UnsupportedInputError: storage_path: unsupported URI scheme 'ftp' in "
        "'ftp://host/runs/x': use a local path or s3://")
    assert "Started a local Ray instance" not in done.stdout + done.stderr
