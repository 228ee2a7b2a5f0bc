"""Reading run artifacts, and making results JSON-safe (shared by evaluate and whatif; storage.write_json writes them)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

EMPTY_EVENTS_SCHEMA = {"buyer_id": pl.Utf8, "merchant_id": pl.Utf8, "session_id": pl.Utf8, "event": pl.Utf8,
                       "ts": pl.Datetime("ms")}


class ArtifactError(ValueError):
    """A run artifact that is missing or unreadable; the message names the path."""


def read_parquet_folder(path: Path, what: str, required: bool = True) -> pl.DataFrame | None:
    """A Parquet file, or every *.parquet in a folder concatenated (columns unioned)."""
    files = sorted(path.glob("*.parquet")) if path.is_dir() else ([path] if path.is_file() else [])
    if not files:
        if required:
            raise ArtifactError(f"no {what} at {path}")
        return None
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def read_events(folder: Path) -> pl.DataFrame:
    """A simulation's storefront event log; an empty table when no agent logged anything."""
    events = read_parquet_folder(folder, "storefront events", required=False)
    return pl.DataFrame(schema=EMPTY_EVENTS_SCHEMA) if events is None else events


def json_safe(obj):
    """NaN/inf -> null, numpy scalars -> Python, tuples -> lists, keys -> str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
