"""The assign stage: every history's type in one encoder pass, merchant distributions, type profiles.

Ray Data streams the feature files through a pool of `TypeAssigner` actors (`map_batches` with
`concurrency=vq.assign.actors`); each actor loads the VQ-VAE and the k-means peer once and assigns
large batches (the encoder packs away padding, so its cost follows the real events). The driver
consumes the stream once: it writes DIR/assign/types.parquet and accumulates the per-merchant type
counts and the per-type sums behind the profiles as the batches arrive.

Outputs (DIR/assign/): types.parquet (history_id, buyer_id, merchant_id, type_id, kmeans_type_id),
merchant_types.parquet (merchant_id, type_id, count, prob; see simpersona.vq.merchants),
type_profiles.parquet + type_profiles.json (one row per code with its description), summary.json.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from simpersona import storage
from simpersona.errors import ConfigError
from simpersona.vq.features import (
    ID_COLUMNS,
    LABEL_COLUMNS,
    SEQ_COLUMNS,
    FeatureError,
    FeatureSpec,
    arrays_from_arrow,
    load_spec,
)
from simpersona.vq.kmeans import KMeansModel
from simpersona.vq.merchants import MerchantCounts, distributions
from simpersona.vq.model import load_model, read_bytes, to_tensors
from simpersona.vq.profiles import PROFILE_FIELDS, TypeStats, history_stats

TYPES_SCHEMA = pa.schema([pa.field("history_id", pa.string()), pa.field("buyer_id", pa.string()),
                          pa.field("merchant_id", pa.string()), pa.field("type_id", pa.int32()),
                          pa.field("kmeans_type_id", pa.int32())])
INPUT_COLUMNS: tuple[str, ...] = ID_COLUMNS + SEQ_COLUMNS + ("agg",) + LABEL_COLUMNS + ("planted_type",)


def model_dir(cfg) -> str:
    return storage.join_uri(cfg.storage_path or cfg.run_dir, "vqvae", "model")


def check_compatible(model_spec: FeatureSpec, data_spec: FeatureSpec) -> None:
    """The features must have the layout the model was trained on."""
    for name in ("seq_len", "price_buckets", "gap_buckets", "agg_names", "events"):
        a, b = getattr(data_spec, name), getattr(model_spec, name)
        if a != b:
            shown = (len(a), len(b)) if name == "agg_names" else (a, b)
            raise FeatureError(f"feature_spec.json {name} = {shown[0]} but the VQ-VAE was trained with "
                               f"{shown[1]}; retrain (the vqvae stage) on these features")


class TypeAssigner:
    """Ray Data actor: the model and the k-means peer are loaded once, in the constructor."""

    def __init__(self, model_dir: str, torch_threads: int):
        torch.set_num_threads(max(1, int(torch_threads)))
        self.model, self.spec, _ = load_model(model_dir)
        try:
            self.kmeans = KMeansModel.from_bytes(read_bytes(storage.join_uri(model_dir, "kmeans.npz")))
        except FileNotFoundError:
            self.kmeans = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        arrays = arrays_from_arrow(batch, self.spec)
        types = self.model.encode_indices(to_tensors({k: arrays[k] for k in SEQ_COLUMNS + ("agg",)})).numpy()
        km = self.kmeans.assign(arrays, self.spec) if self.kmeans is not None else np.full(len(types), -1)
        cols = {c: batch[c] for c in ID_COLUMNS}
        cols["type_id"] = pa.array(types.astype(np.int32))
        cols["kmeans_type_id"] = pa.array(km.astype(np.int32))
        cols.update({k: pa.array(v) for k, v in history_stats(arrays, self.spec).items()})
        if "planted_type" in batch.column_names:
            cols["planted_type"] = batch["planted_type"]
        return pa.table(cols)


def check_local_cpus(cfg, cluster_cpus: float) -> None:
    """On a local Ray (fixed resources) the actor pool must leave one CPU for Ray Data's read tasks:
    with 3 actors x 0.5 CPU on 2 CPUs the reads never got scheduled and the stage waited forever with
    no error. A cluster's autoscaler can add CPUs, so only local Ray is checked."""
    a = cfg.vq.assign
    pool = int(a.actors) * float(a.actor_cpus)
    if pool + 1.0 > cluster_cpus + 1e-9:
        raise ConfigError(f"vq.assign.actors={int(a.actors)} x vq.assign.actor_cpus={float(a.actor_cpus):g} = "
                          f"{pool:g} CPUs leaves {max(cluster_cpus - pool, 0):g} of this Ray's {cluster_cpus:g} CPUs "
                          f"for the read tasks, which need 1: the stage would wait forever; lower vq.assign.actors "
                          f"or vq.assign.actor_cpus")


def assign_stream(cfg, spec: FeatureSpec):
    """The lazily assigned dataset (nothing runs until it is iterated)."""
    from ray.data import ActorPoolStrategy

    from simpersona.vq import dataset

    a = cfg.vq.assign
    ds = dataset.read_features(cfg.run_dir, spec, INPUT_COLUMNS, cfg.data.s3)
    return ds.map_batches(TypeAssigner, fn_constructor_kwargs={"model_dir": model_dir(cfg),
                                                               "torch_threads": int(a.torch_threads)},
                          batch_size=int(a.batch_size), batch_format="pyarrow",
                          compute=ActorPoolStrategy(size=int(a.actors)), num_cpus=float(a.actor_cpus))


def run_assign(cfg) -> dict:
    """The assign stage (see module doc); returns the summary written to DIR/assign/summary.json."""
    from simpersona.runtime import configure_ray_data, init_ray
    from simpersona.storage import write_json
    from simpersona.vq.dataset import count_rows, unwrap_error

    t0 = time.perf_counter()
    s3 = cfg.data.s3
    _, model_spec, meta = load_model(model_dir(cfg))
    spec = load_spec(cfg.run_dir, s3)
    check_compatible(model_spec, spec)
    k = int(meta["hparams"]["codebook_size"])
    out = storage.join_uri(cfg.storage_path or cfg.run_dir, "assign")
    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    init_ray(cfg)
    if local:
        import ray

        check_local_cpus(cfg, float(ray.cluster_resources().get("CPU", 0)))
    configure_ray_data(cfg.progress)
    total = count_rows(cfg.run_dir, s3)

    stats, merchants, kmeans_seen = TypeStats(k), MerchantCounts(), False
    rows = 0
    writer = storage.parquet_writer(storage.join_uri(out, "types.parquet"), TYPES_SCHEMA, s3)
    try:
        with tqdm(total=total, desc="assign", unit="hist", disable=not cfg.progress) as bar:
            for batch in assign_stream(cfg, spec).iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.write_table(batch.select(TYPES_SCHEMA.names).cast(TYPES_SCHEMA))
                stats.update(batch)
                merchants.update(batch)
                kmeans_seen = kmeans_seen or bool(len(batch) and batch["kmeans_type_id"][0].as_py() >= 0)
                rows += len(batch)
                bar.update(len(batch))
    except Exception as exc:
        err = unwrap_error(exc)
        if err is not None:
            raise FeatureError(str(err).strip().splitlines()[-1]) from None
        raise
    finally:
        writer.close()
    assign_s = time.perf_counter() - t0

    dist = distributions(merchants.table(), k, float(cfg.vq.assign.merchant_prior))
    storage.write_parquet(dist, storage.join_uri(out, "merchant_types.parquet"), s3)
    profiles = stats.profiles()
    population = stats.population()
    write_json(storage.join_uri(out, "type_profiles.json"), {"population": population, "types": profiles}, s3)
    storage.write_parquet(profiles_table(profiles), storage.join_uri(out, "type_profiles.parquet"), s3)

    used = [p for p in profiles if p["histories"]]
    conv = np.array([p["conversion"] for p in used]) if used else np.zeros(0)
    summary = {
        "histories_assigned": rows,
        "merchants": int(len(set(dist["merchant_id"].to_pylist()))),
        "wall_s": round(time.perf_counter() - t0, 3),
        "assign_s": round(assign_s, 3),
        "histories_per_s": round(rows / max(assign_s, 1e-9), 1),
        "codebook_size": k,
        "types_used": len(used),
        "kmeans": kmeans_seen,
        "type_conversion": ({"min": float(conv.min()), "median": float(np.median(conv)), "max": float(conv.max())}
                            if conv.size else None),
        "actors": int(cfg.vq.assign.actors),
        "out": out,
    }
    write_json(storage.join_uri(out, "summary.json"), summary, s3)
    return summary


def profiles_table(profiles: list[dict]) -> pa.Table:
    cols: dict[str, list] = {"type_id": [p["type_id"] for p in profiles]}
    for f in PROFILE_FIELDS:
        cols[f] = [p.get(f) for p in profiles]
    for f in ("planted_majority", "planted_purity"):
        if any(f in p for p in profiles):
            cols[f] = [p.get(f) for p in profiles]
    cols["description"] = [p["description"] for p in profiles]
    t = pa.table(cols)
    return t.set_column(0, "type_id", t["type_id"].cast(pa.int32()))

