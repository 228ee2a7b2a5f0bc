"""Trace replay: every real event appears as an action in order, each observation is what the
storefront model shows, purchases end in a placed order, skips and cuts are counted."""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest

from simpersona.data import features as F
from simpersona.data import traces as T
from simpersona.data.config import SessionConfig, SynthConfig, TraceConfig
from simpersona.data.sessions import sessionize
from simpersona.pages.observation import allowed_actions, render
from simpersona.pages.shop import Shop, Visit
from simpersona.store.config import StoreConfig
from tests.data.canonical_rows import canonical


def replay(events, trace_cfg=None, sessions_cfg=None, session_entries=200_000):
    df = pl.from_arrow(events)
    stats = F.MerchantStats.from_merged(F.merge_partials(F.merchant_partials(df)))
    store = StoreConfig()
    shops = T.ShopCache(T.top_catalog_rows(stats.products, store.products_per_merchant), store,
                        session_entries=session_entries)
    sessions = sessionize(events, sessions_cfg or SessionConfig())
    table, skipped, per_history = T.build_traces(sessions, shops, trace_cfg or TraceConfig(max_steps_per_session=0))
    return sessions, table, skipped, per_history, shops


def steps_by_session(table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["session_id"], []).append(row)
    return out


@pytest.fixture(scope="module")
def synthetic():
    from simpersona.data.synthetic import generate_shard

    events, _ = generate_shard(SynthConfig(buyers=400, shard_buyers=400, merchants=8, seed=5), 0)
    return events


def test_every_event_is_replayed_in_order_and_observations_match_the_shop(synthetic):
    sessions, table, skipped, _, shops = replay(synthetic)
    assert set(sessions["event"].unique().to_list()) == {"view", "cart", "remove_cart", "favorite", "purchase",
                                                         "search"}  # fmt: skip
    by_session = steps_by_session(table)
    real = sessions.group_by("session_id", maintain_order=True).agg("event", pl.col("merchant_id").first())
    removes_skipped = 0
    for sid, events, merchant in real.iter_rows():
        steps = by_session[sid]
        assert [s["step"] for s in steps] == list(range(len(steps)))
        replayed = [s["event"] for s in steps if s["event"]]
        if replayed != events:  # only a remove_cart with nothing in the cart may be missing
            missing = Counter(events) - Counter(replayed)
            assert set(missing) == {"remove_cart"}, (sid, events, replayed)
            removes_skipped += missing["remove_cart"]
        # walk the lead's plain Shop (no memoisation) along the actions: same pages, same offers
        plain = Shop(merchant, shops.get(merchant).catalog, shops.get(merchant).knobs)
        v = Visit(merchant)
        for s in steps:
            page = plain.page_of(v)
            assert s["observation"] == render(page)
            assert s["allowed"] == allowed_actions(page)
            assert s["action"] in s["allowed"]
            v, logged = plain.apply(v, s["action"])
            if s["event"]:  # the storefront logs exactly the replayed event for an event step
                assert {e.event for e in logged} == {s["event"]}
        assert steps[-1]["action"] == "leave" and v.ended
    assert skipped == Counter({"remove_cart_empty_cart": removes_skipped, "truncated_events": 0})


def test_purchase_ends_in_a_placed_order():
    events = canonical([
        ("b1", "m1", "2014-06-01 10:00", "view", "p1", "c1", 30.0),
        ("b1", "m1", "2014-06-01 10:01", "cart", "p1", "c1", 30.0),
        ("b1", "m1", "2014-06-01 10:02", "purchase", "p1", "c1", 30.0),
        ("b2", "m1", "2014-06-01 11:00", "purchase", "p2", "c2", 55.0),  # a purchase without a view
    ])  # fmt: skip
    _, table, _, _, _ = replay(events)
    s = steps_by_session(table)
    # b1: through the cart (the product is already in it); two checkout steps (store.checkout_steps)
    assert [(x["action"], x["event"]) for x in s["b1|m1#0"]] == [
        ("open 1", "view"), ("add_to_cart", "cart"), ("view_cart", ""), ("checkout", ""), ("continue", ""),
        ("place_order", "purchase"), ("leave", ""),
    ]  # fmt: skip
    # b2: opens a product (navigation), buy_now, continue, place_order
    assert [x["action"].split()[0] for x in s["b2|m1#0"]] == ["open", "buy_now", "continue", "place_order", "leave"]
    for steps in s.values():
        assert steps[-1]["observation"].startswith("page: confirmation")  # leave from the confirmation page
        assert "order placed: m1-o1" in steps[-1]["observation"]


def test_views_open_the_logged_product_or_the_nearest_price():
    events = canonical([
        ("b0", "m1", "2014-06-01 09:00", "view", "p1", "c1", 10.0),
        ("b0", "m1", "2014-06-01 09:01", "view", "p2", "c1", 100.0),
        ("b1", "m1", "2014-06-01 10:00", "view", "p2", "c1", 100.0),  # p2 is on the home page
        ("b2", "m2", "2014-06-01 10:00", "view", None, None, 12.0),  # no product: nearest price
    ])  # fmt: skip
    _, table, _, _, shops = replay(events)
    s = steps_by_session(table)
    home = shops.get("m1").home(1, [])
    slot = next(c.slot for c in home.cards if c.product_id == "p2")
    assert s["b1|m1#0"][0]["action"] == f"open {slot}"
    cards = shops.get("m2").home(1, []).cards
    nearest = min(cards, key=lambda c: abs(c.price - 12.0)).slot
    assert s["b2|m2#0"][0]["action"] == f"open {nearest}"


def test_remove_search_favorite_and_skips():
    events = canonical([
        ("b1", "m1", "2014-06-01 10:00", "remove_cart", "p1", "c1", 20.0),  # empty cart: skipped, counted
        ("b1", "m1", "2014-06-01 10:01", "search", None, "C2", None),  # closest shop category: c2
        ("b1", "m1", "2014-06-01 10:02", "view", "p2", "c2", 40.0),
        ("b1", "m1", "2014-06-01 10:03", "favorite", "p2", "c2", 40.0),
        ("b1", "m1", "2014-06-01 10:04", "cart", "p2", "c2", 40.0),
        ("b1", "m1", "2014-06-01 10:05", "remove_cart", "p2", "c2", 40.0),
        ("b1", "m1", "2014-06-01 10:06", "view", "p1", "c1", 20.0),
    ])  # fmt: skip
    _, table, skipped, per_history, _ = replay(events)
    steps = steps_by_session(table)["b1|m1#0"]
    assert [(x["action"].split()[0], x["event"]) for x in steps] == [
        ("search", "search"), ("open", "view"), ("favorite", "favorite"), ("add_to_cart", "cart"),
        ("view_cart", ""), ("remove", "remove_cart"), ("back", ""), ("open", "view"), ("leave", ""),
    ]  # fmt: skip
    assert steps[0]["action"] == "search c2"
    assert skipped["remove_cart_empty_cart"] == 1
    assert per_history == {"b1|m1": len(steps)}


def test_long_sessions_are_cut_and_old_sessions_dropped():
    rows = [("b1", "m1", f"2014-06-01 10:{m:02d}", "view", f"p{m}", "c1", 10.0 + m) for m in range(10)]
    rows += [("b1", "m1", f"2014-06-0{d} 10:00", "view", "p1", "c1", 10.0) for d in (3, 4, 5)]
    events = canonical(rows)
    cfg = TraceConfig(max_steps_per_session=5, max_sessions_per_history=3)
    _, table, skipped, _, _ = replay(events, cfg)
    s = steps_by_session(table)
    assert sorted(s) == ["b1|m1#1", "b1|m1#2", "b1|m1#3"]  # the 3 most recent of 4 sessions
    _, table, skipped, _, _ = replay(events, TraceConfig(max_steps_per_session=5, max_sessions_per_history=0))
    first = steps_by_session(table)["b1|m1#0"]
    assert len(first) == 5 and first[-1]["action"] == "leave"  # 4 views, then leave
    assert skipped["truncated_events"] == 6


@pytest.mark.slow
def test_tmall_day_sessions_replay_deterministically(tmall_csv):
    import pyarrow as pa

    from simpersona.data.config import DataConfig
    from simpersona.data.validate import read_canonical

    events = pa.concat_tables(list(read_canonical(DataConfig(input=str(tmall_csv))))).slice(0, 5000)
    cfg = TraceConfig(max_steps_per_session=0, max_sessions_per_history=0)
    sessions, a, skipped, _, _ = replay(events, cfg, SessionConfig(day_resolution=True))
    _, b, _, _, _ = replay(events, cfg, SessionConfig(day_resolution=True))
    assert a.equals(b)
    assert a.schema.equals(T.TRACE_SCHEMA)
    assert sum(skipped.values()) == 0
    # every event replayed, in session order; one leave per session
    assert Counter(e for e in a.column("event").to_pylist() if e) == Counter(sessions["event"].to_list())
    assert a.column("action").to_pylist().count("leave") == sessions["session_id"].n_unique()


def test_history_fraction_is_a_stable_sample(synthetic):
    cfg = TraceConfig(history_fraction=0.3, max_steps_per_session=0)
    sessions, table, _, per_history, _ = replay(synthetic, cfg)
    chosen = set(table.column("history_id").to_pylist())
    assert chosen == {h for h in sessions["history_id"].unique().to_list() if T.keep_history(h, 0.3)}
    assert 0.2 < len(chosen) / sessions["history_id"].n_unique() < 0.4


@pytest.mark.parametrize("source", ["synthetic", "tmall"])
def test_reusing_identical_sessions_changes_no_step(source, synthetic, tmall_csv):
    """Sessions with the same events at the same merchant reuse one replay; a replay that used a hashed
    fallback (its choices depend on the history or the event's seq) is never reused. The traces must
    equal replaying every session afresh, and reuse must actually happen."""
    import pyarrow as pa

    from simpersona.data.config import DataConfig
    from simpersona.data.validate import read_canonical

    if source == "tmall":
        events = pa.concat_tables(list(read_canonical(DataConfig(input=str(tmall_csv))))).slice(0, 20000)
        sessions_cfg = SessionConfig(day_resolution=True)
    else:
        events, sessions_cfg = synthetic, SessionConfig()
    cfg = TraceConfig(max_steps_per_session=12, max_sessions_per_history=0)
    sessions, reused, skipped_a, per_a, shops = replay(events, cfg, sessions_cfg)
    _, fresh, skipped_b, per_b, fresh_shops = replay(events, cfg, sessions_cfg, session_entries=0)
    assert reused.equals(fresh)
    assert skipped_a == skipped_b and per_a == per_b
    assert not fresh_shops.sessions
    if source == "tmall":
        # the Tmall log has no product ids or prices: every product choice is a hashed fallback
        assert not shops.sessions
    else:
        assert 0 < len(shops.sessions) < sessions["session_id"].n_unique()


# ---------------------------------------------------------------------------------------------------
# Each merchant's own store knobs (the synthetic generator's merchant_knobs.json) in the traces


def _preprocess_synthetic(tmp_path, knobs: bool):
    """run_reference on a small synthetic world; (config, traces, merchant knobs or None)."""
    import json

    from simpersona.config import load
    from simpersona.data.config import SynthKnobsConfig
    from simpersona.data.synthetic import generate
    from testkit.preprocess_peers import run_reference

    synth = tmp_path / "synth"
    generate(SynthConfig(buyers=1500, shard_buyers=1500, merchants=8, seed=5, executor="serial",
                         knobs=SynthKnobsConfig(enabled=knobs)), str(synth), progress=False)  # fmt: skip
    cfg = load("preprocess", [f"data.input={synth}/events", "data.adapter=canonical", "progress=false",
                              "sessions.day_resolution=false", f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    run_reference(cfg, str(tmp_path / "out"))
    traces = pl.read_parquet(tmp_path / "out" / "traces")
    knobs_file = synth / "merchant_knobs.json"
    return cfg, traces, json.loads(knobs_file.read_text())["merchants"] if knobs_file.exists() else None


def _step_counters(traces: pl.DataFrame) -> dict[str, set[int]]:
    """Merchant -> the checkout lengths its checkout pages show ("step k/N")."""
    steps = traces.filter(pl.col("observation").str.contains(r"step \d+/\d+")).with_columns(
        n=pl.col("observation").str.extract(r"step \d+/(\d+)").cast(pl.Int64)
    )
    return {m: set(g["n"].to_list()) for (m,), g in steps.group_by("merchant_id")}


def test_traces_show_each_merchants_own_knobs_from_the_synthetic_data(tmp_path):
    from simpersona.data.transform import resolve_merchant_knobs, store_section
    from simpersona.pages.observation import money

    cfg, traces, knobs = _preprocess_synthetic(tmp_path, knobs=True)
    assert resolve_merchant_knobs(cfg).endswith("synth/merchant_knobs.json")
    store = store_section(cfg)
    for merchant, own in knobs.items():  # the file's knobs are the merchants' setup, prices excepted
        assert store["merchant_overrides"][merchant] == {k: v for k, v in own.items() if k != "price_multiplier"}
        assert store["logged_knobs"][merchant] == {"price_multiplier": own["price_multiplier"]}
    # the storefront record carries the generator's world, which the what-ifs replay for their true effects
    record = json.loads((tmp_path / "out" / "storefront.json").read_text())
    assert record["planted_world"]["seed"] == 5 and record["planted_world"]["merchants"] == 8
    assert record["planted_world"]["knobs"]["enabled"] is True and record["logged_knobs"] == store["logged_knobs"]

    # the step counter of every checkout page is the merchant's own number of checkout steps
    counters = _step_counters(traces)
    assert len(counters) >= 3 and len({knobs[m]["checkout_steps"] for m in counters}) >= 2
    for merchant, shown in counters.items():
        assert shown == {knobs[merchant]["checkout_steps"]}, merchant

    # two merchants with different fees and recommendations: different cart and product pages
    shops = T.ShopCache({}, store)
    by_fee = sorted(knobs, key=lambda m: (knobs[m]["shipping_fee"], knobs[m]["recommendations"]))
    low, high = by_fee[0], by_fee[-1]
    assert knobs[low]["shipping_fee"] < knobs[high]["shipping_fee"]
    pages = {}
    for merchant in (low, high):
        shop = shops.get(merchant)
        cheapest = min(shop.catalog, key=lambda p: p.price)  # below free_shipping_threshold: the fee applies
        assert shop.price(cheapest) < shop.knobs.free_shipping_threshold
        cart = render(shop.cart_page([cheapest.product_id]))
        assert f"shipping: {money(knobs[merchant]['shipping_fee'])}" in cart, cart
        checkout = render(shop.checkout(1, [cheapest.product_id]))
        assert f"step 1/{knobs[merchant]['checkout_steps']}" in checkout
        product = render(shop.product(cheapest.product_id, []))
        assert ("related:" in product) == knobs[merchant]["recommendations"], (merchant, product)
        # the buy decision sees the delivery terms: the fee and the checkout's length
        assert (f"delivery: shipping {money(knobs[merchant]['shipping_fee'])} (free over "
                f"{money(shop.knobs.free_shipping_threshold)}) | checkout {knobs[merchant]['checkout_steps']} steps"
                ) in product, product
        pages[merchant] = (cart, checkout)
    assert pages[low][0].split("shipping:")[1] != pages[high][0].split("shipping:")[1]
    # the traces' related-product cards follow the merchants' recommendations setting
    product_pages = traces.filter(pl.col("observation").str.contains("related:"))
    assert set(product_pages["merchant_id"].unique()) <= {m for m, k in knobs.items() if k["recommendations"]}


def test_without_a_knobs_file_the_traces_use_store_as_configured(tmp_path):
    from simpersona.data.traces import as_mapping
    from simpersona.data.transform import resolve_merchant_knobs, store_section

    cfg, traces, knobs = _preprocess_synthetic(tmp_path, knobs=False)
    assert knobs is None and resolve_merchant_knobs(cfg) is None
    assert store_section(cfg) == as_mapping(cfg.store)
    assert set().union(*_step_counters(traces).values()) == {StoreConfig().checkout_steps}
