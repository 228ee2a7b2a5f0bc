"""The canonical event schema: the one Arrow schema every stage reads and writes.

Columns
-------
buyer_id     string, required    anonymised buyer id (adapters turn numeric ids into strings)
merchant_id  string, required    storefront (Tmall: brand_id)
ts           timestamp[ms], required  event time; day-resolution sources put midnight here
seq          int64, required     tie order: position of the row in its source file(s), so that
                                 events on the same timestamp keep their logged order
event        string, required    one of EVENTS
product_id   string, optional
category     string, optional
price        float64, optional   non-negative
session_id   string, optional    derived by sessionisation when the source has none

Quarantined rows carry the same columns as raw strings plus `reason`, `source` and `line`.
"""

from __future__ import annotations

import pyarrow as pa

EVENTS: tuple[str, ...] = ("view", "cart", "remove_cart", "favorite", "purchase", "search")
EVENT_INDEX: dict[str, int] = {e: i for i, e in enumerate(EVENTS)}

REQUIRED: tuple[str, ...] = ("buyer_id", "merchant_id", "ts", "event")
OPTIONAL: tuple[str, ...] = ("product_id", "category", "price", "session_id")

SCHEMA = pa.schema(
    [
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms"), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("product_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("session_id", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [pa.field(name, pa.string()) for name in SCHEMA.names]
    + [pa.field("reason", pa.string()), pa.field("source", pa.string()), pa.field("line", pa.int64())]
)


def empty_table() -> pa.Table:
    return SCHEMA.empty_table()


def conform(table: pa.Table) -> pa.Table:
    """Cast `table` to SCHEMA, adding absent optional columns as nulls (column order fixed)."""
    missing = [c for c in REQUIRED + ("seq",) if c not in table.column_names]
    if missing:
        raise ValueError(f"canonical table lacks required columns {missing}; has {table.column_names}")
    cols = []
    for field in SCHEMA:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)
