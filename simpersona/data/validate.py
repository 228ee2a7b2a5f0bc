"""Raw input → canonical tables, with every bad row counted, explained and kept.

A row is bad for exactly one reason, the first that applies in REASONS order. Bad rows go to a
quarantine table (QUARANTINE_SCHEMA: the canonical columns as raw source strings, `reason`, `source`
file, `line`), good rows to canonical tables; good + bad == read, always. A run whose bad share passes
`data.max_bad_fraction` stops with a `BadDataError` naming the file, the counts and the first bad rows
— checked while reading (after `data.bad_check_min_rows` rows, so a wrong adapter fails fast) and at
the end.

Entry points
------------
read_canonical(cfg, quarantine_uri, report)   the whole input, streamed: yields canonical tables
read_file_canonical(uri, cfg, seq_base)       one file → (good, quarantine, report), e.g. in a Ray task
iter_file_canonical(uri, cfg, seq_base)       one file, streamed as Chunks
`seq` is `seq_base` + the row's position in its file (bad rows keep their positions), so a reader that
passes each file the number of rows before it gets global positions; a parallel reader can pass
`file_seq_base(index)` instead and keep file order without counting first.
`line` is the 1-based line of a CSV row (header = line 1, one record per line assumed: after a quoted
value spanning lines it counts records) or the 1-based row of a Parquet file.

A file that cannot be read to its end (corrupt, not in data.encoding) is set aside, not fatal: it is
listed in the report's `unreadable_files` with its error (rows read before the error stay), and the run
stops only when such files hold more than data.max_bad_fraction of the input's bytes.
Exact duplicates (a row equal in every source column to an earlier row of its file, data.duplicate_rows)
are found by a 64-bit hash of the row, so two different rows collide with probability ~n^2 / 2^65.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from simpersona.data.adapters import CANONICAL_FIELDS, Adapter, Mapped, get_adapter, parse_iso
from simpersona.data.config import DataConfig
from simpersona.data.io import (  # noqa: F401  (the error family is re-exported from here)
    BadCsvRow,
    CorruptFileError,
    CsvOptions,
    DataError,
    EmptyInputError,
    EncodingError,
    InputFile,
    InputFormatError,
    InputNotFoundError,
    UnsupportedInputError,
    detect_format,
    iter_csv,
    iter_json,
    iter_parquet,
    list_inputs,
    parquet_file,
    read_schema,
)
from simpersona.data.schema import QUARANTINE_SCHEMA, SCHEMA
from simpersona.errors import ConfigError
from simpersona.storage import parquet_writer, resolve

REASONS: tuple[str, ...] = (
    "wrong_column_count",  # CSV line with more or fewer fields than the header
    "missing_buyer_id",
    "missing_merchant_id",
    "missing_timestamp",
    "bad_timestamp",  # present but unparseable or an impossible date
    "ts_out_of_range",  # before data.min_ts or after data.max_ts (epoch zero, a unit mistake, year 2100)
    "missing_event",
    "unknown_event",  # present but not a known event of the source format
    "bad_price",  # present but non-numeric, negative, NaN or infinite
    "duplicate_row",  # equal in every source column to an earlier row of the same file
)
FILE_ERRORS = (CorruptFileError, EncodingError)  # a file that cannot be read to its end: set aside
DUPLICATES = ("auto", "quarantine", "keep")
SEQ_FILE_STRIDE = 1 << 40  # rows per file addressable by file_seq_base (10^12)


class BadDataError(DataError):
    """The share of bad rows passed data.max_bad_fraction."""


def file_seq_base(index: int) -> int:
    """A `seq_base` for the index-th input file that needs no row counts of earlier files."""
    return index * SEQ_FILE_STRIDE


# ---------------------------------------------------------------------------------------------------
# Report


@dataclass
class FileReport:
    rows_read: int = 0
    rows_bad: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class ValidationReport:
    rows_read: int = 0
    rows_bad: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    files: dict[str, FileReport] = field(default_factory=dict)  # per input file, in read order
    skipped_files: list[str] = field(default_factory=list)  # under the input folder, not CSV/Parquet
    filled: dict[str, int] = field(default_factory=dict)  # empty source values given a documented default
    # source rows an adapter leaves out because they are no canonical event (GA4 page_view, begin_checkout;
    # Segment page calls), by source event: counted, not quarantined (they are not errors)
    ignored: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # first bad rows, as quarantine records
    # files that could not be read to their end: uri -> {reason, error, bytes, rows_read}
    unreadable_files: dict[str, dict] = field(default_factory=dict)
    input_bytes: int = 0  # of all input files (0 = not known here: checked where the reports are merged)
    quarantine_uri: str | None = None
    max_examples: int = 3

    @property
    def rows_good(self) -> int:
        return self.rows_read - self.rows_bad

    @property
    def bad_fraction(self) -> float:
        return self.rows_bad / self.rows_read if self.rows_read else 0.0

    @property
    def unreadable_fraction(self) -> float:
        lost = sum(f["bytes"] for f in self.unreadable_files.values())
        return lost / self.input_bytes if self.input_bytes else 0.0

    def add_unreadable(self, source: str, size: int, exc: DataError) -> None:
        """Set aside a file that failed while being read (its rows read before the error are kept)."""
        reason = "encoding" if isinstance(exc, EncodingError) else "corrupt_file"
        rows = self.files.get(source, FileReport()).rows_read
        self.unreadable_files[source] = {"reason": reason, "error": str(exc), "bytes": int(size), "rows_read": rows}
        self.files.setdefault(source, FileReport())

    def add(self, source: str, rows_read: int, quarantine: pa.Table, filled: dict[str, int] | None = None,
            ignored: dict[str, int] | None = None):
        """Count one chunk of `source`: `rows_read` rows, of which `quarantine` are bad."""
        per_file = self.files.setdefault(source, FileReport())
        per_file.rows_read += rows_read
        self.rows_read += rows_read
        for counts, into in ((filled, self.filled), (ignored, self.ignored)):
            for key, n in (counts or {}).items():
                if n:
                    into[key] = into.get(key, 0) + n
        if quarantine.num_rows == 0:
            return
        per_file.rows_bad += quarantine.num_rows
        self.rows_bad += quarantine.num_rows
        counts = pc.value_counts(quarantine.column("reason")).to_pylist()
        for item in counts:
            reason, n = item["values"], item["counts"]
            per_file.bad_by_reason[reason] = per_file.bad_by_reason.get(reason, 0) + n
            self.bad_by_reason[reason] = self.bad_by_reason.get(reason, 0) + n
        room = self.max_examples - len(self.examples)
        if room > 0:
            self.examples.extend(quarantine.slice(0, room).to_pylist())

    def merge(self, other: ValidationReport) -> ValidationReport:
        """Fold in the report of another file (e.g. from a parallel task)."""
        for source, rep in other.files.items():
            mine = self.files.setdefault(source, FileReport())
            mine.rows_read += rep.rows_read
            mine.rows_bad += rep.rows_bad
            for reason, n in rep.bad_by_reason.items():
                mine.bad_by_reason[reason] = mine.bad_by_reason.get(reason, 0) + n
        self.rows_read += other.rows_read
        self.rows_bad += other.rows_bad
        for reason, n in other.bad_by_reason.items():
            self.bad_by_reason[reason] = self.bad_by_reason.get(reason, 0) + n
        for key, n in other.filled.items():
            self.filled[key] = self.filled.get(key, 0) + n
        for key, n in other.ignored.items():
            self.ignored[key] = self.ignored.get(key, 0) + n
        self.unreadable_files.update(other.unreadable_files)
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])
        self.skipped_files.extend(other.skipped_files)
        return self

    def check(self, max_bad_fraction: float, final: bool = True, what: str = "input") -> None:
        """Raise BadDataError when the bad share (of rows, or of bytes in unreadable files) passes the
        limit; at the end also EmptyInputError."""
        if self.unreadable_fraction > max_bad_fraction:
            first, info = next(iter(self.unreadable_files.items()))
            raise BadDataError(
                f"too many unreadable files: {len(self.unreadable_files)} ({self.unreadable_fraction:.2%} of the "
                f"input's {self.input_bytes:,} bytes) > data.max_bad_fraction={max_bad_fraction:g}; first: "
                f"{info['error']}")
        if final and self.rows_read == 0:
            raise EmptyInputError(
                f"input has no data rows: {what} ({len(self.files)} file(s) read, each empty or only a header)"
            )
        if self.rows_read and self.bad_fraction > max_bad_fraction:
            raise BadDataError(self.describe_bad(max_bad_fraction, final))

    def describe_bad(self, max_bad_fraction: float, final: bool = True) -> str:
        worst_file, worst = max(self.files.items(), key=lambda kv: kv[1].rows_bad)
        reasons = ", ".join(
            f"{r}={n:,}" for r, n in sorted(self.bad_by_reason.items(), key=lambda kv: -kv[1])
        )
        examples = "; ".join(_example(e) for e in self.examples)
        where = "" if final else " (stopped early)"
        text = (
            f"too many bad rows{where}: {self.rows_bad:,} of {self.rows_read:,} rows read "
            f"({self.bad_fraction:.2%}) > data.max_bad_fraction={max_bad_fraction:g}; "
            f"most in {worst_file} ({worst.rows_bad:,} bad of {worst.rows_read:,}); "
            f"by reason: {reasons}; first: {examples}"
        )
        return text + (f"; all bad rows in {self.quarantine_uri}" if self.quarantine_uri else "")

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(rows_good=self.rows_good, bad_fraction=self.bad_fraction)
        return out


def _example(record: dict) -> str:
    values = ", ".join(f"{k}={record[k]!r}" for k in CANONICAL_FIELDS if record.get(k) not in (None, ""))
    return f"{record['source']} line {record['line']} {record['reason']} ({values})"


# ---------------------------------------------------------------------------------------------------
# Splitting one mapped batch into good rows and quarantined rows (vectorised)


def _blank(col) -> pa.Array:
    """True where a raw value is null or only whitespace."""
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True)


def ts_bounds(cfg: DataConfig) -> tuple[pa.Scalar | None, pa.Scalar]:
    """(earliest, latest) plausible time of an event: data.min_ts ("" = none) and data.max_ts ("" = a day
    after now)."""
    def parse(text: str, key: str) -> pa.Scalar:
        ts = parse_iso(pa.array([text], pa.string()))[0]
        if not ts.is_valid:
            raise ConfigError(f"data.{key}={text!r} is not an ISO 8601 date or time")
        return ts

    lo = parse(cfg.min_ts, "min_ts") if cfg.min_ts else None
    hi = parse(cfg.max_ts, "max_ts") if cfg.max_ts else pa.scalar(
        int(time.time() * 1000) + 86_400_000, pa.timestamp("ms"))
    return lo, hi


def row_reasons(mapped: Mapped, bounds: tuple | None = None, duplicate: np.ndarray | None = None) -> pa.Array:
    """Per row: the first reason in REASONS that applies, or null for a good row.

    `bounds`: (earliest, latest) time (ts_bounds); `duplicate`: rows that repeat an earlier row."""
    v, raw = mapped.values, mapped.raw
    lo, hi = bounds or (None, None)
    outside = pa.repeat(pa.scalar(False), mapped.num_rows)
    for bound, beyond in ((lo, pc.less), (hi, pc.greater)):
        if bound is not None:
            outside = pc.or_(outside, pc.fill_null(beyond(v["ts"], bound), False))
    price = v["price"]
    price_ok = pc.fill_null(pc.and_(pc.is_finite(price), pc.greater_equal(price, 0.0)), False)
    price_bad = pc.and_(pc.invert(_blank(raw["price"])), pc.invert(price_ok))  # present, not a price >= 0
    checks = [  # in REASONS order
        ("missing_buyer_id", pc.is_null(v["buyer_id"])),
        ("missing_merchant_id", pc.is_null(v["merchant_id"])),
        ("missing_timestamp", _blank(raw["ts"])),
        ("bad_timestamp", pc.is_null(v["ts"])),
        ("ts_out_of_range", outside),
        ("missing_event", _blank(raw["event"])),
        ("unknown_event", pc.is_null(v["event"])),
        ("bad_price", price_bad),
        ("duplicate_row", pa.array(duplicate if duplicate is not None else np.zeros(mapped.num_rows, bool))),
    ]
    reason = pa.nulls(mapped.num_rows, pa.string())
    for name, mask in reversed(checks):  # the earliest reason wins
        reason = pc.if_else(mask, pa.scalar(name, pa.string()), reason)
    return reason


def split_rows(mapped: Mapped, source: str, lines: np.ndarray, seq: np.ndarray, bounds: tuple | None = None,
               duplicate: np.ndarray | None = None) -> tuple[pa.Table, pa.Table]:
    """(good rows in SCHEMA, bad rows in QUARANTINE_SCHEMA) of one mapped batch."""
    reason = row_reasons(mapped, bounds, duplicate)
    bad = pc.is_valid(reason)
    n_bad = pc.sum(bad).as_py() or 0
    seq_arr = pa.array(seq, pa.int64())
    values = dict(mapped.values, seq=seq_arr)
    good = pa.Table.from_arrays([values[f.name] for f in SCHEMA], names=SCHEMA.names)
    if n_bad == 0:
        return good.cast(SCHEMA), QUARANTINE_SCHEMA.empty_table()
    good = good.filter(pc.invert(bad)).cast(SCHEMA)
    raw = dict(mapped.raw, seq=pc.cast(seq_arr, pa.string()))
    cols = [pc.filter(raw[name], bad) for name in SCHEMA.names]
    cols += [
        pc.filter(reason, bad),
        pa.repeat(pa.scalar(source, pa.string()), n_bad),
        pc.filter(pa.array(lines, pa.int64()), bad),
    ]
    return good, pa.Table.from_arrays(cols, schema=QUARANTINE_SCHEMA)


def _malformed_rows(
    rows: list[BadCsvRow], header: list[str], adapter: Adapter, cfg: DataConfig, source: str, seq_base: int
) -> pa.Table:
    """Quarantine records for CSV lines with the wrong number of fields (a rare, per-line path)."""
    fields = []
    for row in rows:  # split as the CSV would, then pad / cut to the header so the adapter can map it
        parsed = next(csv.reader(io.StringIO(row.text), delimiter=cfg.csv_delimiter), [])
        fields.append((parsed + [""] * len(header))[: len(header)])
    table = pa.table({name: pa.array([f[i] for f in fields], pa.string()) for i, name in enumerate(header)})
    raw = adapter.map(table, cfg).raw
    lines = [r.line for r in rows]
    cols = [raw[name] for name in CANONICAL_FIELDS]
    seq = pa.array([None if ln is None else str(seq_base + ln - 2) for ln in lines], pa.string())
    cols.insert(SCHEMA.names.index("seq"), seq)
    n = len(rows)
    cols += [
        pa.repeat(pa.scalar("wrong_column_count", pa.string()), n),
        pa.repeat(pa.scalar(source, pa.string()), n),
        pa.array(lines, pa.int64()),
    ]
    return pa.Table.from_arrays(cols, schema=QUARANTINE_SCHEMA)


# ---------------------------------------------------------------------------------------------------
# One file


@dataclass
class Chunk:
    source: str
    good: pa.Table  # SCHEMA
    quarantine: pa.Table  # QUARANTINE_SCHEMA
    rows_read: int  # good + quarantined rows of this chunk
    filled: dict[str, int]
    ignored: dict[str, int] = field(default_factory=dict)  # source rows outside the canonical vocabulary


def _wrong_delimiter_hint(names: list[str], delimiter: str) -> str:
    if len(names) != 1:
        return ""
    for candidate in (",", ";", "\t", "|"):
        if candidate != delimiter and candidate in names[0]:
            return (
                f"; wrong delimiter? the header is one column containing {candidate!r}: "
                f"set data.csv_delimiter={candidate!r}"
            )
    return ""


def check_columns(names: list[str], adapter: Adapter, cfg: DataConfig, source: str, fmt: str) -> None:
    missing = [c for c in adapter.required_columns(cfg) if c not in names]
    if missing:
        hint = _wrong_delimiter_hint(names, cfg.csv_delimiter) if fmt == "csv" else ""
        raise InputFormatError(
            f"{source}: missing columns {missing} for data.adapter={adapter.name}; found {names}{hint}"
        )


class SeenRows:
    """Hashes of the rows of one file read so far, to find exact repeats; sorted runs merged like an
    LSM tree (a run is merged into the one before it while that one is not bigger), so a file of n rows
    costs O(n log^2 n) and 8 bytes per distinct row."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def repeats(self, hashes: np.ndarray) -> np.ndarray:
        """True for each row whose hash came before (earlier in `hashes` or in an earlier call); adds them."""
        unique, first = np.unique(hashes, return_index=True)
        repeat = np.ones(len(hashes), bool)
        repeat[first] = False
        new = np.ones(len(unique), bool)
        for run in self.runs:
            at = np.searchsorted(run, unique).clip(max=len(run) - 1)
            new &= run[at] != unique
        repeat[first[~new]] = True
        run = unique[new]
        if len(run):
            while self.runs and len(self.runs[-1]) <= len(run):
                run = np.union1d(self.runs.pop(), run)
            self.runs.append(run)
        return repeat


def _row_hashes(batch: pa.Table) -> np.ndarray:
    return pl.from_arrow(batch).hash_rows(seed=0).to_numpy()


def _dedup(cfg: DataConfig, adapter: Adapter) -> bool:
    if cfg.duplicate_rows not in DUPLICATES:
        raise ConfigError(f"data.duplicate_rows={cfg.duplicate_rows!r}: expected one of {', '.join(DUPLICATES)}")
    return cfg.duplicate_rows == "quarantine" or (cfg.duplicate_rows == "auto" and not adapter.day_resolution)


def csv_options(cfg: DataConfig) -> CsvOptions:
    if not cfg.csv_header and not cfg.csv_columns:
        raise ConfigError("data.csv_header=false needs data.csv_columns: the names of the file's columns, in order")
    names = tuple(cfg.csv_columns) if not cfg.csv_header else ()
    return CsvOptions(delimiter=cfg.csv_delimiter, encoding=cfg.encoding, block_bytes=cfg.csv_block_bytes,
                      column_names=names)


def check_data(cfg: DataConfig) -> None:
    """Stop in one line on the driver, before any read task, on data settings the reader would refuse."""
    csv_options(cfg)
    _dedup(cfg, get_adapter(cfg.adapter))
    ts_bounds(cfg)


def _nested_hint(batch: pa.Table, adapter: Adapter, uri: str) -> InputFormatError | None:
    """The one-line error for a file whose columns the adapter cannot read because they are nested."""
    nested = [f"{f.name} ({f.type})" for f in batch.schema if pa.types.is_nested(f.type)]
    if not nested:
        return None
    return InputFormatError(
        f"{uri}: nested column(s) {', '.join(nested)} cannot be read by data.adapter={adapter.name}, which "
        f"maps flat columns; flatten them, map flat columns only (data.columns), or use adapter ga4 / segment "
        f"for those exports")


def iter_file_canonical(
    uri: str, cfg: DataConfig, seq_base: int = 0, fmt: str | None = None
) -> Iterator[Chunk]:
    """Stream one input file as Chunks of canonical good rows and quarantined bad rows."""
    adapter = get_adapter(cfg.adapter)
    fmt = fmt or detect_format(uri, cfg.format)
    if fmt is None:
        raise UnsupportedInputError(f"cannot tell the format of {uri} from its suffix; set data.format")
    fs, path = resolve(uri, cfg.s3)
    opts = csv_options(cfg)
    if fmt == "json" and adapter.json_schema is not None:
        names = adapter.json_schema.names  # the fields it maps; a line without one has it null
    else:
        names = read_schema(InputFile(uri, fmt, 0), cfg.s3, opts)
    if not names:  # a 0-byte CSV: nothing to read, nothing lost (the run-level check catches all-empty input)
        return
    check_columns(names, adapter, cfg, uri, fmt)
    bounds = ts_bounds(cfg)
    seen = SeenRows() if _dedup(cfg, adapter) else None

    header_lines = 1 if fmt == "csv" and not opts.column_names else 0
    pending: list[BadCsvRow] = []  # malformed CSV lines not yet quarantined (the parser reads ahead)
    bad_lines: list[int] = []  # line numbers of all malformed lines so far, to place the good rows
    n_malformed = 0

    def on_bad_row(row: BadCsvRow) -> None:
        nonlocal n_malformed
        n_malformed += 1
        pending.append(row)
        if row.line is None:
            return
        bad_lines.append(row.line)
        # A file whose lines mostly do not split into the header's columns would otherwise pile up
        # here before any chunk reaches the validator's limit check: apply the same limit now.
        seen = row.line - header_lines
        if seen >= cfg.bad_check_min_rows and n_malformed > cfg.max_bad_fraction * seen:
            raise BadDataError(
                f"too many bad rows (stopped early): {n_malformed:,} of the first {seen:,} rows of {uri} "
                f"have the wrong number of fields (> data.max_bad_fraction={cfg.max_bad_fraction:g}); "
                f"e.g. line {row.line}: expected {row.expected} fields, got {row.actual}: {row.text[:120]!r}"
            )

    def flush() -> Chunk:
        rows = pending.copy()
        pending.clear()
        bad = _malformed_rows(rows, names, adapter, cfg, uri, seq_base)
        return Chunk(uri, SCHEMA.empty_table(), bad, len(rows), {})

    if fmt == "csv":
        batches = iter_csv(fs, path, opts, on_bad_row=on_bad_row)
    elif fmt == "json":
        batches = iter_json(fs, path, cfg.csv_block_bytes, adapter.json_schema)
    else:
        batches = iter_parquet(fs, path, cfg.parquet_batch_rows)
    parsed = 0  # rows the parser returned so far (malformed lines excluded)
    emitted = 0  # canonical rows so far, for adapters that map a source row to several (one per item)
    for batch in batches:
        n = batch.num_rows
        # Row positions skip the malformed lines the parser dropped: shift each row by the number of
        # malformed lines before it (sorted line numbers minus their rank = good rows before each).
        j = np.arange(parsed, parsed + n, dtype=np.int64)
        known = np.sort(np.array(bad_lines, np.int64))
        shift = np.searchsorted(known - np.arange(len(known)), j + 1 + header_lines, side="right")
        position = j + shift
        parsed += n
        try:
            mapped = adapter.map(batch, cfg)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise (_nested_hint(batch, adapter, uri) or exc) from None
        duplicate = seen.repeats(_row_hashes(batch)) if seen is not None and n else None
        lines, seq = position + 1 + header_lines, seq_base + position
        if mapped.rows is not None:  # rows of a source row share its line; seq numbers the canonical rows
            lines = lines[mapped.rows]
            seq = seq_base + emitted + np.arange(mapped.num_rows, dtype=np.int64)
            duplicate = duplicate[mapped.rows] if duplicate is not None else None
        emitted += mapped.num_rows
        good, bad = split_rows(mapped, uri, lines, seq, bounds, duplicate)
        yield Chunk(uri, good, bad, mapped.num_rows, mapped.filled, mapped.ignored)
        if pending:
            yield flush()
    if pending:
        yield flush()


def iter_readable(file: InputFile, cfg: DataConfig, seq_base: int, report: ValidationReport) -> Iterator[Chunk]:
    """iter_file_canonical, except that a file failing while it is read (corrupt, not in data.encoding) is
    set aside in `report.unreadable_files` and the input goes on, until such files pass the bad share."""
    try:
        yield from iter_file_canonical(file.uri, cfg, seq_base, file.format)
        return
    except FILE_ERRORS as exc:
        report.add_unreadable(file.uri, file.size, exc)
        if report.unreadable_fraction > cfg.max_bad_fraction and len(report.unreadable_files) == 1:
            raise  # this file alone is more than the bad share: its own one-line error says it best
    report.check(cfg.max_bad_fraction, final=False)  # outside the except: the error is not chained to it


def read_file_canonical(
    uri: str, cfg: DataConfig, seq_base: int = 0
) -> tuple[pa.Table, pa.Table, ValidationReport]:
    """One whole file → (good rows in SCHEMA, bad rows in QUARANTINE_SCHEMA, its report).

    Pure and self-contained (a path and a config in, tables out), so it runs as-is inside a Ray task;
    the caller merges the reports and calls `report.check(cfg.max_bad_fraction)` at the end.
    """
    report = ValidationReport(max_examples=cfg.quarantine_examples)
    goods, bads = [], []
    for chunk in iter_file_canonical(uri, cfg, seq_base):
        report.add(chunk.source, chunk.rows_read, chunk.quarantine, chunk.filled, chunk.ignored)
        goods.append(chunk.good)
        bads.append(chunk.quarantine)
    report.files.setdefault(uri, FileReport())
    good = pa.concat_tables(goods) if goods else SCHEMA.empty_table()
    bad = pa.concat_tables(bads) if bads else QUARANTINE_SCHEMA.empty_table()
    return good, bad, report


# ---------------------------------------------------------------------------------------------------
# The whole input


class Validator:
    """Accumulates chunks: counts them, writes their bad rows to the quarantine Parquet as they come,
    and enforces data.max_bad_fraction (while reading and at the end)."""

    def __init__(
        self, cfg: DataConfig, quarantine_uri: str | None = None, report: ValidationReport | None = None
    ):
        self.cfg = cfg
        self.report = report if report is not None else ValidationReport()
        self.report.max_examples = cfg.quarantine_examples
        self.report.quarantine_uri = quarantine_uri
        self._writer = None
        self._closed = False

    def add(self, chunk: Chunk) -> pa.Table:
        """Count and quarantine one chunk; returns its good rows."""
        self.report.add(chunk.source, chunk.rows_read, chunk.quarantine, chunk.filled, chunk.ignored)
        if chunk.quarantine.num_rows:
            self._write(chunk.quarantine)
        if self.report.rows_read >= self.cfg.bad_check_min_rows:
            self.report.check(self.cfg.max_bad_fraction, final=False)
        return chunk.good

    def _write(self, table: pa.Table) -> None:
        if self.report.quarantine_uri is None:
            return
        if self._writer is None:
            self._writer = parquet_writer(self.report.quarantine_uri, QUARANTINE_SCHEMA, self.cfg.s3)
        self._writer.write_table(table)

    def close(self) -> None:
        """Finish the quarantine file (an empty one when nothing was bad: the artifact always exists)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is None and self.report.quarantine_uri is not None:
            self._writer = parquet_writer(self.report.quarantine_uri, QUARANTINE_SCHEMA, self.cfg.s3)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self, what: str) -> ValidationReport:
        self.close()
        self.report.check(self.cfg.max_bad_fraction, final=True, what=what)
        return self.report


def read_canonical(
    cfg: DataConfig,
    quarantine_uri: str | None = None,
    report: ValidationReport | None = None,
    progress: bool = False,
) -> Iterator[pa.Table]:
    """Stream the whole input (`cfg.input`: file, folder, glob or s3:// URI) as canonical tables.

    Files are read in sorted path order; `seq` is the global row position. Bad rows go to
    `quarantine_uri` (Parquet, local or s3://; always written when given). Pass a `report` to get the
    counts; the generator raises BadDataError / EmptyInputError when the input fails the checks.
    """
    listing = list_inputs(cfg.input, cfg.s3, cfg.format)
    validator = Validator(cfg, quarantine_uri, report)
    validator.report.skipped_files.extend(listing.skipped)
    validator.report.input_bytes = sum(f.size for f in listing.files)
    seq_base = 0
    bar = tqdm(total=len(listing.files), unit="file", desc="read", disable=not progress)
    try:
        for file in listing.files:
            before = validator.report.rows_read
            for chunk in iter_readable(file, cfg, seq_base, validator.report):
                good = validator.add(chunk)
                bar.set_postfix(rows=f"{validator.report.rows_read:,}", bad=f"{validator.report.rows_bad:,}")
                if good.num_rows:
                    yield good
            validator.report.files.setdefault(file.uri, FileReport())
            seq_base += validator.report.rows_read - before
            bar.update(1)
        validator.finish(cfg.input)
    finally:
        bar.close()
        validator.close()
