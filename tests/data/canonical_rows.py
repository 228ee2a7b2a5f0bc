"""Small canonical event tables written by hand, for the sessions/features/traces tests."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from simpersona.data.schema import SCHEMA


def ts(text: str) -> datetime:
    """'2014-06-01 10:00:00' (seconds optional) → datetime."""
    fmt = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M"
    return datetime.strptime(text, fmt)


def canonical(rows: list[tuple]) -> pa.Table:
    """Rows (buyer, merchant, time, event[, product, category, price[, session_id]]) → SCHEMA table.

    `seq` is the row's position in the list, as an adapter would assign it."""
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for i, row in enumerate(rows):
        buyer, merchant, when, event, *rest = row
        rest = list(rest) + [None] * (4 - len(rest))
        product, category, price, session = rest
        for name, value in zip(SCHEMA.names, (buyer, merchant, ts(when), i, event, product, category, price,
                                              session)):
            cols[name].append(value)
    return pa.Table.from_pydict(cols, schema=SCHEMA)
