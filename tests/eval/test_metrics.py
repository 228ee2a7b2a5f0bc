"""Metrics on a hand-built event log, every figure computed by hand."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from simpersona.eval import metrics

T0 = datetime(2024, 5, 1, 10, 0, 0)


def ev(buyer, merchant, session, event, seconds=0):
    return {"buyer_id": buyer, "merchant_id": merchant, "session_id": session, "event": event,
            "ts": T0 + timedelta(seconds=seconds)}


# m1: s1 bounce (A); s2 purchase (D, lasts 120 s); s3 browse (B); s4 cart (C); s5 one search (A)
# m2: s6 view + favourite 60 s apart (B); s7 a lone purchase (D, not a bounce)
EVENTS = pl.DataFrame([
    ev("b1", "m1", "s1", "view"),
    ev("b1", "m1", "s2", "view", 0), ev("b1", "m1", "s2", "view", 30), ev("b1", "m1", "s2", "cart", 60),
    ev("b1", "m1", "s2", "purchase", 120),
    ev("b2", "m1", "s3", "view"), ev("b2", "m1", "s3", "view", 5),
    ev("b3", "m1", "s4", "view"), ev("b3", "m1", "s4", "cart", 10),
    ev("b4", "m1", "s5", "search"),
    ev("b1", "m2", "s6", "view", 0), ev("b1", "m2", "s6", "favorite", 60),
    ev("b5", "m2", "s7", "purchase"),
]).with_columns(pl.col("ts").cast(pl.Datetime("ms")))


def test_session_strata():
    s = metrics.session_table(EVENTS).sort("session_id")
    assert s["stratum"].to_list() == ["A", "D", "B", "C", "A", "B", "D"]
    assert s["n_views"].to_list() == [1, 2, 2, 1, 0, 1, 0]
    assert s["duration_s"].to_list() == [0, 120, 5, 10, 0, 60, 0]
    # a lone purchase reached the cart and checkout even without a logged cart event
    s7 = s.filter(pl.col("session_id") == "s7").row(0, named=True)
    assert s7["reach_cart"] and s7["reach_checkout"] and not s7["reach_product"]


def test_history_strata():
    h = metrics.history_table(metrics.session_table(EVENTS)).sort("merchant_id", "buyer_id")
    assert list(zip(h["merchant_id"], h["buyer_id"], h["stratum"])) == [
        ("m1", "b1", "D"), ("m1", "b2", "B"), ("m1", "b3", "C"), ("m1", "b4", "A"), ("m2", "b1", "B"),
        ("m2", "b5", "D")]
    assert h["n_sessions"].to_list() == [2, 1, 1, 1, 1, 1]


def test_merchant_metrics_by_hand():
    m = {r["merchant_id"]: r for r in metrics.merchant_metrics(EVENTS).to_dicts()}
    m1, m2 = m["m1"], m["m2"]
    expected_m1 = {
        "buyers": 4, "sessions": 5, "events": 10,
        "buyer_conversion": 1 / 4, "session_conversion": 1 / 5,
        "buyer_cart_rate": 2 / 4, "buyer_favorite_rate": 0.0,
        "session_cart_rate": 2 / 5, "session_favorite_rate": 0.0,
        "pages_per_session": 6 / 5, "events_per_session": 10 / 5, "session_length_s": 135 / 5,
        "bounce_rate": 2 / 5, "reach_product": 4 / 5, "reach_cart": 2 / 5, "reach_checkout": 1 / 5,
        "session_share_A": 2 / 5, "session_share_B": 1 / 5, "session_share_C": 1 / 5, "session_share_D": 1 / 5,
        "buyer_share_A": 1 / 4, "buyer_share_B": 1 / 4, "buyer_share_C": 1 / 4, "buyer_share_D": 1 / 4,
    }
    expected_m2 = {
        "buyers": 2, "sessions": 2, "events": 3,
        "buyer_conversion": 0.5, "session_conversion": 0.5, "buyer_cart_rate": 0.0, "buyer_favorite_rate": 0.5,
        "session_cart_rate": 0.0, "session_favorite_rate": 0.5, "pages_per_session": 0.5,
        "events_per_session": 1.5, "session_length_s": 30.0, "bounce_rate": 0.0, "reach_product": 0.5,
        "reach_cart": 0.5, "reach_checkout": 0.5,
        "session_share_A": 0.0, "session_share_B": 0.5, "session_share_C": 0.0, "session_share_D": 0.5,
        "buyer_share_A": 0.0, "buyer_share_B": 0.5, "buyer_share_C": 0.0, "buyer_share_D": 0.5,
    }
    assert m1 == pytest.approx({"merchant_id": "m1", **expected_m1})
    assert m2 == pytest.approx({"merchant_id": "m2", **expected_m2})
    for r in (m1, m2):  # strata partition the units
        assert sum(r[f"session_share_{s}"] for s in metrics.STRATA) == pytest.approx(1.0)
        assert sum(r[f"buyer_share_{s}"] for s in metrics.STRATA) == pytest.approx(1.0)


def test_overall_metrics_pool_units():
    o = metrics.overall_metrics(EVENTS)
    assert (o["buyers"], o["sessions"], o["events"]) == (6, 7, 13)
    assert o["buyer_conversion"] == pytest.approx(2 / 6)
    assert o["session_conversion"] == pytest.approx(2 / 7)
    assert o["bounce_rate"] == pytest.approx(2 / 7)


def test_same_code_for_arrow_and_extra_keys():
    arrow = metrics.merchant_metrics(EVENTS.to_arrow())
    assert arrow.equals(metrics.merchant_metrics(EVENTS))
    two = pl.concat([EVENTS.with_columns(variant=pl.lit("a")),
                     EVENTS.filter(pl.col("session_id") != "s2").with_columns(variant=pl.lit("b"))])
    by = metrics.merchant_metrics(two, by=("variant", "merchant_id"))
    row = by.filter((pl.col("variant") == "b") & (pl.col("merchant_id") == "m1")).row(0, named=True)
    assert row["buyer_conversion"] == 0.0 and row["sessions"] == 4


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"event table lacks columns \['session_id'\]"):
        metrics.merchant_metrics(EVENTS.drop("session_id"))
    with pytest.raises(ValueError, match="rows without session_id; sessionise it first"):
        metrics.merchant_metrics(EVENTS.with_columns(session_id=pl.lit(None, pl.Utf8)))
    with pytest.raises(ValueError, match="unknown rate 'conversion'"):
        metrics.weight_column("conversion")


def test_failure_rates_count_each_agent_once_per_kind():
    results = pl.DataFrame({"agent_id": ["a1", "a2", "a3", "a4"],
                            "status": ["completed", "crashed", "crashed", "completed"],
                            "error_kind": ["", "stuck", "browser_crash", ""]})
    steps = pl.DataFrame({"agent_id": ["a1", "a1", "a2", "a2", "a4"],
                          "error": ["form_rejected: x at /checkout/", "form_rejected: again", "form_rejected: y",
                                    "stuck: 6 actions", "navigation_timeout: slow"]})
    assert metrics.failure_rates(results, steps) == {"browser_crash": 0.25, "form_rejected": 0.5,
                                                     "navigation_timeout": 0.25, "stuck": 0.25}
    assert metrics.failure_rates(results.head(0), steps.head(0)) == {}


def test_crash_rate_counts_final_attempt():
    results = pl.DataFrame({
        "agent_id": ["a1", "a1", "a2", "a3", "a4"],
        "status": ["crashed", "completed", "crashed", "completed", "completed"],
        "attempt": [0, 1, 0, 0, 0],
    })
    assert metrics.crash_rate(results) == pytest.approx(1 / 4)
    agents = pl.DataFrame({"agent_id": ["a1", "a2", "a3", "a4"], "merchant_id": ["m1", "m1", "m2", "m2"]})
    by = metrics.crash_rate(results, agents, by="merchant_id")
    assert by.to_dicts() == [{"merchant_id": "m1", "agents": 2, "crash_rate": 0.5},
                             {"merchant_id": "m2", "agents": 2, "crash_rate": 0.0}]
    with pytest.raises(ValueError, match="needs the agents table"):
        metrics.crash_rate(results, by="merchant_id")


def test_agent_outcomes_keep_silent_agents():
    agents = pl.DataFrame({"agent_id": ["b1", "b3", "zz"], "merchant_id": ["m1", "m1", "m1"]})
    out = metrics.agent_outcomes(EVENTS.filter(pl.col("merchant_id") == "m1"), agents)
    rows = {r["agent_id"]: r for r in out.to_dicts()}
    assert rows["b1"] == {"agent_id": "b1", "merchant_id": "m1", "converted": 1.0, "carted": 1.0,
                          "favorited": 0.0, "product_pages": 3.0, "events": 5.0, "sessions": 2.0}
    assert rows["b3"]["converted"] == 0.0 and rows["b3"]["carted"] == 1.0
    assert rows["zz"] == {"agent_id": "zz", "merchant_id": "m1", **{k: 0.0 for k in metrics.OUTCOMES}}
