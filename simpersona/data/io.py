"""Reading inputs: listing files under a path, glob or s3:// prefix, and streaming CSV/Parquet/JSON-lines
readers (URIs, filesystems and writers are simpersona/storage.py's).

Readers stream: they yield Arrow tables of bounded size per file, so memory does not grow
with the input. CSV columns are read as strings (adapters parse them), so that a bad value becomes a
quarantined row instead of a failed type inference. JSON lines (one object per line, as BigQuery and
Segment export them) are read with the adapter's schema of the fields it maps, other fields ignored.

Input errors are `DataError`s (a `ValueError`) with a one-line message naming the path; the library
exception is folded into that line rather than left as a deep traceback.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from simpersona.errors import (  # noqa: F401  (the error family is re-exported: `except io.DataError`)
    CorruptFileError,
    DataError,
    EmptyInputError,
    EncodingError,
    InputFormatError,
    InputNotFoundError,
    UnsupportedInputError,
    first_line,
)
from simpersona.storage import file_info, resolve, to_uri
from simpersona.storage_config import S3Config

SUFFIX_FORMATS: dict[str, str] = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet",
                                  ".json": "json", ".jsonl": "json", ".ndjson": "json", ".json.gz": "json",
                                  ".jsonl.gz": "json"}
FORMATS: tuple[str, ...] = ("csv", "parquet", "json")
_GLOB_CHARS = re.compile(r"[*?\[]")


# ---------------------------------------------------------------------------------------------------
# Listing inputs


@dataclass(frozen=True)
class InputFile:
    uri: str  # as a user would write it (local absolute path or s3://bucket/key)
    format: str  # csv | parquet
    size: int


@dataclass(frozen=True)
class Listing:
    files: list[InputFile]
    skipped: list[str]  # files seen under a folder but not read (unknown suffix with format=auto)


def detect_format(path: str, fmt: str = "auto") -> str | None:
    """csv | parquet from `fmt`, or from the suffix when fmt is auto (None when the suffix is unknown)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise UnsupportedInputError(f"data.format={fmt!r}: expected auto, csv, parquet or json")
        return fmt
    name = path.lower()
    for suffix, found in sorted(SUFFIX_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return found
    return None


def _glob_regex(pattern: str) -> re.Pattern:
    """`**` crosses folders, `*` and `?` do not; `[...]` as in fnmatch."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _hidden(path: str) -> bool:
    # Spark/Hadoop markers (_SUCCESS, .crc) and dot files are never data.
    return os.path.basename(path).startswith((".", "_"))






def list_inputs(uri: str, s3cfg: S3Config | None = None, fmt: str = "auto") -> Listing:
    """Files to read for `uri` (a file, a folder read recursively, or a glob), sorted by path."""
    fs, path = resolve(uri, s3cfg)
    to = lambda p: to_uri(fs, p)  # noqa: E731
    if _GLOB_CHARS.search(path):
        parts = path.split("/")
        first = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
        base = "/".join(parts[:first]) or "/"
        regex = _glob_regex(path)
        if file_info(fs, base, to(base)).type != pafs.FileType.Directory:
            raise InputNotFoundError(f"input not found: {uri} (no folder {to(base)})")
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        infos = [i for i in infos if i.type == pafs.FileType.File and regex.match(i.path)]
        if not infos:
            raise InputNotFoundError(f"input not found: {uri} (the pattern matches no files)")
    else:
        info = file_info(fs, path, uri)
        if info.type == pafs.FileType.NotFound:
            raise InputNotFoundError(f"input not found: {uri}")
        if info.type == pafs.FileType.File:
            found = detect_format(path, fmt)
            if found is None:
                raise UnsupportedInputError(
                    f"cannot tell the format of {uri} from its suffix (known: {', '.join(SUFFIX_FORMATS)}); "
                    "set data.format=csv or data.format=parquet"
                )
            return Listing([InputFile(uri=to(path), format=found, size=info.size)], [])
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        infos = [i for i in infos if i.type == pafs.FileType.File]
    files, skipped = [], []
    for info in sorted(infos, key=lambda i: i.path):
        found = None if _hidden(info.path) else detect_format(info.path, fmt)
        if found is None:
            skipped.append(to(info.path))
        else:
            files.append(InputFile(uri=to(info.path), format=found, size=info.size))
    if not files:
        raise InputNotFoundError(
            f"input not found: no CSV, Parquet or JSON-lines files under {uri} (suffixes {', '.join(SUFFIX_FORMATS)}"
            f"{'; skipped ' + ', '.join(skipped[:3]) if skipped else ''})"
        )
    return Listing(files, skipped)


# ---------------------------------------------------------------------------------------------------
# Streaming readers


@dataclass
class BadCsvRow:
    """A CSV line the parser could not split into the header's number of columns."""

    line: int | None  # 1-based physical line (header = line 1), None when the parser cannot tell
    text: str
    expected: int
    actual: int


@dataclass
class CsvOptions:
    delimiter: str = ","
    encoding: str = "utf-8"
    block_bytes: int = 2 << 20
    column_names: tuple[str, ...] = ()  # non-empty: the file has no header line, these are its columns


def _read_header(fs: pafs.FileSystem, path: str, uri: str, opts: CsvOptions) -> list[str] | None:
    """Column names from the first line, or `opts.column_names` for a header-less file (None for a
    0-byte file)."""
    # Chunks until the first newline: a header never needs the whole file.
    raw = b""
    try:
        with fs.open_input_stream(path, compression="detect") as stream:
            while b"\n" not in raw:
                chunk = stream.read(1 << 16)
                if not chunk:
                    break
                raw += chunk
    except OSError as exc:
        raise CorruptFileError(f"cannot read {uri}: {first_line(exc)}") from None
    if not raw.strip():
        return None
    if opts.column_names:
        return list(opts.column_names)
    line = raw.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = codecs.decode(line, opts.encoding)
    except UnicodeDecodeError as exc:
        raise EncodingError(
            f"{uri}: header line is not valid {opts.encoding} ({exc.reason} at byte {exc.start}); "
            "set data.encoding to the file's encoding (e.g. latin-1)"
        ) from None
    except LookupError:
        raise UnsupportedInputError(f"data.encoding={opts.encoding!r} is not a known encoding") from None
    text = text.lstrip("\ufeff")  # a UTF-8 byte-order mark is not part of the first column's name
    return next(csv.reader(io.StringIO(text), delimiter=opts.delimiter))


def iter_csv(
    fs: pafs.FileSystem,
    path: str,
    opts: CsvOptions,
    on_bad_row: Callable[[BadCsvRow], None] | None = None,
) -> Iterator[pa.Table]:
    """Tables of string columns, one per block of about `opts.block_bytes` of text.

    Lines with the wrong number of fields go to `on_bad_row` (skipped in the output) when given;
    without it they stop the read with an InputFormatError naming the line. `on_bad_row` may raise a
    DataError to stop the read (e.g. when most lines are malformed).
    """
    uri = to_uri(fs, path)
    names = _read_header(fs, path, uri, opts)
    if names is None:
        return
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InputFormatError(f"{uri}: duplicate column names {dupes} in the header")
    stop: list[DataError] = []  # pyarrow swallows exceptions raised in the handler: pass them out here

    def handler(row) -> str:
        bad = BadCsvRow(
            line=row.number, text=row.text, expected=row.expected_columns, actual=row.actual_columns
        )
        try:
            if on_bad_row is None:
                raise InputFormatError(
                    f"{uri} line {bad.line}: expected {bad.expected} fields, got {bad.actual}: {bad.text[:200]!r}"
                )
            on_bad_row(bad)
        except DataError as exc:
            stop.append(exc)
            return "error"
        return "skip"

    read = pacsv.ReadOptions(block_size=opts.block_bytes, encoding=opts.encoding, use_threads=False,
                             column_names=list(opts.column_names) or None)
    # a quoted value may hold a newline (a product title, a comment): without newlines_in_values a record
    # split by a block boundary desynchronises the parser and the whole file fails to read
    parse = pacsv.ParseOptions(delimiter=opts.delimiter, invalid_row_handler=handler, newlines_in_values=True)
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False)
    rows = 0
    try:
        reader = pacsv.open_csv(fs.open_input_stream(path, compression="detect"), read, parse, convert)
        for batch in reader:
            rows += batch.num_rows
            yield pa.Table.from_batches([batch])
    except DataError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        if stop:
            raise stop[0] from None
        msg = first_line(exc)
        if "UTF8" in msg or isinstance(exc, UnicodeDecodeError):
            raise EncodingError(
                f"{uri}: bytes that are not valid {opts.encoding} after the first {rows:,} rows ({msg}); "
                "set data.encoding to the file's encoding (e.g. latin-1)"
            ) from None
        raise CorruptFileError(f"cannot read CSV {uri} after {rows:,} rows: {msg}") from None


def parquet_file(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    uri = to_uri(fs, path)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFileError(
            f"cannot read Parquet {uri}: truncated or not a Parquet file ({first_line(exc)})"
        ) from None


def iter_parquet(fs: pafs.FileSystem, path: str, batch_rows: int) -> Iterator[pa.Table]:
    """Tables of at most `batch_rows` rows, in file order, with the file's own column types."""
    uri = to_uri(fs, path)
    pf = parquet_file(fs, path)
    rows = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, use_threads=False):
            rows += batch.num_rows
            yield pa.Table.from_batches([batch])
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFileError(f"cannot read Parquet {uri} after {rows:,} rows: {first_line(exc)}") from None


def iter_json(fs: pafs.FileSystem, path: str, block_bytes: int, schema: pa.Schema | None = None) -> Iterator[pa.Table]:
    """Tables of about `block_bytes` of JSON lines each. With `schema`, exactly its fields (absent ones
    null, others ignored: exports carry many fields an adapter does not map); else the fields inferred
    from the first block."""
    uri = to_uri(fs, path)
    read = pajson.ReadOptions(block_size=block_bytes, use_threads=False)
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore" if schema else "infer")
    rows = 0
    try:
        reader = pajson.open_json(fs.open_input_stream(path, compression="detect"), read, parse)
        for batch in reader:
            rows += batch.num_rows
            yield pa.Table.from_batches([batch])
    except (pa.ArrowInvalid, OSError) as exc:
        if rows == 0 and "Empty JSON" in str(exc):
            return
        raise CorruptFileError(f"cannot read JSON lines {uri} after {rows:,} rows: {first_line(exc)}") from None


def read_schema(file: InputFile, s3cfg: S3Config | None = None, opts: CsvOptions | None = None) -> list[str]:
    """Column names of one input file without reading its rows (JSON lines: the fields of the first block)."""
    fs, path = resolve(file.uri, s3cfg)
    if file.format == "parquet":
        return parquet_file(fs, path).schema_arrow.names
    if file.format == "json":
        first = next(iter_json(fs, path, (opts or CsvOptions()).block_bytes), None)
        return first.column_names if first is not None else []
    return _read_header(fs, path, file.uri, opts or CsvOptions()) or []


# ---------------------------------------------------------------------------------------------------
# Writers



def read_parquet(uri: str, s3cfg: S3Config | None = None, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file or folder of Parquet files (for artifacts small enough to hold)."""
    files = [f for f in list_inputs(uri, s3cfg, fmt="auto").files if f.format == "parquet"]
    if not files:
        raise InputNotFoundError(f"input not found: no Parquet files at {uri}")
    fs, _ = resolve(uri, s3cfg)
    tables = []
    for file in files:
        _, path = resolve(file.uri, s3cfg)
        pf = parquet_file(fs, path)
        try:
            tables.append(pf.read(columns=columns, use_threads=False))
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptFileError(f"cannot read Parquet {file.uri}: {first_line(exc)}") from None
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
