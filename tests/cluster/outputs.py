"""Comparing two preprocess outputs row for row: nothing lost, nothing duplicated, nothing changed."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

# the rows of each table, in an order that does not depend on how the work was split into tasks
KEYS = {
    "features": ["history_id"],
    "traces": ["history_id", "session_idx", "step"],
    "events": ["buyer_id", "merchant_id", "seq"],
}
# summary fields that describe the run, not its output
RUN_FIELDS = ("wall_s", "phases_s", "out", "skipped")


def read_table(uri: str, name: str, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    return pads.dataset(f"{uri}/{name}", format="parquet", filesystem=filesystem).to_table()


def sorted_rows(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


def assert_unique(table: pa.Table, keys: list[str], what: str) -> None:
    distinct = table.group_by(keys).aggregate([]).num_rows
    assert distinct == table.num_rows, f"{what}: {table.num_rows - distinct} duplicated rows"


def assert_same_output(ref: str, other: str, other_fs: pafs.FileSystem | None = None) -> dict[str, int]:
    """Every table of `other` equals `ref`'s as a set of rows, and no key appears twice; returns row counts."""
    counts = {}
    for name, keys in KEYS.items():
        a, b = read_table(ref, name), read_table(other, name, other_fs)
        assert_unique(b, keys, f"{other}/{name}")
        assert b.num_rows == a.num_rows, f"{name}: {b.num_rows} rows, the clean run has {a.num_rows}"
        a, b = sorted_rows(a, keys), sorted_rows(b.select(a.schema.names), keys)
        assert b.equals(a), f"{name}: rows differ from the clean run"
        counts[name] = a.num_rows
    return counts


def summary_output(text: str) -> dict:
    """A summary.json without its run-specific fields (timings, output location)."""
    return {k: v for k, v in json.loads(text).items() if k not in RUN_FIELDS}


# keys of metrics.json that measure time (session_length_s: wall-clock seconds between an agent's first and
# last request, which the machine's speed sets) or name the run's own folders: not results
METRICS_RUN_KEYS = frozenset({"simulation_seconds", "seconds", "wall_s", "session_length_s", "steps_per_s", "folder"})


def metrics_results(obj):
    """metrics.json without its run-specific keys; floats to 9 decimals (a sum in another order changes the
    last bits)."""
    if isinstance(obj, dict):
        return {k: metrics_results(v) for k, v in obj.items() if k not in METRICS_RUN_KEYS}
    if isinstance(obj, list):
        return [metrics_results(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 9)
    return obj
