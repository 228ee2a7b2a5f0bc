"""Behaviour metrics from a canonical event table: one code path for real and simulated buyers.

The input is any table in the canonical schema (simpersona.data.schema) with `session_id` filled:
the real log after sessionisation, or the storefront's server-side log of simulated traffic (where
`buyer_id` is the agent id). Metrics therefore come from what a shop's analytics would see, never
from what agents report about themselves.

Units
-----
session   one row per (merchant, buyer, session_id)
history   one row per (merchant, buyer): a buyer's visits to one storefront ("visiting buyer")

Funnel strata (the furthest funnel point a unit reached; the first rule that matches wins)
-----------------------------------------------------------------------------------------
D purchase  a purchase event
C cart      an add-to-cart event, no purchase
A bounce    exactly one logged event (one product page / one search), no cart, no purchase
B browse    more than one event, no cart, no purchase

Metric names (per merchant, or pooled with `overall_metrics`)
-------------------------------------------------------------
buyers, sessions, events                 counts
buyer_conversion       share of visiting buyers who buy (what the Tmall README measures)
session_conversion     share of sessions with a purchase
buyer_cart_rate, buyer_favorite_rate     share of visiting buyers who cart / favourite
session_cart_rate, session_favorite_rate share of sessions with a cart / favourite event
pages_per_session      product pages viewed per session (view events)
events_per_session     logged events per session
session_length_s       mean seconds from a session's first to its last event (0 at day resolution)
bounce_rate            share of sessions in stratum A
reach_product, reach_cart, reach_checkout   deep engagement: share of sessions that reached a
                       product page, the cart, checkout. The canonical log has no checkout page
                       event, so checkout is observed as an order placed (or a `checkout` event
                       where a source logs one).
session_share_A..D, buyer_share_A..D      funnel strata distribution over sessions / histories

A buyer with no logged event is invisible here, as in real logs; `agent_outcomes` counts every
launched agent (zeros for the silent ones) for what-if comparisons on a fixed population.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

STRATA: dict[str, str] = {"A": "bounce", "B": "browse", "C": "cart", "D": "purchase"}
PRODUCT_EVENTS: tuple[str, ...] = ("view",)
CART_EVENTS: tuple[str, ...] = ("cart",)
FAVORITE_EVENTS: tuple[str, ...] = ("favorite",)
PURCHASE_EVENTS: tuple[str, ...] = ("purchase",)
CHECKOUT_EVENTS: tuple[str, ...] = ("checkout", "purchase")

RATE_NAMES: tuple[str, ...] = (
    "buyer_conversion", "session_conversion", "buyer_cart_rate", "buyer_favorite_rate",
    "session_cart_rate", "session_favorite_rate", "pages_per_session", "events_per_session",
    "session_length_s", "bounce_rate", "reach_product", "reach_cart", "reach_checkout",
    *(f"session_share_{s}" for s in STRATA), *(f"buyer_share_{s}" for s in STRATA),
)


def weight_column(rate: str) -> str:
    """The count a rate is an average over ("buyers" or "sessions"), for pooling across merchants."""
    if rate not in RATE_NAMES:
        raise ValueError(f"unknown rate {rate!r}; known: {', '.join(RATE_NAMES)}")
    return "buyers" if rate.startswith("buyer_") else "sessions"


EVENT_COLUMNS = ("buyer_id", "merchant_id", "session_id", "event", "ts")
SCOPE = "_scope"  # constant group key for pooled metrics


def as_frame(events: pa.Table | pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """A lazy polars view of a canonical event table, checked for the columns metrics need."""
    if isinstance(events, pa.Table):
        events = pl.from_arrow(events)
    lf = events.lazy() if isinstance(events, pl.DataFrame) else events
    names = lf.collect_schema().names()
    missing = [c for c in EVENT_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"event table lacks columns {missing} needed for metrics; has {names}")
    return lf


def _stratum(n_events: pl.Expr, has_cart: pl.Expr, has_purchase: pl.Expr) -> pl.Expr:
    return (
        pl.when(has_purchase).then(pl.lit("D"))
        .when(has_cart).then(pl.lit("C"))
        .when(n_events == 1).then(pl.lit("A"))
        .otherwise(pl.lit("B"))
    )


def session_table(events, keys: tuple[str, ...] = ()) -> pl.DataFrame:
    """One row per session with its counts, deep-engagement flags and funnel stratum.

    `keys` are extra columns carried as grouping keys (e.g. `variant`)."""
    lf = as_frame(events)
    if lf.select(pl.col("session_id").is_null().any()).collect().item():
        raise ValueError("event table has rows without session_id; sessionise it first (simpersona.data)")
    ev = pl.col("event")
    out = (
        lf.group_by([*keys, "merchant_id", "buyer_id", "session_id"])
        .agg(
            n_events=pl.len().cast(pl.Int64),
            n_views=ev.is_in(PRODUCT_EVENTS).sum().cast(pl.Int64),
            has_cart=ev.is_in(CART_EVENTS).any(),
            has_favorite=ev.is_in(FAVORITE_EVENTS).any(),
            has_purchase=ev.is_in(PURCHASE_EVENTS).any(),
            reach_checkout=ev.is_in(CHECKOUT_EVENTS).any(),
            duration_s=(pl.col("ts").max() - pl.col("ts").min()).dt.total_milliseconds() / 1000.0,
        )
        .with_columns(
            reach_product=pl.col("n_views") > 0,
            reach_cart=pl.col("has_cart") | pl.col("has_purchase"),
            stratum=_stratum(pl.col("n_events"), pl.col("has_cart"), pl.col("has_purchase")),
        )
    )
    return out.collect()


def history_table(sessions: pl.DataFrame, keys: tuple[str, ...] = ()) -> pl.DataFrame:
    """One row per (merchant, buyer) history, from `session_table` rows."""
    return (
        sessions.group_by([*keys, "merchant_id", "buyer_id"])
        .agg(
            n_sessions=pl.len().cast(pl.Int64),
            n_events=pl.col("n_events").sum(),
            n_views=pl.col("n_views").sum(),
            has_cart=pl.col("has_cart").any(),
            has_favorite=pl.col("has_favorite").any(),
            has_purchase=pl.col("has_purchase").any(),
        )
        .with_columns(stratum=_stratum(pl.col("n_events"), pl.col("has_cart"), pl.col("has_purchase")))
    )


def _mean(flag: str) -> pl.Expr:
    return pl.col(flag).cast(pl.Float64).mean()


def _share(stratum: str) -> pl.Expr:
    return (pl.col("stratum") == stratum).cast(pl.Float64).mean()


def merchant_metrics(events, by: tuple[str, ...] = ("merchant_id",)) -> pl.DataFrame:
    """Every metric of RATE_NAMES per group of `by` (default: per merchant), sorted by `by`."""
    extra = tuple(k for k in by if k not in ("merchant_id", SCOPE))
    sessions = session_table(events, keys=extra)
    histories = history_table(sessions, keys=extra)
    if SCOPE in by:
        sessions = sessions.with_columns(pl.lit("*").alias(SCOPE))
        histories = histories.with_columns(pl.lit("*").alias(SCOPE))
    per_session = sessions.group_by(list(by)).agg(
        sessions=pl.len().cast(pl.Int64),
        events=pl.col("n_events").sum(),
        session_conversion=_mean("has_purchase"),
        session_cart_rate=_mean("has_cart"),
        session_favorite_rate=_mean("has_favorite"),
        pages_per_session=pl.col("n_views").cast(pl.Float64).mean(),
        events_per_session=pl.col("n_events").cast(pl.Float64).mean(),
        session_length_s=pl.col("duration_s").mean(),
        bounce_rate=_share("A"),
        reach_product=_mean("reach_product"),
        reach_cart=_mean("reach_cart"),
        reach_checkout=_mean("reach_checkout"),
        **{f"session_share_{s}": _share(s) for s in STRATA},
    )
    per_history = histories.group_by(list(by)).agg(
        buyers=pl.len().cast(pl.Int64),
        buyer_conversion=_mean("has_purchase"),
        buyer_cart_rate=_mean("has_cart"),
        buyer_favorite_rate=_mean("has_favorite"),
        **{f"buyer_share_{s}": _share(s) for s in STRATA},
    )
    out = per_history.join(per_session, on=list(by), how="full", coalesce=True)
    return out.select(*by, "buyers", "sessions", "events", *RATE_NAMES).sort(list(by))


def overall_metrics(events) -> dict[str, float]:
    """The metrics pooled over all merchants (every session and history counts once; `buyers`
    then counts visiting buyer-merchant pairs)."""
    table = merchant_metrics(events, by=(SCOPE,))
    if table.height == 0:
        return {"buyers": 0, "sessions": 0, "events": 0, **{name: None for name in RATE_NAMES}}
    return table.drop(SCOPE).row(0, named=True)


def crash_rate(results: pa.Table | pl.DataFrame, agents: pa.Table | pl.DataFrame | None = None,
               by: str | None = None) -> float | pl.DataFrame:
    """Share of agents whose run ended with status `crashed` (one row per agent, last attempt).

    With `agents` and `by` (e.g. "merchant_id"), a table of crash rates per group."""
    res = pl.from_arrow(results) if isinstance(results, pa.Table) else results
    for col in ("agent_id", "status"):
        if col not in res.columns:
            raise ValueError(f"results table lacks column {col!r}; has {res.columns}")
    if "attempt" in res.columns:  # a retried agent counts once, by its final attempt
        res = res.sort("attempt").group_by("agent_id").last()
    crashed = (pl.col("status") == "crashed").cast(pl.Float64)
    if by is None:
        return float(res.select(crashed.mean()).item()) if res.height else 0.0
    if agents is None:
        raise ValueError("crash_rate(by=...) needs the agents table to map agents to groups")
    ag = pl.from_arrow(agents) if isinstance(agents, pa.Table) else agents
    joined = res.join(ag.select("agent_id", by), on="agent_id", how="inner")
    return joined.group_by(by).agg(agents=pl.len().cast(pl.Int64), crash_rate=crashed.mean()).sort(by)


def failure_rates(results: pl.DataFrame, step_errors: pl.DataFrame) -> dict[str, float]:
    """kind -> share of agents that met a failure of that kind at least once: in a step (`step_errors`:
    agent_id, error "kind: reason") or as the error that ended their run (a crash)."""
    agents = results.select("agent_id").unique().height
    if agents == 0:
        return {}
    kinds = step_errors.select("agent_id", pl.col("error").str.split(":").list.first().str.strip_chars().alias("kind"))
    ended = results.filter((pl.col("status") == "crashed") & (pl.col("error_kind") != "")) \
        .select("agent_id", pl.col("error_kind").alias("kind"))
    both = pl.concat([kinds, ended]).unique()
    counts = both.group_by("kind").agg(pl.len().alias("n")).sort("kind")
    return {k: round(n / agents, 4) for k, n in counts.iter_rows()}


OUTCOMES: tuple[str, ...] = ("converted", "carted", "favorited", "product_pages", "events", "sessions")


def agent_outcomes(events, agents: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """One row per launched agent (agents table: agent_id, merchant_id), with its logged outcomes.

    Agents that logged nothing get zeros, so two variants run on the same population line up
    agent by agent (the pairing the what-if bootstrap relies on)."""
    ag = pl.from_arrow(agents) if isinstance(agents, pa.Table) else agents
    lf = as_frame(events)
    ev = pl.col("event")
    per_buyer = (
        lf.group_by("buyer_id")
        .agg(
            converted=ev.is_in(PURCHASE_EVENTS).any().cast(pl.Float64),
            carted=ev.is_in(CART_EVENTS).any().cast(pl.Float64),
            favorited=ev.is_in(FAVORITE_EVENTS).any().cast(pl.Float64),
            product_pages=ev.is_in(PRODUCT_EVENTS).sum().cast(pl.Float64),
            events=pl.len().cast(pl.Float64),
            sessions=pl.col("session_id").n_unique().cast(pl.Float64),
        )
        .rename({"buyer_id": "agent_id"})
        .collect()
    )
    out = ag.select("agent_id", "merchant_id").join(per_buyer, on="agent_id", how="left")
    return out.with_columns(pl.col(list(OUTCOMES)).fill_null(0.0)).sort("agent_id")
