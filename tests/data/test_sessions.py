"""Sessionisation: inactivity gaps (at the threshold exactly), ties, day resolution, unsorted input,
source session ids, whole-buyer histories."""

from __future__ import annotations

import polars as pl
import pytest

from simpersona.data.config import SessionConfig
from simpersona.data.sessions import SessionConfigError, sessionize
from tests.data.canonical_rows import canonical


def sessions_of(table, **kw) -> list[tuple[str, str, int]]:
    df = sessionize(table, SessionConfig(**kw))
    return list(zip(df["history_id"], df["session_id"], df["seq"]))


def test_gap_exactly_at_threshold_stays_in_the_session():
    t = canonical([
        ("b1", "m1", "2014-06-01 10:00:00", "view"),
        ("b1", "m1", "2014-06-01 10:30:00", "view"),  # exactly 30 min later: same session
        ("b1", "m1", "2014-06-01 11:00:01", "view"),  # 30 min 1 s later: a new session
        ("b1", "m1", "2014-06-01 11:30:01", "cart"),
    ])  # fmt: skip
    df = sessionize(t, SessionConfig(gap_minutes=30))
    assert df["session_idx"].to_list() == [0, 0, 1, 1]
    assert df["session_id"].to_list() == ["b1|m1#0", "b1|m1#0", "b1|m1#1", "b1|m1#1"]
    assert df["history_id"].unique().to_list() == ["b1|m1"]


def test_gap_is_measured_from_the_previous_event_not_the_session_start():
    # every 25 minutes for two hours: the session lasts 125 minutes, no gap reaches 30
    times = [f"2014-06-01 {10 + m // 60:02d}:{m % 60:02d}" for m in range(0, 126, 25)]
    t = canonical([("b1", "m1", when, "view") for when in times])
    assert sessionize(t, SessionConfig(gap_minutes=30))["session_idx"].to_list() == [0] * 6


def test_ties_keep_the_logged_order_and_one_session():
    t = canonical([
        ("b1", "m1", "2014-06-01 10:00", "view", "p2"),
        ("b1", "m1", "2014-06-01 10:00", "cart", "p2"),
        ("b1", "m1", "2014-06-01 10:00", "purchase", "p2"),
    ])  # fmt: skip
    df = sessionize(t, SessionConfig())
    assert df["event"].to_list() == ["view", "cart", "purchase"]
    assert df["seq"].to_list() == [0, 1, 2]
    assert df["session_idx"].to_list() == [0, 0, 0]


def test_unsorted_input_gives_the_same_sessions_as_sorted_input():
    rows = [
        ("b2", "m1", "2014-06-02 09:00", "view"),
        ("b1", "m1", "2014-06-01 12:00", "view"),
        ("b1", "m2", "2014-06-01 10:05", "view"),
        ("b1", "m1", "2014-06-01 10:00", "view"),
        ("b1", "m1", "2014-06-01 10:10", "purchase"),
    ]
    t = canonical(rows)
    shuffled = t.take([4, 2, 0, 3, 1])
    a, b = sessionize(t, SessionConfig()), sessionize(shuffled, SessionConfig())
    assert a.equals(b)
    assert list(zip(a["history_id"], a["session_idx"], a["seq"])) == [
        ("b1|m1", 0, 3), ("b1|m1", 0, 4), ("b1|m1", 1, 1), ("b1|m2", 0, 2), ("b2|m1", 0, 0),
    ]  # fmt: skip


def test_day_resolution_one_session_per_buyer_merchant_day():
    t = canonical([
        ("b1", "m1", "2014-06-01 00:00", "view"),
        ("b1", "m1", "2014-06-01 00:00", "view"),
        ("b1", "m1", "2014-06-02 00:00", "purchase"),
        ("b1", "m2", "2014-06-01 00:00", "view"),
        ("b1", "m1", "2014-06-04 00:00", "view"),
    ])  # fmt: skip
    df = sessionize(t, SessionConfig(day_resolution=True))
    got = list(zip(df["history_id"], df["session_idx"]))
    assert got == [("b1|m1", 0), ("b1|m1", 0), ("b1|m1", 1), ("b1|m1", 2), ("b1|m2", 0)]
    # a day boundary splits even events minutes apart; a long day stays one session
    t = canonical([
        ("b1", "m1", "2014-06-01 23:59", "view"), ("b1", "m1", "2014-06-02 00:01", "view"),
        ("b1", "m1", "2014-06-02 08:00", "view"),
    ])  # fmt: skip
    assert sessionize(t, SessionConfig(day_resolution=True))["session_idx"].to_list() == [0, 1, 1]
    assert sessionize(t, SessionConfig(day_resolution=False))["session_idx"].to_list() == [0, 0, 1]


def test_source_session_ids_win_over_the_gap():
    t = canonical([
        ("b1", "m1", "2014-06-01 10:00", "view", None, None, None, "s1"),
        ("b1", "m1", "2014-06-01 10:01", "view", None, None, None, "s2"),  # new source session, 1 min later
        ("b1", "m1", "2014-06-01 15:00", "view", None, None, None, "s2"),  # same source session, 5 h later
    ])  # fmt: skip
    assert sessionize(t, SessionConfig())["session_idx"].to_list() == [0, 1, 1]


def test_whole_buyer_histories_order_sessions_across_merchants():
    t = canonical([
        ("b1", "m2", "2014-06-01 09:00", "view"),
        ("b1", "m1", "2014-06-01 09:10", "view"),  # interleaved in time, but a session never spans merchants
        ("b1", "m2", "2014-06-01 09:20", "view"),
        ("b1", "m1", "2014-06-03 09:00", "view"),
        ("b2", "m1", "2014-06-01 09:00", "view"),
    ])  # fmt: skip
    df = sessionize(t, SessionConfig(unit="buyer"))
    assert df["history_id"].to_list() == ["b1"] * 4 + ["b2"]
    assert list(zip(df["merchant_id"], df["session_idx"])) == [("m2", 0), ("m1", 1), ("m2", 0), ("m1", 2),
                                                                ("m1", 0)]
    assert df["session_id"].to_list()[:2] == ["b1#0", "b1#1"]


def test_tmall_sessions_match_the_measured_counts(tmall_csv):
    import pyarrow as pa

    from simpersona.data.config import DataConfig
    from simpersona.data.validate import read_canonical

    events = pa.concat_tables(list(read_canonical(DataConfig(input=str(tmall_csv)))))
    df = sessionize(events, SessionConfig(day_resolution=True))
    assert df.height == 182_880
    assert df["history_id"].n_unique() == 57_655
    assert df["session_id"].n_unique() == 79_520
    assert df.group_by("history_id").agg(pl.col("session_idx").max() + 1 == pl.col("session_idx").n_unique())[
        "session_idx"
    ].all()


def test_bad_settings_fail_with_one_line():
    t = canonical([("b1", "m1", "2014-06-01 10:00", "view")])
    with pytest.raises(SessionConfigError, match=r"sessions.unit='shop': expected one of buyer_merchant, buyer"):
        sessionize(t, SessionConfig(unit="shop"))
    with pytest.raises(SessionConfigError, match=r"sessions.gap_minutes=0: must be positive"):
        sessionize(t, SessionConfig(gap_minutes=0))
