"""Synthetic generator: determinism, planted types that match their specification, Tmall-like marginals,
the canonical schema, and shard-by-shard streaming."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simpersona.config import load
from simpersona.data.config import SynthConfig, SynthKnobsConfig
from simpersona.data.schema import EVENTS, SCHEMA, conform
from simpersona.data.synthetic import (
    KNOB_NAMES,
    PLANTED_SCHEMA,
    REFERENCE_KNOBS,
    TMALL_TARGETS,
    WHATIF_OUTCOMES,
    SynthError,
    as_synth,
    build_world,
    expected_effect,
    generate,
    generate_shard,
    knob_factors,
    population_expectations,
    true_effect,
    type_expectations,
    write_shard,
)

SMALL = SynthConfig(buyers=2500, shard_buyers=1000, merchants=12, seed=3, executor="serial")
# One shard big enough that the rarest type (2% of histories) has ~1,400 histories.
BIG = SynthConfig(buyers=40000, shard_buyers=40000, seed=11)
SESSION_GAP_S = 1800  # sessions.gap_minutes default: the generator's gaps straddle it


@pytest.fixture(scope="module")
def big():
    events, planted = generate_shard(BIG, 0)
    return events, planted


@pytest.fixture(scope="module")
def histories(big):
    """One row per history: counts per event, sessions recovered by a 30-minute inactivity gap."""
    events, planted = big
    e = pl.from_arrow(events).sort("seq")
    e = e.with_columns(gap=pl.col("ts").diff().over("buyer_id", "merchant_id").dt.total_seconds())
    h = e.group_by("buyer_id", "merchant_id").agg(
        n=pl.len(),
        sessions=(pl.col("gap").is_null() | (pl.col("gap") > SESSION_GAP_S)).sum(),
        **{f"n_{x}": (pl.col("event") == x).sum() for x in EVENTS},
    )
    return h.join(pl.from_arrow(planted), on=["buyer_id", "merchant_id"], how="full", coalesce=True)


def _files(root: Path, sub: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / sub).glob("*.parquet"))}


# ---------------------------------------------------------------------------------------------------
# Determinism and shard independence


def test_same_seed_gives_identical_tables_and_another_seed_does_not():
    a_events, a_planted = generate_shard(SMALL, 1)
    b_events, b_planted = generate_shard(SMALL, 1)
    assert a_events.equals(b_events) and a_planted.equals(b_planted)
    c_events, c_planted = generate_shard(replace(SMALL, seed=4), 1)
    assert not c_events.equals(a_events)
    assert not c_planted.equals(a_planted)


def test_shards_do_not_depend_on_generation_order_and_files_are_byte_identical(tmp_path):
    generate(SMALL, str(tmp_path / "serial"), progress=False)
    for k in reversed(range(3)):  # the other order, one shard at a time, as parallel workers would
        write_shard(SMALL, str(tmp_path / "reversed"), k)
    serial_events, serial_planted = (
        _files(tmp_path / "serial", "events"),
        _files(tmp_path / "serial", "planted"),
    )
    assert list(serial_events) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert serial_events == _files(tmp_path / "reversed", "events")
    assert serial_planted == _files(tmp_path / "reversed", "planted")
    generate(SMALL, str(tmp_path / "again"), progress=False)
    assert _files(tmp_path / "again", "events") == serial_events


def test_process_pool_writes_the_same_bytes_as_serial(tmp_path):
    generate(SMALL, str(tmp_path / "serial"), progress=False)
    summary = generate(replace(SMALL, executor="process", workers=2), str(tmp_path / "pool"), progress=False)
    assert summary["executor"] == "process"
    assert _files(tmp_path / "pool", "events") == _files(tmp_path / "serial", "events")
    assert _files(tmp_path / "pool", "planted") == _files(tmp_path / "serial", "planted")


# ---------------------------------------------------------------------------------------------------
# Planted types


def test_every_history_has_a_planted_type_and_all_eight_types_occur(big, histories):
    _, planted = big
    assert histories["planted_type"].null_count() == 0  # every history in the events has a type
    assert histories["n"].null_count() == 0  # every planted history has events
    assert histories.height == planted.num_rows
    names = dict(zip(planted["planted_type"].to_pylist(), planted["planted_name"].to_pylist()))
    assert len(names) >= 8
    assert sorted(names) == list(range(8))
    assert {"bouncer", "window_shopper", "cart_abandoner", "loyal_repeat"} <= set(names.values())


def test_each_type_matches_its_specification(histories):
    """Empirical statistics per type vs the exact expectations of its chain (type_expectations)."""
    world = build_world(BIG)
    for i, spec in enumerate(world.specs):
        want = type_expectations(spec, BIG.max_events_per_session)
        h = histories.filter(pl.col("planted_type") == i)
        assert h.height > 1000, spec.name
        n = h["n"].mean()
        assert abs(n - want["events_per_history"]) <= 0.06 * want["events_per_history"], (spec.name, n, want)
        sessions = h["sessions"].mean()
        assert abs(sessions - want["sessions_per_history"]) <= 0.06 * want["sessions_per_history"], spec.name
        conversion = (h["n_purchase"] > 0).mean()
        assert abs(conversion - want["conversion"]) <= 0.03, (spec.name, conversion, want["conversion"])
        total = h["n"].sum()
        for e in EVENTS:
            share = h[f"n_{e}"].sum() / total
            assert abs(share - want["event_mix"][e]) <= 0.015, (spec.name, e, share, want["event_mix"][e])
            has = (h[f"n_{e}"] > 0).mean()
            assert abs(has - want["has_event"][e]) <= 0.04, (spec.name, e, has, want["has_event"][e])


def test_types_are_behaviourally_distinct(histories):
    """The signatures the types are named after, measured on the generated histories."""
    by = {
        name: histories.filter(pl.col("planted_name") == name)
        for name in histories["planted_name"].unique().to_list()
    }
    assert (by["bouncer"]["n"] == 1).all()
    assert (by["window_shopper"]["n"] >= 2).all() and by["window_shopper"]["n_purchase"].sum() == 0
    assert by["window_shopper"]["n"].mean() > 4
    assert (by["impulse_buyer"]["n_purchase"] > 0).mean() > 0.9 and by["impulse_buyer"]["n"].mean() < 3
    assert (by["cart_abandoner"]["n_cart"] > 0).mean() > 0.85
    assert (by["cart_abandoner"]["n_purchase"] > 0).mean() < 0.1
    assert (by["cart_abandoner"]["n_remove_cart"] > 0).mean() > 0.15
    assert (by["favorite_collector"]["n_favorite"] > 0).mean() > 0.85
    assert (by["bargain_hunter"]["n_search"] > 0).mean() > 0.7
    assert (by["loyal_repeat"]["sessions"] >= 2).all() and by["loyal_repeat"]["n_purchase"].mean() > 1.5
    assert by["deliberate_buyer"]["n"].mean() > 8 and (by["deliberate_buyer"]["n_purchase"] > 0).mean() > 0.6


def test_price_preferences_and_purchase_rules(big):
    """Views land at each type's Beta price rank; bargain hunters buy their cheapest view, others the last."""
    events, planted = big
    world = build_world(BIG)
    size = np.repeat(world.catalog_size, world.catalog_size)
    local = np.arange(world.product_price.size) - np.repeat(world.catalog_offset, world.catalog_size)
    rank = pl.DataFrame({"product_id": world.product_ids.to_pylist(), "rank": (local + 0.5) / size})
    e = (
        pl.from_arrow(events)
        .join(pl.from_arrow(planted), on=["buyer_id", "merchant_id"])
        .join(rank, on="product_id", how="left")
        .sort("seq")
    )
    views = e.filter(pl.col("event") == "view").group_by("planted_name").agg(pl.col("rank").mean())
    got = dict(views.iter_rows())
    for spec in world.specs:
        a, b = spec.price_beta
        assert abs(got[spec.name] - a / (a + b)) <= 0.025, (spec.name, got[spec.name], a / (a + b))
    assert got["bargain_hunter"] < got["impulse_buyer"] < got["deliberate_buyer"] < got["favorite_collector"]

    # session number inside each history (gaps above the sessionisation gap start a new session)
    e = e.with_columns(gap=pl.col("ts").diff().over("buyer_id", "merchant_id").dt.total_seconds())
    e = e.with_columns(
        session=(pl.col("gap").is_null() | (pl.col("gap") > SESSION_GAP_S)).cast(pl.Int32).cum_sum()
    )
    e = e.with_columns(
        cheapest_view=pl.when(pl.col("event") == "view").then(pl.col("price")).cum_min().over("session"),
        last_view=pl.when(pl.col("event") == "view")
        .then(pl.col("product_id"))
        .forward_fill()
        .over("session"),
    )
    buys = e.filter(pl.col("event") == "purchase")
    bargain = buys.filter(pl.col("planted_name") == "bargain_hunter")
    assert bargain.height > 500 and (bargain["price"] == bargain["cheapest_view"]).all()
    others = buys.filter(~pl.col("planted_name").is_in(["bargain_hunter"]))
    assert (others["product_id"] == others["last_view"]).all()
    assert (
        e.filter(pl.col("event") == "search")["product_id"].null_count()
        == e.filter(pl.col("event") == "search").height
    )


def test_sessions_are_separated_by_the_inactivity_gap_and_times_have_time_of_day(big):
    events, _ = big
    e = pl.from_arrow(events).sort("seq")
    gaps = e.select(pl.col("ts").diff().over("buyer_id", "merchant_id").dt.total_seconds()).to_series()
    gaps = gaps.drop_nulls()
    assert (gaps >= 1).all()  # strictly increasing inside a history
    assert not ((gaps > BIG.max_event_gap_s) & (gaps < BIG.min_session_gap_s)).any()  # nothing in between
    hours = e["ts"].dt.hour().value_counts().sort("ts")["count"].to_numpy()
    assert hours.size == 24 and hours[19:23].mean() > 3 * hours[2:5].mean()  # evening peak, night trough
    assert e["ts"].min().date().isoformat() >= BIG.start_date


def test_merchant_mixtures_differ_and_are_realised(big):
    _, planted = big
    world = build_world(BIG)
    mix = world.mixtures
    np.testing.assert_allclose(world.popularity @ mix, [s.share for s in world.specs], atol=1e-6)
    tv = 0.5 * np.abs(mix[:, None, :] - mix[None, :, :]).sum(-1)
    assert np.median(tv[np.triu_indices(len(mix), 1)]) > 0.2
    p = pl.from_arrow(planted)
    top = np.argsort(-world.popularity)[:3]
    for m in top:
        mid = f"m{m}"
        got = p.filter(pl.col("merchant_id") == mid)["planted_type"].value_counts()
        hist = np.zeros(len(world.specs))
        hist[got["planted_type"].to_numpy()] = got["count"].to_numpy()
        assert 0.5 * np.abs(hist / hist.sum() - mix[m]).sum() < 0.05, mid
    assert tv[top[0], top[1]] > 0.1 and tv[top[0], top[2]] > 0.1


# ---------------------------------------------------------------------------------------------------
# Calibration to the bundled Tmall data (data/tmall2014/README.md)


def test_population_marginals_are_near_tmall(histories, big):
    events, _ = big
    n = histories["n"]
    measured = {
        "events_per_history": n.mean(),
        "events_per_session": n.sum() / histories["sessions"].sum(),
        "purchase_histories": (histories["n_purchase"] > 0).mean(),
    }
    t = TMALL_TARGETS
    assert abs(measured["events_per_history"] - t["events_per_history"]) <= 0.5, measured
    assert n.median() == t["events_per_history_median"] == 1
    assert 5 <= n.quantile(0.9) <= 10
    assert (n == 1).mean() >= 0.45  # Tmall 0.60
    assert abs(measured["events_per_session"] - t["events_per_session"]) <= 0.6, measured
    assert abs(measured["purchase_histories"] - t["purchase_histories"]) <= 0.015, measured
    mix = pl.from_arrow(events.select(["event"]))["event"].value_counts(normalize=True)
    mix = dict(zip(mix["event"].to_list(), mix["proportion"].to_list()))
    assert mix["view"] >= 0.85
    assert abs(mix["purchase"] - t["event_mix"]["purchase"]) <= 0.01
    assert mix["favorite"] <= 0.04 and mix["cart"] <= 0.03 and mix["search"] <= 0.04
    # and the measured marginals are the analytic ones (population_expectations)
    want = population_expectations(BIG)
    for key, value in measured.items():
        assert abs(value - want[key]) <= 0.03 * want[key], (key, value, want[key])


# ---------------------------------------------------------------------------------------------------
# Schema and ids


def test_tables_conform_to_the_canonical_schema(big):
    events, planted = big
    assert events.schema.equals(SCHEMA)
    assert conform(events).equals(events)
    assert planted.schema.equals(PLANTED_SCHEMA)
    for name in ("buyer_id", "merchant_id", "ts", "seq", "event", "category"):
        assert events[name].null_count == 0, name
    assert events["session_id"].null_count == events.num_rows
    e = pl.from_arrow(events)
    assert set(e["event"].unique()) == set(EVENTS)
    searches = e["event"] == "search"
    assert (e["product_id"].is_null() == searches).all() and (e["price"].is_null() == searches).all()
    assert e["buyer_id"].str.contains(r"^b\d+$").all() and e["merchant_id"].str.contains(r"^m\d+$").all()
    assert e["product_id"].drop_nulls().str.contains(r"^m\d+-p\d{3,}$").all()
    assert (
        e["product_id"].drop_nulls().str.split("-").list.first() == e.filter(~searches)["merchant_id"]
    ).all()
    assert (e["price"].drop_nulls() > 0).all() and e["category"].str.contains(r"^c\d+$").all()
    assert (e["seq"].diff().drop_nulls() > 0).all()
    p = pl.from_arrow(planted)
    assert p.select("buyer_id", "merchant_id").is_unique().all()
    assert e.select("buyer_id", "merchant_id").unique().height == p.height


def test_seq_increases_across_shards():
    first, _ = generate_shard(SMALL, 0)
    second, _ = generate_shard(SMALL, 1)
    assert first["seq"][-1].as_py() < second["seq"][0].as_py()
    assert first["buyer_id"][-1].as_py() == "b999" and second["buyer_id"][0].as_py() == "b1000"


# ---------------------------------------------------------------------------------------------------
# Output layout and streaming


def test_generate_writes_every_shard_types_and_summary(tmp_path):
    out = tmp_path / "synth"
    stale = out / "events" / "part-00009.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from a bigger run")
    summary = generate(SMALL, str(out), progress=False)
    assert not stale.exists()
    assert summary["shards"] == 3 and summary["buyers"] == SMALL.buyers
    events = pq.read_table(out / "events")
    planted = pq.read_table(out / "planted")
    assert summary["events"] == events.num_rows and summary["histories"] == planted.num_rows
    assert len(list((out / "planted").glob("part-*.parquet"))) == 3
    assert events.schema.equals(SCHEMA) and pa.compute.count_distinct(events["buyer_id"]).as_py() == 2500
    types = json.loads((out / "planted_types.json").read_text())
    assert [t["name"] for t in types["types"]][:2] == ["bouncer", "window_shopper"]
    assert len(types["types"]) == 8 and all(t["description"] for t in types["types"])
    assert len(types["merchants"]) == SMALL.merchants
    assert json.loads((out / "summary.json").read_text())["events"] == summary["events"]


MEMORY_PROBE = """
import json, resource, sys
from simpersona.data.config import SynthConfig
from simpersona.data.synthetic import generate, generate_shard
cfg = SynthConfig(buyers=int(sys.argv[1]), shard_buyers=60000, executor="serial")
generate(cfg, sys.argv[2], progress=False)
events, planted = generate_shard(cfg, 0)
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "shard_bytes": events.nbytes + planted.nbytes}))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_shards(tmp_path):
    """8 shards peak at about the memory of 2: generate() writes each shard before making the next."""

    def probe(buyers: int) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(buyers), str(tmp_path / str(buyers))],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    two, eight = probe(2 * 60000), probe(8 * 60000)
    growth = (eight["peak_kb"] - two["peak_kb"]) * 1024
    held = 6 * eight["shard_bytes"]  # what holding the 6 extra shards' tables would cost at least
    assert held > 100e6
    assert growth < 0.25 * held, (growth, held)
    assert len(list((tmp_path / str(8 * 60000) / "events").glob("*.parquet"))) == 8


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_bad_configuration_errors_are_one_line():
    with pytest.raises(SynthError, match=r"^shard_index 3 out of range: 2500 buyers make 3 shards$"):
        generate_shard(SMALL, 3)
    with pytest.raises(SynthError, match=r"^synth.types=9: the type library has 8 types$"):
        generate_shard(replace(SMALL, types=9), 0)
    with pytest.raises(SynthError, match=r"^synth.type_shares names unknown types \['shopaholic'\]"):
        generate_shard(replace(SMALL, type_shares={"shopaholic": 0.5}), 0)
    with pytest.raises(SynthError, match=r"^synth.min_session_gap_s=600.0 must exceed synth.max_event_gap_s"):
        generate_shard(replace(SMALL, min_session_gap_s=600.0), 0)
    with pytest.raises(SynthError, match=r"^synth.buyers=0: must be at least 1$"):
        generate_shard(replace(SMALL, buyers=0), 0)
    with pytest.raises(SynthError, match=r"^synth.start_date='15/04/2014': expected YYYY-MM-DD$"):
        generate_shard(replace(SMALL, start_date="15/04/2014"), 0)


def test_type_share_overrides_and_fewer_types():
    cfg = replace(SMALL, types=3, type_shares={"bouncer": 0.0})
    _, planted = generate_shard(cfg, 0)
    names = set(planted["planted_name"].to_pylist())
    assert names == {"window_shopper", "deliberate_buyer"}


# ---------------------------------------------------------------------------------------------------
# The Ray job


@pytest.mark.slow
def test_ray_job_writes_the_same_shards_as_serial(ray_local, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ray_jobs"))
    from synthetic import main

    summary = main([f"run_dir={tmp_path / 'run'}", "synth.buyers=2500", "synth.shard_buyers=1000",
                    "synth.merchants=12", "seed=3", "progress=false"])  # fmt: skip
    assert summary["executor"] == "ray" and summary["shards"] == 3
    generate(SMALL, str(tmp_path / "serial"), progress=False)
    ray_out = tmp_path / "run" / "synthetic"
    assert _files(ray_out, "events") == _files(tmp_path / "serial", "events")
    assert _files(ray_out, "planted") == _files(tmp_path / "serial", "planted")


# ---------------------------------------------------------------------------------------------------
# Store knobs per merchant, the planted responses, and the true effect of a what-if

KNOBBED = replace(SMALL, knobs=SynthKnobsConfig(enabled=True))
# A small world with knobs: 20,000 buyers, ~33,000 histories at 12 merchants (~1,100 bargain hunters).
EFFECT_WORLD = SynthConfig(buyers=20000, shard_buyers=10000, merchants=12, seed=3, executor="serial",
                           knobs=SynthKnobsConfig(enabled=True))  # fmt: skip
# One what-if per knob, every merchant moved to the same value (from their own drawn knobs).
WHATIFS = {
    "shipping_up": {"shipping_fee": 12.0},
    "free_shipping": {"shipping_fee": 0.0},
    "extra_checkout_steps": {"checkout_steps": 4},
    "no_recommendations": {"recommendations": False},
    "price_up": {"price_multiplier": 1.25},
}


@pytest.fixture(scope="module")
def effects():
    return {name: true_effect(EFFECT_WORLD, variant) for name, variant in WHATIFS.items()}


def test_knobs_are_off_by_default_in_the_dataclass_and_the_yaml():
    assert SynthConfig().knobs.enabled is False
    cfg = as_synth(load("synthetic", []).synth)
    assert cfg.knobs == SynthKnobsConfig()  # the YAML mirrors the dataclass
    on = as_synth(load("synthetic", ["synth.knobs.enabled=true", "synth.knobs.shipping_fee=[0,10]"]).synth)
    assert on.knobs.enabled and on.knobs.shipping_fee == [0.0, 10.0]
    with pytest.raises(SynthError, match=r"^synth.knobs.checkout_steps=\[0, 2\]: must be whole numbers >= 1$"):
        build_world(replace(SMALL, knobs=SynthKnobsConfig(enabled=True, checkout_steps=[0, 2])))


def test_merchants_draw_their_knobs_and_the_file_lies_beside_planted(tmp_path):
    summary = generate(KNOBBED, str(tmp_path / "on"), progress=False)
    written = json.loads((tmp_path / "on" / "merchant_knobs.json").read_text())
    assert written["reference"] == REFERENCE_KNOBS
    knobs = written["merchants"]
    assert sorted(knobs, key=lambda m: int(m[1:])) == [f"m{i}" for i in range(KNOBBED.merchants)]
    for name in KNOB_NAMES:  # storefront names, values from the config's lists, and merchants differ
        values = [k[name] for k in knobs.values()]
        assert set(values) <= set(getattr(KNOBBED.knobs, name)) and len(set(values)) > 1, name
    types = json.loads((tmp_path / "on" / "planted_types.json").read_text())
    assert {m["merchant_id"]: m["knobs"] for m in types["merchants"]} == knobs

    # same seed without knobs: the same world and population (catalogs, mixtures, planted types)...
    generate(SMALL, str(tmp_path / "off"), progress=False)
    assert not (tmp_path / "off" / "merchant_knobs.json").exists()
    assert _files(tmp_path / "on", "planted") == _files(tmp_path / "off", "planted")
    on, off = build_world(KNOBBED), build_world(SMALL)
    np.testing.assert_array_equal(on.product_price, off.product_price)
    np.testing.assert_array_equal(on.mixtures, off.mixtures)
    # ...and logged prices are the catalog prices times the merchant's price_multiplier
    events = pl.from_arrow(pq.read_table(tmp_path / "on" / "events")).drop_nulls("price")
    catalog = pl.DataFrame({"product_id": on.product_ids.to_pylist(), "catalog_price": on.product_price})
    multiplier = pl.DataFrame({"merchant_id": list(knobs), "m": [k["price_multiplier"] for k in knobs.values()]})
    e = events.join(catalog, on="product_id").join(multiplier, on="merchant_id")
    assert e.height == events.height == summary["events"] - (pl.from_arrow(
        pq.read_table(tmp_path / "on" / "events"))["event"] == "search").sum()
    np.testing.assert_allclose(e["price"], (e["catalog_price"] * e["m"]).round(2), atol=1e-9)

    # a run without knobs into the same folder does not leave the old knobs behind
    generate(SMALL, str(tmp_path / "on"), progress=False)
    assert not (tmp_path / "on" / "merchant_knobs.json").exists()


def test_reference_knobs_leave_every_chain_exactly_as_in_the_library():
    for spec in build_world(SMALL).specs:
        purchase, view = knob_factors(spec.knob_response, REFERENCE_KNOBS)
        assert purchase == 1.0 and view == 1.0, spec.name
        assert type_expectations(spec, 30, REFERENCE_KNOBS) == type_expectations(spec, 30)
    # knobs on, every merchant at the reference: the same chains (only the draws are laid out otherwise)
    same = replace(SMALL, knobs=SynthKnobsConfig(enabled=True, **{k: [v] for k, v in REFERENCE_KNOBS.items()}))
    np.testing.assert_array_equal(build_world(same).chains.trans_cum, build_world(SMALL).chains.trans_cum)


def test_the_true_effects_baseline_arm_is_the_generated_data():
    """true_effect replays the generator's own draws: its baseline is what generate_shard wrote."""
    result = true_effect(KNOBBED, {"shipping_fee": 12.0})
    events = pl.concat([pl.from_arrow(generate_shard(KNOBBED, k)[0]) for k in range(3)])
    _, planted = zip(*(generate_shard(KNOBBED, k) for k in range(3)))
    h = pl.concat([pl.from_arrow(p) for p in planted]).join(
        events.group_by("buyer_id", "merchant_id").agg(
            bought=(pl.col("event") == "purchase").any(), views=(pl.col("event") == "view").sum()
        ),
        on=["buyer_id", "merchant_id"],
    )
    per = h.group_by("merchant_id").agg(n=pl.len(), conv=pl.col("bought").mean(), views=pl.col("views").mean())
    for mid, n, conv, views in per.iter_rows():
        got = result["per_merchant"][mid]
        assert got["histories"] == n
        assert got["conversion"]["baseline"] == pytest.approx(conv, abs=1e-12)
        assert got["product_views"]["baseline"] == pytest.approx(views, abs=1e-12)


def test_true_effect_of_each_knob_equals_its_analytic_expectation(effects):
    """Pooled and per type: |true - analytic| within 4 paired standard errors; pooled effects beyond noise."""
    for name, result in effects.items():
        pooled = result["pooled"]
        assert pooled["histories"] > 30000
        for o in WHATIF_OUTCOMES:
            got = pooled[o]
            print(name, o, "true", round(got["effect"], 4), "se", round(got["se"], 4),
                  "analytic", round(got["expected_effect"], 4))  # fmt: skip
            assert abs(got["effect"] - got["expected_effect"]) <= 4 * got["se"], (name, o, got)
        # the knob this what-if changes moves the pooled outcome it acts on beyond noise
        acts_on = "product_views" if name == "no_recommendations" else "conversion"
        assert abs(pooled[acts_on]["effect"]) > 5 * pooled[acts_on]["se"], (name, pooled)
        # per type: a type the knob does not reach has exactly no effect; an effect of 0.01 or more (a rare
        # one may change no history of the sample, and then its standard error reads 0) is within 4 se
        for type_name, row in result["per_type"].items():
            for o in WHATIF_OUTCOMES:
                got = row[o]
                if got["expected_effect"] == 0.0:
                    assert got["effect"] == 0.0, (name, type_name, o, got)
                elif abs(got["expected_effect"]) >= 0.01:
                    assert abs(got["effect"] - got["expected_effect"]) <= 4 * got["se"], (name, type_name, o, got)
    # the analytic table is the same as expected_effect's, which needs no replay
    analytic = expected_effect(EFFECT_WORLD, WHATIFS["price_up"])
    assert effects["price_up"]["pooled"]["conversion"]["expected_effect"] == analytic["pooled"]["conversion"]["effect"]
    assert analytic["pooled"]["histories"] == pytest.approx(effects["price_up"]["pooled"]["histories"], rel=0.02)


def test_price_sensitive_type_converts_less_with_a_higher_shipping_fee_and_the_no_response_type_does_not(effects):
    up, free = effects["shipping_up"]["per_type"], effects["free_shipping"]["per_type"]
    bargain, loyal = up["bargain_hunter"]["conversion"], up["loyal_repeat"]["conversion"]
    assert bargain["effect"] < -5 * bargain["se"] and bargain["expected_effect"] < -0.1
    assert free["bargain_hunter"]["conversion"]["effect"] > 5 * free["bargain_hunter"]["conversion"]["se"]
    # the no-response type buys as before: same chain, same numbers, so the very same histories
    assert loyal["baseline"] > 0.9 and loyal["effect"] == 0.0 and loyal["expected_effect"] == 0.0
    # recommendations raise the views of the browsing type and leave the price-sensitive one alone
    recs = effects["no_recommendations"]["per_type"]
    assert recs["window_shopper"]["product_views"]["effect"] < -10 * recs["window_shopper"]["product_views"]["se"]
    assert recs["bargain_hunter"]["product_views"]["effect"] == 0.0
    # the chains' expectation agrees: a higher fee lowers the bargain hunter's conversion, not the loyal one's
    specs = {s.name: s for s in build_world(EFFECT_WORLD).specs}
    conv = lambda t, fee: type_expectations(specs[t], 30, {"shipping_fee": fee})["conversion"]  # noqa: E731
    assert conv("bargain_hunter", 12.0) < conv("bargain_hunter", 8.0) < conv("bargain_hunter", 0.0)
    assert conv("loyal_repeat", 12.0) == conv("loyal_repeat", 0.0)
    assert population_expectations(EFFECT_WORLD, {"shipping_fee": 12.0})["purchase_histories"] < (
        population_expectations(EFFECT_WORLD)["purchase_histories"]
    )


def test_a_what_if_on_some_merchants_reports_those_merchants_only():
    result = true_effect(KNOBBED, {"checkout_steps": 4}, merchants=["m3", "m0"])
    assert result["merchants"] == ["m0", "m3"] and sorted(result["per_merchant"]) == ["m0", "m3"]
    m0 = result["per_merchant"]["m0"]
    assert m0["knobs"]["variant"] == {**m0["knobs"]["baseline"], "checkout_steps": 4}
    assert result["pooled"]["histories"] == sum(r["histories"] for r in result["per_merchant"].values())
    with pytest.raises(SynthError, match=r"^what-if knobs \['page_size'\] have no planted response"):
        true_effect(KNOBBED, {"page_size": 3})
    with pytest.raises(SynthError, match=r"^merchants \['m99'\] are not in the synthetic world"):
        expected_effect(KNOBBED, {"shipping_fee": 0.0}, merchants=["m99"])


def test_the_type_library_is_data_and_a_broken_file_names_the_type(tmp_path):
    import yaml

    from simpersona.data.synthetic import TYPE_LIBRARY, TYPE_LIBRARY_FILE, SynthError, load_type_library

    raw = yaml.safe_load(TYPE_LIBRARY_FILE.read_text())
    assert [t["name"] for t in raw] == [t.name for t in TYPE_LIBRARY]
    assert sum(t.share for t in TYPE_LIBRARY) == pytest.approx(1.0)
    del raw[2]["sessions"]
    broken = tmp_path / "types.yaml"
    broken.write_text(yaml.safe_dump(raw))
    with pytest.raises(SynthError, match=r"type 2 \(deliberate_buyer\): KeyError 'sessions'"):
        load_type_library(broken)
