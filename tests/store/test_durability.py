"""kill -9 of the storefront process keeps every event of every answered request."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from simpersona.pages.observation import allowed_actions
from simpersona.pages.shop import Visit
from simpersona.store.eventlog import read_events, recover
from simpersona.store.server import StoreServer
from simpersona.store.shops import ShopSet

ROOT = Path(__file__).resolve().parents[2]
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


PARENT = """
import sys, time
from simpersona.store.server import StoreServer
server = StoreServer({"store": {"merchants": ["m1"]}}, log_dir=sys.argv[1]).start()
print(server.pid, server._tmp.name, flush=True)
time.sleep(600)
"""


def test_a_storefront_whose_parent_is_killed_exits_and_removes_its_scratch_folder(tmp_path):
    """kill -9 of the process that started the storefront: no parent is left to stop the child or to remove
    its spec and log folder, so the child does both (stdin EOF); before, every killed driver left a folder."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "events")], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        child_pid, scratch = parent.stdout.readline().split()
        assert Path(scratch).is_dir()
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while (Path(scratch).exists() or _alive(int(child_pid))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(child_pid)), "the storefront outlived its killed parent"
    assert not Path(scratch).exists(), f"{scratch} was left behind"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
