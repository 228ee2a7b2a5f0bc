"""Source formats → canonical columns.

An adapter maps one raw batch (CSV: all-string columns; Parquet: the file's own types) to a `Mapped`:
the canonical columns parsed and typed, with nulls where a value is missing or does not parse, next
to the raw source strings of the same columns. Adapters never drop or judge rows: `validate` decides
which rows are bad from these two views, generically for every format (a null `ts` whose raw value is
present is a `bad_timestamp`, whatever the source). All parsing is vectorised with pyarrow.compute.

Formats
-------
tmall2014     user_id, brand_id (= merchant: a Tmall brand is a flagship storefront), type
              (0 view, 1 purchase, 2 favorite, 3 cart), visit_datetime "M-D" in `data.year` → midnight.
rees46        Kaggle "eCommerce behavior data from multi category store": event_time
              ("2019-10-01 00:00:00 UTC"), event_type (view | cart | remove_from_cart | purchase),
              product_id, category_id, category_code, brand, price, user_id, user_session.
              merchant = brand; rows with an empty brand get merchant `data.rees46_empty_brand`
              ("unbranded"; counted in the report as filled) — set it to "" to quarantine them instead.
              category = category_code, or category_id where the code is empty.
              session_id = user_session.
retailrocket  events.csv: timestamp (epoch ms), visitorid, event (view | addtocart | transaction),
              itemid, transactionid. One store: merchant = `data.merchant_id` or "retailrocket".
generic       `data.columns` maps canonical name → source column; `data.event_values` maps source
              value → canonical event (empty = the values already are canonical events); time from
              `data.ts_unit` (epoch s|ms|us|ns), else `data.ts_format` (strptime), else ISO 8601.
canonical     files already in the canonical schema (the synthetic generator's output).
ga4           Google Analytics 4 BigQuery export (Parquet, or JSON lines with INT64 as strings): event_name
              (view_item, add_to_cart, remove_from_cart, add_to_wishlist, purchase, view_search_results;
              others such as page_view and begin_checkout are counted in `ignored`), user_pseudo_id,
              event_timestamp (µs), items[] (item_id, item_category, price or price_in_usd: one row per
              item), event_params ga_session_id (session) and search_term. One store: `data.merchant_id`
              or "ga4".
segment       Segment e-commerce spec v2 track calls (JSON lines or Parquet of the same messages): Product
              Viewed / Added / Removed / Added to Wishlist, Products Searched (properties.query), Order
              Completed (one row per properties.products[]); Checkout Started, other events and non-track
              calls are counted in `ignored`. Buyer = userId, else anonymousId; timestamp ISO 8601;
              properties.product_id / category / price. One store: `data.merchant_id` or "segment".

`data.merchant_id`, when set, puts every row of any format in that one storefront.
Times with a zone are converted to UTC; times without one are taken as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simpersona.data.config import DataConfig
from simpersona.data.schema import EVENTS, SCHEMA
from simpersona.errors import ConfigError

CANONICAL_FIELDS: tuple[str, ...] = tuple(n for n in SCHEMA.names if n != "seq")
TYPES: dict[str, pa.DataType] = {f.name: f.type for f in SCHEMA}
TS_UNITS: dict[str, float] = {"s": 1e3, "ms": 1.0, "us": 1e-3, "ns": 1e-6}  # → milliseconds


@dataclass
class Mapped:
    """Canonical columns of one batch, parsed (`values`) and as raw source strings (`raw`)."""

    num_rows: int
    values: dict[str, pa.ChunkedArray | pa.Array]
    raw: dict[str, pa.ChunkedArray | pa.Array]
    # values supplied by a documented default where the source was empty, e.g. {"merchant_id=unbranded": 3}
    filled: dict[str, int] = field(default_factory=dict)
    # adapters that map a source row to several canonical rows (one per item) or to none: the source row
    # of each canonical row (None = row i is source row i), and the source rows left out, by reason
    rows: np.ndarray | None = None
    ignored: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter:
    name: str
    # source columns a file must have for this adapter (checked once per file, before reading rows)
    required_columns: Callable[[DataConfig], list[str]]
    map: Callable[[pa.Table, DataConfig], Mapped]
    day_resolution: bool = False  # times are days: equal rows are repeat events of a day, not duplicates
    json_schema: pa.Schema | None = None  # JSON lines: the fields it maps (None = infer from the first block)


# ---------------------------------------------------------------------------------------------------
# Vectorised parsers: each returns nulls where the input is missing or malformed, never raises on data.

_FLOAT_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_ISO_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"
_ZONE_RE = r"[T ]\d{2}.*(Z|[+-]\d{2}(:?\d{2})?)$"  # a zone only after a time: "2015-06-02" has none


def as_str(col) -> pa.ChunkedArray | pa.Array:
    """The column as strings (numbers in Parquet sources become their decimal text)."""
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_large_string(col.type) or pa.types.is_dictionary(col.type):
        return col.cast(pa.string())
    return pc.cast(col, pa.string())


def clean_str(col):
    """Trimmed strings; empty → null."""
    s = pc.utf8_trim_whitespace(as_str(col))
    return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)


def _const(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _nulls(n: int, type_: pa.DataType = pa.string()) -> pa.Array:
    return pa.nulls(n, type_)


def parse_float(col):
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        return pc.cast(col, pa.float64())
    s = clean_str(col)
    ok = pc.match_substring_regex(s, _FLOAT_RE)
    return pc.cast(pc.if_else(ok, s, pa.scalar(None, pa.string())), pa.float64())


def _ts_ms(col):
    """Any Arrow timestamp/date column → timestamp[ms] without zone (UTC wall time for zoned input)."""
    t = col.type
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            col = pc.cast(col, pa.timestamp(t.unit))  # keeps the UTC instant, drops the zone
        return pc.cast(col, pa.timestamp("ms"), safe=False)  # sub-millisecond digits truncated
    if pa.types.is_date(t):
        return pc.cast(pc.cast(col, pa.date32()), pa.timestamp("ms"))
    raise TypeError(f"not a timestamp type: {t}")


def parse_epoch(col, unit: str):
    """Epoch numbers in `unit` (s | ms | us | ns) → timestamp[ms]."""
    if unit not in TS_UNITS:
        raise ConfigError(f"data.ts_unit={unit!r}: expected one of {', '.join(TS_UNITS)}")
    if pa.types.is_integer(col.type) and unit == "ms":
        return pc.cast(pc.cast(col, pa.int64()), pa.timestamp("ms"))
    ms = pc.multiply(parse_float(col), TS_UNITS[unit])
    ms = pc.if_else(pc.less(pc.abs(ms), 1e15), ms, pa.scalar(None, pa.float64()))  # beyond year 33658
    return pc.cast(pc.cast(pc.floor(ms), pa.int64()), pa.timestamp("ms"))


def _iso_cast(s: pa.Array, unit_type: pa.DataType) -> pa.Array:
    """Cast ISO strings; values the regex let through but Arrow rejects (month 13) become null.

    One such value fails the whole cast, so the batch is bisected down to the failing values:
    k bad values cost O(k log n) casts, and a clean batch costs one.
    """
    try:
        return pc.cast(s, unit_type)
    except pa.ArrowInvalid:
        if len(s) == 1:
            return pa.nulls(1, unit_type)
        mid = len(s) // 2
        return pa.concat_arrays([_iso_cast(s.slice(0, mid), unit_type), _iso_cast(s.slice(mid), unit_type)])


def parse_iso(col):
    """ISO 8601 strings ("2019-10-01", "2019-10-01 00:00:00", "...T...Z", "+02:00") → timestamp[ms]."""
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return _ts_ms(col)
    s = clean_str(col)
    if isinstance(s, pa.ChunkedArray):
        s = s.combine_chunks()
    null = pa.scalar(None, pa.string())
    s = pc.if_else(pc.match_substring_regex(s, _ISO_RE), s, null)
    zoned = pc.match_substring_regex(s, _ZONE_RE)
    local = _iso_cast(pc.if_else(zoned, null, s), pa.timestamp("ns"))
    utc = _iso_cast(pc.if_else(zoned, s, null), pa.timestamp("ns", tz="UTC"))
    return pc.coalesce(_ts_ms(local), _ts_ms(utc))


def parse_strptime(col, fmt: str):
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return _ts_ms(col)
    ts = pc.strptime(clean_str(col), format=fmt, unit="ms", error_is_null=True)
    return _ts_ms(ts)


def map_values(col, mapping: dict[str, str]):
    """Source values → canonical strings through `mapping`; anything else → null."""
    keys = pa.array(list(mapping), pa.string())
    vals = pa.array(list(mapping.values()), pa.string())
    return pc.take(vals, pc.index_in(clean_str(col), value_set=keys))


def _check_events(mapping: dict[str, str], where: str) -> None:
    bad = sorted({v for v in mapping.values() if v not in EVENTS})
    if bad:
        raise ConfigError(f"{where}: {bad} are not canonical events; expected some of {list(EVENTS)}")


def _merchant(table: pa.Table, cfg: DataConfig, column: str | None):
    """(values, raw) of merchant_id: `data.merchant_id` for every row when set, else `column`."""
    if cfg.merchant_id:
        const = _const(cfg.merchant_id, table.num_rows)
        return const, const
    if column is None:
        raise ConfigError("no merchant column: map data.columns.merchant_id or set data.merchant_id")
    return clean_str(table.column(column)), as_str(table.column(column))


def _optional(table: pa.Table, column: str | None, n: int, parse=clean_str):
    """(values, raw) of an optional column that may be absent from the file."""
    if column is None or column not in table.column_names:
        return _nulls(n, pa.float64() if parse is parse_float else pa.string()), _nulls(n)
    return parse(table.column(column)), as_str(table.column(column))


def _mapped(n: int, values: dict, raw: dict, filled: dict | None = None) -> Mapped:
    for name in CANONICAL_FIELDS:  # absent optional columns are all-null
        if name not in values:
            values[name] = _nulls(n, TYPES[name])
            raw[name] = _nulls(n)
    return Mapped(num_rows=n, values=values, raw=raw, filled=filled or {})


# ---------------------------------------------------------------------------------------------------
# tmall2014

TMALL_EVENTS = {"0": "view", "1": "purchase", "2": "favorite", "3": "cart"}


def _tmall_ts(col, year: int):
    """ "M-D" (e.g. "6-4") in `year` → midnight; impossible dates ("2-30", "13-1") → null."""
    parts = pc.extract_regex(clean_str(col), r"^(?P<m>\d{1,2})-(?P<d>\d{1,2})$")
    month, day = pc.struct_field(parts, "m"), pc.struct_field(parts, "d")
    text = pc.binary_join_element_wise(str(year), pc.utf8_lpad(month, 2, "0"), pc.utf8_lpad(day, 2, "0"), "-")
    ts = pc.strptime(text, format="%Y-%m-%d", unit="ms", error_is_null=True)
    # strptime rolls "02-30" over to March 2nd: keep only dates that read back unchanged.
    same = pc.and_(
        pc.equal(pc.month(ts), pc.cast(month, pa.int64())), pc.equal(pc.day(ts), pc.cast(day, pa.int64()))
    )
    return pc.if_else(same, ts, pa.scalar(None, pa.timestamp("ms")))


def _tmall_columns(cfg: DataConfig) -> list[str]:
    return ["user_id", "type", "visit_datetime"] + ([] if cfg.merchant_id else ["brand_id"])


def map_tmall2014(table: pa.Table, cfg: DataConfig) -> Mapped:
    n = table.num_rows
    merchant, merchant_raw = _merchant(table, cfg, "brand_id")
    values = {
        "buyer_id": clean_str(table.column("user_id")),
        "merchant_id": merchant,
        "ts": _tmall_ts(table.column("visit_datetime"), cfg.year),
        "event": map_values(table.column("type"), TMALL_EVENTS),
    }
    raw = {
        "buyer_id": as_str(table.column("user_id")),
        "merchant_id": merchant_raw,
        "ts": as_str(table.column("visit_datetime")),
        "event": as_str(table.column("type")),
    }
    return _mapped(n, values, raw)


# ---------------------------------------------------------------------------------------------------
# rees46

REES46_EVENTS = {"view": "view", "cart": "cart", "remove_from_cart": "remove_cart", "purchase": "purchase"}


def _rees46_columns(cfg: DataConfig) -> list[str]:
    return ["event_time", "event_type", "user_id"] + ([] if cfg.merchant_id else ["brand"])


def map_rees46(table: pa.Table, cfg: DataConfig) -> Mapped:
    n = table.num_rows
    filled: dict[str, int] = {}
    merchant, merchant_raw = _merchant(table, cfg, "brand")
    if not cfg.merchant_id and cfg.rees46_empty_brand:
        empty = pc.is_null(merchant)
        filled[f"merchant_id={cfg.rees46_empty_brand}"] = int(pc.sum(empty).as_py() or 0)
        merchant = pc.if_else(empty, pa.scalar(cfg.rees46_empty_brand, pa.string()), merchant)
    event_time = table.column("event_time")
    if not pa.types.is_timestamp(event_time.type):
        # The public files write "2019-10-01 00:00:00 UTC": the zone is a word, not an offset.
        event_time = pc.replace_substring_regex(as_str(event_time), r"\s*UTC\s*$", "Z")
    code, code_raw = _optional(table, "category_code", n)
    cat_id, cat_id_raw = _optional(table, "category_id", n)
    values = {
        "buyer_id": clean_str(table.column("user_id")),
        "merchant_id": merchant,
        "ts": parse_iso(event_time),
        "event": map_values(table.column("event_type"), REES46_EVENTS),
        "category": pc.coalesce(code, cat_id),
    }
    raw = {
        "buyer_id": as_str(table.column("user_id")),
        "merchant_id": merchant_raw,
        "ts": as_str(table.column("event_time")),
        "event": as_str(table.column("event_type")),
        "category": pc.if_else(pc.is_null(code), cat_id_raw, code_raw),
    }
    for name, column, parse in (
        ("product_id", "product_id", clean_str),
        ("price", "price", parse_float),
        ("session_id", "user_session", clean_str),
    ):
        values[name], raw[name] = _optional(table, column, n, parse)
    return _mapped(n, values, raw, filled)


# ---------------------------------------------------------------------------------------------------
# retailrocket

RETAILROCKET_EVENTS = {"view": "view", "addtocart": "cart", "transaction": "purchase"}
RETAILROCKET_MERCHANT = "retailrocket"


def _retailrocket_columns(cfg: DataConfig) -> list[str]:
    return ["timestamp", "visitorid", "event", "itemid"]


def map_retailrocket(table: pa.Table, cfg: DataConfig) -> Mapped:
    n = table.num_rows
    merchant = _const(cfg.merchant_id or RETAILROCKET_MERCHANT, n)
    values = {
        "buyer_id": clean_str(table.column("visitorid")),
        "merchant_id": merchant,
        "ts": parse_epoch(table.column("timestamp"), "ms"),
        "event": map_values(table.column("event"), RETAILROCKET_EVENTS),
        "product_id": clean_str(table.column("itemid")),
    }
    raw = {
        "buyer_id": as_str(table.column("visitorid")),
        "merchant_id": merchant,
        "ts": as_str(table.column("timestamp")),
        "event": as_str(table.column("event")),
        "product_id": as_str(table.column("itemid")),
    }
    return _mapped(n, values, raw)


# ---------------------------------------------------------------------------------------------------
# generic


def _generic_mapping(cfg: DataConfig) -> dict[str, str]:
    columns = dict(cfg.columns)
    unknown = sorted(set(columns) - set(CANONICAL_FIELDS))
    if unknown:
        raise ConfigError(
            f"data.columns: {unknown} are not canonical columns; expected {list(CANONICAL_FIELDS)}"
        )
    needed = ["buyer_id", "ts", "event"] + ([] if cfg.merchant_id else ["merchant_id"])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ConfigError(
            f"adapter generic: data.columns must map {missing} to source columns"
            + ("" if cfg.merchant_id else " (or set data.merchant_id for a single store)")
        )
    if cfg.event_values:
        _check_events(dict(cfg.event_values), "data.event_values")
    return columns


def _generic_columns(cfg: DataConfig) -> list[str]:
    columns = _generic_mapping(cfg)
    return [columns[c] for c in ("buyer_id", "merchant_id", "ts", "event") if c in columns]


def parse_time(col, cfg: DataConfig):
    """Time column by `data.ts_unit` (epoch), else `data.ts_format` (strptime), else ISO 8601."""
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return _ts_ms(col)
    if cfg.ts_unit:
        return parse_epoch(col, cfg.ts_unit)
    if cfg.ts_format:
        return parse_strptime(col, cfg.ts_format)
    return parse_iso(col)


def map_generic(table: pa.Table, cfg: DataConfig) -> Mapped:
    n = table.num_rows
    columns = _generic_mapping(cfg)
    events = dict(cfg.event_values) or {e: e for e in EVENTS}
    merchant, merchant_raw = _merchant(table, cfg, columns.get("merchant_id"))
    values = {
        "buyer_id": clean_str(table.column(columns["buyer_id"])),
        "merchant_id": merchant,
        "ts": parse_time(table.column(columns["ts"]), cfg),
        "event": map_values(table.column(columns["event"]), events),
    }
    raw = {
        "buyer_id": as_str(table.column(columns["buyer_id"])),
        "merchant_id": merchant_raw,
        "ts": as_str(table.column(columns["ts"])),
        "event": as_str(table.column(columns["event"])),
    }
    for name in ("product_id", "category", "price", "session_id"):
        parse = parse_float if name == "price" else clean_str
        values[name], raw[name] = _optional(table, columns.get(name), n, parse)
    return _mapped(n, values, raw)


# ---------------------------------------------------------------------------------------------------
# canonical


def _canonical_columns(cfg: DataConfig) -> list[str]:
    return ["buyer_id", "ts", "event"] + ([] if cfg.merchant_id else ["merchant_id"])


def map_canonical(table: pa.Table, cfg: DataConfig) -> Mapped:
    """Already canonical (typed Parquet or string CSV): re-parse and re-check, keep the values.

    `seq` is recomputed from the file order like for every other source, so that shards written
    independently (each counting from 0) still get distinct, ordered positions.
    """
    n = table.num_rows
    merchant, merchant_raw = _merchant(table, cfg, "merchant_id")
    values = {
        "buyer_id": clean_str(table.column("buyer_id")),
        "merchant_id": merchant,
        "ts": parse_time(table.column("ts"), cfg),
        "event": map_values(table.column("event"), {e: e for e in EVENTS}),
    }
    raw = {name: as_str(table.column(name)) for name in ("buyer_id", "ts", "event")}
    raw["merchant_id"] = merchant_raw
    for name in ("product_id", "category", "price", "session_id"):
        parse = parse_float if name == "price" else clean_str
        values[name], raw[name] = _optional(table, name, n, parse)
    return _mapped(n, values, raw)


# ---------------------------------------------------------------------------------------------------
# Event exports with nested items (GA4, Segment): a source row is one event; one canonical row per item
# of the events that carry items (a purchase of three products is three purchase rows, as in REES46),
# and none for events outside the canonical vocabulary (page views, begin_checkout: the canonical funnel
# goes cart → purchase), which are counted in `ignored` by name instead of quarantined.


def _column(table: pa.Table, name: str):
    """A column, or all nulls when the file does not have it (exports leave empty fields out)."""
    if name in table.column_names:
        col = table.column(name)
        return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pa.nulls(table.num_rows)


def _field(struct, name: str):
    """A field of a struct array, all nulls when the struct type has no such field."""
    if pa.types.is_struct(struct.type) and struct.type.get_field_index(name) >= 0:
        return pc.struct_field(struct, name)
    return pa.nulls(len(struct))


def _mask(condition, where_null: bool) -> np.ndarray:
    return pc.fill_null(condition, where_null).to_numpy(zero_copy_only=False)


def _ignored(names, keep: np.ndarray, prefix: str) -> dict[str, int]:
    left_out = pc.filter(names, pa.array(~keep))
    return {f"{prefix} {d['values']}": d["counts"] for d in pc.value_counts(left_out).to_pylist()}


def _explode(lists, per_item: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """For each kept source row, one output row per element of its list where `per_item` (one row with a
    null element when that list is empty or absent), else one row: (source row of each output row, its
    element or null)."""
    if not pa.types.is_list(lists.type):  # absent column: no elements anywhere
        lists = pa.nulls(len(lists), pa.list_(pa.struct([])))
    full = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    lens = np.where(per_item, full, 0)
    counts = np.where(keep, np.maximum(lens, 1), 0)
    rows = np.repeat(np.arange(len(lists)), counts)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    start = np.repeat(np.cumsum(full) - full, counts)  # list_flatten skips null lists, as `full` counts them
    element = np.where(np.repeat(lens, counts) > 0, start + within, -1)
    return rows, pc.take(pc.list_flatten(lists), pa.array(element, mask=element < 0))


def _rows_mapped(table: pa.Table, cfg: DataConfig, rows: np.ndarray, columns: dict, default_merchant: str,
                 ignored: dict[str, int]) -> Mapped:
    """Mapped from per-output-row (parse, raw) pairs: source columns are taken at `rows` first."""
    n = len(rows)
    merchant = _const(cfg.merchant_id or default_merchant, n)
    values, raw = {"merchant_id": merchant}, {"merchant_id": merchant}
    for name, (value, source) in columns.items():
        values[name], raw[name] = value, as_str(source) if source is not None else _nulls(n)
    mapped = _mapped(n, values, raw)
    mapped.rows, mapped.ignored = rows, ignored
    return mapped


# ---- GA4 (BigQuery export of Google Analytics 4: events_YYYYMMDD as Parquet, or JSON lines in which
# BigQuery writes INT64 values as strings)

GA4_EVENTS = {"view_item": "view", "add_to_cart": "cart", "remove_from_cart": "remove_cart",
              "add_to_wishlist": "favorite", "purchase": "purchase", "view_search_results": "search"}
GA4_ITEM_EVENTS = ("view_item", "add_to_cart", "remove_from_cart", "add_to_wishlist", "purchase")
GA4_MERCHANT = "ga4"  # one GA4 property is one store
_GA4_PARAM_VALUE = pa.struct([("string_value", pa.string()), ("int_value", pa.string()),
                              ("float_value", pa.float64()), ("double_value", pa.float64())])
GA4_JSON_SCHEMA = pa.schema([
    ("event_timestamp", pa.string()),  # µs since the epoch (INT64: a string in BigQuery's JSON)
    ("event_name", pa.string()),
    ("user_pseudo_id", pa.string()),
    ("event_params", pa.list_(pa.struct([("key", pa.string()), ("value", _GA4_PARAM_VALUE)]))),
    ("items", pa.list_(pa.struct([("item_id", pa.string()), ("item_category", pa.string()),
                                  ("price", pa.float64()), ("price_in_usd", pa.float64())]))),
])


def _ga4_param(params, key: str, kind: str):
    """Per row, the `kind` value (string_value | int_value) of its first event_param named `key`."""
    n = len(params)
    if not pa.types.is_list(params.type):
        return _nulls(n)
    flat = pc.list_flatten(params)
    hit = pc.fill_null(pc.equal(_field(flat, "key"), key), False)
    parents = pc.filter(pc.list_parent_indices(params), hit).to_numpy()
    values = as_str(pc.filter(_field(_field(flat, "value"), kind), hit))
    first = np.full(n, -1)
    rows, at = np.unique(parents, return_index=True)  # the first match of each row wins
    first[rows] = at
    return pc.take(values, pa.array(first, mask=first < 0))


def map_ga4(table: pa.Table, cfg: DataConfig) -> Mapped:
    name = clean_str(_column(table, "event_name"))
    event = map_values(name, GA4_EVENTS)
    keep = _mask(pc.or_(pc.is_valid(event), pc.is_null(name)), True)  # a missing name is quarantined
    per_item = _mask(pc.is_in(name, pa.array(GA4_ITEM_EVENTS)), False)
    rows, item = _explode(_column(table, "items"), per_item, keep)
    take = pa.array(rows, pa.int64())
    params = _column(table, "event_params")
    search = pc.take(_ga4_param(params, "search_term", "string_value"), take)
    item_price = pc.coalesce(parse_float(_field(item, "price")), parse_float(_field(item, "price_in_usd")))
    ts = pc.take(_column(table, "event_timestamp"), take)
    buyer = pc.take(_column(table, "user_pseudo_id"), take)
    is_search = pc.equal(pc.take(event, take), "search")
    columns = {
        "buyer_id": (clean_str(buyer), buyer),
        "ts": (parse_epoch(ts, "us"), ts),
        "event": (pc.take(event, take), pc.take(name, take)),
        "product_id": (clean_str(_field(item, "item_id")), _field(item, "item_id")),
        "category": (pc.if_else(is_search, clean_str(search), clean_str(_field(item, "item_category"))),
                     pc.if_else(is_search, search, as_str(_field(item, "item_category")))),
        "price": (item_price, _field(item, "price")),
        "session_id": (clean_str(pc.take(_ga4_param(params, "ga_session_id", "int_value"), take)), None),
    }
    return _rows_mapped(table, cfg, rows, columns, GA4_MERCHANT, _ignored(name, keep, "event_name"))


def _ga4_columns(cfg: DataConfig) -> list[str]:
    return ["event_timestamp", "event_name", "user_pseudo_id"]


# ---- Segment e-commerce spec v2 (track calls as Segment writes them: JSON lines, or Parquet of the same
# nested messages)

SEGMENT_EVENTS = {"Product Viewed": "view", "Product Added": "cart", "Product Removed": "remove_cart",
                  "Product Added to Wishlist": "favorite", "Products Searched": "search",
                  "Order Completed": "purchase"}
SEGMENT_MERCHANT = "segment"
_SEGMENT_PRODUCT = [("product_id", pa.string()), ("category", pa.string()), ("price", pa.float64())]
SEGMENT_JSON_SCHEMA = pa.schema([
    ("type", pa.string()),  # track | page | identify | ...: only track calls are events
    ("event", pa.string()),
    ("userId", pa.string()),
    ("anonymousId", pa.string()),
    ("timestamp", pa.string()),  # ISO 8601
    ("properties", pa.struct(_SEGMENT_PRODUCT + [("query", pa.string()),
                                                 ("products", pa.list_(pa.struct(_SEGMENT_PRODUCT)))])),
])


def map_segment(table: pa.Table, cfg: DataConfig) -> Mapped:
    kind = clean_str(_column(table, "type"))
    name = clean_str(_column(table, "event"))
    event = map_values(name, SEGMENT_EVENTS)
    track = _mask(pc.equal(kind, "track"), True)  # no type: a track call
    keep = track & _mask(pc.or_(pc.is_valid(event), pc.is_null(name)), True)  # a missing name is quarantined
    per_item = _mask(pc.equal(name, "Order Completed"), False)
    props = _column(table, "properties")
    rows, product = _explode(_field(props, "products"), per_item, keep)
    take = pa.array(rows, pa.int64())
    from_list = pa.array(per_item[rows])  # Order Completed: the product of the list, else the properties
    one = {f: pc.take(_field(props, f), take) for f in ("product_id", "category", "price", "query")}
    pick = {f: pc.if_else(from_list, as_str(_field(product, f)), as_str(one[f]))
            for f in ("product_id", "category")}
    price = pc.if_else(from_list, parse_float(_field(product, "price")), parse_float(one["price"]))
    price_raw = pc.if_else(from_list, as_str(_field(product, "price")), as_str(one["price"]))
    is_search = pc.equal(pc.take(event, take), "search")
    category = pc.if_else(is_search, as_str(one["query"]), pick["category"])
    buyer = pc.coalesce(clean_str(_column(table, "userId")), as_str(_column(table, "anonymousId")))
    buyer_raw = pc.take(buyer, take)
    ts = pc.take(_column(table, "timestamp"), take)
    columns = {
        "buyer_id": (clean_str(buyer_raw), buyer_raw),
        "ts": (parse_iso(ts), ts),
        "event": (pc.take(event, take), pc.take(name, take)),
        "product_id": (clean_str(pick["product_id"]), pick["product_id"]),
        "category": (clean_str(category), category),
        "price": (price, price_raw),
    }
    left_out = pc.if_else(pa.array(track), name, pc.binary_join_element_wise("type ", kind, ""))
    return _rows_mapped(table, cfg, rows, columns, SEGMENT_MERCHANT, _ignored(left_out, keep, "event"))


def _segment_columns(cfg: DataConfig) -> list[str]:
    return ["event", "timestamp"]


# ---------------------------------------------------------------------------------------------------

ADAPTERS: dict[str, Adapter] = {
    "tmall2014": Adapter("tmall2014", _tmall_columns, map_tmall2014, day_resolution=True),
    "rees46": Adapter("rees46", _rees46_columns, map_rees46),
    "retailrocket": Adapter("retailrocket", _retailrocket_columns, map_retailrocket),
    "generic": Adapter("generic", _generic_columns, map_generic),
    "canonical": Adapter("canonical", _canonical_columns, map_canonical),
    "ga4": Adapter("ga4", _ga4_columns, map_ga4, json_schema=GA4_JSON_SCHEMA),
    "segment": Adapter("segment", _segment_columns, map_segment, json_schema=SEGMENT_JSON_SCHEMA),
}


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ConfigError(
            f"data.adapter={name!r} is not known; choose one of {', '.join(ADAPTERS)}"
        ) from None
