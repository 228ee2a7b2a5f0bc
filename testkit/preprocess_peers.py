"""Peers of the preprocess stage, for tests and benchmarks (not part of the package).

`run_reference(cfg, out)` reads the whole input with `validate.read_canonical`, computes the merchant
statistics, sessions, features and traces in one polars/pyarrow pass over everything, and writes the
same artifacts as `pipeline.run_preprocess`. The Ray pipeline applies the same `transform` to hash
partitions of buyers instead; everything global (merchant statistics, normalisation) is computed
exactly, so the two give identical tables (tests/data/test_pipeline.py checks it).

Also here: `vectorised_features` (the single-process baseline of the benchmark) and `pandas_features`
(the per-history `groupby().apply` baseline; an independent implementation of the same features).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

from simpersona import storage
from simpersona.data import features as F
from simpersona.data import traces as T
from simpersona.data.schema import EVENTS
from simpersona.data.sessions import sessionize
from simpersona.data.storefront import write_storefront
from simpersona.data.transform import (
    TransformContext,
    block_stats,
    check_config,
    combine_stats,
    counts_summary,
    finish_features,
    output_uris,
    read_events,
    read_planted,
    resolve_planted,
    store_section,
    transform,
)


def run_reference(cfg, out: str) -> dict:
    """Preprocess `cfg.data.input` in this process; write DIR-style artifacts under `out`."""
    from simpersona.runtime import Stopwatch
    from simpersona.storage import write_json

    check_config(cfg)
    sw = Stopwatch()
    uris = output_uris(out)
    data_cfg = cfg.data
    with sw.lap("read"):
        quarantine = storage.join_uri(uris["quarantine"], "part-00000.parquet")
        table, report = read_events(data_cfg, quarantine, cfg.progress)
        events = pl.from_arrow(table)
        planted = read_planted(resolve_planted(cfg), data_cfg.s3)
    with sw.lap("transform"):
        ctx = TransformContext.build(cfg, F.merge_partials(F.merchant_partials(events)), store_section(cfg))
        result = transform(events, planted, ctx, T.ShopCache(ctx.catalogs, ctx.store))
        totals = combine_stats([block_stats(result.raw)])
        feats = finish_features(result.raw, totals["mean"], totals["std"], cfg.features.seq_len)
    with sw.lap("write"):
        storage.write_parquet(result.events, storage.join_uri(uris["events"], "part-00000.parquet"), data_cfg.s3)
        storage.write_parquet(feats, storage.join_uri(uris["features"], "part-00000.parquet"), data_cfg.s3,
                         use_dictionary=["history_id", "buyer_id", "merchant_id"])
        storage.write_parquet(result.traces, storage.join_uri(uris["traces"], "part-00000.parquet"), data_cfg.s3)
        spec = F.feature_spec(ctx.section("features"), ctx.unit, totals["mean"], totals["std"])
        write_json(uris["feature_spec"], spec, data_cfg.s3)
        write_storefront(uris["storefront"], ctx.store, ctx.catalogs, data_cfg.s3)
    summary = {**counts_summary(totals, report, ctx.stats, ctx.unit), "engine": "reference",
               "wall_s": sw.total(), "phases_s": sw.laps, "out": out}
    write_json(uris["summary"], summary, data_cfg.s3)
    return summary


# ---------------------------------------------------------------------------------------------------
# Baselines of the benchmark: the features alone, vectorised (polars) and per history (pandas)


def vectorised_features(events: pa.Table, cfg, planted: pl.DataFrame | None = None) -> pa.Table:
    """Single-process vectorised baseline: sessions + features of the whole input with polars/numpy."""
    df = pl.from_arrow(events)
    stats = F.MerchantStats.from_merged(F.merge_partials(F.merchant_partials(df)))
    sessions = sessionize(df, cfg.sessions)
    raw = F.raw_features(sessions, stats, cfg.features, cfg.sessions.unit, planted)
    n, s1, s2 = F.partial_moments(F.agg_matrix(raw))
    mean, std = F.finish_moments(n, s1, s2)
    return F.normalise(raw, mean, std, cfg.features.seq_len)


def _history_features_pandas(g: pd.DataFrame, L: int, price_edges: np.ndarray, gap_edges_ms: np.ndarray,
                             t_ref: int) -> pd.Series:
    """One history (its rows in time order) → its raw features, row by row in plain Python/numpy."""
    ts = g["ts_ms"].to_numpy()
    ev = g["event"].to_numpy()
    n = len(g)
    codes, prices, gaps, flags = [], [], [], []
    seen: set = set()
    prev_cat = None
    for i in range(n):
        codes.append(EVENTS.index(ev[i]) + 1)
        lr = g["log_ratio"].iat[i]
        prices.append(0 if np.isnan(lr) else 1 + int(np.searchsorted(price_edges, lr, side="right")))
        dt = 0 if i == 0 else ts[i] - ts[i - 1]
        gaps.append(1 if dt <= 0 else 2 + int(np.searchsorted(gap_edges_ms, dt, side="left")))
        pid, cat = g["product_id"].iat[i], g["category"].iat[i]
        pid = None if pd.isna(pid) else pid  # pandas gives NaN or None for a missing string
        cat = None if pd.isna(cat) else cat
        flag = 0
        if pid is not None and pid in seen:
            flag |= F.REPEAT_FLAG
        if pid is not None:
            seen.add(pid)
        if cat is not None and prev_cat is not None and cat != prev_cat:
            flag |= F.CATEGORY_FLAG
        prev_cat = cat
        flags.append(flag)

    def last(seq):
        tail = seq[-L:]
        return [0] * (L - len(tail)) + tail

    sessions = g["session_idx"].to_numpy()
    n_sess = int(sessions.max()) + 1
    counts = {e: int((ev == e).sum()) for e in EVENTS}
    buy_sessions = cart_sessions = abandon_sessions = 0
    for s in range(n_sess):
        idx = np.flatnonzero(sessions == s)
        carts = [i for i in idx if ev[i] == "cart"]
        buys = [i for i in idx if ev[i] == "purchase"]
        buy_sessions += bool(buys)
        cart_sessions += bool(carts)
        abandon_sessions += bool(carts) and (not buys or max(buys) < max(carts))
    lrs = g["log_ratio"].to_numpy()
    priced = lrs[~np.isnan(lrs)]
    carts = np.flatnonzero(ev == "cart")
    buys = np.flatnonzero(ev == "purchase")
    products = set(g["product_id"].dropna())
    cats = set(g["category"].dropna())
    agg = {
        "log_events": math.log1p(n),
        "log_sessions": math.log1p(n_sess),
        "log_events_per_session": math.log1p(n / n_sess),
        **{F.COUNT_NAMES[e]: math.log1p(counts[e]) for e in EVENTS},
        **{F.RATE_NAMES[e]: counts[e] / n for e in EVENTS},
        "session_conversion": buy_sessions / n_sess,
        "cart_abandon_rate": abandon_sessions / max(cart_sessions, 1),
        "price_level": float(np.clip(priced, -F.PRICE_LOG_CLIP, F.PRICE_LOG_CLIP).mean()) if priced.size else 0.0,
        "price_known_share": priced.size / n,
        "log_recency_days": math.log1p(max(t_ref - int(ts.max()), 0) / 86_400_000),
        "log_active_days": math.log1p(len(set((ts // 86_400_000).tolist()))),
        "log_span_days": math.log1p((int(ts.max()) - int(ts.min())) / 86_400_000),
        "log_distinct_products": math.log1p(len(products)),
        "log_distinct_categories": math.log1p(len(cats)),
        "repeat_product_share": sum(f & F.REPEAT_FLAG for f in flags) / n,
        "log_merchants": math.log1p(g["merchant_id"].nunique()),
    }
    return pd.Series({
        "seq_event": last(codes), "seq_price": last(prices), "seq_gap": last(gaps), "seq_flags": last(flags),
        "agg_raw": [agg[name] for name in F.AGG_NAMES],
        "label_purchase": int(counts["purchase"] > 0),
        "label_cart_abandon": int(carts.size > 0 and (buys.size == 0 or buys.max() < carts.max())),
        "label_depth": math.log1p(n / n_sess),
    })


def pandas_features(events: pa.Table, cfg) -> pd.DataFrame:
    """The pandas `groupby().apply` baseline: the same raw features, one Python call per history.

    Sessions come from the vectorised sessionizer (the baseline measures the feature computation);
    rows are in (history_id, ts, seq) order, so each group is one history in time order.
    """
    df = pl.from_arrow(events)
    stats = F.MerchantStats.from_merged(F.merge_partials(F.merchant_partials(df)))
    sessions = sessionize(df, cfg.sessions).join(stats.prices, on="merchant_id", how="left",
                                                 maintain_order="left")
    pdf = sessions.select(
        "history_id", "merchant_id", "event", "product_id", "category", "session_idx",
        pl.col("ts").cast(pl.Int64).alias("ts_ms"),
        pl.when(pl.col("price").is_not_null() & (pl.col("mean_price") > 0))
        .then((pl.col("price") / pl.col("mean_price")).log()).otherwise(None).fill_null(float("nan"))
        .alias("log_ratio"),
    ).to_pandas()
    edges = F.price_edges(cfg.features)
    gap_edges = np.asarray(cfg.features.gap_edges_s) * 1000.0
    return pdf.groupby("history_id", sort=True).apply(
        _history_features_pandas, L=cfg.features.seq_len, price_edges=edges, gap_edges_ms=gap_edges,
        t_ref=stats.t_ref_ms, include_groups=False,
    )
