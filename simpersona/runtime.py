"""Shared run-time helpers of the stages: Ray start-up, summaries, timing, atomic output folders.

Atomic local writes are also durable: a file is fsync'ed before the rename that publishes it and its folder
after, so a machine that loses power after a write returned finds the new file whole (a rename alone can
reach the disk before the file's data does, leaving an empty file under the final name)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from simpersona.data import io


def init_ray(cfg) -> None:
    """Join the cluster at `ray.address` / RAY_ADDRESS, else start a local Ray (no-op when running).

    `ray.num_cpus` (0 = all cores) applies to a local Ray only; a cluster brings its own resources.
    A local Ray's dashboard (off by default) binds `ray.dashboard_host`, 127.0.0.1 unless configured.
    """
    import ray

    # a bad run_dir/storage_path fails here, in one line, not after Ray started and the stage ran
    io.check_storage_root(cfg.storage_path or cfg.run_dir, cfg.data.s3)
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": cfg.ray.include_dashboard, "log_to_driver": True}
    if address is None:
        kwargs["num_cpus"] = cfg.ray.num_cpus or None
        if cfg.ray.include_dashboard:
            kwargs["dashboard_host"] = cfg.ray.dashboard_host
    ray.init(address=address, **kwargs)


def configure_ray_data(progress: bool) -> None:
    """Ray Data's progress bars on or off, and its chatty per-run logging kept quiet."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    ctx.print_on_execution_start = False


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Every file and folder under `folder` on disk, before a rename publishes the folder as finished."""
    for dirpath, _, filenames in os.walk(folder):  # does not follow links
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_dir(dirpath)


def replace_durably(src: str | Path, dst: str | Path) -> None:
    """os.replace of a written file or folder, with its contents synced first and the rename after."""
    if os.path.isdir(src):
        fsync_tree(src)
    else:
        fsync_file(src)
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def write_json(uri: str | Path, obj: dict, s3cfg=None) -> str:
    """Write `obj` as indented JSON at a local path (atomically: tmp file + rename) or an s3:// URI."""
    uri = str(uri)
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    if io.is_s3(uri):
        with io.open_output_stream(uri, s3cfg) as f:
            f.write(text.encode())
        return uri
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    replace_durably(tmp, path)
    return uri


def write_parquet_durably(table, path: str | Path) -> Path:
    """A local Parquet file written to `.<name>.tmp` beside it, synced, then renamed over `path`: a reader
    sees the whole file or none, after a crash or a power loss (committed_results drops `.*.tmp` leftovers)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    replace_durably(tmp, path)
    return path


def write_summary(uri: str, summary: dict, s3cfg=None) -> str:
    """A stage's summary.json."""
    return write_json(uri, summary, s3cfg)


class Stopwatch:
    """Wall time of a run and of its named phases: `with sw.lap("read"): ...`; `sw.laps`, `sw.total()`."""

    def __init__(self):
        self.start = time.perf_counter()
        self.laps: dict[str, float] = {}

    @contextlib.contextmanager
    def lap(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.laps[name] = round(self.laps.get(name, 0.0) + time.perf_counter() - t0, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


@contextlib.contextmanager
def atomic_output_dir(uri: str, s3cfg=None) -> Iterator[str]:
    """Yield a folder to write a stage's output into; it replaces `uri` only when the block succeeds.

    Locally the output is written to `<uri>.tmp-<random>` and renamed over `uri` at the end, so a
    crashed run never leaves a half-written stage folder that looks complete. Object stores have no
    rename: on s3:// the old contents are removed first and the output is written in place.
    """
    if io.is_s3(uri):
        fs, path = io.resolve(uri, s3cfg)
        fs.create_dir(path, recursive=True)
        fs.delete_dir_contents(path, missing_dir_ok=True)
        yield uri
        return
    final = Path(uri).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield str(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        replace_durably(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        replace_durably(tmp, final)


def remove(uri: str, s3cfg=None) -> None:
    """Delete a file or folder, local or s3:// (missing is fine)."""
    fs, path = io.resolve(uri, s3cfg)
    info = fs.get_file_info(path)
    if info.type.name == "Directory":
        fs.delete_dir(path)
    elif info.type.name == "File":
        fs.delete_file(path)
