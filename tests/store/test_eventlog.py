"""The event log: durable appends, Parquet shards, recovery after a crash, one writer per folder."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest

from simpersona.store.eventlog import LOG_SCHEMA, EventLog, EventLogError, read_events, recover


def ev(i: int, session: str = "s1") -> dict:
    return {"buyer_id": "a1", "merchant_id": "m1", "event": "view", "product_id": f"p{i}", "category": "tea",
            "price": 1.25 + i, "session_id": session}


def test_rolls_shards_and_keeps_order(tmp_path):
    with EventLog(tmp_path, "v1", shard_rows=4) as log:
        seqs = [log.append_sync([ev(i)]) for i in range(10)]
    assert [s for (s,) in seqs] == list(range(10))
    shards = sorted(p.name for p in tmp_path.glob("part-*.parquet"))
    assert shards == ["part-000000000000-000000000003.parquet", "part-000000000004-000000000007.parquet",
                      "part-000000000008-000000000009.parquet"]
    assert not list(tmp_path.glob("wal-*"))
    table = read_events(tmp_path)
    assert table.schema == LOG_SCHEMA
    assert table.column("product_id").to_pylist() == [f"p{i}" for i in range(10)]
    assert table.column("price").to_pylist() == [1.25 + i for i in range(10)]
    assert set(table.column("variant").to_pylist()) == {"v1"}
    assert pq.read_table(tmp_path / shards[0]).num_rows == 4


def test_group_commit_from_concurrent_tasks(tmp_path):
    async def main():
        log = EventLog(tmp_path, "v", shard_rows=1000).open()
        try:
            results = await asyncio.gather(*(log.append([ev(i), ev(i, "s2")]) for i in range(50)))
        finally:
            log.close()
        return results

    results = asyncio.run(main())
    assert sorted(s for r in results for s in r) == list(range(100))
    assert all(r[1] == r[0] + 1 for r in results)  # one request's events stay together
    assert read_events(tmp_path).num_rows == 100


def test_crash_leaves_wal_that_is_read_and_recovered(tmp_path):
    log = EventLog(tmp_path, "v", shard_rows=100).open()
    log.append_sync([ev(i) for i in range(7)])
    wal = next(tmp_path.glob("wal-*.jsonl"))
    log._lockfile.close()  # the process "dies": no close(), no roll
    with open(wal, "ab") as f:
        f.write(b'["a1","m1",1,7,"vi')  # a torn line: its request was never answered
    assert read_events(tmp_path).num_rows == 7  # readers see acknowledged events before recovery
    assert recover(tmp_path) == 7
    assert not list(tmp_path.glob("wal-*")) and len(list(tmp_path.glob("part-*.parquet"))) == 1
    with EventLog(tmp_path, "v") as log2:  # a restarted writer continues the seq numbers
        assert log2.append_sync([ev(99)]) == [7]
    assert read_events(tmp_path).column("seq").to_pylist() == list(range(8))


def test_rolled_but_undeleted_wal_is_not_counted_twice(tmp_path):
    with EventLog(tmp_path, "v", shard_rows=3) as log:
        log.append_sync([ev(0), ev(1), ev(2)])
    shard = next(tmp_path.glob("part-*.parquet"))
    (tmp_path / "wal-000000000000.jsonl").write_text('["a1","m1",1,0,"view",null,null,null,"s","v"]\n')
    assert read_events(tmp_path).num_rows == 3
    recover(tmp_path)
    assert list(tmp_path.glob("part-*.parquet")) == [shard] and read_events(tmp_path).num_rows == 3


def test_corrupt_middle_line_and_second_writer_are_errors(tmp_path):
    (tmp_path / "wal-000000000000.jsonl").write_text('["a"]\nnot json\n["b"]\n')
    with pytest.raises(EventLogError, match="line 2 is corrupt"):
        read_events(tmp_path)
    (tmp_path / "wal-000000000000.jsonl").unlink()
    with EventLog(tmp_path, "v"):
        with pytest.raises(EventLogError, match="is open by another storefront process"):
            EventLog(tmp_path, "v").open()
