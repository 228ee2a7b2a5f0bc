"""The preprocess stage on Ray Data: raw logs → DIR/preprocess/{events,quarantine,features,traces}.

Two streaming Ray Data executions; the driver only ever holds per-file, per-merchant/product and
per-block statistics, never events or histories:

1. histories  input files → tasks running the ingest reader (`validate.iter_file_canonical`) → valid
              canonical rows → `repartition(keys=["buyer_id"])` (Ray's hash shuffle; planted types
              ride along as extra rows), so that every buyer, hence every history, lies in one block
              → per block, vectorised polars: sessions, raw features and the trace replay
              (`reference.transform`) → raw features to a scratch folder (`write_parquet`).
              Each read task also writes its file's bad rows (quarantine/part-<file>.parquet), a small
              validation report and its (merchant, product) partial sums, before it hands over its
              file's last rows. A hash shuffle is a barrier (a partition is complete only when every
              map task is done), so when a block is processed all partial sums exist: each worker
              merges them once into the merchant statistics (mean prices, reference time, catalogs).
              Each block task writes its sessionized events, traces and exact partial statistics.
2. features   the driver merges the validation reports (bad-row limit), adds up the block statistics
              exactly (feature mean/std, run counts); `map_batches` z-scores the raw features →
              features/ (`write_parquet`).

The per-history computation is the function the single-process reference (`reference.py`) applies to
the whole input, and every global statistic is an exact integer sum, so both write identical tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator

import polars as pl
import pyarrow as pa

from simpersona.data import features as F
from simpersona.data import io
from simpersona.data import traces as T
from simpersona.data.reference import (
    PLANTED_COLUMNS,
    TransformContext,
    block_stats,
    check_config,
    combine_stats,
    counts_summary,
    finish_features,
    output_uris,
    resolve_planted,
    transform,
)
from simpersona.data.schema import SCHEMA
from simpersona.data.traces import as_mapping
from simpersona.data.validate import (
    DataError,
    FileReport,
    ValidationReport,
    Validator,
    file_seq_base,
    iter_file_canonical,
    list_inputs,
)

log = logging.getLogger(__name__)

DAY_RESOLUTION_ADAPTERS = ("tmall2014",)  # sources that log days only

# Rows of the history shuffle: canonical events plus planted-type rows (event null) in one schema.
SHUFFLE_SCHEMA = pa.schema([pa.field(f.name, f.type) for f in SCHEMA] + [pa.field("planted_type", pa.int32())])
SCRATCH = ("reports", "merchants", "raw", "stats")  # DIR/preprocess/_<name>, removed at the end


def _read_parquet(uri: str, s3cfg, **kwargs):
    import ray

    fs, path = io.resolve(uri, s3cfg)
    return ray.data.read_parquet(path, filesystem=fs, **kwargs)


def _write_parquet(ds, uri: str, s3cfg, **parquet_args) -> None:
    fs, path = io.resolve(uri, s3cfg)
    ds.write_parquet(path, filesystem=fs, **parquet_args)


def _read_small(uri: str, s3cfg) -> bytes:
    fs, path = io.resolve(uri, s3cfg)
    with fs.open_input_stream(path) as f:
        return f.read()


def _listing(uri: str, s3cfg, suffix: str) -> list[str]:
    """Sorted files with `suffix` directly under folder `uri` (empty when the folder does not exist)."""
    import pyarrow.fs as pafs

    fs, path = io.resolve(uri, s3cfg)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(io.to_uri(fs, i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


# ---------------------------------------------------------------------------------------------------
# Reading (inside the shuffle's map side)


def _read_files(batch: pa.Table, data_cfg, quarantine_dir: str, scratch: dict) -> Iterator[pa.Table]:
    """Ray Data UDF: input files (index, uri, format) → their valid canonical rows, streamed.

    The file's side outputs (quarantine, report, merchant partials) are written before its last rows
    are yielded, so they exist once the shuffle downstream has seen every row."""
    from simpersona.runtime import write_json

    for index, uri, fmt in zip(*(batch.column(c).to_pylist() for c in ("index", "uri", "format"))):
        name = f"part-{index:05d}"
        validator = Validator(data_cfg, io.join_uri(quarantine_dir, f"{name}.parquet"))
        partials, held = [], None
        try:
            for chunk in iter_file_canonical(uri, data_cfg, file_seq_base(index), fmt):
                good = validator.add(chunk)  # also stops early when this file passes the bad-row limit
                if good.num_rows:
                    partials.append(F.merchant_partials(pl.from_arrow(good)))
                    if held is not None:
                        yield _as_shuffle_rows(held)
                    held = good
        finally:
            validator.close()
        validator.report.files.setdefault(uri, FileReport())
        merged = F.merge_partials(pl.concat(partials)) if partials else pl.DataFrame(schema=F.PARTIAL_SCHEMA)
        io.write_parquet(merged.to_arrow(), io.join_uri(scratch["merchants"], f"{name}.parquet"), data_cfg.s3)
        write_json(io.join_uri(scratch["reports"], f"{name}.json"), validator.report.to_dict(), data_cfg.s3)
        if held is not None:
            yield _as_shuffle_rows(held)


def _report_from_dict(d: dict) -> ValidationReport:
    rep = ValidationReport(max_examples=d.get("max_examples", 3))
    rep.rows_read, rep.rows_bad = d["rows_read"], d["rows_bad"]
    rep.bad_by_reason = dict(d["bad_by_reason"])
    rep.files = {k: FileReport(**v) for k, v in d["files"].items()}
    rep.filled = dict(d["filled"])
    rep.examples = list(d["examples"])
    return rep


def merged_report(reports_dir: str, s3cfg, skipped: list[str], max_examples: int,
                  quarantine_dir: str) -> ValidationReport:
    total = ValidationReport(max_examples=max_examples)
    total.skipped_files.extend(skipped)
    total.quarantine_uri = quarantine_dir
    for uri in _listing(reports_dir, s3cfg, ".json"):
        total.merge(_report_from_dict(json.loads(_read_small(uri, s3cfg))))
    return total


def merged_partials(merchants_dir: str, s3cfg) -> pl.DataFrame:
    """Per-file (merchant, product) partials merged one file at a time: memory ∝ products, not events."""
    merged = pl.DataFrame(schema=F.PARTIAL_SCHEMA)
    for uri in _listing(merchants_dir, s3cfg, ".parquet"):
        merged = F.merge_partials(pl.concat([merged, pl.from_arrow(io.read_parquet(uri, s3cfg))]))
    return merged


def _unwrap(exc: BaseException) -> BaseException | None:
    """The DataError inside a Ray task error (Ray wraps exceptions raised in UDFs), if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DataError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# ---------------------------------------------------------------------------------------------------
# 1. histories


def _as_shuffle_rows(batch: pa.Table) -> pa.Table:
    cols = [batch.column(n).cast(SHUFFLE_SCHEMA.field(n).type) for n in SCHEMA.names]
    cols.append(pa.nulls(batch.num_rows, pa.int32()))
    return pa.Table.from_arrays(cols, schema=SHUFFLE_SCHEMA)


def _planted_as_shuffle_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    cols = [batch.column(f.name).cast(f.type) if f.name in PLANTED_COLUMNS else pa.nulls(n, f.type)
            for f in SHUFFLE_SCHEMA]  # fmt: skip
    return pa.Table.from_arrays(cols, schema=SHUFFLE_SCHEMA)


_WORKER: dict[str, tuple] = {}  # per worker process: the run's context and shops, built once


class _Sections(dict):
    __getattr__ = dict.__getitem__


def _worker_state(run: str, sections: dict, scratch: dict, s3cfg) -> tuple[TransformContext, T.ShopCache]:
    """The run's TransformContext, from the merchant partials every read task has written by now."""
    if run not in _WORKER:
        _WORKER.clear()
        ctx = TransformContext.build(_Sections(sections), merged_partials(scratch["merchants"], s3cfg))
        _WORKER[run] = (ctx, T.ShopCache(ctx.catalogs, ctx.store))
    return _WORKER[run]


def block_name(raw: pa.Table) -> str:
    """A name that depends only on the block's histories: a retried task overwrites its own files."""
    ids = raw.column("history_id")
    text = f"{ids[0].as_py()}\x1f{ids[-1].as_py()}\x1f{raw.num_rows}"
    return f"part-{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


def _process_block(block: pa.Table, run: str, sections: dict, uris: dict, scratch: dict, s3cfg) -> pa.Table:
    """Ray Data UDF on one hash partition (whole buyers): writes the block's sessionized events,
    traces and statistics; returns its raw features (packed)."""
    from simpersona.runtime import write_json

    ctx, shops = _worker_state(run, sections, scratch, s3cfg)
    df = pl.from_arrow(block)
    is_event = pl.col("event").is_not_null()
    planted = df.filter(~is_event).select(PLANTED_COLUMNS)
    events = df.filter(is_event).drop("planted_type")
    result = transform(events, planted if planted.height else None, ctx, shops)
    if result.raw.num_rows == 0:
        return F.pack_raw(result.raw)
    name = block_name(result.raw)
    io.write_parquet(result.events, io.join_uri(uris["events"], f"{name}.parquet"), s3cfg)
    if result.traces.num_rows:
        io.write_parquet(result.traces, io.join_uri(uris["traces"], f"{name}.parquet"), s3cfg)
    write_json(io.join_uri(scratch["stats"], f"{name}.json"), block_stats(result.raw), s3cfg)
    return F.pack_raw(result.raw)


def estimated_rows(files, s3cfg) -> int:
    """Rows of the input before reading it: Parquet footers, or CSV bytes / 40 (a typical event line)."""
    rows = 0
    for f in files:
        if f.format == "parquet":
            fs, path = io.resolve(f.uri, s3cfg)
            rows += io.parquet_file(fs, path).metadata.num_rows
        else:
            rows += f.size // 40
    return rows


def num_partitions(cfg, rows: int) -> int:
    import ray

    if cfg.sessions.partitions:
        return int(cfg.sessions.partitions)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(2 * cpus, math.ceil(rows / max(1, cfg.sessions.rows_per_partition)))


def process_histories(cfg, data_cfg, uris: dict, scratch: dict) -> tuple:
    """Pass 1; returns (the input listing, hash partitions, planted-types input or "")."""
    import uuid

    import ray

    s3cfg = data_cfg.s3
    listing = list_inputs(data_cfg.input, s3cfg, data_cfg.format)
    items = [{"index": i, "uri": f.uri, "format": f.format} for i, f in enumerate(listing.files)]
    rows = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_files, batch_format="pyarrow", batch_size=1,
        fn_kwargs={"data_cfg": data_cfg, "quarantine_dir": uris["quarantine"], "scratch": scratch},
    )  # fmt: skip
    planted_uri = resolve_planted(cfg)
    if planted_uri is not None:
        planted = _read_parquet(planted_uri, s3cfg).select_columns(list(PLANTED_COLUMNS))
        rows = rows.union(planted.map_batches(_planted_as_shuffle_rows, batch_format="pyarrow", batch_size=None))
    partitions = num_partitions(cfg, estimated_rows(listing.files, s3cfg))
    sections = {name: as_mapping(cfg[name]) for name in ("sessions", "features", "traces", "store")}
    raw = rows.repartition(partitions, keys=["buyer_id"]).map_batches(
        _process_block, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"run": uuid.uuid4().hex, "sections": sections, "uris": uris, "scratch": scratch,
                   "s3cfg": s3cfg},
    )  # fmt: skip
    try:
        _write_parquet(raw, scratch["raw"], s3cfg)
    except Exception as exc:
        data_error = _unwrap(exc)
        if data_error is not None:  # the ingest error's own one-line message, not Ray's wrapping
            raise data_error.with_traceback(None) from None
        raise
    return listing, partitions, planted_uri or ""


# ---------------------------------------------------------------------------------------------------
# 2. features


def _normalise(batch: pa.Table, mean: list[float], std: list[float], seq_len: int) -> pa.Table:
    return finish_features(batch, mean, std, seq_len)


def run_pipeline(cfg, out: str) -> dict:
    """All passes, writing under `out` (a fresh folder); returns the summary (also written there)."""
    from omegaconf import OmegaConf
    from ray.data import DataContext

    from simpersona.runtime import Stopwatch, configure_ray_data, remove, write_json

    check_config(cfg)
    if cfg.sessions.day_resolution and cfg.data.adapter not in DAY_RESOLUTION_ADAPTERS:
        log.warning("sessions.day_resolution=true with data.adapter=%s: one session per buyer x merchant x day; "
                    "set sessions.day_resolution=false for timestamped data", cfg.data.adapter)
    sw = Stopwatch()
    configure_ray_data(cfg.progress)
    data_ctx = DataContext.get_current()
    data_ctx.use_disk_based_hash_shuffle = bool(cfg.sessions.disk_shuffle)
    data_ctx.shuffle_input_batch_bytes = int(cfg.sessions.shuffle_batch_mib) << 20
    data_cfg = OmegaConf.to_object(cfg.data)
    s3cfg = data_cfg.s3
    uris = output_uris(out)
    scratch = {name: io.join_uri(out, f"_{name}") for name in SCRATCH}

    with sw.lap("histories"):
        listing, partitions, planted = process_histories(cfg, data_cfg, uris, scratch)
        report = merged_report(scratch["reports"], s3cfg, listing.skipped, data_cfg.quarantine_examples,
                               uris["quarantine"])
        report.check(data_cfg.max_bad_fraction, final=True, what=data_cfg.input)
        stats = F.MerchantStats.from_merged(merged_partials(scratch["merchants"], s3cfg))
    with sw.lap("features"):
        parts = [json.loads(_read_small(u, s3cfg)) for u in _listing(scratch["stats"], s3cfg, ".json")]
        totals = combine_stats(parts)
        feats = _read_parquet(scratch["raw"], s3cfg).map_batches(
            _normalise, batch_format="pyarrow",
            fn_kwargs={"mean": totals["mean"], "std": totals["std"], "seq_len": cfg.features.seq_len},
        )  # fmt: skip
        # dictionary pages help the id columns only; on the fixed-size lists they cost time for nothing
        _write_parquet(feats, uris["features"], s3cfg, use_dictionary=["history_id", "buyer_id", "merchant_id"])
        spec = F.feature_spec(cfg.features, cfg.sessions.unit, totals["mean"], totals["std"])
        write_json(uris["feature_spec"], spec, s3cfg)
    for path in scratch.values():
        remove(path, s3cfg)
    summary = {
        **counts_summary(totals, report, stats, cfg.sessions.unit),
        "engine": "ray",
        "partitions": partitions,
        "input_files": len(listing.files),
        "planted": planted,
        "wall_s": sw.total(),
        "phases_s": sw.laps,
        "out": out,
    }
    write_json(uris["summary"], summary, s3cfg)
    return summary


def run_preprocess(cfg) -> dict:
    """The preprocess stage: DIR/preprocess/ from `cfg`, on a local Ray or the cluster it joins."""
    from simpersona.runtime import atomic_output_dir, init_ray, write_json

    init_ray(cfg)
    final = io.join_uri(cfg.storage_path or cfg.run_dir, "preprocess")
    with atomic_output_dir(final, cfg.data.s3) as out:
        summary = run_pipeline(cfg, out)
    summary["out"] = final
    write_json(io.join_uri(final, "summary.json"), summary, cfg.data.s3)
    return summary
