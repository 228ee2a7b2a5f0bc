"""Held-out protocol: deterministic merchant choice with seeded ties, stable disjoint halves, and the
real-vs-real ceiling on the bundled Tmall data."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta

import polars as pl
import pytest

from simpersona.config import load
from simpersona.eval import holdout
from simpersona.eval.holdout import HALF_RATES, HALF_TYPES, HoldoutSplit, read_raw_events


@pytest.fixture(scope="module")
def tmall_events(tmall_csv):
    cfg = load("evaluate", [f"data.input={tmall_csv}", "data.adapter=tmall2014", "sessions.day_resolution=true",
                            "progress=false"])
    return read_raw_events(cfg)


def toy_events() -> pl.DataFrame:
    """m0 has 10 buyers, m1 8, and m2..m6 tie at 5 buyers each; each buyer visits on day i."""
    rows = []
    sizes = {"m0": 10, "m1": 8, **{f"m{k}": 5 for k in range(2, 7)}}
    for m, n in sizes.items():
        for i in range(n):
            rows.append({"buyer_id": f"u{i}", "merchant_id": m, "ts": datetime(2024, 1, 1) + timedelta(days=i),
                         "event": "view", "session_id": f"u{i}|{m}"})
    return pl.DataFrame(rows).with_columns(pl.col("ts").cast(pl.Datetime("ms")))


def test_select_heldout_seeded_ties():
    ev = toy_events()
    picks = {seed: holdout.select_heldout(ev, 4, seed) for seed in range(12)}
    for seed, p in picks.items():
        assert p[:2] == ["m0", "m1"]  # strictly larger merchants always come first
        assert len(set(p)) == 4
        assert holdout.select_heldout(ev, 4, seed) == p  # same seed, same choice
        # row order does not matter
        assert holdout.select_heldout(ev.sample(fraction=1.0, shuffle=True, seed=seed), 4, seed) == p
    assert len({tuple(p[2:]) for p in picks.values()}) > 1  # ties are broken by the seed, not by id


def test_select_heldout_errors():
    with pytest.raises(ValueError, match="cannot hold out 7 merchants: the events have only 7"):
        holdout.select_heldout(toy_events(), 7, 0)
    with pytest.raises(ValueError, match="eval.heldout_merchants must be >= 1"):
        holdout.select_heldout(toy_events(), 0, 0)
    with pytest.raises(ValueError, match="eval.split must be one of hash|time"):
        holdout.split_halves(toy_events(), ["m0"], "random")


def test_hash_halves_disjoint_stable_and_consistent_across_merchants():
    ev = toy_events()
    a = holdout.split_halves(ev, ["m0", "m1"], "hash", salt="7")
    b = holdout.split_halves(ev.reverse(), ["m0", "m1"], "hash", salt="7")
    assert a.equals(b)
    assert a.height == 18  # every buyer of both merchants, once
    assert a.select("merchant_id", "buyer_id").is_unique().all()
    per_buyer = a.group_by("buyer_id").agg(pl.col("half").n_unique().alias("k"))
    assert per_buyer["k"].max() == 1  # a buyer is in the same half at every merchant
    # the protocol's hash: BLAKE2b-64 of "salt:id", little-endian (fixed across processes and versions)
    pinned = [6527058009055297126, 10423646886995878104, 10419950520499550559]
    assert [int.from_bytes(hashlib.blake2b(f"7:u{i}".encode(), digest_size=8).digest(), "little")
            for i in range(3)] == pinned
    assert holdout.buyer_hash(["u0", "u1", "u2"], "7").tolist() == pinned
    assert holdout.buyer_hash(["u0", "u1", "u2"], "8").tolist() != pinned
    halves = dict(zip(a.filter(pl.col("merchant_id") == "m0")["buyer_id"], a.filter(pl.col("merchant_id") == "m0")["half"]))
    assert [halves[f"u{i}"] for i in range(3)] == [h % 2 for h in pinned]


def test_time_halves_split_earlier_from_later():
    ev = toy_events()
    halves = holdout.split_halves(ev, ["m0", "m1"], "time", salt="0")
    m0 = halves.filter(pl.col("merchant_id") == "m0").sort("buyer_id")
    early = set(m0.filter(pl.col("half") == HALF_TYPES)["buyer_id"])
    assert early == {f"u{i}" for i in range(5)}  # first visits on days 0-4 of 10
    m1 = halves.filter(pl.col("merchant_id") == "m1")
    assert (m1["half"] == HALF_TYPES).sum() == 4 and (m1["half"] == HALF_RATES).sum() == 4


def test_split_save_load_roundtrip(tmp_path):
    split = holdout.make_split(toy_events(), 3, seed=5, method="hash")
    assert split.salt == "5"
    split.save(tmp_path / "holdout")
    back = HoldoutSplit.load(tmp_path / "holdout")
    assert back.heldout == split.heldout and back.halves.equals(split.halves)
    assert (back.method, back.seed, back.salt) == ("hash", 5, "5")
    assert holdout.train_events(toy_events(), split)["merchant_id"].unique().sort().to_list() == sorted(
        set(f"m{k}" for k in range(7)) - set(split.heldout))


def test_tmall_heldout_42_and_ceiling(tmall_events):
    split = holdout.make_split(tmall_events, 42, seed=0)
    assert len(split.heldout) == 42
    assert split.heldout[:5] == ["7868", "21110", "11080", "14020", "25372"]  # 297, 275, 194, 187, 184 buyers
    counts = holdout.merchant_buyers(tmall_events)
    top = counts.filter(pl.col("merchant_id").is_in(split.heldout))
    rest = counts.filter(~pl.col("merchant_id").is_in(split.heldout))
    assert top["buyers"].min() >= rest["buyers"].max()
    assert holdout.make_split(tmall_events, 42, seed=0).heldout == split.heldout
    # halves: disjoint, covering every buyer of every held-out merchant, both halves non-empty
    assert split.halves.height == top["buyers"].sum()
    sizes = split.halves.group_by("merchant_id", "half").agg(pl.len().alias("n"))
    assert sizes.height == 84 and sizes["n"].min() >= 20
    ceil = holdout.ceiling(tmall_events, split)
    assert 0 < ceil["ara_overall"] <= 1 and 0 < ceil["ara_minmax_overall"] <= 1
    assert 0 < ceil["ara_pooled"] <= 1 and ceil["spearman_cr"] > 0.3
    # half 0 and half 1 are different buyers: rates differ somewhere, so the ceiling is below 1
    assert ceil["ara_overall"] < 1


def test_holdout_for_reuses_only_a_split_of_the_same_events(tmp_path):
    events = toy_events()
    src = tmp_path / "events.parquet"
    events.write_parquet(src)
    cfg = load("evaluate", [f"run_dir={tmp_path / 'run'}", f"eval.real_events={src}", "eval.holdout.merchants=2"])
    first = holdout.holdout_for(cfg)
    assert first.heldout == ["m0", "m1"]
    info = holdout.holdout_dir(cfg) / "heldout.json"
    stamp = info.stat().st_mtime_ns
    assert holdout.holdout_for(cfg).halves.equals(first.halves) and info.stat().st_mtime_ns == stamp  # reused
    events.filter(pl.col("merchant_id") != "m0").write_parquet(src)  # other data under the same name
    os.utime(src, (1, 1))
    assert holdout.holdout_for(cfg).heldout[0] == "m1"  # made afresh from the new events
