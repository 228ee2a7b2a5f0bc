"""Adapters: the bundled Tmall file and hand-written samples in the exact public formats."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from simpersona.config import ConfigError
from simpersona.data.adapters import ADAPTERS, get_adapter
from simpersona.data.config import DataConfig
from simpersona.data.schema import SCHEMA
from simpersona.data.validate import ValidationReport, read_canonical, read_file_canonical


def read_all(cfg: DataConfig) -> tuple[pa.Table, ValidationReport]:
    report = ValidationReport()
    tables = list(read_canonical(cfg, None, report))
    return (pa.concat_tables(tables) if tables else SCHEMA.empty_table()), report


def counts(col) -> dict:
    return {d["values"]: d["counts"] for d in pc.value_counts(col).to_pylist()}


def test_tmall_bundled_file(tmall_csv):
    events, report = read_all(DataConfig(adapter="tmall2014", input=str(tmall_csv)))
    assert events.schema == SCHEMA
    assert events.num_rows == 182_880
    assert report.rows_read == 182_880 and report.rows_bad == 0 and report.bad_by_reason == {}
    assert pc.count_distinct(events["buyer_id"]).as_py() == 884
    assert pc.count_distinct(events["merchant_id"]).as_py() == 9_531
    assert counts(events["event"]) == {"view": 174_539, "purchase": 6_984, "favorite": 1_204, "cart": 153}
    # seq = row position: 0..n-1 in file order
    assert events["seq"].to_pylist() == list(range(182_880))
    assert pc.min(events["ts"]).as_py() == datetime(2014, 4, 15)
    assert pc.max(events["ts"]).as_py() == datetime(2014, 8, 15)
    first = events.slice(0, 2).to_pylist()
    assert first[0]["buyer_id"] == "10944750" and first[0]["merchant_id"] == "13451"
    assert first[0]["ts"] == datetime(2014, 6, 4) and first[1]["event"] == "favorite"


def test_tmall_year_and_parquet_with_integer_columns(tmp_path, tmall_csv):
    """A Parquet copy with typed (int) columns maps to the same canonical rows; year comes from config."""
    raw = pa.csv.read_csv(tmall_csv).slice(0, 5000)
    assert pa.types.is_integer(raw.schema.field("user_id").type)
    pq.write_table(raw, tmp_path / "tmall.parquet")
    from_pq, _ = read_all(DataConfig(input=str(tmp_path / "tmall.parquet"), year=2013))
    from_csv, _ = read_all(DataConfig(input=str(tmall_csv), year=2013))
    assert from_pq.equals(from_csv.slice(0, 5000))
    assert pc.min(from_pq["ts"]).as_py().year == 2013


# Kaggle "eCommerce behavior data from multi category store" (2019-Oct.csv), first rows, plus
# cart / remove_from_cart / purchase rows written in the same format.
REES46 = """\
event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfed738c
2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc
2019-10-01 00:00:01 UTC,view,17200506,2053013559792632471,furniture.living_room.sofa,,543.10,519107250,566511c2-e2e3-422b-b695-cf8e6e792ca8
2019-10-01 00:00:01 UTC,view,1307067,2053013558920217191,computers.notebook,lenovo,251.74,550050854,7c90fc70-0e80-4590-96f3-13c02c18c713
2019-10-01 00:00:04 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d
2019-10-01 00:02:14 UTC,cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d
2019-10-01 00:03:40 UTC,remove_from_cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d
2019-10-01 00:04:51 UTC,cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d
2019-10-01 00:06:22 UTC,purchase,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d
"""


def test_rees46_sample(tmp_path):
    path = tmp_path / "2019-Oct.csv"
    path.write_text(REES46)
    events, report = read_all(DataConfig(adapter="rees46", input=str(path)))
    assert events.num_rows == 9 and report.rows_bad == 0
    assert counts(events["event"]) == {"view": 5, "cart": 2, "remove_cart": 1, "purchase": 1}
    rows = events.to_pylist()
    assert rows[0] == {
        "buyer_id": "541312140",
        "merchant_id": "shiseido",
        "ts": datetime(2019, 10, 1, 0, 0, 0),
        "seq": 0,
        "event": "view",
        "product_id": "44600062",
        "category": "2103807459595387724",  # no category_code: the category id stands in
        "price": 35.79,
        "session_id": "72d76fde-8bb3-4e00-8c23-a032dfed738c",
    }
    assert rows[1]["category"] == "appliances.environment.water_heater"
    # the sofa has no brand: merchant "unbranded", and the report says so
    assert rows[2]["merchant_id"] == "unbranded"
    assert report.filled == {"merchant_id=unbranded": 1}
    assert rows[8]["ts"] == datetime(2019, 10, 1, 0, 6, 22) and rows[8]["price"] == 1081.98


def test_rees46_empty_brand_quarantined_or_single_store(tmp_path):
    path = tmp_path / "2019-Oct.csv"
    path.write_text(REES46)
    cfg = DataConfig(adapter="rees46", input=str(path), rees46_empty_brand="", max_bad_fraction=0.5)
    good, bad, report = read_file_canonical(str(path), cfg)
    assert (good.num_rows, bad.num_rows) == (8, 1)
    assert bad.to_pylist()[0]["reason"] == "missing_merchant_id" and bad.to_pylist()[0]["line"] == 4
    assert report.bad_by_reason == {"missing_merchant_id": 1}

    one_store, _ = read_all(DataConfig(adapter="rees46", input=str(path), merchant_id="rees46-store"))
    assert one_store.num_rows == 9 and set(one_store["merchant_id"].to_pylist()) == {"rees46-store"}


# Retailrocket events.csv (Kaggle "Retailrocket recommender system dataset"), exact columns.
RETAILROCKET = """\
timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433224214164,992329,view,248676,
1433221999827,111016,view,318965,
1433222147345,599528,addtocart,356475,
1433222276276,599528,transaction,356475,4000
"""


def test_retailrocket_sample(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(RETAILROCKET)
    events, report = read_all(DataConfig(adapter="retailrocket", input=str(path)))
    assert events.num_rows == 5 and report.rows_bad == 0
    assert events["event"].to_pylist() == ["view", "view", "view", "cart", "purchase"]
    assert set(events["merchant_id"].to_pylist()) == {"retailrocket"}
    assert events["buyer_id"].to_pylist()[3:] == ["599528", "599528"]
    assert events["product_id"].to_pylist()[0] == "355908"
    assert events["ts"].to_pylist()[0] == datetime(2015, 6, 2, 5, 2, 12, 117000)  # 1433221332117 ms, UTC


GENERIC = """\
uid;shop;when;action;sku;amount
u1;s1;02/06/2015 05:02;pv;p1;10.5
u1;s1;02/06/2015 05:03;fav;p1;10.5
u2;s2;03/06/2015 11:00;buy;p9;
u2;s2;03/06/2015 11:01;zoom;p9;1
"""


def test_generic_mapping(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(GENERIC)
    cfg = DataConfig(
        adapter="generic",
        input=str(path),
        csv_delimiter=";",
        columns={
            "buyer_id": "uid",
            "merchant_id": "shop",
            "ts": "when",
            "event": "action",
            "product_id": "sku",
            "price": "amount",
        },
        event_values={"pv": "view", "fav": "favorite", "buy": "purchase"},
        ts_format="%d/%m/%Y %H:%M",
        max_bad_fraction=0.5,
    )
    good, bad, report = read_file_canonical(str(path), cfg)
    assert good["event"].to_pylist() == ["view", "favorite", "purchase"]
    assert good["ts"].to_pylist()[2] == datetime(2015, 6, 3, 11, 0)
    assert good["price"].to_pylist() == [10.5, 10.5, None]
    assert bad.to_pylist()[0]["reason"] == "unknown_event" and bad.to_pylist()[0]["event"] == "zoom"
    assert report.rows_read == 4 and report.rows_bad == 1


def test_generic_epoch_seconds_and_iso(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("u,m,t,e\na,x,1433221332,view\nb,x,1433221333.5,cart\n")
    cfg = DataConfig(
        adapter="generic",
        input=str(path),
        ts_unit="s",
        columns={"buyer_id": "u", "merchant_id": "m", "ts": "t", "event": "e"},
    )
    events, _ = read_all(cfg)
    assert events["ts"].to_pylist() == [
        datetime(2015, 6, 2, 5, 2, 12),
        datetime(2015, 6, 2, 5, 2, 13, 500000),
    ]

    path.write_text(
        "u,m,t,e\na,x,2015-06-02T05:02:12Z,view\nb,x,2015-06-02 07:02:12+02:00,cart\nc,x,2015-06-02,view\n"
    )
    events, _ = read_all(
        DataConfig(
            adapter="generic",
            input=str(path),
            columns={"buyer_id": "u", "merchant_id": "m", "ts": "t", "event": "e"},
        )
    )
    assert events["ts"].to_pylist() == [datetime(2015, 6, 2, 5, 2, 12)] * 2 + [datetime(2015, 6, 2)]


def test_generic_config_errors(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(GENERIC)
    with pytest.raises(ConfigError, match=r"data.columns must map \['merchant_id'\]"):
        read_all(
            DataConfig(
                adapter="generic",
                input=str(path),
                csv_delimiter=";",
                columns={"buyer_id": "uid", "ts": "when", "event": "action"},
            )
        )
    with pytest.raises(ConfigError, match=r"\['click'\] are not canonical events"):
        read_all(
            DataConfig(
                adapter="generic",
                input=str(path),
                csv_delimiter=";",
                columns={"buyer_id": "uid", "merchant_id": "shop", "ts": "when", "event": "action"},
                event_values={"pv": "click"},
            )
        )


def test_canonical_passthrough_recomputes_seq(tmp_path):
    rows = [
        {
            "buyer_id": "b1",
            "merchant_id": "m1",
            "ts": datetime(2020, 1, 1, 10),
            "seq": 0,
            "event": "view",
            "product_id": "p1",
            "category": "c",
            "price": 9.5,
            "session_id": None,
        },
        {
            "buyer_id": "b1",
            "merchant_id": "m1",
            "ts": datetime(2020, 1, 1, 10),
            "seq": 1,
            "event": "purchase",
            "product_id": "p1",
            "category": "c",
            "price": 9.5,
            "session_id": "s",
        },
    ]
    shard = pa.Table.from_pylist(rows, schema=SCHEMA)
    (tmp_path / "events").mkdir()
    pq.write_table(shard, tmp_path / "events" / "part-00000.parquet")
    pq.write_table(shard, tmp_path / "events" / "part-00001.parquet")
    (tmp_path / "events" / "_SUCCESS").write_text("")
    events, report = read_all(DataConfig(adapter="canonical", input=str(tmp_path / "events")))
    assert events.drop_columns(["seq"]).equals(pa.concat_tables([shard, shard]).drop_columns(["seq"]))
    assert events["seq"].to_pylist() == [0, 1, 2, 3]  # global position, not each shard's own count
    assert list(report.files) == [str(tmp_path / "events" / f"part-0000{i}.parquet") for i in (0, 1)]
    assert report.skipped_files == [str(tmp_path / "events" / "_SUCCESS")]


def test_folder_glob_and_seq_across_files(tmp_path, tmall_csv):
    lines = tmall_csv.read_text().splitlines()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "b.csv").write_text("\n".join([lines[0]] + lines[101:151]) + "\n")
    (tmp_path / "logs" / "a.csv").write_text("\n".join(lines[:101]) + "\n")
    (tmp_path / "logs" / "README.md").write_text("not data")
    events, report = read_all(DataConfig(input=str(tmp_path / "logs")))
    assert events.num_rows == 150 and events["seq"].to_pylist() == list(range(150))
    assert list(report.files) == [str(tmp_path / "logs" / "a.csv"), str(tmp_path / "logs" / "b.csv")]
    assert report.skipped_files == [str(tmp_path / "logs" / "README.md")]
    globbed, report = read_all(DataConfig(input=str(tmp_path / "logs" / "b*.csv")))
    assert globbed.num_rows == 50 and list(report.files) == [str(tmp_path / "logs" / "b.csv")]


def test_unknown_adapter_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        get_adapter("shopify")
    assert str(err.value) == (
        "data.adapter='shopify' is not known; choose one of tmall2014, rees46, retailrocket, generic, canonical, "
        "ga4, segment"
    )
    assert set(ADAPTERS) == {"tmall2014", "rees46", "retailrocket", "generic", "canonical", "ga4", "segment"}


def test_the_loaded_preprocess_config_drives_the_reader(tmall_csv):
    """The preprocess job's config (schema defaults, with overrides) reads the bundled Tmall sample."""
    from simpersona.config import load

    cfg = load("preprocess", [f"data.input={tmall_csv}", "data.merchant_id=tmall"])
    events, report = read_all(cfg.data)
    assert events.num_rows == 182_880 and set(events["merchant_id"].to_pylist()) == {"tmall"}


def test_impossible_iso_dates_are_bad_timestamps(tmp_path):
    path = tmp_path / "log.csv"
    body = ["u,m,t,e"] + [f"b{i},x,2016-02-{1 + i % 29:02d} 10:00:00,view" for i in range(1000)]
    body[100] = "b99,x,2015-02-29 10:00:00,view"  # 2015 is no leap year
    body[500] = "b499,x,2016-13-01,view"
    body[900] = "b899,x,2016-02-01T25:00:00Z,view"
    path.write_text("\n".join(body) + "\n")
    cfg = DataConfig(
        adapter="generic",
        columns={"buyer_id": "u", "merchant_id": "m", "ts": "t", "event": "e"},
        max_bad_fraction=0.01,
    )
    good, bad, report = read_file_canonical(str(path), cfg)
    assert good.num_rows == 997 and pc.min(good["ts"]).as_py() == datetime(2016, 2, 1, 10)
    assert [(r["line"], r["reason"]) for r in bad.to_pylist()] == [
        (101, "bad_timestamp"),
        (501, "bad_timestamp"),
        (901, "bad_timestamp"),
    ]


# ---- GA4 BigQuery export and Segment e-commerce spec v2, in the shapes those tools write

GA4_LINES = [  # BigQuery's JSON export: one event per line, INT64 as strings, fields the adapter skips
    {"event_date": "20231114", "event_timestamp": "1699999200000000", "event_name": "session_start",
     "event_params": [{"key": "ga_session_id", "value": {"int_value": "1699999200"}}],
     "user_pseudo_id": "1234.5678", "items": [], "device": {"category": "desktop"}},
    {"event_date": "20231114", "event_timestamp": "1699999201500000", "event_name": "view_search_results",
     "event_params": [{"key": "ga_session_id", "value": {"int_value": "1699999200"}},
                      {"key": "search_term", "value": {"string_value": "green tea"}}],
     "user_pseudo_id": "1234.5678", "items": []},
    {"event_date": "20231114", "event_timestamp": "1699999203000000", "event_name": "view_item",
     "event_params": [{"key": "page_title", "value": {"string_value": "Sencha"}},
                      {"key": "ga_session_id", "value": {"int_value": "1699999200"}}],
     "user_pseudo_id": "1234.5678",
     "items": [{"item_id": "SKU_1", "item_name": "Sencha", "item_category": "Tea", "price": 4.5, "quantity": "1"}]},
    {"event_timestamp": "1699999204000000", "event_name": "page_view", "user_pseudo_id": "1234.5678"},
    {"event_timestamp": "1699999205000000", "event_name": "add_to_cart", "user_pseudo_id": "1234.5678",
     "items": [{"item_id": "SKU_1", "item_category": "Tea", "price": 4.5}]},
    {"event_timestamp": "1699999206000000", "event_name": "begin_checkout", "user_pseudo_id": "1234.5678",
     "items": [{"item_id": "SKU_1", "price": 4.5}]},
    {"event_timestamp": "1699999207000000", "event_name": "purchase", "user_pseudo_id": "1234.5678",
     "ecommerce": {"transaction_id": "T1", "purchase_revenue": 7.5},
     "items": [{"item_id": "SKU_1", "item_category": "Tea", "price": 4.5},
               {"item_id": "SKU_2", "item_category": "Cups", "price": None, "price_in_usd": 3.0}]},
    {"event_timestamp": "1699999208000000", "event_name": "purchase", "items": [{"item_id": "SKU_3"}]},
]
GA4_EXPECTED = [  # (event, product, category, price, session)
    ("search", None, "green tea", None, "1699999200"),
    ("view", "SKU_1", "Tea", 4.5, "1699999200"),
    ("cart", "SKU_1", "Tea", 4.5, None),
    ("purchase", "SKU_1", "Tea", 4.5, None),
    ("purchase", "SKU_2", "Cups", 3.0, None),
]
GA4_IGNORED = {"event_name session_start": 1, "event_name page_view": 1, "event_name begin_checkout": 1}


def write_jsonl(path, records):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def canonical(good):
    return [(r["event"], r["product_id"], r["category"], r["price"], r["session_id"]) for r in good.to_pylist()]


def test_ga4_json_lines_export(tmp_path):
    path = write_jsonl(tmp_path / "events_20231114.jsonl", GA4_LINES)
    good, bad, report = read_file_canonical(str(path), DataConfig(adapter="ga4", input=str(path), max_bad_fraction=0.5))
    assert canonical(good) == GA4_EXPECTED
    assert set(good["buyer_id"].to_pylist()) == {"1234.5678"} and set(good["merchant_id"].to_pylist()) == {"ga4"}
    assert good["ts"].to_pylist()[1] == datetime(2023, 11, 14, 22, 0, 3)  # µs since the epoch, UTC
    assert good["seq"].to_pylist() == [0, 1, 2, 3, 4]  # one per canonical row: the two purchase items too
    assert report.ignored == GA4_IGNORED
    assert [(r["line"], r["reason"], r["product_id"]) for r in bad.to_pylist()] == [(8, "missing_buyer_id", "SKU_3")]
    assert report.rows_read == good.num_rows + bad.num_rows == 6


def test_ga4_parquet_export(tmp_path):
    """The same events as BigQuery's Parquet export types them: INT64 timestamps and int_value."""
    value = pa.struct([("string_value", pa.string()), ("int_value", pa.int64()), ("float_value", pa.float64()),
                       ("double_value", pa.float64())])
    item = pa.struct([("item_id", pa.string()), ("item_name", pa.string()), ("item_category", pa.string()),
                      ("price", pa.float64()), ("price_in_usd", pa.float64()), ("quantity", pa.int64())])
    schema = pa.schema([("event_date", pa.string()), ("event_timestamp", pa.int64()), ("event_name", pa.string()),
                        ("event_params", pa.list_(pa.struct([("key", pa.string()), ("value", value)]))),
                        ("user_pseudo_id", pa.string()), ("items", pa.list_(item))])
    records = []
    for line in GA4_LINES:
        params = [{"key": p["key"], "value": {**p["value"], "int_value": int(p["value"]["int_value"])}
                   if "int_value" in p["value"] else p["value"]} for p in line.get("event_params", [])]
        records.append({**line, "event_timestamp": int(line["event_timestamp"]), "event_params": params,
                        "items": [{**i, "quantity": None} for i in line.get("items", [])]})
    pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp_path / "events.parquet", row_group_size=3)
    cfg = DataConfig(adapter="ga4", input=str(tmp_path), max_bad_fraction=0.5, parquet_batch_rows=3,
                     merchant_id="tea-shop")
    good, report = read_all(cfg)
    assert canonical(good) == GA4_EXPECTED and set(good["merchant_id"].to_pylist()) == {"tea-shop"}
    assert report.ignored == GA4_IGNORED and report.bad_by_reason == {"missing_buyer_id": 1}
    assert good["seq"].to_pylist() == [0, 1, 2, 3, 4]  # across batches of 3 source rows


SEGMENT_LINES = [  # track calls of the e-commerce spec v2, a page call between them
    {"type": "track", "event": "Product Viewed", "userId": None, "anonymousId": "anon-1",
     "timestamp": "2015-12-12T19:11:01.249Z", "messageId": "m1", "context": {"ip": "8.8.8.8"},
     "properties": {"product_id": "507f1f77bcf86cd799439011", "sku": "G-32", "category": "Games",
                    "name": "Monopoly: 3rd Edition", "brand": "Hasbro", "price": 18.99, "quantity": 1}},
    {"type": "page", "name": "Home", "anonymousId": "anon-1", "timestamp": "2015-12-12T19:11:02Z"},
    {"type": "track", "event": "Products Searched", "anonymousId": "anon-1",
     "timestamp": "2015-12-12T19:11:03Z", "properties": {"query": "blue roses"}},
    {"type": "track", "event": "Product Added", "userId": "user-7", "anonymousId": "anon-1",
     "timestamp": "2015-12-12T19:12:00+01:00",
     "properties": {"cart_id": "skdjsidjsdkdj29j", "product_id": "507f1f77bcf86cd799439011", "category": "Games",
                    "price": 18.99, "quantity": 1}},
    {"type": "track", "event": "Checkout Started", "userId": "user-7", "timestamp": "2015-12-12T19:13:00Z",
     "properties": {"order_id": "50314b8e9bcf000000000000", "value": 30}},
    {"type": "track", "event": "Order Completed", "userId": "user-7", "anonymousId": "anon-1",
     "timestamp": "2015-12-12T19:14:00Z",
     "properties": {"order_id": "50314b8e9bcf000000000000", "total": 27.5, "currency": "USD", "products": [
         {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32", "name": "Monopoly", "price": 19,
          "quantity": 1, "category": "Games"},
         {"product_id": "505bd76785ebb509fc183733", "sku": "46493-32", "name": "Uno Card Game", "price": 3,
          "quantity": 2, "category": "Games"}]}},
    {"type": "track", "event": "Product Viewed", "userId": "user-7", "timestamp": "2015-12-12T19:15:00Z",
     "properties": {"product_id": "p9", "price": -1}},
]
SEGMENT_EXPECTED = [  # (buyer, event, product, category, price)
    ("anon-1", "view", "507f1f77bcf86cd799439011", "Games", 18.99),
    ("anon-1", "search", None, "blue roses", None),
    ("user-7", "cart", "507f1f77bcf86cd799439011", "Games", 18.99),
    ("user-7", "purchase", "507f1f77bcf86cd799439011", "Games", 19.0),
    ("user-7", "purchase", "505bd76785ebb509fc183733", "Games", 3.0),
]


def segment_rows(good):
    return [(r["buyer_id"], r["event"], r["product_id"], r["category"], r["price"]) for r in good.to_pylist()]


def test_segment_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "segment-logs.json", SEGMENT_LINES)
    good, bad, report = read_file_canonical(str(path), DataConfig(adapter="segment", input=str(path),
                                                                  max_bad_fraction=0.5))
    assert segment_rows(good) == SEGMENT_EXPECTED and set(good["merchant_id"].to_pylist()) == {"segment"}
    assert good["ts"].to_pylist()[:3] == [datetime(2015, 12, 12, 19, 11, 1, 249000), datetime(2015, 12, 12, 19, 11, 3),
                                         datetime(2015, 12, 12, 18, 12)]  # +01:00 converted to UTC
    assert report.ignored == {"event type page": 1, "event Checkout Started": 1}
    assert [(r["line"], r["reason"], r["price"]) for r in bad.to_pylist()] == [(7, "bad_price", "-1")]


def test_segment_parquet_of_the_same_messages(tmp_path):
    product = [("product_id", pa.string()), ("category", pa.string()), ("price", pa.float64())]
    schema = pa.schema([("type", pa.string()), ("event", pa.string()), ("userId", pa.string()),
                        ("anonymousId", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")),
                        ("properties", pa.struct(product + [("query", pa.string()),
                                                            ("products", pa.list_(pa.struct(product)))]))])
    records = []
    for line in SEGMENT_LINES:
        when = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        records.append({**line, "timestamp": when})
    pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp_path / "segment.parquet")
    events, report = read_all(DataConfig(adapter="segment", input=str(tmp_path / "segment.parquet"),
                                         max_bad_fraction=0.5))
    assert segment_rows(events) == SEGMENT_EXPECTED
    assert report.ignored == {"event type page": 1, "event Checkout Started": 1}
