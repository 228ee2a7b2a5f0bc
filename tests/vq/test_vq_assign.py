"""The assign stage on the trained planted run: Ray Data actor pool, determinism, distributions, profiles."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from simpersona.config import load
from simpersona.vq.assign import TYPES_SCHEMA, check_compatible, run_assign
from simpersona.vq.features import FeatureError, FeatureSpec, arrays_from_arrow, load_spec
from simpersona.vq.kmeans import KMeansModel
from simpersona.vq.merchants import check, distributions
from simpersona.vq.model import load_model, to_tensors

pytestmark = pytest.mark.slow
ARGS = ["progress=false", "vq.assign.batch_size=4096"]


@pytest.fixture(scope="module")
def assigned(trained):
    run_dir, _ = trained
    cfg = load("assign", [f"run_dir={run_dir}", *ARGS])
    first = run_assign(cfg)
    t1 = pq.read_table(os.path.join(run_dir, "assign", "types.parquet"))
    second = run_assign(cfg)
    t2 = pq.read_table(os.path.join(run_dir, "assign", "types.parquet"))
    return run_dir, first, t1, second, t2


def test_summary(assigned):
    _, s, types, _, _ = assigned
    assert s["histories_assigned"] == types.num_rows == 16000
    assert s["merchants"] == len(pc.unique(types["merchant_id"]))
    assert s["wall_s"] > 0 and s["histories_per_s"] > 0 and s["codebook_size"] == 8


def test_deterministic_and_complete(assigned):
    run_dir, _, t1, _, t2 = assigned
    assert t1.schema.equals(TYPES_SCHEMA)
    a, b = t1.sort_by("history_id"), t2.sort_by("history_id")
    assert a.equals(b)
    features = pq.read_table(os.path.join(run_dir, "preprocess", "features"), columns=["history_id"])
    assert sorted(features["history_id"].to_pylist()) == a["history_id"].to_pylist()


def test_types_are_the_models_and_kmeans_codes(assigned):
    run_dir, _, types, _, _ = assigned
    model, spec, _ = load_model(os.path.join(run_dir, "vqvae", "model"))
    with open(os.path.join(run_dir, "vqvae", "model", "kmeans.npz"), "rb") as fh:
        km = KMeansModel.from_bytes(fh.read())
    table = pq.read_table(os.path.join(run_dir, "preprocess", "features")).slice(0, 3000)
    arrays = arrays_from_arrow(table, spec)
    codes = model.encode_indices(to_tensors({k: v for k, v in arrays.items() if k != "planted_type"})).numpy()
    got = dict(zip(types["history_id"].to_pylist(), zip(types["type_id"].to_pylist(),
                                                         types["kmeans_type_id"].to_pylist())))
    pairs = [got[h] for h in table["history_id"].to_pylist()]
    assert [p[0] for p in pairs] == codes.tolist()
    assert [p[1] for p in pairs] == km.assign(arrays, spec).tolist()


def test_merchant_distributions(assigned):
    run_dir, _, types, _, _ = assigned
    dist = pq.read_table(os.path.join(run_dir, "assign", "merchant_types.parquet"))
    check(dist)  # every merchant sums to 1
    sums = dist.group_by("merchant_id").aggregate([("prob", "sum")])["prob_sum"].to_numpy()
    assert np.allclose(sums, 1.0, atol=1e-9)
    counts = types.group_by(["merchant_id", "type_id"]).aggregate([([], "count_all")])
    expect = {(m, t): c for m, t, c in zip(*(counts[c].to_pylist() for c in ("merchant_id", "type_id", "count_all")))}
    got = {(m, t): c for m, t, c in zip(*(dist[c].to_pylist() for c in ("merchant_id", "type_id", "count")))}
    assert {key: c for key, c in got.items() if c} == expect
    # smoothing pulls towards the population mix but keeps the order of a merchant's own counts
    for m in dist["merchant_id"].unique().to_pylist()[:5]:
        rows = dist.filter(pc.equal(dist["merchant_id"], m))
        c, p = rows["count"].to_numpy(), rows["prob"].to_numpy()
        assert np.all(p > 0) and np.argmax(p) == np.argmax(c)


def test_distributions_arithmetic():
    counts = pa.table({"merchant_id": ["a", "a", "b"], "type_id": pa.array([0, 2, 2], pa.int32()),
                       "count": pa.array([3, 1, 4], pa.int64())})
    raw = distributions(counts, k=4, prior=0.0)
    assert raw["type_id"].to_pylist() == [0, 2, 0, 2]  # types in use only, the same for every merchant
    assert raw["prob"].to_pylist() == [0.75, 0.25, 0.0, 1.0]
    smooth = distributions(counts, k=4, prior=2.0)  # population share: type 0 3/8, type 2 5/8
    assert np.allclose(smooth["prob"].to_numpy(), [(3 + 0.75) / 6, (1 + 1.25) / 6, 0.75 / 6, (4 + 1.25) / 6])
    with pytest.raises(ValueError, match="merchant_prior must be >= 0"):
        distributions(counts, k=4, prior=-1)


def test_type_profiles(assigned):
    run_dir, _, types, _, _ = assigned
    with open(os.path.join(run_dir, "assign", "type_profiles.json")) as fh:
        data = json.load(fh)
    profiles = data["types"]
    assert [p["type_id"] for p in profiles] == list(range(8))
    assert abs(sum(p["share"] for p in profiles) - 1) < 1e-9
    table = pq.read_table(os.path.join(run_dir, "assign", "type_profiles.parquet"))
    assert table.num_rows == 8 and table["type_id"].to_pylist() == list(range(8))
    features = pq.read_table(os.path.join(run_dir, "preprocess", "features"),
                             columns=["history_id", "label_purchase"]).sort_by("history_id")
    t = types.sort_by("history_id")["type_id"].to_numpy()
    y = features["label_purchase"].to_numpy()
    for p in profiles:
        assert p["conversion"] == pytest.approx(y[t == p["type_id"]].mean())
        assert p["description"].startswith(f"{100 * p['share']:.0f}% of buyer histories.")
        assert "make a purchase" in p["description"]
        assert p["planted_purity"] > 0.3
    conv = [p["conversion"] for p in profiles]
    assert max(conv) - min(conv) > 0.3  # the types separate buying behaviour


def test_features_from_another_layout_are_refused(planted_dir):
    spec = load_spec(planted_dir)
    other = FeatureSpec.from_dict({**spec.to_dict(), "agg_names": list(spec.agg_names) + ["extra"],
                                   "agg_mean": list(spec.agg_mean) + [0.0], "agg_std": list(spec.agg_std) + [1.0]})
    with pytest.raises(FeatureError, match=r"feature_spec.json agg_names = 16 but the VQ-VAE was trained with 15"):
        check_compatible(spec, other)


@pytest.mark.parametrize("actors, actor_cpus, cpus, fits", [
    (2, 0.5, 2, True), (3, 0.33, 2, True), (3, 0.5, 2, False), (2, 1.0, 2, False), (8, 1.0, 16, True),
])
def test_actor_pool_must_leave_a_cpu_for_reading(actors, actor_cpus, cpus, fits):
    """3 x 0.5 CPU on a 2-CPU local Ray hung without a word (the read tasks never ran): now one line."""
    from simpersona.config import ConfigError
    from simpersona.vq.assign import check_local_cpus

    cfg = load("assign", ["run_dir=x", f"vq.assign.actors={actors}", f"vq.assign.actor_cpus={actor_cpus}"])
    if fits:
        check_local_cpus(cfg, cpus)
        return
    with pytest.raises(ConfigError, match=rf"^vq.assign.actors={actors} x vq.assign.actor_cpus={actor_cpus:g} = "
                                          rf"{actors * actor_cpus:g} CPUs leaves .* of this Ray's {cpus} CPUs for "
                                          r"the read tasks, which need 1: the stage would wait forever"):
        check_local_cpus(cfg, cpus)
