"""One run at a time per run directory: a lock file (local) or a lease object (s3://) naming its holder.

Two runs on one run_dir would destroy each other: each stage run first clears what a killed run left
(`storage.recover_folder` removes every `.<stage>.partial-*` folder), which for a live run is its
output in progress. So a run holds `<run_dir>/.run.lock` from its first stage to its last, and a second
run fails at once, in one line naming the holder (pid, host, start time).

Local: the file carries an flock, which the kernel drops when its process dies, so the lock of a killed
run (a dead pid on this host) is taken over by the next run. A lock written by another host is never
taken over here (flock does not reach across machines on every shared file system): the message says
to remove the file if that run is gone.

s3://: object stores have no lock, and pyarrow has no conditional PUT, so the lease is best effort: an
object with the holder and an expiry, renewed by a background thread every LEASE_RENEW_S; a lease not
renewed for LEASE_TTL_S belongs to a run that is gone and is taken over, and so, at once, is a lease
whose holder is a dead process of this host (a run killed here and started again here). After writing
its lease a run reads it back once LEASE_SETTLE_S later, so of two runs starting together the one
overwritten fails.
The lock is re-entrant within a process (the pipeline holds it while each of its stages takes it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from simpersona import storage

log = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
LEASE_TTL_S = 300.0  # an S3 lease not renewed for this long belongs to a run that is gone
LEASE_RENEW_S = 60.0
LEASE_SETTLE_S = 1.0  # between writing a lease and reading it back (a concurrent writer's PUT lands first)

_held: dict[str, int] = {}  # roots this process holds, with their nesting depth


class RunDirLocked(RuntimeError):
    """Another run holds the run directory."""


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "run_id": uuid.uuid4().hex[:12],
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _busy(root: str, holder: dict, lock: str, hint: str = "") -> RunDirLocked:
    return RunDirLocked(f"run_dir {root} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                        f"since {holder.get('started', '?')} (lock {lock}): wait for that run to end"
                        f"{hint or ', or use another run_dir'}")


@contextlib.contextmanager
def hold(root: str, s3cfg=None) -> Iterator[None]:
    """Hold the run directory `root` (local or s3://) for the block; RunDirLocked when another run has it."""
    key = str(root).rstrip("/")
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    release = _hold_s3(key, s3cfg) if storage.is_s3(key) else _hold_local(Path(key))
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        release()


def _hold_local(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise _busy(str(folder), holder, str(path)) from None
        try:  # the holder before us may have removed the file between our open and our flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    holder = _parse(os.pread(fd, 4096, 0))
    if holder and holder.get("host") != socket.gethostname():
        os.close(fd)
        raise _busy(str(folder), holder, str(path), f", or remove {path} if that run is gone")
    # empty, or left by a dead process of this host (its flock went with it): ours now
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_me()).encode(), 0)
    os.fsync(fd)

    def release() -> None:
        os.unlink(path)  # while still locked: a run waiting on this inode sees it gone and opens afresh
        os.close(fd)

    return release


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data.decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _read_lease(uri: str, s3cfg) -> dict:
    fs, path = storage.resolve(uri, s3cfg)
    try:
        with fs.open_input_stream(path) as fh:
            return _parse(fh.read())
    except FileNotFoundError:
        return {}


def _write_lease(uri: str, lease: dict, s3cfg) -> None:
    with storage.open_output_stream(uri, s3cfg) as fh:
        fh.write(json.dumps(lease).encode())


def _dead_here(holder: dict) -> bool:
    """The holder is a process of this host that no longer runs (a killed run): its lease is stale at once,
    as the local lock of a dead pid is. (A live process that took the dead one's pid keeps it held.)"""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        pass
    return False


def _hold_s3(root: str, s3cfg):
    uri = storage.join_uri(root, LOCK_NAME)
    holder = _read_lease(uri, s3cfg)
    if holder and float(holder.get("expires", 0)) > time.time() and not _dead_here(holder):
        raise _busy(root, holder, uri, f" (or for its lease to expire, {LEASE_TTL_S:g} s after its last renewal)")
    mine = {**_me(), "expires": time.time() + LEASE_TTL_S}
    _write_lease(uri, mine, s3cfg)
    time.sleep(LEASE_SETTLE_S)
    holder = _read_lease(uri, s3cfg)
    if holder.get("run_id") != mine["run_id"]:
        raise _busy(root, holder, uri)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_RENEW_S):
            try:
                if _read_lease(uri, s3cfg).get("run_id") != mine["run_id"]:
                    log.error("run lease %s was taken over by another run", uri)
                    return
                _write_lease(uri, {**mine, "expires": time.time() + LEASE_TTL_S}, s3cfg)
            except OSError as exc:  # the next renewal tries again; the lease lasts LEASE_TTL_S
                log.warning("run lease %s not renewed: %s", uri, exc)

    thread = threading.Thread(target=renew, name="run-lease", daemon=True)
    thread.start()

    def release() -> None:
        stop.set()
        thread.join()
        if _read_lease(uri, s3cfg).get("run_id") == mine["run_id"]:
            fs, path = storage.resolve(uri, s3cfg)
            fs.delete_file(path)

    return release
