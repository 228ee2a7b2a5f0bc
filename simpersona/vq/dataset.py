"""Feature Parquet as Ray Data datasets for the VQ stages: reading, validation, held-out merchants.

Validation runs as a Ray Data pass (in parallel, before any training), so bad input stops the job
with the one-line FeatureError of simpersona.vq.features rather than an exception wrapped by Ray
Train several layers deep.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from simpersona import storage
from simpersona.vq.features import (
    FeatureError,
    FeatureSpec,
    arrays_from_arrow,
    check_schema,
    concat_arrays,
    features_uri,
)
from simpersona.vq.kmeans import KMeansModel
from simpersona.vq.mixture import SequenceMixture


def feature_files(run_dir: str, s3=None) -> tuple[pafs.FileSystem, list[str]]:
    uri = features_uri(run_dir)
    fs, path = storage.resolve(uri, s3)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FeatureError(f"no features at {uri} (run the preprocess stage first)")
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    if not files:
        raise FeatureError(f"no Parquet files in {uri}")
    return fs, files


def count_rows(run_dir: str, s3=None) -> int:
    fs, files = feature_files(run_dir, s3)
    return sum(pq.ParquetFile(f, filesystem=fs).metadata.num_rows for f in files)


def read_features(run_dir: str, spec: FeatureSpec, columns: list[str] | tuple[str, ...], s3=None,
                  **read_args):
    """Ray Data dataset of the feature files, after checking the first file's schema against `spec`.

    Rows come in file-name order, whatever order Ray's tasks finish in: the trainer's batches (and so
    the trained model) must not depend on the cluster's timing (two runs once gave 12 vs 16 live codes)."""
    import ray.data

    fs, files = feature_files(run_dir, s3)
    check_schema(pq.read_schema(files[0], filesystem=fs), spec, storage.to_uri(fs, files[0]))
    ds = ray.data.read_parquet(files, filesystem=fs, columns=list(columns), **read_args)
    ds.context.execution_options.preserve_order = True  # this dataset's own context copy, not the global one
    return ds


def unwrap_error(exc: BaseException, cls: type[BaseException] = FeatureError) -> BaseException | None:
    """The `cls` exception a Ray task raised, found through Ray's wrappers (RayTaskError.cause,
    __cause__, __context__), so the driver can re-raise its one-line message."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, cls):
            return cause
        if isinstance(e, cls) and type(e).__module__ != "ray.exceptions":
            return e
        todo += [cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__]
    # Ray Data's UserCodeException does not always carry the worker's exception object, only its
    # formatted traceback: recover the message from the text.
    match = re.search(rf"{re.escape(cls.__module__)}\.{cls.__name__}: (.+)", str(exc))
    return cls(match.group(1).strip()) if match else None


def _prepare(batch: pa.Table, spec: dict, init: KMeansModel | SequenceMixture | None) -> pa.Table:
    spec_ = FeatureSpec.from_dict(spec)
    arrays = arrays_from_arrow(batch, spec_)
    if init is not None:
        codes = init.assign(arrays, spec_)
        batch = batch.append_column("init_code", pa.array(codes, pa.int32()))
    return batch


def validated(ds, spec: FeatureSpec, init: KMeansModel | SequenceMixture | None = None):
    """`ds` after a validation pass over every row, materialised (the training epochs reuse it); with
    `init` (the k-means peer, or the mixture fitted from its partition), each row gains `init_code`,
    its cluster under `init` (the partition EM starts from)."""
    try:
        return ds.map_batches(_prepare, batch_format="pyarrow",
                              fn_kwargs={"spec": spec.to_dict(), "init": init}).materialize()
    except Exception as exc:
        err = unwrap_error(exc)
        if err is not None:
            raise FeatureError(str(err).strip().splitlines()[-1]) from None
        raise


def without_merchants(ds, merchants: list[str]):
    """Rows whose merchant_id is not in `merchants`."""
    if not merchants:
        return ds
    value_set = pa.array(sorted(merchants), pa.string())

    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch["merchant_id"], value_set=value_set)))

    return ds.map_batches(keep, batch_format="pyarrow")


def heldout_merchants(cfg) -> list[str]:
    """Merchants held out for evaluation (eval.holdout): the run's split when the run has real
    events, else the same rule applied to the features' (merchant, buyer) pairs."""
    from pathlib import Path

    from simpersona.eval import holdout

    h = cfg.eval.holdout
    if cfg.eval.real_events or (Path(cfg.run_dir) / "preprocess" / "events").is_dir():
        return list(holdout.holdout_for(cfg).heldout)
    fs, files = feature_files(cfg.run_dir, cfg.data.s3)
    pairs = pa.concat_tables([pq.read_table(f, filesystem=fs, columns=["merchant_id", "buyer_id"]) for f in files])
    return holdout.select_heldout(pairs, h.merchants, h.seed)


def head_arrays(run_dir: str, spec: FeatureSpec, max_rows: int, columns: tuple[str, ...], s3=None,
                extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The first `max_rows` histories of the feature files (in file-name order, so the same rows every
    run) as validated numpy arrays, + `extra` columns as they are. Read by the driver: this sample is
    what the k-means peer is fitted on and the summary is measured on."""
    fs, files = feature_files(run_dir, s3)
    parts, rows = [], 0
    for f in files:
        for batch in pq.ParquetFile(f, filesystem=fs).iter_batches(batch_size=65536, columns=list(columns) + list(extra)):
            batch = pa.Table.from_batches([batch]).slice(0, max_rows - rows)
            arrays = arrays_from_arrow(batch, spec)
            for col in extra:
                arrays[col] = batch[col].to_numpy(zero_copy_only=False)
            parts.append(arrays)
            rows += batch.num_rows
            if rows >= max_rows:
                return concat_arrays(parts)
    return concat_arrays(parts)
