"""What a simulation's committed agents left behind, read from their trajectories: the event log of a
foreign shop (its agents' client-side events, simpersona.sim.shop_page) and the failures by kind.

A foreign shop keeps no log for us, so each trajectory step carries the canonical events the adapter
recognised (`events`, a JSON list with `ts_ms`); `client_events` turns those of committed agents into
the storefront log's schema (buyer_id = agent id), so evaluation reads them as it reads our own log.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simpersona.store.eventlog import LOG_SCHEMA


def committed_steps(out: Path, results: pa.Table, columns: list[str]) -> pa.Table:
    """The trajectory rows of committed agents (`columns` of trajectories/*.parquet)."""
    files = sorted((out / "trajectories").glob("*.parquet"))
    if not files or results.num_rows == 0:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    parts = [pq.read_table(f) for f in files]
    parts = [t.select(columns) if all(c in t.column_names for c in columns)
             else pa.table({c: (t.column(c) if c in t.column_names else pa.nulls(t.num_rows))
                            for c in columns}) for t in parts]
    steps = pa.concat_tables(parts, promote_options="permissive")
    agents = pa.array(sorted(set(results.column("agent_id").to_pylist())), pa.string())
    return steps.filter(pc.is_in(steps.column("agent_id"), value_set=agents))


def client_events(out: Path, results: pa.Table, variant: str) -> pa.Table:
    """The committed agents' client-side events in LOG_SCHEMA, in time order."""
    steps = committed_steps(out, results, ["agent_id", "step", "events"])
    by_agent = {a: (m, s) for a, m, s in zip(results.column("agent_id").to_pylist(),
                                             results.column("merchant_id").to_pylist(),
                                             results.column("session_id").to_pylist())}
    rows = []
    for agent, step, blob in zip(*(steps.column(c).to_pylist() for c in ("agent_id", "step", "events"))):
        if not blob:
            continue
        merchant, session = by_agent[agent]
        for i, e in enumerate(json.loads(blob)):
            rows.append({"buyer_id": agent, "merchant_id": merchant, "ts": int(e["ts_ms"]), "event": e["event"],
                         "product_id": e.get("product_id"), "category": e.get("category"), "price": e.get("price"),
                         "session_id": session, "variant": variant, "_order": (int(e["ts_ms"]), agent, int(step), i)})
    rows.sort(key=lambda r: r.pop("_order"))
    for seq, r in enumerate(rows):
        r["seq"] = seq
    return pa.Table.from_pylist(rows, schema=LOG_SCHEMA)


def blocked_requests(out: Path, results: pa.Table) -> int:
    """Requests the origin fence stopped during committed agents' steps (none of them left the machine)."""
    steps = committed_steps(out, results, ["agent_id", "blocked"])
    return int(sum(n or 0 for n in steps.column("blocked").to_pylist()))


def failure_counts(out: Path, results: pa.Table, lost_attempts: dict | None = None) -> dict[str, int]:
    """kind -> count over committed agents: each step an error or failure ended (the trajectory's error
    column), each agent whose session never started, and each attempt lost to a browser crash or a
    lost worker (`lost_attempts`, from the run that lost them)."""
    counts: Counter = Counter()
    for err in committed_steps(out, results, ["agent_id", "error"]).column("error").to_pylist():
        if err:
            counts[err.split(":", 1)[0].strip()] += 1
    lost = dict(lost_attempts or {})
    for status, steps, kind in zip(*(results.column(c).to_pylist() for c in ("status", "steps", "error_kind"))):
        if status == "crashed" and not steps and kind and kind not in lost:
            counts[kind] += 1
    counts.update(lost)
    return dict(sorted(counts.items()))
