"""The storefront's server-side event log: canonical events, crash-safe, rolled into Parquet shards.

Layout of a log folder (one storefront variant):
    wal-<first seq>.jsonl              write-ahead log: one JSON array per event, in seq order
    part-<first seq>-<last seq>.parquet  closed shards (SCHEMA + `variant`), written atomically
    .lock                              held (flock) by the one process writing the folder

Guarantee: `append` returns only after the events' WAL lines were written and fsync'ed, and the
storefront answers a request only after `append` returned. So every event of an answered request
survives a crash of the server process (kill -9) or of the machine's OS page cache. Concurrent
requests share one fsync (group commit). A WAL is rolled into a Parquet shard (tmp file, fsync,
rename, fsync of the folder, then the WAL is deleted) every `shard_rows` events and on close;
after a crash, the next `EventLog.open`, `recover(dir)` or `read_events(dir)` reads the leftover
WAL (a torn last line belongs to a request that was never answered and is dropped).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.data.schema import SCHEMA

LOG_SCHEMA = SCHEMA.append(pa.field("variant", pa.string(), nullable=False))
COLUMNS = tuple(LOG_SCHEMA.names)
SEQ = COLUMNS.index("seq")
EVENT_FIELDS = ("buyer_id", "merchant_id", "event", "product_id", "category", "price", "session_id")


class EventLogError(RuntimeError):
    """The log folder cannot be used (locked by another writer, or a corrupt WAL)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_wal(path: Path) -> list[list]:
    """Rows of a WAL file; a torn (unterminated or unparsable) last line is dropped."""
    rows = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else a torn line
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1 and not tail:
                break  # torn last line that happened to end in "\n" (cannot occur with one write)
            raise EventLogError(f"{path}: line {i + 1} is corrupt (not a torn tail): {line[:80]!r}") from None
    return rows


def _table(rows: list[list]) -> pa.Table:
    cols = list(zip(*rows)) if rows else [[] for _ in COLUMNS]
    arrays = {name: list(col) for name, col in zip(COLUMNS, cols)}
    arrays["ts"] = pa.array(arrays["ts"], pa.int64()).cast(pa.timestamp("ms"))
    return pa.Table.from_pydict(arrays, schema=LOG_SCHEMA)


def _write_shard(directory: Path, rows: list[list]) -> Path:
    first, last = rows[0][SEQ], rows[-1][SEQ]
    final = directory / f"part-{first:012d}-{last:012d}.parquet"
    tmp = directory / f".{final.name}.tmp"
    pq.write_table(_table(rows), tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


def _shard_firsts(directory: Path) -> dict[int, Path]:
    return {int(p.name.split("-")[1]): p for p in directory.glob("part-*.parquet")}


def _recover_unlocked(directory: Path) -> int:
    shards = _shard_firsts(directory)
    recovered = 0
    for wal in sorted(directory.glob("wal-*.jsonl")):
        first = int(wal.stem.split("-")[1])
        if first not in shards:  # else: rolled, the crash came before the WAL was deleted
            rows = _parse_wal(wal)
            if rows:
                _write_shard(directory, rows)
                recovered += len(rows)
        wal.unlink()
        _fsync_dir(directory)
    for tmp in directory.glob(".part-*.tmp"):  # a shard whose rename never happened; its WAL was kept
        tmp.unlink()
    return recovered


def _lock(directory: Path):
    f = open(directory / ".lock", "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise EventLogError(f"event log {directory} is open by another storefront process") from None
    return f


def recover(directory: str | Path) -> int:
    """Roll a crashed writer's WAL files into Parquet shards; returns the number of events recovered."""
    directory = Path(directory)
    if not directory.exists():
        return 0
    lock = _lock(directory)
    try:
        return _recover_unlocked(directory)
    finally:
        lock.close()


def read_events(directory: str | Path) -> pa.Table:
    """Every event in the log, in seq order, including WAL lines not yet rolled (read-only)."""
    directory = Path(directory)
    tables = [pq.read_table(p, schema=LOG_SCHEMA) for p in sorted(directory.glob("part-*.parquet"))]
    rolled = set(_shard_firsts(directory))
    for wal in sorted(directory.glob("wal-*.jsonl")):
        if int(wal.stem.split("-")[1]) not in rolled:
            tables.append(_table(_parse_wal(wal)))
    if not tables:
        return LOG_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by("seq")


class EventLog:
    """Append-only event log of one storefront variant (see the module docstring for the guarantee)."""

    def __init__(self, directory: str | Path, variant: str, shard_rows: int = 20000, fsync: bool = True):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.directory = Path(directory)
        self.variant = str(variant)
        self.shard_rows = int(shard_rows)
        self.fsync = bool(fsync)
        self.next_seq = 0
        self.rows_written = 0
        self._lockfile = None
        self._wal = None
        self._wal_rows: list[list] = []
        self._io = threading.Lock()  # WAL writes and rolls, from the writer thread or append_sync
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[list[list], asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def open(self) -> EventLog:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lockfile = _lock(self.directory)
        _recover_unlocked(self.directory)
        lasts = [int(p.stem.split("-")[2]) for p in self.directory.glob("part-*.parquet")]
        self.next_seq = max(lasts) + 1 if lasts else 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="eventlog")
        return self

    def close(self) -> None:
        """Roll the WAL into a final shard and release the folder."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._io:
            self._roll()
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def __enter__(self) -> EventLog:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing ------------------------------------------------------------------------------
    def _encode(self, events: list[dict]) -> list[list]:
        """Log rows for `events`, with seq and ts assigned now (so seq order = call order)."""
        ts = time.time_ns() // 1_000_000
        rows = []
        for e in events:
            rows.append([e["buyer_id"], e["merchant_id"], ts, self.next_seq, e["event"], e.get("product_id"),
                         e.get("category"), None if e.get("price") is None else float(e["price"]),
                         e.get("session_id"), self.variant])
            self.next_seq += 1
        return rows

    def _write(self, rows: list[list]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows).encode()
        with self._io:
            if self._wal is None:
                self._wal = open(self.directory / f"wal-{rows[0][SEQ]:012d}.jsonl", "ab")
                _fsync_dir(self.directory)
            size = self._wal.tell()
            try:
                self._wal.write(data)
                self._wal.flush()
                if self.fsync:
                    os.fsync(self._wal.fileno())
            except BaseException:  # keep the WAL parseable: no half-written batch before later lines
                self._wal.truncate(size)
                raise
            self._wal_rows.extend(rows)
            self.rows_written += len(rows)
            if len(self._wal_rows) >= self.shard_rows:
                self._roll()

    def _roll(self) -> None:
        if self._wal is None:
            return
        wal_path = Path(self._wal.name)
        self._wal.close()
        self._wal = None
        if self._wal_rows:
            _write_shard(self.directory, self._wal_rows)
        self._wal_rows = []
        wal_path.unlink()
        _fsync_dir(self.directory)

    def append_sync(self, events: list[dict]) -> list[int]:
        """Write `events` durably from synchronous code; returns their seqs."""
        if self._lockfile is None:
            raise EventLogError(f"event log {self.directory} is not open")
        if not events:
            return []
        rows = self._encode(events)
        self._write(rows)
        return [r[SEQ] for r in rows]

    async def append(self, events: list[dict]) -> list[int]:
        """Write `events` durably; concurrent callers share one write + fsync (group commit)."""
        if self._lockfile is None or self._pool is None:
            raise EventLogError(f"event log {self.directory} is not open")
        if not events:
            return []
        rows = self._encode(events)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((rows, fut))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        await fut
        return [r[SEQ] for r in rows]

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                rows = [row for rs, _ in batch for row in rs]
                try:
                    await loop.run_in_executor(self._pool, self._write, rows)
                except Exception as exc:  # the requests of this batch fail; nothing is acknowledged
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(EventLogError(f"event log write failed: {exc}"))
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._drainer = None
