"""Buyer features: one row per history (DIR/preprocess/features/*.parquet) and feature_spec.json.

Schema (the contract between preprocess and vq; L = features.seq_len, F = len(AGG_NAMES))
------------------------------------------------------------------------------------------
history_id          string   "<buyer_id>|<merchant_id>" (unit buyer_merchant) or "<buyer_id>" (unit buyer)
buyer_id            string
merchant_id         string   "*" for whole-buyer histories
seq_event           fixed_size_binary[L]      the last L events, LEFT-padded: 0 = pad, 1..6 = EVENTS index + 1
seq_price           fixed_size_binary[L]      0 = pad or no price; 1..P = bucket of log(price / mean price of
                                              the event's merchant), P buckets evenly spaced over
                                              [-log(span), +log(span)] (the outer buckets are open)
seq_gap             fixed_size_binary[L]      0 = pad; 1 = first event of the history or same time as the
                                              previous one; 2..G = time since the previous event in the
                                              history, bucketed by gap_edges_s (upper edges inclusive)
seq_flags           fixed_size_binary[L]      bit value 1: the product was seen earlier in the history;
                                              bit value 2: the category differs from the previous event's
agg                 fixed_size_list<float32>[F]  AGG_NAMES, z-scored with agg_mean/agg_std of feature_spec.json
                                              (std 0 → 1); counts enter as log1p(count)
label_purchase      int8     the history has a purchase
label_cart_abandon  int8     the history has a cart event with no purchase after it
label_depth         float32  log1p(events per session)
planted_type        int32    planted type of the synthetic generator, -1 when unknown

The seq_* columns hold one int8 token per byte: Parquet decodes fixed-size binary about ten times
faster than a nested list of int8 (0.06 s against 0.55 s for the four columns of 500 k histories), which
is most of the assign stage's read cost. simpersona.vq.features also accepts fixed_size_list<int8>[L].

Global statistics are computed exactly, so that a distributed run and the single-process reference
give identical bytes: merchant mean prices from integer cents, the reference time from integer
milliseconds, and the z-score moments from fixed-point integer sums (order of summation is then
irrelevant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import polars as pl
import pyarrow as pa

from simpersona.data.schema import EVENTS
from simpersona.data.sessions import ALL_MERCHANTS, MS_PER_DAY

AGG_NAMES: tuple[str, ...] = (
    "log_events", "log_sessions", "log_events_per_session",
    "log_views", "log_carts", "log_remove_carts", "log_favorites", "log_purchases", "log_searches",
    "view_share", "cart_rate", "remove_cart_rate", "favorite_rate", "purchase_rate", "search_rate",
    "session_conversion", "cart_abandon_rate",
    "price_level", "price_known_share",
    "log_recency_days", "log_active_days", "log_span_days",
    "log_distinct_products", "log_distinct_categories", "repeat_product_share", "log_merchants",
)  # fmt: skip
SEQ_COLUMNS: tuple[str, ...] = ("seq_event", "seq_price", "seq_gap", "seq_flags")
LABELS: tuple[str, ...] = ("label_purchase", "label_cart_abandon", "label_depth")
COUNT_NAMES = {
    "view": "log_views",
    "cart": "log_carts",
    "remove_cart": "log_remove_carts",
    "favorite": "log_favorites",
    "purchase": "log_purchases",
    "search": "log_searches",
}
RATE_NAMES = {
    "view": "view_share",
    "cart": "cart_rate",
    "remove_cart": "remove_cart_rate",
    "favorite": "favorite_rate",
    "purchase": "purchase_rate",
    "search": "search_rate",
}
PRICE_LOG_CLIP = 5.0  # |log(price / merchant mean)| beyond this (x148) counts as this in price_level
FIXED_POINT = 1 << 16  # resolution of the exact moment sums
REPEAT_FLAG, CATEGORY_FLAG = 1, 2


class FeatureConfigError(ValueError):
    pass


def check(cfg) -> None:
    if cfg.seq_len < 1:
        raise FeatureConfigError(f"features.seq_len={cfg.seq_len}: must be at least 1")
    if not 1 <= cfg.price_buckets <= 127:
        raise FeatureConfigError(f"features.price_buckets={cfg.price_buckets}: must be in 1..127")
    if not cfg.price_ratio_span > 1:
        raise FeatureConfigError(f"features.price_ratio_span={cfg.price_ratio_span}: must exceed 1")
    edges = list(cfg.gap_edges_s)
    if any(b <= a for a, b in zip(edges, edges[1:])) or any(e <= 0 for e in edges):
        raise FeatureConfigError(f"features.gap_edges_s={edges}: must be positive and increasing")
    if cfg.gap_buckets != len(edges) + 2:
        raise FeatureConfigError(
            f"features.gap_buckets={cfg.gap_buckets} must equal len(gap_edges_s) + 2 = {len(edges) + 2} "
            "(bucket 1 is the first event / same time)"
        )


def price_edges(cfg) -> np.ndarray:
    span = math.log(cfg.price_ratio_span)
    return np.linspace(-span, span, cfg.price_buckets - 1) if cfg.price_buckets > 1 else np.zeros(0)


# ---------------------------------------------------------------------------------------------------
# Merchant statistics: everything global that per-history features (and catalogs) need.

PARTIAL_SCHEMA = {
    "merchant_id": pl.Utf8, "product_id": pl.Utf8, "n": pl.Int64, "price_cents": pl.Int64,
    "price_n": pl.Int64, "category": pl.Utf8, "ts_max": pl.Int64,
}  # fmt: skip


def merchant_partials(events: pl.DataFrame) -> pl.DataFrame:
    """Per (merchant, product) sums of one batch of canonical events; product "" = events without one.

    Integer sums (counts, price cents) and min/max combine exactly in any order, so partials of
    any split of the input merge (`merge_partials`) into the same statistics.
    """
    if events.height == 0:
        return pl.DataFrame(schema=PARTIAL_SCHEMA)
    cents = (pl.col("price") * 100).round().cast(pl.Int64)
    return (
        events.group_by(pl.col("merchant_id"), pl.col("product_id").fill_null(""))
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            cents.sum().cast(pl.Int64).alias("price_cents"),
            pl.col("price").count().cast(pl.Int64).alias("price_n"),
            pl.col("category").min().alias("category"),
            pl.col("ts").cast(pl.Int64).max().alias("ts_max"),
        )
        .select(list(PARTIAL_SCHEMA))
    )


def merge_partials(partials: pl.DataFrame) -> pl.DataFrame:
    return (
        partials.group_by("merchant_id", "product_id")
        .agg(
            pl.col("n").sum(),
            pl.col("price_cents").sum(),
            pl.col("price_n").sum(),
            pl.col("category").min(),
            pl.col("ts_max").max(),
        )
        .sort("merchant_id", "product_id")
        .select(list(PARTIAL_SCHEMA))
    )


@dataclass
class MerchantStats:
    """Merged per-(merchant, product) statistics and what is derived from them."""

    products: pl.DataFrame  # merge_partials output, sorted by (merchant_id, product_id)
    prices: pl.DataFrame  # merchant_id, mean_price (null when the merchant logs no prices)
    t_ref_ms: int  # latest event time of the input: recency is measured from here
    merchants: int

    @classmethod
    def from_merged(cls, merged: pl.DataFrame) -> MerchantStats:
        per = merged.group_by("merchant_id").agg(pl.col("price_cents").sum(), pl.col("price_n").sum())
        prices = per.select(
            "merchant_id",
            pl.when(pl.col("price_n") > 0)
            .then(pl.col("price_cents").cast(pl.Float64) / 100.0 / pl.col("price_n").cast(pl.Float64))
            .otherwise(None)
            .alias("mean_price"),
        ).sort("merchant_id")
        t_ref = merged["ts_max"].max()
        return cls(products=merged, prices=prices, t_ref_ms=int(t_ref or 0), merchants=prices.height)


# ---------------------------------------------------------------------------------------------------
# Per-history raw features


def _fixed_list(mat: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), dtype), mat.shape[1])


def planted_for(planted: pl.DataFrame, unit: str) -> pl.DataFrame:
    """history_id → planted_type. Types are planted per buyer x merchant; a whole-buyer history gets
    its type when all of the buyer's histories share it, else -1."""
    planted = planted.select("buyer_id", "merchant_id", pl.col("planted_type").cast(pl.Int32))
    if unit == "buyer_merchant":
        return planted.select(
            pl.concat_str(["buyer_id", "merchant_id"], separator="|").alias("history_id"), "planted_type"
        ).unique("history_id", keep="first")
    return (
        planted.group_by("buyer_id")
        .agg(
            pl.when(pl.col("planted_type").n_unique() == 1)
            .then(pl.col("planted_type").first())
            .otherwise(-1)
            .cast(pl.Int32)
            .alias("planted_type")
        )
        .rename({"buyer_id": "history_id"})
    )


def raw_features(
    sessions: pl.DataFrame, stats: MerchantStats, cfg, unit: str, planted: pl.DataFrame | None = None
) -> pa.Table:
    """Sessionized events (whole histories, each contiguous and in (ts, seq) order, as `sessionize`
    returns them) → one row per history, in the order the histories come.

    Returns the contract columns with `agg` still raw (float64, `agg_raw`) plus n_events / n_sessions
    for the run summary.
    """
    check(cfg)
    L = cfg.seq_len
    if sessions.height == 0:
        return raw_schema(L).empty_table()
    df = sessions.join(stats.prices, on="merchant_id", how="left", maintain_order="left")
    hist = pl.col("history_id")
    same = hist == hist.shift(1)
    ts = pl.col("ts").cast(pl.Int64)
    ref = pl.col("mean_price")
    log_ratio = pl.when(pl.col("price").is_not_null() & (ref > 0)).then((pl.col("price") / ref).log())
    prev_cat = pl.when(same).then(pl.col("category").shift(1))
    df = df.with_columns(
        pl.col("event")
        .replace_strict({e: i + 1 for i, e in enumerate(EVENTS)}, return_dtype=pl.Int8)
        .alias("_code"),
        pl.when(same).then(ts - ts.shift(1)).otherwise(0).alias("_dt"),
        log_ratio.alias("_lr"),
        (
            pl.col("product_id").is_not_null() & ~pl.struct("history_id", "product_id").is_first_distinct()
        ).alias("_repeat"),
        (pl.col("category").is_not_null() & prev_cat.is_not_null() & (pl.col("category") != prev_cat))
        .fill_null(False)
        .alias("_catchg"),
        (~same).fill_null(True).alias("_new"),
    )

    # Sequences: numpy scatter of each history's last L events into a left-padded (H, L) matrix.
    new = df["_new"].to_numpy()
    h = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    n_hist = starts.size
    lens = np.diff(np.append(starts, df.height))
    slot = L - (lens[h] - (np.arange(df.height) - starts[h]))
    keep = slot >= 0
    rows, cols = h[keep], slot[keep]

    lr = df["_lr"].to_numpy()  # null → nan
    price_b = np.where(np.isnan(lr), 0, 1 + np.searchsorted(price_edges(cfg), lr, side="right"))
    dt = df["_dt"].to_numpy()
    gap_b = np.where(dt <= 0, 1, 2 + np.searchsorted(np.asarray(cfg.gap_edges_s) * 1000.0, dt, side="left"))
    flags = (
        df["_repeat"].to_numpy().astype(np.int8) * REPEAT_FLAG
        + df["_catchg"].to_numpy().astype(np.int8) * CATEGORY_FLAG
    )
    seqs = {}
    for name, values in (
        ("seq_event", df["_code"].to_numpy()),
        ("seq_price", price_b),
        ("seq_gap", gap_b),
        ("seq_flags", flags),
    ):
        mat = np.zeros((n_hist, L), dtype=np.int8)
        mat[rows, cols] = np.asarray(values)[keep].astype(np.int8)
        seqs[name] = mat

    # Aggregates: one polars group-by over the (sorted) rows, one over sessions.
    df = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos"))
    ev = pl.col("event")
    per_session = (
        df.group_by("history_id", "session_idx", maintain_order=True)
        .agg(
            pl.col("_pos").filter(ev == "cart").max().alias("last_cart"),
            pl.col("_pos").filter(ev == "purchase").max().alias("last_buy"),
        )
        .group_by("history_id", maintain_order=True)
        .agg(
            pl.len().alias("n_sessions"),
            pl.col("last_buy").is_not_null().sum().alias("buy_sessions"),
            pl.col("last_cart").is_not_null().sum().alias("cart_sessions"),
            (
                pl.col("last_cart").is_not_null()
                & (pl.col("last_buy").is_null() | (pl.col("last_buy") < pl.col("last_cart")))
            )
            .sum()
            .alias("abandon_sessions"),
        )
    )
    day = ts // MS_PER_DAY
    per_hist = (
        df.group_by("history_id", maintain_order=True)
        .agg(
            pl.col("buyer_id").first(),
            pl.col("merchant_id").first(),
            pl.len().alias("n_events"),
            *[(ev == e).sum().alias(f"n_{e}") for e in EVENTS],
            pl.col("_lr").clip(-PRICE_LOG_CLIP, PRICE_LOG_CLIP).mean().fill_null(0.0).alias("price_level"),
            pl.col("_lr").count().alias("n_priced"),
            ts.min().alias("first_ts"),
            ts.max().alias("last_ts"),
            day.n_unique().alias("active_days"),
            pl.col("product_id").drop_nulls().n_unique().alias("products"),
            pl.col("category").drop_nulls().n_unique().alias("categories"),
            pl.col("_repeat").sum().alias("repeats"),
            pl.col("merchant_id").n_unique().alias("merchants"),
            pl.col("_pos").filter(ev == "cart").max().alias("last_cart"),
            pl.col("_pos").filter(ev == "purchase").max().alias("last_buy"),
        )
        .join(per_session, on="history_id", how="left", maintain_order="left")
    )
    assert per_hist.height == n_hist, "history rows must be contiguous (sort by history_id first)"

    def col(name: str) -> np.ndarray:
        return per_hist[name].to_numpy().astype(np.float64)

    n_ev, n_sess = col("n_events"), col("n_sessions")
    agg = {
        "log_events": np.log1p(n_ev),
        "log_sessions": np.log1p(n_sess),
        "log_events_per_session": np.log1p(n_ev / n_sess),
        **{COUNT_NAMES[e]: np.log1p(col(f"n_{e}")) for e in EVENTS},
        **{RATE_NAMES[e]: col(f"n_{e}") / n_ev for e in EVENTS},
        "session_conversion": col("buy_sessions") / n_sess,
        "cart_abandon_rate": np.divide(col("abandon_sessions"), np.maximum(col("cart_sessions"), 1.0)),
        "price_level": col("price_level"),
        "price_known_share": col("n_priced") / n_ev,
        "log_recency_days": np.log1p(np.maximum(stats.t_ref_ms - col("last_ts"), 0.0) / MS_PER_DAY),
        "log_active_days": np.log1p(col("active_days")),
        "log_span_days": np.log1p((col("last_ts") - col("first_ts")) / MS_PER_DAY),
        "log_distinct_products": np.log1p(col("products")),
        "log_distinct_categories": np.log1p(col("categories")),
        "repeat_product_share": col("repeats") / n_ev,
        "log_merchants": np.log1p(col("merchants")),
    }
    agg_mat = np.stack([agg[name] for name in AGG_NAMES], axis=1)

    last_cart = per_hist["last_cart"].fill_null(-1).to_numpy()
    last_buy = per_hist["last_buy"].fill_null(-1).to_numpy()
    history_ids = per_hist["history_id"]
    if planted is not None and planted.height:
        types = (
            pl.DataFrame({"history_id": history_ids})
            .join(planted_for(planted, unit), on="history_id", how="left", maintain_order="left")[
                "planted_type"
            ]
            .fill_null(-1)
            .cast(pl.Int32)
        )
    else:
        types = pl.Series("planted_type", np.full(n_hist, -1, dtype=np.int32))
    merchant = (
        per_hist["merchant_id"] if unit == "buyer_merchant" else pl.repeat(ALL_MERCHANTS, n_hist, eager=True)
    )
    out = pa.Table.from_pydict(
        {
            "history_id": history_ids.to_arrow(),
            "buyer_id": per_hist["buyer_id"].to_arrow(),
            "merchant_id": merchant.to_arrow(),
            **{name: _fixed_list(seqs[name], pa.int8()) for name in SEQ_COLUMNS},
            "agg_raw": _fixed_list(agg_mat, pa.float64()),
            "label_purchase": pa.array(col("n_purchase") > 0).cast(pa.int8()),
            "label_cart_abandon": pa.array((last_cart >= 0) & (last_buy < last_cart)).cast(pa.int8()),
            "label_depth": pa.array(np.log1p(n_ev / n_sess).astype(np.float32)),
            "planted_type": types.to_arrow(),
            "n_events": pa.array(n_ev.astype(np.int64)),
            "n_sessions": pa.array(n_sess.astype(np.int32)),
        },
        schema=raw_schema(L),
    )
    return out


def raw_schema(seq_len: int) -> pa.Schema:
    return pa.schema(
        [pa.field("history_id", pa.string()), pa.field("buyer_id", pa.string()),
         pa.field("merchant_id", pa.string())]
        + [pa.field(n, pa.list_(pa.int8(), seq_len)) for n in SEQ_COLUMNS]
        + [pa.field("agg_raw", pa.list_(pa.float64(), len(AGG_NAMES))),
           pa.field("label_purchase", pa.int8()), pa.field("label_cart_abandon", pa.int8()),
           pa.field("label_depth", pa.float32()), pa.field("planted_type", pa.int32()),
           pa.field("n_events", pa.int64()), pa.field("n_sessions", pa.int32())]
    )  # fmt: skip


def features_schema(seq_len: int) -> pa.Schema:
    raw = raw_schema(seq_len)
    fields = [raw.field(n) for n in ("history_id", "buyer_id", "merchant_id")]
    fields += [pa.field(n, pa.binary(seq_len)) for n in SEQ_COLUMNS]
    fields.append(pa.field("agg", pa.list_(pa.float32(), len(AGG_NAMES))))
    fields += [raw.field(n) for n in (*LABELS, "planted_type")]
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------------------
# Exact normalisation statistics


PACKED = (*SEQ_COLUMNS, "agg_raw")  # columns `pack_raw` stores as fixed-size binary


def _values(col: pa.ChunkedArray | pa.Array, dtype) -> np.ndarray:
    """The flat values of a fixed-size list or fixed-size binary column as a numpy array of `dtype`."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_binary(arr.type):
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        width = arr.type.byte_width
        return data[arr.offset * width : (arr.offset + len(arr)) * width].view(dtype)
    return arr.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def as_fixed_binary(mat: np.ndarray) -> pa.Array:
    """(n, w) numpy values as fixed-size binary, one row's raw bytes per value."""
    flat = np.ascontiguousarray(mat)
    return pa.Array.from_buffers(pa.binary(flat.shape[1] * flat.itemsize), flat.shape[0], [None, pa.py_buffer(flat)])


def _packed(col: pa.ChunkedArray | pa.Array, dtype, width: int) -> pa.Array:
    """A fixed-size list column of `width` values as fixed-size binary (unchanged when it already is)."""
    if pa.types.is_fixed_size_binary(col.type):
        return col
    return as_fixed_binary(_values(col, dtype).reshape(len(col), width))


def pack_raw(raw: pa.Table) -> pa.Table:
    """Raw feature rows with the fixed-size list columns as fixed-size binary: the scratch format of
    the Ray pipeline (Parquet reads and writes these several times faster than nested lists)."""
    for name in PACKED:
        i = raw.schema.get_field_index(name)
        dtype = np.float64 if name == "agg_raw" else np.int8
        raw = raw.set_column(i, name, _packed(raw.column(name), dtype, raw.schema.field(name).type.list_size))
    return raw


def agg_matrix(raw: pa.Table) -> np.ndarray:
    return _values(raw.column("agg_raw"), np.float64).reshape(-1, len(AGG_NAMES))


def partial_moments(agg: np.ndarray) -> tuple[int, list[int], list[int]]:
    """(n, sum q, sum q^2) with q = round(x * 2^16): exact integers, so partials add up exactly."""
    q = np.rint(agg * FIXED_POINT).astype(np.int64)
    n = q.shape[0]
    s1 = [0] * q.shape[1]
    s2 = [0] * q.shape[1]
    if n == 0:
        return 0, s1, s2
    biggest = int(np.abs(q).max()) + 1
    chunk = max(1, (1 << 62) // (biggest * biggest))  # rows whose squares sum safely in int64
    for lo in range(0, n, chunk):
        part = q[lo : lo + chunk]
        for j, (a, b) in enumerate(zip(part.sum(axis=0), (part * part).sum(axis=0))):
            s1[j] += int(a)
            s2[j] += int(b)
    return n, s1, s2


def add_moments(parts) -> tuple[int, list[int], list[int]]:
    n, s1, s2 = 0, [0] * len(AGG_NAMES), [0] * len(AGG_NAMES)
    for pn, p1, p2 in parts:
        n += pn
        s1 = [a + b for a, b in zip(s1, p1)]
        s2 = [a + b for a, b in zip(s2, p2)]
    return n, s1, s2


def finish_moments(n: int, s1: list[int], s2: list[int]) -> tuple[list[float], list[float]]:
    """Mean and population std per feature, exactly from the integer sums (std 0 → 1)."""
    means, stds = [], []
    for a, b in zip(s1, s2):
        if n == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        mean = Fraction(a, n * FIXED_POINT)
        var = Fraction(b, n * FIXED_POINT * FIXED_POINT) - mean * mean
        std = math.sqrt(float(var)) if var > 0 else 0.0
        means.append(float(mean))
        stds.append(std if std > 1e-9 else 1.0)
    return means, stds


def normalise(raw: pa.Table, mean: list[float], std: list[float], seq_len: int) -> pa.Table:
    """Raw feature rows (plain or packed) → the contract's feature rows (agg z-scored to float32,
    token sequences as fixed-size binary)."""
    agg = agg_matrix(raw) if raw.num_rows else np.zeros((0, len(AGG_NAMES)))
    z = ((agg - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
    schema = features_schema(seq_len)
    cols = {name: raw.column(name) for name in schema.names if name not in ("agg", *SEQ_COLUMNS)}
    for name in SEQ_COLUMNS:
        cols[name] = _packed(raw.column(name).combine_chunks(), np.int8, seq_len)
    cols["agg"] = _fixed_list(z, pa.float32())
    return pa.table({name: cols[name] for name in schema.names}, schema=schema)


def feature_spec(cfg, unit: str, mean: list[float], std: list[float]) -> dict:
    return {
        "seq_len": cfg.seq_len,
        "price_buckets": cfg.price_buckets,
        "gap_buckets": cfg.gap_buckets,
        "price_edges_log": [float(x) for x in price_edges(cfg)],
        "gap_edges_s": [float(x) for x in cfg.gap_edges_s],
        "agg_names": list(AGG_NAMES),
        "agg_mean": mean,
        "agg_std": std,
        "events": list(EVENTS),
        "unit": unit,
        "flags": {"repeat_product": REPEAT_FLAG, "category_changed": CATEGORY_FLAG},
    }
