"""kill -9 of the storefront process keeps every event of every answered request."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from simpersona.pages.observation import allowed_actions
from simpersona.pages.shop import Visit
from simpersona.store.eventlog import read_events, recover
from simpersona.store.server import StoreServer
from simpersona.store.shops import ShopSet

STORE = {"merchants": ["m1", "m2", "m3"], "products_per_merchant": 18, "catalog_seed": 3,
         "log_shard_rows": 40, "log_fsync": True}


def shopper(base_url: str, merchant: str, session: str, seed: int, acked: list, stop: threading.Event) -> None:
    """Random valid actions; `acked` gets (expected events, logged seqs) of each answered one."""
    shop = ShopSet({"store": STORE}).shop(merchant)
    rng = random.Random(seed)
    visit = Visit(merchant)
    with httpx.Client(base_url=base_url, timeout=10) as client:
        try:
            client.get(f"/m/{merchant}/?agent=agent-{session}&session={session}", follow_redirects=True)
            while not stop.is_set():
                action = rng.choice([a for a in allowed_actions(shop.page_of(visit)) if a != "leave"])
                r = client.post(f"/m/{merchant}/act", data={"a": action}, follow_redirects=True)
                if r.status_code != 200:
                    raise AssertionError(f"{action}: HTTP {r.status_code}")
                visit, events = shop.apply(visit, action)
                seqs = [int(s) for s in r.history[0].headers["x-logged-seqs"].split(",") if s]
                assert len(seqs) == len(events)
                acked.append((session, merchant, events, seqs))
        except httpx.TransportError:  # the server was killed: this request was never answered
            return


@pytest.mark.slow
def test_kill_9_keeps_every_acknowledged_event(tmp_path):
    log_dir = tmp_path / "events"
    server = StoreServer({"store": STORE}, log_dir=log_dir, variant="crash").start()
    acked: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=shopper, args=(server.base_url, f"m{1 + i % 3}", f"s{i}", i, acked, stop))
               for i in range(6)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while sum(len(e) for *_, e, _ in acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # SIGKILL while the shoppers are mid-request
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        server.stop()
    n_acked = sum(len(seqs) for *_, seqs in acked)
    assert n_acked >= 150
    assert list(log_dir.glob("wal-*.jsonl")), "expected an unrolled WAL after kill -9"
    assert list(log_dir.glob("part-*.parquet")), "expected closed shards before the crash"

    def check(table) -> None:
        by_seq = {row["seq"]: row for row in table.to_pylist()}
        for session, merchant, events, seqs in acked:
            for e, seq in zip(events, seqs):
                row = by_seq[seq]  # KeyError = an acknowledged event was lost
                assert (row["session_id"], row["merchant_id"], row["buyer_id"], row["variant"]) == (
                    session, merchant, f"agent-{session}", "crash")
                assert (row["event"], row["product_id"], row["category"], row["price"]) == (
                    e.event, e.product_id, e.category, e.price)
        # at most the events of one unanswered action per shopper come on top
        assert table.num_rows - n_acked <= 6 * 20

    check(read_events(log_dir))  # readers see the WAL before any recovery
    recover(log_dir)
    assert not list(log_dir.glob("wal-*.jsonl"))
    check(read_events(log_dir))
