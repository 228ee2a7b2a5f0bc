"""The preprocess stage on Ray Data: raw logs → DIR/preprocess/{events,quarantine,features,traces}.

Every history must meet in one place before sessions, features and traces can be computed, so the
events are hash-partitioned by buyer (a buyer's histories then lie together, whatever the unit).
Two shuffles are available (`sessions.shuffle`):

files (default)  Spark-style, through storage. Pass 1: Ray Data tasks read the input files with the
                 ingest reader (`validate.iter_file_canonical`) and write each valid row to the Parquet
                 file of its bucket, hash(buyer_id) mod P (DIR/preprocess/_buckets/<bucket>/). Pass 2:
                 one Ray Data task per bucket reads it whole and runs the per-history transform. No
                 event passes through the object store, so memory stays flat whatever the input size,
                 and the bad-row limit is checked between the passes, before the heavy work.
ray              Ray's own hash shuffle in one execution: read tasks → `repartition(P, keys=
                 ["buyer_id"])` → the transform per partition (Ray's SHUFFLE_V2 keeps a partition in one
                 block). Shuffled data lives in the object store (spilling to disk; or Ray's disk-based
                 shuffle with sessions.disk_shuffle).

Either way, each read task also writes, per input file, its bad rows (quarantine/part-<file>.parquet),
a small validation report and (merchant, product) partial sums. Each worker merges the partial sums
once into the merchant statistics the transform needs (mean prices, reference time, catalogs): with
the files shuffle they are complete after pass 1; with Ray's shuffle a partition is complete only when
every read task has finished, and each read task writes its partial sums before its file's last rows.

The transform of a block (`transform.transform`: sessions, raw features, trace replay; vectorised
polars except the replay) writes the block's sessionized events, traces and exact partial statistics,
and returns its raw features (packed) to a scratch folder (`write_parquet`). Last pass: the driver
merges the validation reports and adds up the block statistics (integers: exact), and `map_batches`
z-scores the raw features → features/ (`write_parquet`). The driver only ever holds per-file,
per-merchant/product and per-block statistics, never events or histories.

The per-history computation is the function the single-process reference (`testkit/preprocess_peers.py`) applies to
the whole input, and every global statistic is exact, so both implementations write identical tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa

from simpersona import storage
from simpersona.data import features as F
from simpersona.data import io
from simpersona.data import traces as T
from simpersona.data.schema import SCHEMA
from simpersona.data.storefront import write_storefront
from simpersona.data.traces import as_mapping
from simpersona.data.transform import (
    PLANTED_COLUMNS,
    TransformContext,
    block_stats,
    check_config,
    combine_stats,
    counts_summary,
    finish_features,
    output_uris,
    resolve_planted,
    store_section,
    transform,
)
from simpersona.data.validate import (
    BadDataError,
    DataError,
    FileReport,
    ValidationReport,
    Validator,
    file_seq_base,
    iter_readable,
    list_inputs,
)

log = logging.getLogger(__name__)

SHUFFLES = ("files", "ray")
DAY_RESOLUTION_ADAPTERS = ("tmall2014",)  # sources that log days only
# Rows of the history shuffle: canonical events plus planted-type rows (event null) in one schema.
SHUFFLE_SCHEMA = pa.schema([pa.field(f.name, f.type) for f in SCHEMA] + [pa.field("planted_type", pa.int32())])
SCRATCH = ("reports", "merchants", "buckets", "raw", "stats")  # DIR/preprocess/_<name>, removed at the end


class PipelineConfigError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------------
# Storage helpers (local paths and s3:// alike)


def _write_parquet(ds, uri: str, s3cfg, **parquet_args) -> None:
    fs, path = storage.resolve(uri, s3cfg)
    ds.write_parquet(path, filesystem=fs, **parquet_args)


def _read_small(uri: str, s3cfg) -> bytes:
    fs, path = storage.resolve(uri, s3cfg)
    with fs.open_input_stream(path) as f:
        return f.read()


def _listing(uri: str, s3cfg, suffix: str) -> list[str]:
    """Sorted files with `suffix` directly under folder `uri` (empty when the folder does not exist)."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri, s3cfg)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(storage.to_uri(fs, i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def _unwrap(exc: BaseException) -> BaseException | None:
    """The DataError a UDF raised, out of Ray's wrapping (Ray re-raises it as a RayTaskError subclass
    of it, whose message carries the worker's traceback; the original is its `cause`)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DataError) and type(exc).__module__.startswith("simpersona."):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def _execute(action):
    """Run a Ray Data action; an input error raised in a task surfaces as its own one-line error."""
    try:
        return action()
    except Exception as exc:
        data_error = _unwrap(exc)
        if data_error is not None:
            # input errors are one line by contract; Ray appends its retry advice to the message
            raise type(data_error)(str(data_error).split("\n", 1)[0]) from None
        raise


# ---------------------------------------------------------------------------------------------------
# Shuffle rows and buckets


def _as_shuffle_rows(batch: pa.Table) -> pa.Table:
    cols = [batch.column(n).cast(SHUFFLE_SCHEMA.field(n).type) for n in SCHEMA.names]
    cols.append(pa.nulls(batch.num_rows, pa.int32()))
    return pa.Table.from_arrays(cols, schema=SHUFFLE_SCHEMA)


def _planted_as_shuffle_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    cols = [batch.column(f.name).cast(f.type) if f.name in PLANTED_COLUMNS else pa.nulls(n, f.type)
            for f in SHUFFLE_SCHEMA]  # fmt: skip
    return pa.Table.from_arrays(cols, schema=SHUFFLE_SCHEMA)


def bucket_of(buyer_ids, buckets: int):
    """Bucket per row: a hash of buyer_id mod `buckets`, the same in every worker of a run."""
    ids = pl.from_arrow(buyer_ids) if not isinstance(buyer_ids, pl.Series) else buyer_ids
    return (ids.hash(seed=0) % buckets).cast(pl.Int32).to_numpy()


def bucket_dir(scratch: dict, bucket: int) -> str:
    return storage.join_uri(scratch["buckets"], f"{bucket:05d}")


class BucketWriter:
    """One read task's rows, split by bucket into `_buckets/<bucket>/part-<task>.parquet` (buffered, so
    that row groups are not tiny)."""

    def __init__(self, scratch: dict, task: int, buckets: int, flush_rows: int, s3cfg):
        self.scratch, self.task, self.buckets, self.flush_rows, self.s3cfg = scratch, task, buckets, flush_rows, s3cfg
        self.pending: dict[int, list[pa.Table]] = {}
        self.pending_rows: dict[int, int] = {}
        self.writers: dict[int, object] = {}
        self.rows = 0

    def add(self, rows: pa.Table) -> None:
        self.rows += rows.num_rows
        keys = bucket_of(rows.column("buyer_id"), self.buckets)
        order = keys.argsort(kind="stable")
        keys, rows = keys[order], rows.take(pa.array(order))
        bounds = (keys[1:] != keys[:-1]).nonzero()[0] + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(keys)]
        for lo, hi in zip(starts, ends):
            b = int(keys[lo])
            self.pending.setdefault(b, []).append(rows.slice(lo, hi - lo))
            self.pending_rows[b] = self.pending_rows.get(b, 0) + hi - lo
            if self.pending_rows[b] >= self.flush_rows:
                self._flush(b)

    def _flush(self, b: int) -> None:
        tables = self.pending.pop(b, [])
        self.pending_rows.pop(b, None)
        if not tables:
            return
        writer = self.writers.get(b)
        if writer is None:
            uri = storage.join_uri(bucket_dir(self.scratch, b), f"part-{self.task:05d}.parquet")
            writer = self.writers[b] = storage.parquet_writer(uri, SHUFFLE_SCHEMA, self.s3cfg)
        writer.write_table(pa.concat_tables(tables))

    def close(self) -> None:
        for b in list(self.pending):
            self._flush(b)
        for writer in self.writers.values():
            writer.close()


# ---------------------------------------------------------------------------------------------------
# Reading (Ray Data UDF)


def _read_task(batch: pa.Table, data_cfg, quarantine_dir: str, scratch: dict, buckets: int,
               flush_rows: int) -> Iterator[pa.Table]:
    """Ray Data UDF: a group of input files → their valid rows (and planted types) as shuffle rows.

    `buckets` > 0: the rows go to bucket files and the task yields one row of counts; else they are
    yielded. A file's side outputs (quarantine, report, merchant partials) are written before its last
    rows leave the task."""
    from simpersona.storage import write_json

    for task, files_json in zip(batch.column("task").to_pylist(), batch.column("files").to_pylist()):
        writer = BucketWriter(scratch, task, buckets, flush_rows, data_cfg.s3) if buckets else None
        for item in json.loads(files_json):
            for rows in _read_item(item, data_cfg, quarantine_dir, scratch, write_json):
                if writer is None:
                    yield rows
                else:
                    writer.add(rows)
        if writer is not None:
            writer.close()
            yield pa.table({"task": [task], "rows": [writer.rows]})


def _read_item(item: dict, data_cfg, quarantine_dir: str, scratch: dict, write_json) -> Iterator[pa.Table]:
    if item["kind"] == "planted":
        fs, path = storage.resolve(item["uri"], data_cfg.s3)
        for table in io.iter_parquet(fs, path, data_cfg.parquet_batch_rows):
            yield _planted_as_shuffle_rows(table.select(list(PLANTED_COLUMNS)))
        return
    index, uri = item["index"], item["uri"]
    name = f"part-{index:05d}"
    validator = Validator(data_cfg, storage.join_uri(quarantine_dir, f"{name}.parquet"))
    partials, held = [], None
    file = io.InputFile(uri, item["format"], item["size"])
    try:
        for chunk in iter_readable(file, data_cfg, file_seq_base(index), validator.report):
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
    storage.write_parquet(merged.to_arrow(), storage.join_uri(scratch["merchants"], f"{name}.parquet"), data_cfg.s3)
    write_json(storage.join_uri(scratch["reports"], f"{name}.json"), validator.report.to_dict(), data_cfg.s3)
    if held is not None:
        yield _as_shuffle_rows(held)


def _report_from_dict(d: dict) -> ValidationReport:
    rep = ValidationReport(max_examples=d.get("max_examples", 3))
    rep.rows_read, rep.rows_bad = d["rows_read"], d["rows_bad"]
    rep.bad_by_reason = dict(d["bad_by_reason"])
    rep.files = {k: FileReport(**v) for k, v in d["files"].items()}
    rep.filled = dict(d["filled"])
    rep.examples = list(d["examples"])
    rep.unreadable_files = dict(d.get("unreadable_files", {}))
    rep.ignored = dict(d.get("ignored", {}))
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


# ---------------------------------------------------------------------------------------------------
# The transform of a block (Ray Data UDFs)

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


def _transform_rows(rows: pa.Table, ctx: TransformContext, shops: T.ShopCache, uris: dict, scratch: dict,
                    s3cfg) -> pa.Table:
    """Shuffle rows of whole buyers → their events, traces and statistics written; raw features returned."""
    from simpersona.storage import write_json

    df = pl.from_arrow(rows)
    is_event = pl.col("event").is_not_null()
    planted = df.filter(~is_event).select(PLANTED_COLUMNS)
    events = df.filter(is_event).drop("planted_type")
    result = transform(events, planted if planted.height else None, ctx, shops)
    if result.raw.num_rows:
        name = block_name(result.raw)
        storage.write_parquet(result.events, storage.join_uri(uris["events"], f"{name}.parquet"), s3cfg)
        if result.traces.num_rows:
            storage.write_parquet(result.traces, storage.join_uri(uris["traces"], f"{name}.parquet"), s3cfg)
        write_json(storage.join_uri(scratch["stats"], f"{name}.json"), block_stats(result.raw), s3cfg)
    return F.pack_raw(result.raw)


def _process_partition(block: pa.Table, run: str, sections: dict, uris: dict, scratch: dict, s3cfg) -> pa.Table:
    """Ray Data UDF on one partition of Ray's hash shuffle (whole buyers)."""
    ctx, shops = _worker_state(run, sections, scratch, s3cfg)
    return _transform_rows(block, ctx, shops, uris, scratch, s3cfg)


def _process_buckets(batch: pa.Table, run: str, sections: dict, uris: dict, scratch: dict,
                     s3cfg) -> Iterator[pa.Table]:
    """Ray Data UDF: bucket numbers → each bucket's files read whole and transformed."""
    ctx, shops = _worker_state(run, sections, scratch, s3cfg)
    for b in batch.column("bucket").to_pylist():
        files = _listing(bucket_dir(scratch, b), s3cfg, ".parquet")
        if files:
            rows = pa.concat_tables([io.read_parquet(f, s3cfg) for f in files])
            yield _transform_rows(rows, ctx, shops, uris, scratch, s3cfg)


# ---------------------------------------------------------------------------------------------------
# Planning


def estimated_rows(files, s3cfg) -> int:
    """Rows of the input before reading it: Parquet footers, or CSV bytes / 40 (a typical event line)."""
    rows = 0
    for f in files:
        if f.format == "parquet":
            fs, path = storage.resolve(f.uri, s3cfg)
            try:
                rows += io.parquet_file(fs, path).metadata.num_rows
            except io.CorruptFileError:  # set aside when it is read (validate.iter_readable); it is no rows
                pass
        else:
            rows += f.size // 40
    return rows


def num_partitions(cfg, rows: int) -> int:
    import ray

    if cfg.sessions.partitions:
        return int(cfg.sessions.partitions)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(2 * cpus, math.ceil(rows / max(1, cfg.sessions.rows_per_partition)))


def read_tasks(items: list[dict], tasks: int) -> list[dict]:
    """Input items dealt round-robin into `tasks` read tasks (sizes of sorted shards stay balanced)."""
    groups = [items[i::tasks] for i in range(min(tasks, len(items)))]
    return [{"task": i, "files": json.dumps(g)} for i, g in enumerate(groups)]


def process_histories(cfg, data_cfg, uris: dict, scratch: dict) -> dict:
    """Read, shuffle and transform; returns what the summary needs (listing, report, partitions, ...)."""
    import ray

    s3cfg = data_cfg.s3
    shuffle = cfg.sessions.shuffle
    if shuffle not in SHUFFLES:
        raise PipelineConfigError(f"sessions.shuffle={shuffle!r}: expected one of {', '.join(SHUFFLES)}")
    listing = list_inputs(data_cfg.input, s3cfg, data_cfg.format)
    items = [{"kind": "events", "index": i, "uri": f.uri, "format": f.format, "size": f.size}
             for i, f in enumerate(listing.files)]
    planted_uri = resolve_planted(cfg)
    if planted_uri is not None:
        items += [{"kind": "planted", "uri": f.uri} for f in list_inputs(planted_uri, s3cfg, "parquet").files]
    partitions = num_partitions(cfg, estimated_rows(listing.files, s3cfg))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    sections = {name: as_mapping(cfg[name]) for name in ("sessions", "features", "traces")}
    sections["store"] = store_section(cfg)  # with the merchants' own knobs when the data has them
    transform_kwargs = {"run": uuid.uuid4().hex, "sections": sections, "uris": uris, "scratch": scratch,
                        "s3cfg": s3cfg}  # fmt: skip
    read_kwargs = {"data_cfg": data_cfg, "quarantine_dir": uris["quarantine"], "scratch": scratch}

    def report() -> ValidationReport:
        rep = merged_report(scratch["reports"], s3cfg, listing.skipped, data_cfg.quarantine_examples,
                            uris["quarantine"])
        rep.input_bytes = sum(f.size for f in listing.files)  # the share of unreadable files is of the whole input
        rep.check(data_cfg.max_bad_fraction, final=True, what=data_cfg.input)
        return rep

    if shuffle == "files":
        tasks = read_tasks(items, max(1, cfg.sessions.read_tasks_per_cpu * cpus))
        flush_rows = max(4096, cfg.sessions.rows_per_partition // 32)
        reader = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
            _read_task, batch_format="pyarrow", batch_size=1,
            fn_kwargs={**read_kwargs, "buckets": partitions, "flush_rows": flush_rows},
        )  # fmt: skip
        _execute(reader.materialize)
        rep = report()  # before the heavy work
        buckets = ray.data.from_items([{"bucket": b} for b in range(partitions)], override_num_blocks=partitions)
        raw = buckets.map_batches(_process_buckets, batch_format="pyarrow", batch_size=1, fn_kwargs=transform_kwargs)
        _execute(lambda: _write_parquet(raw, scratch["raw"], s3cfg))
    else:
        tasks = read_tasks(items, len(items))  # one file per task: the rows stream into the shuffle
        rows = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
            _read_task, batch_format="pyarrow", batch_size=1, fn_kwargs={**read_kwargs, "buckets": 0, "flush_rows": 0}
        )
        raw = rows.repartition(partitions, keys=["buyer_id"]).map_batches(
            _process_partition, batch_format="pyarrow", batch_size=None, fn_kwargs=transform_kwargs
        )
        _execute(lambda: _write_parquet(raw, scratch["raw"], s3cfg))
        rep = report()
    return {"listing": listing, "report": rep, "partitions": partitions, "planted": planted_uri or "",
            "shuffle": shuffle, "store": sections["store"]}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Features and the run


def _normalise_files(batch: pa.Table, mean: list[float], std: list[float], seq_len: int, s3cfg) -> Iterator[pa.Table]:
    """Ray Data UDF: raw-feature files → contract feature rows (read here: whole small files, no
    footer-scanning read operator needed)."""
    for uri in batch.column("uri").to_pylist():
        yield finish_features(io.read_parquet(uri, s3cfg), mean, std, seq_len)


def run_pipeline(cfg, out: str) -> dict:
    """All passes, writing under `out` (a fresh folder); returns the summary (also written there)."""
    import ray
    from omegaconf import OmegaConf
    from ray.data import DataContext

    from simpersona.runtime import Stopwatch, configure_ray_data
    from simpersona.storage import remove, write_json

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
    scratch = {name: storage.join_uri(out, f"_{name}") for name in SCRATCH}

    with sw.lap("histories"):
        run = process_histories(cfg, data_cfg, uris, scratch)
        stats = F.MerchantStats.from_merged(merged_partials(scratch["merchants"], s3cfg))
    with sw.lap("features"):
        parts = [json.loads(_read_small(u, s3cfg)) for u in _listing(scratch["stats"], s3cfg, ".json")]
        totals = combine_stats(parts)
        raw_files = [{"uri": u} for u in _listing(scratch["raw"], s3cfg, ".parquet")]
        feats = ray.data.from_items(raw_files, override_num_blocks=max(1, len(raw_files))).map_batches(
            _normalise_files, batch_format="pyarrow", batch_size=1,
            fn_kwargs={"mean": totals["mean"], "std": totals["std"], "seq_len": cfg.features.seq_len,
                       "s3cfg": s3cfg},
        )  # fmt: skip
        # dictionary pages help the id columns only; on the fixed-size lists they cost time for nothing
        _write_parquet(feats, uris["features"], s3cfg, use_dictionary=["history_id", "buyer_id", "merchant_id"])
        spec = F.feature_spec(cfg.features, cfg.sessions.unit, totals["mean"], totals["std"])
        write_json(uris["feature_spec"], spec, s3cfg)
    store = run["store"]  # the section the traces were replayed on
    write_storefront(uris["storefront"], store, T.top_catalog_rows(stats.products, store["products_per_merchant"]), s3cfg)
    for path in scratch.values():
        remove(path, s3cfg)
    summary = {
        **counts_summary(totals, run["report"], stats, cfg.sessions.unit),
        "engine": "ray",
        "shuffle": run["shuffle"],
        "partitions": run["partitions"],
        "input_files": len(run["listing"].files),
        "planted": run["planted"],
        "wall_s": sw.total(),
        "phases_s": sw.laps,
        "out": out,
    }
    write_json(uris["summary"], summary, s3cfg)
    return summary


def _keep_quarantine(exc: BadDataError, out: str, final: str, s3cfg) -> BadDataError:
    """A run stopped for bad rows leaves nothing half-written, except its quarantine, which the user
    needs: it moves to <final>.quarantine/ (beside any earlier, complete output) and the message says so."""
    import shutil

    src, dst = storage.join_uri(out, "quarantine"), f"{final}.quarantine"
    if storage.is_s3(out):
        return exc  # written in place on object stores: the message already names it
    shutil.rmtree(dst, ignore_errors=True)
    if Path(src).exists():
        shutil.move(src, dst)
    return BadDataError(str(exc).replace(src, dst))


def run_preprocess(cfg) -> dict:
    """The preprocess stage: DIR/preprocess/ from `cfg`, on a local Ray or the cluster it joins."""
    from simpersona.runtime import init_ray
    from simpersona.storage import atomic_output_dir, write_json

    init_ray(cfg)
    final = storage.join_uri(cfg.storage_path or cfg.run_dir, "preprocess")
    with atomic_output_dir(final, cfg.data.s3) as out:
        try:
            summary = run_pipeline(cfg, out)
        except BadDataError as exc:
            raise _keep_quarantine(exc, out, final, cfg.data.s3) from None
    summary["out"] = final
    write_json(storage.join_uri(final, "summary.json"), summary, cfg.data.s3)
    return summary
