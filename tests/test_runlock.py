"""One run per run_dir (simpersona.runlock): a second run fails naming the holder; a dead run's lock is taken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from simpersona import runlock, stages
from simpersona.config import load

HOLDER = """
import sys
from simpersona import runlock
with runlock.hold(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def s3_server():
    from s3_server import MotoS3Server

    with MotoS3Server() as server:
        server.client().create_bucket(Bucket="runs")
        yield server


@pytest.fixture
def other_run(tmp_path):
    """Starts another process holding a run_dir's lock; yields its pid once it holds it."""
    procs = []

    def start(root):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_second_run_on_a_locked_run_dir_fails_in_one_line_naming_the_holder(tmp_path, other_run):
    root = tmp_path / "run"
    holder = other_run(root)
    with pytest.raises(runlock.RunDirLocked) as info:
        with runlock.hold(str(root)):
            pass
    message = str(info.value)
    assert "\n" not in message
    assert f"run_dir {root} is in use by pid {holder.pid} on host {socket.gethostname()} since " in message
    assert str(root / runlock.LOCK_NAME) in message


def test_the_lock_is_released_at_the_end_and_reentrant_within_a_process(tmp_path, other_run):
    root = tmp_path / "run"
    with runlock.hold(str(root)):
        with runlock.hold(str(root)):  # the pipeline holds it while each stage takes it
            assert json.loads((root / runlock.LOCK_NAME).read_text())["pid"] > 0
        assert (root / runlock.LOCK_NAME).exists()
    assert not (root / runlock.LOCK_NAME).exists()
    other_run(root).stdin.close()  # another process can take it now


def test_the_lock_of_a_dead_run_on_this_host_is_taken_over(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (root / runlock.LOCK_NAME).write_text(json.dumps(
        {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "2026-01-01T00:00:00Z"}))
    with runlock.hold(str(root)):
        assert json.loads((root / runlock.LOCK_NAME).read_text())["pid"] != int(dead.stdout)


def test_a_lock_written_by_another_host_is_not_taken_over(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / runlock.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t0"}))
    with pytest.raises(runlock.RunDirLocked, match=f"pid 1 on host elsewhere since t0 .*remove {root}"):
        with runlock.hold(str(root)):
            pass


def test_a_stage_run_on_a_locked_run_dir_leaves_the_live_runs_partial_output(tmp_path, other_run):
    run_dir = tmp_path / "run"
    other_run(run_dir)
    live = run_dir / ".preprocess.partial-live0001"  # the other run's stage output in progress
    live.mkdir()
    cfg = load("pipeline", [f"run_dir={run_dir}"])
    with pytest.raises(runlock.RunDirLocked, match="is in use by pid"):
        stages.run_stage("preprocess", cfg)
    assert live.is_dir()


def test_an_s3_lease_names_its_holder_and_expires(s3_server, monkeypatch):
    monkeypatch.setattr(runlock, "LEASE_SETTLE_S", 0.0)
    s3 = s3_server.s3_config()
    root = "s3://runs/leased"
    with runlock.hold(root, s3):
        lease = json.loads(s3_server.client().get_object(Bucket="runs", Key="leased/.run.lock")["Body"].read())
        runlock._held.clear()  # as if another process: this one's re-entrance does not apply
        try:
            with pytest.raises(runlock.RunDirLocked, match=f"pid {lease['pid']} on host "):
                with runlock.hold(root, s3):
                    pass
        finally:
            runlock._held["s3://runs/leased"] = 1
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket="runs", Prefix="leased/.run.lock")
    expired = {**lease, "pid": 99, "run_id": "gone", "expires": time.time() - 1}
    s3_server.client().put_object(Bucket="runs", Key="leased/.run.lock", Body=json.dumps(expired).encode())
    with runlock.hold(root, s3):  # a lease not renewed in time belongs to a run that is gone
        pass


def test_an_s3_lease_of_a_dead_run_on_this_host_is_taken_over_before_it_expires(s3_server, monkeypatch):
    monkeypatch.setattr(runlock, "LEASE_SETTLE_S", 0.0)
    s3, client = s3_server.s3_config(), s3_server.client()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": "live", "started": "t0",
            "expires": time.time() + 300}
    client.put_object(Bucket="runs", Key="killed/.run.lock", Body=json.dumps({**live, "pid": int(dead.stdout),
                                                                               "run_id": "killed"}).encode())
    with runlock.hold("s3://runs/killed", s3):  # a run killed here and started again here: no 5-minute wait
        lease = json.loads(client.get_object(Bucket="runs", Key="killed/.run.lock")["Body"].read())
        assert lease["pid"] == os.getpid() and lease["run_id"] != "killed"
    for name, holder in [("alive", live), ("elsewhere", {**live, "pid": int(dead.stdout), "host": "elsewhere"})]:
        client.put_object(Bucket="runs", Key=f"{name}/.run.lock", Body=json.dumps(holder).encode())
        with pytest.raises(runlock.RunDirLocked, match=f"on host {holder['host']} "):
            with runlock.hold(f"s3://runs/{name}", s3):
                pass

