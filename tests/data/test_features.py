"""Buyer features: a history computed by hand, the pandas groupby().apply implementation agreeing with
the vectorised one, exact normalisation statistics, planted types, the contract schema."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from simpersona.data import features as F
from simpersona.data.config import FeatureConfig, SessionConfig
from simpersona.data.sessions import sessionize
from testkit.preprocess_peers import pandas_features
from tests.data.canonical_rows import canonical

# b1 at m1: two sessions (a 25-hour gap); b2 sets the reference time. Merchant mean price = 280 / 7 = 40.
EXAMPLE = [
    ("b1", "m1", "2014-06-01 10:00:00", "view", "p1", "c1", 10.0),
    ("b1", "m1", "2014-06-01 10:00:00", "view", "p2", "c1", 40.0),  # same time
    ("b1", "m1", "2014-06-01 10:00:30", "cart", "p2", "c1", 40.0),  # 30 s
    ("b1", "m1", "2014-06-01 10:20:30", "view", "p3", "c2", 25.0),  # 20 min
    ("b1", "m1", "2014-06-02 12:00:00", "view", "p2", "c1", 40.0),  # next day: new session
    ("b1", "m1", "2014-06-02 12:05:00", "purchase", "p2", "c1", 40.0),
    ("b1", "m1", "2014-06-02 12:06:00", "search", None, "c9", None),  # 60 s exactly
    ("b2", "m1", "2014-06-03 09:00:00", "view", "p4", "c1", 85.0),
]


def raw_of(rows, unit="buyer_merchant", planted=None, **feature_kw):
    events = canonical(rows)
    df = pl.from_arrow(events)
    stats = F.MerchantStats.from_merged(F.merge_partials(F.merchant_partials(df)))
    sessions = sessionize(events, SessionConfig(unit=unit))
    return F.raw_features(sessions, stats, FeatureConfig(**feature_kw), unit, planted), stats


def test_hand_computed_history():
    raw, stats = raw_of(EXAMPLE)
    assert stats.prices.row(0) == ("m1", 40.0)
    assert raw.column("history_id").to_pylist() == ["b1|m1", "b2|m1"]
    row = raw.slice(0, 1).to_pylist()[0]
    pad = [0] * 25
    assert row["seq_event"] == pad + [1, 1, 2, 1, 1, 5, 6]
    # log(10/40) < -log 2 → 1; log(25/40) in (-log 2, -log 2 / 3] → 2; 40/40 → 3; no price → 0
    assert row["seq_price"] == pad + [1, 3, 3, 2, 3, 3, 0]
    # first / same time → 1; 30 s and exactly 60 s → 2 (upper edges inclusive); 5 and 20 min → 3; 25 h → 5
    assert row["seq_gap"] == pad + [1, 1, 2, 3, 5, 3, 2]
    # 1 = product seen before in the history, 2 = category differs from the previous event's
    assert row["seq_flags"] == pad + [0, 0, 1, 2, 3, 1, 2]
    day = 86_400_000.0
    expected = {
        "log_events": math.log1p(7), "log_sessions": math.log1p(2), "log_events_per_session": math.log1p(3.5),
        "log_views": math.log1p(4), "log_carts": math.log1p(1), "log_remove_carts": 0.0, "log_favorites": 0.0,
        "log_purchases": math.log1p(1), "log_searches": math.log1p(1),
        "view_share": 4 / 7, "cart_rate": 1 / 7, "remove_cart_rate": 0.0, "favorite_rate": 0.0,
        "purchase_rate": 1 / 7, "search_rate": 1 / 7,
        "session_conversion": 0.5,  # one of two sessions has a purchase
        "cart_abandon_rate": 1.0,  # the only session with a cart ends without a purchase after it
        "price_level": (math.log(0.25) + math.log(0.625)) / 6, "price_known_share": 6 / 7,
        "log_recency_days": math.log1p((20 * 3600 + 54 * 60) * 1000 / day),  # 06-02 12:06 → 06-03 09:00
        "log_active_days": math.log1p(2), "log_span_days": math.log1p((26 * 3600 + 6 * 60) * 1000 / day),
        "log_distinct_products": math.log1p(3), "log_distinct_categories": math.log1p(3),
        "repeat_product_share": 3 / 7, "log_merchants": math.log1p(1),
    }  # fmt: skip
    assert set(expected) == set(F.AGG_NAMES)
    got = dict(zip(F.AGG_NAMES, row["agg_raw"]))
    for name in F.AGG_NAMES:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
    assert (row["label_purchase"], row["label_cart_abandon"]) == (1, 0)  # the purchase follows the cart
    assert row["label_depth"] == pytest.approx(math.log1p(3.5), abs=1e-6)
    assert (row["n_events"], row["n_sessions"], row["planted_type"]) == (7, 2, -1)


def test_cart_abandon_label_and_last_L_window():
    rows = [("b1", "m1", f"2014-06-01 10:{m:02d}", "view", f"p{m}", "c1", 5.0) for m in range(40)]
    rows += [("b1", "m1", "2014-06-01 10:45", "purchase", "p1", "c1", 5.0),
             ("b1", "m1", "2014-06-01 10:46", "cart", "p2", "c1", 5.0)]  # fmt: skip
    raw, _ = raw_of(rows, seq_len=8)
    row = raw.to_pylist()[0]
    assert row["seq_event"] == [1, 1, 1, 1, 1, 1, 5, 2]  # the last 8 of 42 events, no padding
    assert row["seq_gap"][-3:] == [2, 3, 2]  # 60 s, 6 min, 60 s
    assert (row["label_purchase"], row["label_cart_abandon"]) == (1, 1)  # a cart after the last purchase


def test_whole_buyer_histories_and_planted_types():
    rows = EXAMPLE + [("b1", "m2", "2014-06-01 11:00", "view", "q1", "c5", 7.0)]
    planted = pl.DataFrame({"buyer_id": ["b1", "b1", "b2"], "merchant_id": ["m1", "m2", "m1"],
                            "planted_type": [3, 5, 2]})  # fmt: skip
    raw, _ = raw_of(rows, planted=planted)
    assert dict(zip(raw.column("history_id").to_pylist(), raw.column("planted_type").to_pylist())) == {
        "b1|m1": 3, "b1|m2": 5, "b2|m1": 2}  # fmt: skip
    raw, _ = raw_of(rows, unit="buyer", planted=planted)
    assert raw.column("history_id").to_pylist() == ["b1", "b2"]
    assert raw.column("merchant_id").to_pylist() == ["*", "*"]
    assert raw.column("planted_type").to_pylist() == [-1, 2]  # b1's histories differ in type
    b1 = dict(zip(F.AGG_NAMES, raw.to_pylist()[0]["agg_raw"]))
    assert b1["log_merchants"] == pytest.approx(math.log1p(2))
    assert b1["log_sessions"] == pytest.approx(math.log1p(3))


def test_pandas_groupby_apply_agrees_with_the_vectorised_features(tmp_path):
    from simpersona.data.config import SynthConfig
    from simpersona.data.synthetic import generate_shard

    events, _ = generate_shard(SynthConfig(buyers=600, shard_buyers=600, merchants=12, seed=3), 0)
    cfg = type("Cfg", (), {"sessions": SessionConfig(), "features": FeatureConfig()})()
    df = pl.from_arrow(events)
    stats = F.MerchantStats.from_merged(F.merge_partials(F.merchant_partials(df)))
    vec = F.raw_features(sessionize(events, cfg.sessions), stats, cfg.features, "buyer_merchant")
    pdf = pandas_features(events, cfg)
    assert sorted(pdf.index) == sorted(vec.column("history_id").to_pylist())
    pdf = pdf.loc[vec.column("history_id").to_pylist()]  # the same row order
    for name in F.SEQ_COLUMNS:
        assert np.array_equal(np.stack(pdf[name].to_numpy()), np.array(vec.column(name).to_pylist())), name
    np.testing.assert_allclose(np.stack(pdf["agg_raw"].to_numpy()), F.agg_matrix(vec), rtol=0, atol=1e-12)
    for name in ("label_purchase", "label_cart_abandon"):
        assert pdf[name].tolist() == vec.column(name).to_pylist()
    # the sample exercises every event type and flag, so the comparison covers every branch
    assert set(df["event"].unique().to_list()) == {"view", "cart", "remove_cart", "favorite", "purchase", "search"}


def test_exact_moments_do_not_depend_on_how_rows_are_split():
    rng = np.random.default_rng(0)
    agg = rng.normal(3.0, 2.0, size=(1000, len(F.AGG_NAMES)))
    whole = F.finish_moments(*F.partial_moments(agg))
    parts = [F.partial_moments(agg[a:b]) for a, b in ((0, 10), (10, 517), (517, 1000))]
    assert F.finish_moments(*F.add_moments(parts)) == whole  # bit-identical, not merely close
    np.testing.assert_allclose(whole[0], agg.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(whole[1], agg.std(axis=0), rtol=1e-5)


def test_normalised_features_follow_the_contract():
    raw, _ = raw_of(EXAMPLE + [("b3", "m1", "2014-06-02 10:00", "favorite", "p4", "c1", 85.0)])
    mean, std = F.finish_moments(*F.partial_moments(F.agg_matrix(raw)))
    out = F.normalise(raw, mean, std, 32)
    assert F.normalise(F.pack_raw(raw), mean, std, 32).equals(out)  # the pipeline's scratch format
    assert out.schema.equals(F.features_schema(32))
    assert out.column_names == ["history_id", "buyer_id", "merchant_id", "seq_event", "seq_price", "seq_gap",
                                "seq_flags", "agg", "label_purchase", "label_cart_abandon", "label_depth",
                                "planted_type"]  # fmt: skip
    assert out.schema.field("agg").type == pa.list_(pa.float32(), len(F.AGG_NAMES))
    # token sequences: one byte per token, the same tokens as the raw rows' lists
    assert out.schema.field("seq_event").type == pa.binary(32)
    for name in F.SEQ_COLUMNS:
        assert [list(v) for v in out.column(name).to_pylist()] == raw.column(name).to_pylist(), name
    z = F.agg_matrix(out.rename_columns([c if c != "agg" else "agg_raw" for c in out.column_names]))
    varying = np.asarray(std) != 1.0
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0)[varying], 1.0, atol=1e-4)
    spec = F.feature_spec(FeatureConfig(), "buyer_merchant", mean, std)
    assert (spec["seq_len"], spec["price_buckets"], spec["gap_buckets"]) == (32, 5, 5)
    assert spec["agg_names"] == list(F.AGG_NAMES) and len(spec["agg_mean"]) == len(F.AGG_NAMES)
    assert spec["events"] == ["view", "cart", "remove_cart", "favorite", "purchase", "search"]


def test_bad_feature_settings_fail_with_one_line():
    with pytest.raises(F.FeatureConfigError, match=r"features.gap_buckets=4 must equal len\(gap_edges_s\) \+ 2 = 5"):
        F.check(FeatureConfig(gap_buckets=4))
    with pytest.raises(F.FeatureConfigError, match=r"features.gap_edges_s=\[60.0, 30.0\]: must be positive and"):
        F.check(FeatureConfig(gap_edges_s=[60.0, 30.0], gap_buckets=4))
    with pytest.raises(F.FeatureConfigError, match=r"features.seq_len=0: must be at least 1"):
        F.check(FeatureConfig(seq_len=0))
