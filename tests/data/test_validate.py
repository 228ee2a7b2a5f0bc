"""Bad input: every bad row counted and quarantined with its reason; bad files stop with one-line errors."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from simpersona.config import ConfigError
from simpersona.data.config import DataConfig
from simpersona.data.schema import QUARANTINE_SCHEMA, SCHEMA
from simpersona.data.validate import (
    BadDataError,
    CorruptFileError,
    DataError,
    EmptyInputError,
    EncodingError,
    InputFormatError,
    InputNotFoundError,
    UnsupportedInputError,
    ValidationReport,
    file_seq_base,
    read_canonical,
    read_file_canonical,
)

HEADER = "user_id,brand_id,type,visit_datetime"
# one row per bad-row class, two good rows (first and last); line numbers count the header as line 1
BAD_TMALL = (
    "\n".join(
        [
            HEADER,
            "1,10,0,6-4",
            ",10,0,6-4",
            "2,,1,6-5",
            "3,11,0,",
            "4,11,0,2-30",
            "5,12,7,6-4",
            "6,12,,6-4",
            "7,13,1,6-4,extra",
            "8,13",
            "9,14,3,13-1",
            "10,14,2, 7-15 ",  # blanks around a value are not an error
        ]
    )
    + "\n"
)
EXPECTED_BAD = [  # (line, reason, raw buyer_id, raw ts)
    (3, "missing_buyer_id", "", "6-4"),
    (4, "missing_merchant_id", "2", "6-5"),
    (5, "missing_timestamp", "3", ""),
    (6, "bad_timestamp", "4", "2-30"),
    (7, "unknown_event", "5", "6-4"),
    (8, "missing_event", "6", "6-4"),
    (9, "wrong_column_count", "7", "6-4"),
    (10, "wrong_column_count", "8", ""),
    (11, "bad_timestamp", "9", "13-1"),
]


def read_all(cfg: DataConfig, quarantine: str | None = None) -> tuple[pa.Table, ValidationReport]:
    report = ValidationReport()
    tables = list(read_canonical(cfg, quarantine, report))
    return (pa.concat_tables(tables) if tables else SCHEMA.empty_table()), report


def one_line_error(exc_info) -> str:
    """The error's text, checked to be one line with no library exception chained under it."""
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert exc_info.value.__cause__ is None
    assert exc_info.value.__context__ is None or exc_info.value.__suppress_context__
    return msg


def test_every_bad_row_class_is_quarantined(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_TMALL)
    quarantine = tmp_path / "out" / "quarantine.parquet"
    good, report = read_all(DataConfig(input=str(path), max_bad_fraction=1.0), str(quarantine))
    assert good["buyer_id"].to_pylist() == ["1", "10"]
    assert good["seq"].to_pylist() == [0, 10]  # row positions: bad rows keep theirs
    assert good["ts"].to_pylist()[1].isoformat() == "2014-07-15T00:00:00"  # blanks around "7-15" trimmed
    assert (report.rows_read, report.rows_bad, report.rows_good) == (11, 9, 2)
    assert report.bad_by_reason == {
        "missing_buyer_id": 1,
        "missing_merchant_id": 1,
        "missing_timestamp": 1,
        "bad_timestamp": 2,
        "unknown_event": 1,
        "missing_event": 1,
        "wrong_column_count": 2,
    }
    bad = pq.read_table(quarantine)
    assert bad.schema == QUARANTINE_SCHEMA
    rows = sorted(bad.to_pylist(), key=lambda r: r["line"])
    assert [(r["line"], r["reason"], r["buyer_id"], r["ts"]) for r in rows] == EXPECTED_BAD
    assert {r["source"] for r in rows} == {str(path)}
    assert rows[4]["event"] == "7" and rows[3]["merchant_id"] == "11"
    assert [r["seq"] for r in rows] == [str(line - 2) for line, *_ in EXPECTED_BAD]
    assert good.num_rows + bad.num_rows == report.rows_read


def test_bad_price(tmp_path):
    path = tmp_path / "2019-Oct.csv"
    path.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,1,2,,apple,-1.00,7,s\n"
        "2019-10-01 00:00:01 UTC,view,1,2,,apple,abc,7,s\n"
        "2019-10-01 00:00:02 UTC,view,1,2,,apple,,7,s\n"
        "2019-10-01 00:00:03 UTC,view,1,2,,apple,1e3,7,s\n"
        "2019-10-01 00:00:04 UTC,view,1,2,,apple,0,7,s\n"
        "2019 Oct 1,view,1,2,,apple,5,7,s\n"
    )
    good, bad, report = read_file_canonical(str(path), DataConfig(adapter="rees46", max_bad_fraction=1.0))
    assert good["price"].to_pylist() == [None, 1000.0, 0.0]  # an empty price is absent, not bad
    assert [(r["line"], r["reason"], r["price"]) for r in bad.to_pylist()] == [
        (2, "bad_price", "-1.00"),
        (3, "bad_price", "abc"),
        (7, "bad_timestamp", "5"),
    ]
    assert report.bad_by_reason == {"bad_price": 2, "bad_timestamp": 1}


def test_bad_price_in_typed_canonical_parquet(tmp_path):
    rows = [
        {
            "buyer_id": "b",
            "merchant_id": "m",
            "ts": datetime(2020, 1, 1),
            "seq": i,
            "event": "view",
            "price": p,
        }
        for i, p in enumerate([-1.0, float("nan"), float("inf"), 3.0, None])
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "events.parquet")
    cfg = DataConfig(adapter="canonical", max_bad_fraction=1.0)
    good, bad, _ = read_file_canonical(str(tmp_path / "events.parquet"), cfg)
    assert good["price"].to_pylist() == [3.0, None]
    assert [(r["line"], r["reason"], r["price"]) for r in bad.to_pylist()] == [
        (1, "bad_price", "-1"),
        (2, "bad_price", "nan"),
        (3, "bad_price", "inf"),
    ]


def test_too_many_bad_rows_names_file_counts_and_examples(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_TMALL)
    quarantine = tmp_path / "q.parquet"
    with pytest.raises(BadDataError) as err:
        read_all(DataConfig(input=str(path)), str(quarantine))
    msg = one_line_error(err)
    assert msg.startswith(
        f"too many bad rows: 9 of 11 rows read (81.82%) > data.max_bad_fraction=0.01; "
        f"most in {path} (9 bad of 11); by reason: bad_timestamp=2, wrong_column_count=2, missing_buyer_id=1, "
    )
    assert (
        f"first: {path} line 3 missing_buyer_id (merchant_id='10', ts='6-4', event='0'); {path} line 4" in msg
    )
    assert msg.endswith(f"; all bad rows in {quarantine}")
    assert pq.read_table(quarantine).num_rows == 9  # the quarantine is complete even though the run stopped


def test_bad_share_stops_early(tmp_path, tmall_csv):
    # the whole bundled file read with the wrong year-less format: every ts unparseable as Tmall "M-D"
    text = tmall_csv.read_text().replace(",6-", ",6/")
    path = tmp_path / "slashes.csv"
    path.write_text(text)
    cfg = DataConfig(
        input=str(path), csv_block_bytes=64 << 10, bad_check_min_rows=5000, max_bad_fraction=0.05
    )
    report = ValidationReport()
    with pytest.raises(
        BadDataError, match=r"^too many bad rows \(stopped early\): [\d,]+ of [\d,]+ rows read"
    ):
        list(read_canonical(cfg, None, report))
    assert 5000 <= report.rows_read < 20000  # stopped after a few blocks, not at the end of 182,880 rows


def test_missing_columns_named(tmp_path, tmall_csv):
    with pytest.raises(InputFormatError) as err:
        read_all(DataConfig(adapter="retailrocket", input=str(tmall_csv)))
    assert one_line_error(err) == (
        f"{tmall_csv}: missing columns ['timestamp', 'visitorid', 'event', 'itemid'] for "
        "data.adapter=retailrocket; found ['user_id', 'brand_id', 'type', 'visit_datetime']"
    )


def test_wrong_delimiter(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("user_id;brand_id;type;visit_datetime\n1;2;0;6-4\n")
    with pytest.raises(InputFormatError) as err:
        read_all(DataConfig(input=str(path)))
    msg = one_line_error(err)
    assert "found ['user_id;brand_id;type;visit_datetime']; wrong delimiter?" in msg
    assert msg.endswith("set data.csv_delimiter=';'")
    events, _ = read_all(DataConfig(input=str(path), csv_delimiter=";"))
    assert events.num_rows == 1


@pytest.mark.parametrize("content", [b"", f"{HEADER}\n".encode()], ids=["zero-bytes", "header-only"])
def test_empty_input(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(EmptyInputError) as err:
        read_all(DataConfig(input=str(path)))
    assert one_line_error(err) == (
        f"input has no data rows: {path} (1 file(s) read, each empty or only a header)"
    )


def test_non_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(f"{HEADER}\n1,2,0,6-4\n".encode() + "Jos\u00e9,2,0,6-4\n".encode("latin-1"))
    with pytest.raises(EncodingError) as err:
        read_all(DataConfig(input=str(path)))
    msg = one_line_error(err)
    assert msg.startswith(f"{path}: bytes that are not valid utf-8 after the first 0 rows (")
    assert msg.endswith("set data.encoding to the file's encoding (e.g. latin-1)")
    events, _ = read_all(DataConfig(input=str(path), encoding="latin-1"))
    assert events["buyer_id"].to_pylist() == ["1", "Jos\u00e9"]


def test_non_utf8_header(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("us\u00e9r_id,brand_id\n".encode("latin-1"))
    with pytest.raises(EncodingError) as err:
        read_all(DataConfig(input=str(path)))
    assert one_line_error(err).startswith(f"{path}: header line is not valid utf-8")


def test_truncated_and_corrupt_parquet(tmp_path, tmall_csv):
    table = pacsv.read_csv(tmall_csv)
    pq.write_table(table, tmp_path / "full.parquet", row_group_size=50_000)
    data = (tmp_path / "full.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError) as err:
        read_all(DataConfig(input=str(tmp_path / "cut.parquet")))
    assert one_line_error(err) == (
        f"cannot read Parquet {tmp_path / 'cut.parquet'}: truncated or not a Parquet file (Parquet magic bytes "
        "not found in footer. Either the file is corrupted or this is not a parquet file.)"
    )
    garbled = bytearray(data)
    garbled[len(data) // 3 : len(data) // 3 + 2000] = b"\x55" * 2000  # footer intact, a data page not
    (tmp_path / "garbled.parquet").write_bytes(bytes(garbled))
    with pytest.raises(CorruptFileError) as err:
        read_all(DataConfig(input=str(tmp_path / "garbled.parquet")))
    assert one_line_error(err).startswith(f"cannot read Parquet {tmp_path / 'garbled.parquet'} after ")


def test_path_errors(tmp_path):
    with pytest.raises(InputNotFoundError) as err:
        read_all(DataConfig(input=str(tmp_path / "nope.csv")))
    assert one_line_error(err) == f"input not found: {tmp_path / 'nope.csv'}"
    with pytest.raises(InputNotFoundError, match=r"the pattern matches no files"):
        read_all(DataConfig(input=str(tmp_path / "*.parquet")))
    with pytest.raises(UnsupportedInputError) as err:
        read_all(DataConfig(input="gs://bucket/logs.csv"))
    assert one_line_error(err) == (
        "unsupported URI scheme 'gs' in 'gs://bucket/logs.csv': use a local path or s3://"
    )
    (tmp_path / "log.txt").write_text(f"{HEADER}\n1,2,0,6-4\n")
    with pytest.raises(
        UnsupportedInputError, match=r"cannot tell the format of .*log.txt.*set data.format=csv"
    ):
        read_all(DataConfig(input=str(tmp_path / "log.txt")))
    events, _ = read_all(DataConfig(input=str(tmp_path / "log.txt"), format="csv"))
    assert events.num_rows == 1
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputNotFoundError, match=r"^input not found: no CSV, Parquet or JSON-lines files under "):
        read_all(DataConfig(input=str(tmp_path / "empty_dir")))
    assert issubclass(InputNotFoundError, DataError) and issubclass(DataError, ValueError)


def test_malformed_lines_across_blocks_keep_exact_lines_and_positions(tmp_path):
    """Lines with a wrong field count, spread over many CSV blocks: each quarantined with its own line,
    and every good row's seq still equals its position in the file."""
    n, broken = 20_000, {5, 6, 4_321, 12_000, 19_999}
    lines = [HEADER] + [f"{i},{i % 7},0,6-4" if i not in broken else f"{i},oops" for i in range(n)]
    path = tmp_path / "broken.csv"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(input=str(path), csv_block_bytes=16 << 10)
    good, bad, report = read_file_canonical(str(path), cfg, seq_base=1000)
    assert report.rows_read == n and report.bad_by_reason == {"wrong_column_count": len(broken)}
    assert sorted(bad["line"].to_pylist()) == sorted(i + 2 for i in broken)
    assert sorted(bad["buyer_id"].to_pylist()) == sorted(str(i) for i in broken)
    # buyer_id i sits at row i: seq = seq_base + i
    assert [int(b) + 1000 for b in good["buyer_id"].to_pylist()] == good["seq"].to_pylist()


def test_reader_streams_bounded_batches(tmall_csv, tmp_path):
    tables = list(read_canonical(DataConfig(input=str(tmall_csv), csv_block_bytes=64 << 10)))
    assert len(tables) >= 50 and max(t.num_rows for t in tables) < 4000
    assert sum(t.num_rows for t in tables) == 182_880
    pq.write_table(pacsv.read_csv(tmall_csv), tmp_path / "t.parquet")
    tables = list(read_canonical(DataConfig(input=str(tmp_path / "t.parquet"), parquet_batch_rows=10_000)))
    assert [t.num_rows for t in tables] == [10_000] * 18 + [2_880]


@pytest.mark.slow
def test_read_file_canonical_in_ray_tasks(ray_local, tmp_path, tmall_csv):
    """Per-file reading as Ray tasks, reports merged on the driver, limit checked there."""
    lines = tmall_csv.read_text().splitlines()
    (tmp_path / "a.csv").write_text("\n".join(lines[:1001]) + "\n")
    (tmp_path / "b.csv").write_text("\n".join([lines[0]] + lines[1001:2001] + ["1,2,9,6-4"]) + "\n")
    cfg = DataConfig(max_bad_fraction=0.01)
    task = ray_local.remote(read_file_canonical)
    refs = [
        task.remote(str(tmp_path / name), cfg, file_seq_base(i)) for i, name in enumerate(["a.csv", "b.csv"])
    ]
    results = ray_local.get(refs)
    total = ValidationReport()
    for _, _, report in results:
        total.merge(report)
    total.check(cfg.max_bad_fraction)
    assert (total.rows_read, total.rows_bad, total.bad_by_reason) == (2001, 1, {"unknown_event": 1})
    assert results[1][0]["seq"].to_pylist()[0] == file_seq_base(1)
    assert results[1][1].to_pylist()[0]["line"] == 1002


def test_mostly_malformed_lines_stop_early(tmp_path):
    """A file whose lines do not split into the header's columns stops while parsing, not at the end."""
    path = tmp_path / "extra.csv"
    path.write_text(HEADER + "\n" + "".join(f"{i},1,0,6-4,x\n" for i in range(50_000)))
    report = ValidationReport()
    with pytest.raises(BadDataError) as err:
        list(read_canonical(DataConfig(input=str(path), bad_check_min_rows=1000), None, report))
    assert one_line_error(err) == (
        f"too many bad rows (stopped early): 1,000 of the first 1,000 rows of {path} have the wrong number "
        "of fields (> data.max_bad_fraction=0.01); e.g. line 1001: expected 4 fields, got 5: '999,1,0,6-4,x'"
    )
    assert report.rows_read == 0  # nothing reached the report: it stopped inside the first block


# ---- issue 19: duplicates, implausible times, quoted newlines, nested columns, header-less CSV, bad files

COLS = {"buyer_id": "u", "merchant_id": "m", "ts": "t", "event": "e", "product_id": "p"}


def generic(path, **kw) -> DataConfig:
    return DataConfig(**{"adapter": "generic", "input": str(path), "columns": COLS, "max_bad_fraction": 1.0, **kw})


def test_exact_duplicate_rows_are_quarantined_across_blocks_and_kept_where_they_are_repeat_events(tmp_path):
    rows = [f"b{i},x,2019-10-01 10:{i % 60:02d}:00,view,p{i}" for i in range(3000)]
    far = rows[10]
    rows.insert(1, rows[0])  # an adjacent repeat
    rows.append(far)  # far away, in another CSV block
    rows.append(far.replace("view", "cart"))  # differs in one column: not a duplicate
    path = tmp_path / "log.csv"
    path.write_text("u,m,t,e,p\n" + "\n".join(rows) + "\n")
    good, bad, report = read_file_canonical(str(path), generic(path, csv_block_bytes=8 << 10))
    assert report.bad_by_reason == {"duplicate_row": 2} and good.num_rows == 3001
    assert sorted(bad["line"].to_pylist()) == [3, 3003]  # header = line 1: the repeats, not the originals
    assert set(bad["reason"].to_pylist()) == {"duplicate_row"} and bad["buyer_id"].to_pylist() == ["b0", "b10"]
    kept, _, report = read_file_canonical(str(path), generic(path, duplicate_rows="keep"))
    assert kept.num_rows == 3003 and report.rows_bad == 0
    # Tmall logs days: two views of one brand on one day are two equal lines, both real
    tmall = tmp_path / "tmall.csv"
    tmall.write_text(f"{HEADER}\n1,10,0,6-4\n1,10,0,6-4\n")
    good, _, report = read_file_canonical(str(tmall), DataConfig(input=str(tmall)))
    assert good.num_rows == 2 and report.rows_bad == 0
    with pytest.raises(ConfigError, match=r"data.duplicate_rows='drop': expected one of auto, quarantine, keep"):
        read_file_canonical(str(path), generic(path, duplicate_rows="drop"))


def test_duplicate_rows_in_parquet_batches(tmp_path):
    table = pa.table({"u": ["a", "b", "a", "c", "a"], "m": ["x"] * 5, "e": ["view"] * 5,
                      "t": pa.array([datetime(2020, 1, 1)] * 5, pa.timestamp("ms")), "p": ["1", "1", "1", "1", "2"]})
    pq.write_table(table, tmp_path / "log.parquet")
    good, bad, report = read_file_canonical(str(tmp_path / "log.parquet"),
                                            generic(tmp_path / "log.parquet", parquet_batch_rows=2))
    assert good["buyer_id"].to_pylist() == ["a", "b", "c", "a"]
    assert bad["line"].to_pylist() == [3] and report.bad_by_reason == {"duplicate_row": 1}


def test_timestamps_before_the_minimum_or_after_the_maximum_are_quarantined(tmp_path):
    tomorrow_plus = (datetime.now() + timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S")
    times = ["2019-10-01 10:00:00", "1970-01-01 00:00:00", "1989-12-31 23:59:59", "2100-01-01", tomorrow_plus,
             "1990-01-01 00:00:00"]
    path = tmp_path / "log.csv"
    path.write_text("u,m,t,e,p\n" + "".join(f"b{i},x,{t},view,p\n" for i, t in enumerate(times)))
    good, bad, report = read_file_canonical(str(path), generic(path))
    assert good["buyer_id"].to_pylist() == ["b0", "b5"]  # min_ts itself is in range
    assert report.bad_by_reason == {"ts_out_of_range": 4}
    assert bad["ts"].to_pylist() == times[1:5]  # the raw values, for the user to see
    good, _, report = read_file_canonical(str(path), generic(path, min_ts="", max_ts="2200-01-01"))
    assert good.num_rows == 6 and report.rows_bad == 0
    good, _, report = read_file_canonical(str(path), generic(path, max_ts="2019-12-31"))
    assert good["buyer_id"].to_pylist() == ["b0", "b5"] and report.bad_by_reason == {"ts_out_of_range": 4}
    # epoch seconds read as milliseconds (a unit mistake) land in January 1970
    path.write_text("u,m,t,e,p\na,x,1433221332,view,p\n")
    _, bad, _ = read_file_canonical(str(path), generic(path, ts_unit="ms"))
    assert bad["reason"].to_pylist() == ["ts_out_of_range"]
    with pytest.raises(ConfigError, match=r"data.min_ts='1990-13-01' is not an ISO 8601 date or time"):
        read_file_canonical(str(path), generic(path, min_ts="1990-13-01"))


def test_quoted_newlines_stay_in_their_value_across_blocks(tmp_path):
    path = tmp_path / "log.csv"
    rows = "".join(f'b{i},x,2019-10-01 10:00:00,view,"sku {i}\nsecond line"\n' for i in range(500))
    path.write_text("u,m,t,e,p\n" + rows)
    good, bad, report = read_file_canonical(str(path), generic(path, csv_block_bytes=256))
    assert report.rows_read == 500 and report.rows_bad == 0
    assert good["product_id"].to_pylist()[:2] == ["sku 0\nsecond line", "sku 1\nsecond line"]
    assert good["buyer_id"].to_pylist() == [f"b{i}" for i in range(500)]


def test_a_nested_parquet_column_is_a_one_line_error(tmp_path):
    table = pa.table({"u": ["a"], "m": ["x"], "t": ["2019-10-01"], "e": ["view"],
                      "p": pa.array([[{"item_id": "i1", "price": 3.0}]])})
    pq.write_table(table, tmp_path / "nested.parquet")
    with pytest.raises(InputFormatError) as err:
        read_all(generic(tmp_path / "nested.parquet"))
    assert one_line_error(err) == (
        f"{tmp_path / 'nested.parquet'}: nested column(s) p (list<element: struct<item_id: string, price: double>>) "
        "cannot be read by data.adapter=generic, which maps flat columns; flatten them, map flat columns only "
        "(data.columns), or use adapter ga4 / segment for those exports")
    flat = {k: v for k, v in COLS.items() if k != "product_id"}
    good, _ = read_all(generic(tmp_path / "nested.parquet", columns=flat))
    assert good.num_rows == 1  # a nested column the mapping does not use is no obstacle


def test_a_header_less_csv_is_read_with_configured_column_names(tmp_path):
    """The public Taobao UserBehavior.csv: user, item, category, behaviour, epoch seconds; no header."""
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,2268318,2520377,pv,1511544070\n1,2333346,2520771,pv,1511561733\n"
                    "1,2576651,149192,buy,1511572885\n2,3830808,4181361,zoom,1511593493\n")
    cfg = DataConfig(adapter="generic", input=str(path), csv_header=False,
                     csv_columns=["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
                     columns={"buyer_id": "user_id", "ts": "timestamp", "event": "behavior_type",
                              "product_id": "item_id", "category": "category_id"},
                     event_values={"pv": "view", "buy": "purchase", "cart": "cart", "fav": "favorite"},
                     ts_unit="s", merchant_id="taobao", max_bad_fraction=0.5)
    good, bad, report = read_file_canonical(str(path), cfg)
    assert good["event"].to_pylist() == ["view", "view", "purchase"]  # the first line is data, not a header
    assert good["ts"].to_pylist()[0] == datetime(2017, 11, 24, 17, 21, 10)
    assert bad.to_pylist()[0]["line"] == 4 and report.bad_by_reason == {"unknown_event": 1}
    with pytest.raises(ConfigError, match="data.csv_header=false needs data.csv_columns"):
        read_file_canonical(str(path), DataConfig(input=str(path), csv_header=False))


def test_an_unreadable_file_is_set_aside_when_the_bad_share_allows_else_the_run_stops(tmp_path, tmall_csv):
    folder = tmp_path / "logs"
    folder.mkdir()
    lines = tmall_csv.read_text().splitlines()
    for i in range(4):
        (folder / f"good-{i}.csv").write_text("\n".join([lines[0]] + lines[1 + 1000 * i: 1001 + 1000 * i]) + "\n")
    (folder / "latin.csv").write_bytes(f"{HEADER}\n".encode() + "Jos\u00e9,2,0,6-4\n".encode("latin-1"))
    (folder / "cut.parquet").write_bytes(b"PAR1 not really")
    good, report = read_all(DataConfig(input=str(folder), max_bad_fraction=0.01))
    assert good.num_rows == 4000 and report.rows_read == 4000
    assert {Path(u).name: f["reason"] for u, f in report.unreadable_files.items()} == {
        "latin.csv": "encoding", "cut.parquet": "corrupt_file"}
    assert 0 < report.unreadable_fraction < 0.01
    with pytest.raises(BadDataError) as err:
        read_all(DataConfig(input=str(folder), max_bad_fraction=0.0005))
    assert one_line_error(err).startswith(
        "too many unreadable files: 2 (0.") and "> data.max_bad_fraction=0.0005; first: cannot read Parquet" in str(
        err.value)


@pytest.mark.parametrize("override, message", [
    ("data.csv_header=false", "data.csv_header=false needs data.csv_columns"),
    ("data.duplicate_rows=drop", "data.duplicate_rows='drop': expected one of auto, quarantine, keep"),
    ("data.max_ts=soon", "data.max_ts='soon' is not an ISO 8601 date or time"),
])
def test_bad_data_settings_stop_before_any_read_task(override, message):
    """Checked by the driver (transform.check_config, which both implementations call first), so a setting
    the reader refuses is one line, not an error inside a Ray read task."""
    from simpersona.config import load
    from simpersona.data.transform import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(load("preprocess", [override]))
