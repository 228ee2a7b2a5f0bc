"""The preprocess stage's core, applied by the Ray pipeline (simpersona.data.pipeline) to each hash
partition of buyers: `transform` (sessions, raw features, trace replay) under a `TransformContext` of the
merchant statistics computed once over everything, plus the config checks, input reading and summary
counts the stage shares. The single-process peer that applies it to the whole input at once, and the
benchmark's feature baselines, live outside the package (testkit/preprocess_peers.py).

Layout of DIR/preprocess/
  events/*.parquet       valid canonical events, session_id derived (schema.SCHEMA)
  quarantine/*.parquet   bad rows with their reason (schema.QUARANTINE_SCHEMA)
  features/*.parquet     one row per history (features.py)
  traces/*.parquet       one row per agent step (traces.py)
  feature_spec.json, summary.json
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from simpersona import storage
from simpersona.data import features as F
from simpersona.data import io
from simpersona.data import traces as T
from simpersona.data.schema import SCHEMA
from simpersona.data.sessions import check as check_sessions
from simpersona.data.sessions import sessionize
from simpersona.data.storefront import STOREFRONT_FILE
from simpersona.data.synthetic import MERCHANT_KNOBS_FILE
from simpersona.data.traces import as_mapping
from simpersona.data.validate import (
    FileReport,
    Validator,
    check_data,
    file_seq_base,
    iter_readable,
    list_inputs,
)

PLANTED_COLUMNS = ("buyer_id", "merchant_id", "planted_type")


class PreprocessError(ValueError):
    """A preprocess setting or input that cannot be used; the message says which and why."""


# ---------------------------------------------------------------------------------------------------
# Settings shared by both implementations


def output_uris(out: str) -> dict[str, str]:
    names = ("events", "quarantine", "features", "traces")
    uris = {name: storage.join_uri(out, name) for name in names}
    uris.update(feature_spec=storage.join_uri(out, "feature_spec.json"), summary=storage.join_uri(out, "summary.json"),
                storefront=storage.join_uri(out, STOREFRONT_FILE))
    return uris


def resolve_planted(cfg) -> str | None:
    """Where the planted types are: `features.planted`, or auto-detected beside an `events` input."""
    setting = str(cfg.features.planted or "").strip()
    if setting in ("", "none"):
        return None
    if setting != "auto":
        io.list_inputs(setting, cfg.data.s3, "parquet")  # a clear error when it is missing
        return setting
    base = str(cfg.data.input).rstrip("/")
    if base.rsplit("/", 1)[-1] != "events":
        return None
    planted = base[: -len("events")] + "planted"
    return planted if _is(planted, "Directory", cfg.data.s3) else None


def _is(uri: str, kind: str, s3) -> bool:
    """Whether `uri` exists as a `kind` ("File" or "Directory"); an unreachable one does not."""
    fs, path = storage.resolve(uri, s3)
    try:
        return fs.get_file_info(path).type.name == kind
    except OSError:
        return False


def resolve_merchant_knobs(cfg) -> str | None:
    """The synthetic generator's merchant_knobs.json beside the planted folder (resolve_planted), if any."""
    planted = resolve_planted(cfg)
    if planted is None:
        return None
    uri = storage.join_uri(planted.rstrip("/").rsplit("/", 1)[0], MERCHANT_KNOBS_FILE)
    return uri if _is(uri, "File", cfg.data.s3) else None


# Knobs of the data's merchant_knobs.json the traces do not take: the logged prices, from which the
# shops' catalogs are built, already carry each merchant's price_multiplier (applying it again would
# double it).
LOGGED_KNOBS = ("price_multiplier",)


def store_section(cfg) -> dict:
    """cfg.store as a dict, each merchant's own knobs from the data (merchant_knobs.json) included.

    The file's knobs go under store.merchant_overrides, the storefront's per-merchant setup, so that
    traces show every merchant's own shipping fee, checkout steps and related products; a knob the
    config's merchant_overrides names wins over the file's. The LOGGED_KNOBS go under `logged_knobs`
    (recorded, not applied: the prices carry them), the generator's own config under `planted_world`.
    Without the file: cfg.store unchanged.
    """
    store = as_mapping(cfg.store)
    uri = resolve_merchant_knobs(cfg)
    if uri is None:
        return store
    fs, path = storage.resolve(uri, cfg.data.s3)
    with fs.open_input_stream(path) as f:
        record = json.loads(f.read())
    from_data = record["merchants"]
    configured = store.get("merchant_overrides") or {}
    overrides = {
        merchant: {**{k: v for k, v in knobs.items() if k not in LOGGED_KNOBS}, **dict(configured.get(merchant, {}))}
        for merchant, knobs in from_data.items()
    }
    logged = {m: {k: knobs[k] for k in LOGGED_KNOBS if k in knobs} for m, knobs in from_data.items()}
    out = {**store, "merchant_overrides": {**configured, **overrides}, "logged_knobs": logged}
    if record.get("world"):  # the generator's config, for the what-ifs' true effects (recorded, not applied)
        out["planted_world"] = record["world"]
    return out


def check_config(cfg) -> None:
    check_data(cfg.data)
    check_sessions(cfg.sessions)
    F.check(cfg.features)
    T.check(cfg.traces)


@dataclass
class TransformContext:
    """Everything global that the per-history transform needs (small: per merchant, not per event)."""

    sessions: dict
    features: dict
    traces: dict
    store: dict
    stats: F.MerchantStats
    catalogs: dict[str, list] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg, merged: pl.DataFrame, store: dict | None = None) -> TransformContext:
        """`store`: the store section to replay on (store_section(cfg); None = cfg.store as it is)."""
        store = as_mapping(cfg.store) if store is None else store
        stats = F.MerchantStats.from_merged(merged)
        return cls(
            sessions=as_mapping(cfg.sessions),
            features=as_mapping(cfg.features),
            traces=as_mapping(cfg.traces),
            store=store,
            stats=stats,
            catalogs=T.top_catalog_rows(stats.products, store["products_per_merchant"]),
        )

    def section(self, name: str):
        return _Section(getattr(self, name))

    @property
    def unit(self) -> str:
        return self.sessions["unit"]


class _Section(dict):
    """Attribute access on a plain dict section (what the sessions/features/traces modules expect)."""

    __getattr__ = dict.__getitem__


@dataclass
class Transformed:
    events: pa.Table  # sessionized events in SCHEMA, sorted by (history_id, ts, seq)
    raw: pa.Table  # features.raw_schema + n_trace_steps, first_of_buyer, trace skip counts
    traces: pa.Table
    skipped: Counter


SKIP_COLUMNS = tuple(f"trace_skipped_{r}" for r in T.SKIP_REASONS)


def transform(events: pl.DataFrame, planted: pl.DataFrame | None, ctx: TransformContext,
              shops: T.ShopCache) -> Transformed:
    """Sessions, raw features and traces of a set of whole buyers (all of their events)."""
    sessions = sessionize(events, ctx.section("sessions"))
    raw = F.raw_features(sessions, ctx.stats, ctx.section("features"), ctx.unit, planted)
    ids = pl.from_arrow(raw.select(["history_id", "buyer_id", "planted_type"]))
    types = None
    if planted is not None:
        typed = ids.filter(pl.col("planted_type") >= 0)
        types = dict(zip(typed["history_id"].to_list(), typed["planted_type"].to_list()))
    traces, skipped, steps = T.build_traces(sessions, shops, ctx.section("traces"), types)
    n_steps = ids.join(pl.DataFrame({"history_id": list(steps), "n": list(steps.values())},
                                    schema={"history_id": pl.Utf8, "n": pl.Int64}),
                       on="history_id", how="left", maintain_order="left")["n"].fill_null(0)  # fmt: skip
    first_of_buyer = (ids["buyer_id"] != ids["buyer_id"].shift(1)).fill_null(True).cast(pl.Int8)
    raw = raw.append_column("n_trace_steps", n_steps.to_arrow())
    raw = raw.append_column("first_of_buyer", first_of_buyer.to_arrow())  # a buyer's histories are adjacent
    for name, reason in zip(SKIP_COLUMNS, T.SKIP_REASONS):
        counts = np.zeros(raw.num_rows, dtype=np.int64)
        if raw.num_rows:
            counts[0] = skipped.get(reason, 0)  # block totals ride on the first row: sums stay exact
        raw = raw.append_column(name, pa.array(counts))
    out_events = sessions.select(SCHEMA.names).to_arrow().cast(SCHEMA)
    return Transformed(out_events, raw, traces, skipped)


# ---------------------------------------------------------------------------------------------------
# Block statistics (exact) → feature normalisation and run counts

COUNT_COLUMNS = ("n_events", "n_sessions", "n_trace_steps", "first_of_buyer", *SKIP_COLUMNS)


def block_stats(raw: pa.Table) -> dict:
    """Exact partial statistics of a set of raw feature rows (adds up across any split of the rows)."""
    n, s1, s2 = F.partial_moments(F.agg_matrix(raw)) if raw.num_rows else (0, [0] * len(F.AGG_NAMES),
                                                                           [0] * len(F.AGG_NAMES))
    counts = {c: int(pc.sum(raw.column(c)).as_py() or 0) for c in COUNT_COLUMNS}
    return {"histories": raw.num_rows, "n": n, "s1": s1, "s2": s2, **counts}


def combine_stats(parts: list[dict]) -> dict:
    n, s1, s2 = F.add_moments((p["n"], p["s1"], p["s2"]) for p in parts)
    mean, std = F.finish_moments(n, s1, s2)
    totals = {c: sum(p[c] for p in parts) for c in ("histories", *COUNT_COLUMNS)}
    return {"mean": mean, "std": std, **totals}


def counts_summary(totals: dict, report, stats: F.MerchantStats, unit: str) -> dict:
    """The counts of summary.json (same keys from both implementations)."""
    rows_good = report.rows_read - report.rows_bad
    if totals["n_events"] != rows_good:  # every valid row belongs to exactly one history
        raise PreprocessError(f"lost rows: {rows_good:,} valid rows read but {totals['n_events']:,} in histories")
    return {
        "rows_read": report.rows_read,
        "rows_bad": report.rows_bad,
        "bad_by_reason": dict(sorted(report.bad_by_reason.items())),
        "filled": dict(report.filled),
        "unreadable_files": dict(report.unreadable_files),
        "ignored": dict(sorted(report.ignored.items())),  # source events outside the canonical vocabulary  # set aside whole, within data.max_bad_fraction
        "rows_valid": rows_good,
        "buyers": totals["first_of_buyer"],
        "merchants": stats.merchants,
        "unit": unit,
        "histories": totals["histories"],
        "sessions": totals["n_sessions"],
        "trace_steps": totals["n_trace_steps"],
        "trace_skipped": {r: totals[c] for r, c in zip(T.SKIP_REASONS, SKIP_COLUMNS)},
    }


def finish_features(raw: pa.Table, mean: list[float], std: list[float], seq_len: int) -> pa.Table:
    return F.normalise(raw, mean, std, seq_len)


# ---------------------------------------------------------------------------------------------------
# The reference run


def read_planted(uri: str | None, s3cfg=None) -> pl.DataFrame | None:
    if uri is None:
        return None
    table = io.read_parquet(uri, s3cfg, columns=list(PLANTED_COLUMNS))
    return pl.from_arrow(table)


def read_events(data_cfg, quarantine_uri: str | None, progress: bool = False):
    """All valid events of the input in one table, and the validation report (checked).

    Like `validate.read_canonical`, but each file's `seq` starts at `validate.file_seq_base(index)`,
    the numbering parallel readers use, so that both implementations write the same `seq` values."""
    listing = list_inputs(data_cfg.input, data_cfg.s3, data_cfg.format)
    validator = Validator(data_cfg, quarantine_uri)
    validator.report.skipped_files.extend(listing.skipped)
    validator.report.input_bytes = sum(f.size for f in listing.files)
    tables = []
    for index, file in enumerate(tqdm(listing.files, unit="file", desc="read", disable=not progress)):
        for chunk in iter_readable(file, data_cfg, file_seq_base(index), validator.report):
            good = validator.add(chunk)
            if good.num_rows:
                tables.append(good)
        validator.report.files.setdefault(file.uri, FileReport())
    report = validator.finish(data_cfg.input)
    return (pa.concat_tables(tables) if tables else SCHEMA.empty_table()), report
