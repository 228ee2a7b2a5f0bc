"""Where the bytes live: local paths and s3:// URIs through one pyarrow filesystem, output streams
and Parquet writers, durable local writes, atomic output folders, folder copies.

Every stage writes through here, so that a local path and an `s3://bucket/key` URI behave the same.
Atomic local writes are also durable: a file is fsync'ed before the rename that publishes it and its
folder after, so a machine that loses power after a write returned finds the new file whole (a rename
alone can reach the disk before the file's data does, leaving an empty file under the final name).
Reading inputs (listing, CSV/Parquet/JSON-lines streams) is simpersona/data/io.py's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from simpersona.errors import InputNotFoundError, UnsupportedInputError, first_line
from simpersona.storage_config import S3Config

# ---------------------------------------------------------------------------------------------------
# URIs and filesystems

def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_filesystem(s3cfg: S3Config | None = None) -> pafs.S3FileSystem:
    """An S3FileSystem from S3Config, each empty field falling back to the standard AWS environment."""
    s3cfg = s3cfg or S3Config()
    env = os.environ
    endpoint = s3cfg.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    region = s3cfg.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
    if bool(s3cfg.access_key) != bool(s3cfg.secret_key):
        raise UnsupportedInputError("data.s3: set both access_key and secret_key, or neither")
    if int(s3cfg.max_attempts) < 1:
        raise UnsupportedInputError(f"data.s3.max_attempts must be at least 1, got {s3cfg.max_attempts}")
    return _s3_filesystem(endpoint, region, s3cfg.access_key, s3cfg.secret_key, s3cfg.session_token,
                          bool(s3cfg.allow_http), int(s3cfg.max_attempts))


@functools.lru_cache(maxsize=16)
def _s3_filesystem(
    endpoint: str, region: str, access_key: str, secret_key: str, session_token: str, allow_http: bool,
    max_attempts: int,
) -> pafs.S3FileSystem:
    # One client per distinct setting: every file of a run reuses its connections.
    kwargs: dict = {"region": region or None,
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts)}
    if endpoint:
        # "http://host:port" names its scheme; a bare "host:port" is https unless allow_http.
        if "://" in endpoint:
            parsed = urlparse(endpoint)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise UnsupportedInputError(f"S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
            kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
        else:
            kwargs.update(endpoint_override=endpoint, scheme="http" if allow_http else "https")
    elif allow_http:
        kwargs["scheme"] = "http"
    # Explicit keys win; otherwise pyarrow walks the AWS chain (env vars, ~/.aws, instance role).
    if access_key:
        kwargs.update(access_key=access_key, secret_key=secret_key, session_token=session_token or None)
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, s3cfg: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, a file:// URI or an s3://bucket/key URI."""
    uri = str(uri).strip()
    if not uri:
        raise UnsupportedInputError("empty path: set data.input to a file, folder, glob or s3:// URI")
    if is_s3(uri):
        path = uri[len("s3://") :].strip("/")
        if not path:
            raise UnsupportedInputError(f"no bucket in {uri!r}: expected s3://bucket/key")
        return s3_filesystem(s3cfg), path
    scheme = urlparse(uri).scheme
    if scheme == "file":
        uri = urlparse(uri).path
    elif "://" in uri:
        raise UnsupportedInputError(
            f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path or s3://"
        )
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    """The URI a user would write for `path` on `fs` (used in messages and the quarantine `source`)."""
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def join_uri(base: str, *parts: str) -> str:
    """`base/part/...` for local paths and s3:// URIs alike."""
    return "/".join([str(base).rstrip("/")] + [p.strip("/") for p in parts])

def file_info(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as exc:  # S3: no such bucket, access denied, endpoint unreachable
        raise InputNotFoundError(f"cannot access {uri}: {first_line(exc)}") from None


def check_storage_root(uri: str, s3cfg: S3Config | None = None, what: str = "storage_path") -> None:
    """Fail in one line, before any work, when a run's outputs cannot go to `uri` (a local folder or
    s3://bucket/prefix): an unknown scheme, an S3 bucket that does not exist, a local file in the way."""
    if not str(uri).strip():
        raise UnsupportedInputError(f"{what} is empty: set run_dir (or storage_path) to a folder or s3://bucket/prefix")
    try:
        fs, path = resolve(uri, s3cfg)
    except UnsupportedInputError as exc:
        raise UnsupportedInputError(f"{what}: {exc}") from None
    if isinstance(fs, pafs.S3FileSystem):
        bucket = path.split("/", 1)[0]
        if file_info(fs, bucket, f"s3://{bucket}").type == pafs.FileType.NotFound:
            raise InputNotFoundError(f"{what}={uri}: no bucket {bucket!r} at the S3 endpoint (create it first)")
    elif fs.get_file_info(path).type == pafs.FileType.File:
        raise UnsupportedInputError(f"{what}={uri} is a file: expected a folder")


# ---------------------------------------------------------------------------------------------------
# Writers

def _make_parent(fs: pafs.FileSystem, path: str) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(os.path.dirname(path), recursive=True)


def open_output_stream(uri: str, s3cfg: S3Config | None = None) -> pa.NativeFile:
    """A writable stream at `uri` (local parents are created; on S3 the object appears on close)."""
    fs, path = resolve(uri, s3cfg)
    _make_parent(fs, path)
    return fs.open_output_stream(path)


def write_parquet(table: pa.Table, uri: str, s3cfg: S3Config | None = None, **kwargs) -> str:
    """Write `table` as one Parquet file at `uri`; returns the uri."""
    fs, path = resolve(uri, s3cfg)
    _make_parent(fs, path)
    pq.write_table(table, path, filesystem=fs, **kwargs)
    return uri


def parquet_writer(uri: str, schema: pa.Schema, s3cfg: S3Config | None = None) -> pq.ParquetWriter:
    """An incremental ParquetWriter at `uri` (call .write_table per chunk, .close at the end)."""
    fs, path = resolve(uri, s3cfg)
    _make_parent(fs, path)
    return pq.ParquetWriter(path, schema, filesystem=fs)


# ---------------------------------------------------------------------------------------------------
# Durable local writes and atomic output folders

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
    if is_s3(uri):
        with open_output_stream(uri, s3cfg) as f:
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


@contextlib.contextmanager
def atomic_output_dir(uri: str, s3cfg=None) -> Iterator[str]:
    """Yield a folder to write a stage's output into; it replaces `uri` only when the block succeeds.

    Locally the output is written to `<uri>.tmp-<random>` and renamed over `uri` at the end, so a
    crashed run never leaves a half-written stage folder that looks complete. Object stores have no
    rename: on s3:// the old contents are removed first and the output is written in place.
    """
    if is_s3(uri):
        fs, path = resolve(uri, s3cfg)
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
    fs, path = resolve(uri, s3cfg)
    info = fs.get_file_info(path)
    if info.type.name == "Directory":
        fs.delete_dir(path)
    elif info.type.name == "File":
        fs.delete_file(path)


# ---------------------------------------------------------------------------------------------------
# Folder copies between filesystems

COPY_ATTEMPTS = 3  # tries per file copied to or from S3, each after the SDK's own retries of every request
COPY_BACKOFF_S = 0.5


def _retried(call, attempts: int):
    # The SDK retries a 5xx or throttled request, except a GET whose error body overflows the buffer Arrow
    # gave it for the range: that one ends as a non-retryable INTERNAL_FAILURE ("Failed to flush response
    # stream"). Copying a file again is safe: it is written whole each time.
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except OSError:
            if attempt == attempts:
                raise
            time.sleep(COPY_BACKOFF_S * attempt)


def copy_tree(src: str, src_fs: pafs.FileSystem, dst: str, dst_fs: pafs.FileSystem, attempts: int = 1) -> None:
    """Copy a folder file by file; a file whose copy raises OSError is copied again, up to `attempts` times."""
    if _retried(lambda: src_fs.get_file_info(src), attempts).type != pafs.FileType.Directory:
        return
    dst_fs.create_dir(dst, recursive=True)
    selector = pafs.FileSelector(src, recursive=True)
    for info in sorted(_retried(lambda: src_fs.get_file_info(selector), attempts), key=lambda i: i.path):
        target = f"{dst.rstrip('/')}/{info.path[len(src.rstrip('/')):].lstrip('/')}"
        if info.type == pafs.FileType.Directory:
            dst_fs.create_dir(target, recursive=True)
        elif info.type == pafs.FileType.File:
            dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            _retried(lambda i=info, t=target: pafs.copy_files(i.path, t, source_filesystem=src_fs,
                                                               destination_filesystem=dst_fs), attempts)


def _copy_attempts(s3cfg: S3Config | None) -> int:
    return min(COPY_ATTEMPTS, int((s3cfg or S3Config()).max_attempts))


def upload(folder: Path, uri: str, s3cfg=None, replace: bool = True) -> None:
    """Copy a local folder to `uri`; with `replace`, what was there before goes first (no stale files)."""
    fs, path = resolve(uri, s3cfg)
    if replace:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    copy_tree(str(folder), pafs.LocalFileSystem(), path, fs, _copy_attempts(s3cfg) if is_s3(uri) else 1)


# ---------------------------------------------------------------------------------------------------
# Published folders: a run's output replaces the previous one whole, and a killed run is undone

PARTIAL = "partial"  # DIR/.<name>.partial-<id>: a run in progress (or killed)
PREVIOUS = "old"  # DIR/.<name>.old-<id>: the previous output, moved aside while the run goes on
FETCHING = "fetch"  # DIR/.<name>.fetch-<id>: a download in progress


def publish_atomically(out: Path, run):
    """Run `run()` with `out` pointing at a fresh temporary sibling; publish it as `out` on success and
    return what `run` returned.

    `out` is a symlink to the partial folder while `run` goes on, so the code writes where it always
    does. On failure the temporary folder is removed and the previous output (if any) is put back."""
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    partial = out.with_name(f".{out.name}.{PARTIAL}-{token}")
    previous = out.with_name(f".{out.name}.{PREVIOUS}-{token}")
    partial.mkdir()
    if out.exists():
        os.replace(out, previous)
    out.symlink_to(partial.name)  # relative: the run folder may be moved as a whole
    try:
        result = run()
    except BaseException:
        out.unlink()
        shutil.rmtree(partial, ignore_errors=True)
        if previous.exists():
            os.replace(previous, out)
        raise
    out.unlink()
    replace_durably(partial, out)  # on disk before the caller marks it finished (a manifest, next)
    shutil.rmtree(previous, ignore_errors=True)
    return result


def recover_folder(out: Path) -> None:
    """Undo what a killed publish_atomically or fetch_folder of `out` left: its link and partial folder
    go, and the output it had moved aside comes back (complete, so it may still be current)."""
    if out.is_symlink():
        out.unlink()
    for partial in [*out.parent.glob(f".{out.name}.{PARTIAL}-*"), *out.parent.glob(f".{out.name}.{FETCHING}-*")]:
        shutil.rmtree(partial, ignore_errors=True)
    for previous in sorted(out.parent.glob(f".{out.name}.{PREVIOUS}-*")):
        if out.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(previous, out)


def fetch_folder(uri: str, local: Path, marker: str, marker_text: str, s3cfg=None) -> bool:
    """Make `local` a copy of the folder at `uri`, whose file `marker` (e.g. a manifest) reads
    `marker_text`; False when `local` already has that marker (nothing copied).

    The copy lands in a sibling first and replaces `local` only when its own marker still reads
    `marker_text`, so a folder re-written remotely during the copy is never mixed with the old one."""
    recover_folder(local)
    try:
        if (local / marker).read_bytes().decode() == marker_text:
            return False
    except (FileNotFoundError, NotADirectoryError):
        pass
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{FETCHING}-{uuid.uuid4().hex[:8]}")
    fs, path = resolve(uri, s3cfg)
    try:
        copy_tree(path, fs, str(tmp), pafs.LocalFileSystem(), _copy_attempts(s3cfg) if is_s3(uri) else 1)
        try:
            copied = (tmp / marker).read_bytes().decode()
        except FileNotFoundError:
            copied = None
        if copied != marker_text:
            raise RuntimeError(f"{uri} changed while it was being fetched; run again")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(local, ignore_errors=True)
    replace_durably(tmp, local)  # the copy's marker must not outlive the files it vouches for
    return True
