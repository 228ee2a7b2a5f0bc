"""Sessions and histories: canonical events → events tagged with their history and session.

A *session* is one buyer's visit to one merchant: consecutive events (ordered by `ts`, then `seq`)
of the same buyer at the same merchant, split where

* the source's own `session_id` changes (when the row has one; REES46 `user_session`), else
* `sessions.day_resolution`: the calendar day changes (Tmall logs days only: buyer x merchant x day),
* otherwise: more than `sessions.gap_minutes` pass between two events (a gap of exactly
  `gap_minutes` stays inside the session).

A *history* is the unit of typing (`sessions.unit`):

* `buyer_merchant`: history_id "<buyer_id>|<merchant_id>", the buyer's sessions at one storefront;
* `buyer`:          history_id "<buyer_id>", all of the buyer's sessions (history merchant "*").

Sessions never span merchants, whatever the unit: a session is replayed on one merchant's shop.
`session_idx` numbers a history's sessions by their first event (ts, seq; then merchant_id) from 0;
`session_id` is "<history_id>#<session_idx>".

Everything is vectorised with polars; `sessionize` works on any subset of rows that holds whole
buyers (one Ray block after the buyer hash partition, or the whole input in the reference).
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

UNITS: tuple[str, ...] = ("buyer_merchant", "buyer")
ALL_MERCHANTS = "*"  # merchant_id of whole-buyer histories
MS_PER_DAY = 86_400_000

# columns sessionize adds to the canonical ones (session_id is replaced by the derived id)
SESSION_COLUMNS: tuple[str, ...] = ("history_id", "session_id", "session_idx")


class SessionConfigError(ValueError):
    pass


def check(cfg) -> None:
    """One-line errors for session settings that cannot work."""
    if cfg.unit not in UNITS:
        raise SessionConfigError(f"sessions.unit={cfg.unit!r}: expected one of {', '.join(UNITS)}")
    if not cfg.day_resolution and not cfg.gap_minutes > 0:
        raise SessionConfigError(f"sessions.gap_minutes={cfg.gap_minutes}: must be positive")


def history_id_expr(unit: str) -> pl.Expr:
    if unit == "buyer_merchant":
        return pl.concat_str([pl.col("buyer_id"), pl.col("merchant_id")], separator="|")
    return pl.col("buyer_id")


def history_merchant_expr(unit: str) -> pl.Expr:
    """merchant_id of the history: the merchant, or "*" for whole-buyer histories."""
    return pl.col("merchant_id") if unit == "buyer_merchant" else pl.lit(ALL_MERCHANTS)


def as_frame(events: pa.Table | pl.DataFrame) -> pl.DataFrame:
    return events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)


def sessionize(events: pa.Table | pl.DataFrame, cfg) -> pl.DataFrame:
    """Canonical events (whole buyers) → the same rows with history_id, session_id, session_idx.

    Rows come back grouped by history (buyer_merchant: in (buyer_id, merchant_id) order; buyer: in
    buyer_id order) and within a history sorted by (ts, seq); a buyer's histories are adjacent.
    `ts` stays timestamp[ms].
    """
    check(cfg)
    df = as_frame(events)
    if df.height == 0:
        return df.with_columns(
            pl.lit(None, pl.Utf8).alias("history_id"),
            pl.lit(None, pl.Utf8).alias("session_id"),
            pl.lit(None, pl.Int32).alias("session_idx"),
        )
    df = df.sort(["buyer_id", "merchant_id", "ts", "seq"])
    ts = pl.col("ts").cast(pl.Int64)  # milliseconds
    same_visit = (pl.col("buyer_id") == pl.col("buyer_id").shift(1)) & (
        pl.col("merchant_id") == pl.col("merchant_id").shift(1)
    )
    if cfg.day_resolution:
        derived = (ts // MS_PER_DAY) == (ts // MS_PER_DAY).shift(1)
    else:
        derived = (ts - ts.shift(1)) <= int(round(cfg.gap_minutes * 60_000))
    src = pl.col("session_id")
    continues = pl.when(src.is_not_null()).then(src == src.shift(1)).otherwise(derived)
    new = ~(same_visit & continues).fill_null(False)
    df = df.with_columns(
        new.cum_sum().alias("_visit"),
        history_id_expr(cfg.unit).alias("history_id"),
    )
    if cfg.unit == "buyer_merchant":
        # rows are in (buyer, merchant, time) order: visits are already numbered in time order
        idx = (pl.col("_visit") - pl.col("_visit").min().over("history_id")).cast(pl.Int32)
        df = df.with_columns(idx.alias("session_idx"))
    else:
        visits = (
            df.group_by("_visit")
            .agg(
                pl.col("history_id").first(),
                pl.col("ts").first(),
                pl.col("seq").first(),
                pl.col("merchant_id").first(),
            )
            .sort(["history_id", "ts", "seq", "merchant_id"])
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int32).over("history_id").alias("session_idx"))
            .select("_visit", "session_idx")
        )
        df = df.join(visits, on="_visit", how="left")
    df = df.with_columns(
        pl.concat_str([pl.col("history_id"), pl.col("session_idx").cast(pl.Utf8)], separator="#").alias(
            "session_id"
        )
    )
    df = df.drop("_visit")
    # buyer_merchant rows are already in (buyer, merchant, ts, seq) order; whole-buyer histories
    # interleave their merchants in time
    return df if cfg.unit == "buyer_merchant" else df.sort(["buyer_id", "ts", "seq", "merchant_id"])
