"""The Ray Data pipeline: identical output to the single-process reference, bad rows counted, a clear
error past the bad-row limit, and the preprocess job on the bundled Tmall data."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simpersona.config import load
from simpersona.data.config import SynthConfig
from simpersona.data.pipeline import run_preprocess
from simpersona.data.storefront import STOREFRONT_FILE, replayed_store
from simpersona.data.validate import BadDataError
from testkit.preprocess_peers import run_reference

ROOT = Path(__file__).resolve().parents[2]
COUNT_KEYS = ("rows_read", "rows_bad", "bad_by_reason", "rows_valid", "buyers", "merchants", "unit", "histories",
              "sessions", "trace_steps", "trace_skipped")  # fmt: skip
SORT = {"features": ["history_id"], "traces": ["history_id", "session_idx", "step"],
        "events": ["buyer_id", "merchant_id", "ts", "seq"], "quarantine": ["source", "line"]}  # fmt: skip


def table(folder: Path, name: str):
    return pq.read_table(folder / name).sort_by([(k, "ascending") for k in SORT[name]])


def assert_identical(ray_out: Path, ref_out: Path) -> None:
    for name in SORT:
        a, b = table(ray_out, name), table(ref_out, name)
        assert a.schema.equals(b.schema), name
        assert a.equals(b), f"{name}: columns differ: {[c for c in a.column_names if not a[c].equals(b[c])]}"
    for name in ("feature_spec.json", STOREFRONT_FILE):
        assert json.loads((ray_out / name).read_text()) == json.loads((ref_out / name).read_text()), name


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from simpersona.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(buyers=3000, shard_buyers=1500, merchants=15, seed=1, executor="serial"), str(out),
             progress=False)  # fmt: skip
    return out


def synth_args(synth_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.input={synth_dir}/events", "data.adapter=canonical", "progress=false",
            "sessions.day_resolution=false", "sessions.partitions=3", f"run_dir={run_dir}", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def synth_reference(synth_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ref")
    cfg = load("preprocess", synth_args(synth_dir, out))
    return out, run_reference(cfg, str(out))


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", ["files", "ray"])
def test_ray_pipeline_equals_reference_on_synthetic_data(ray_local, synth_dir, synth_reference, tmp_path, shuffle):
    ref_out, ref = synth_reference
    summary = run_preprocess(load("preprocess", synth_args(synth_dir, tmp_path / "run", f"sessions.shuffle={shuffle}")))
    out = tmp_path / "run" / "preprocess"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert {k: summary[k] for k in COUNT_KEYS} == {k: ref[k] for k in COUNT_KEYS}
    assert (summary["shuffle"], summary["partitions"]) == (shuffle, 3)
    assert summary["planted"] == str(synth_dir / "planted")
    assert_identical(out, ref_out)
    # planted types joined to every history; counts agree with the generator's own summary
    planted = pq.read_table(synth_dir / "planted")
    feats = table(out, "features")
    assert feats.num_rows == planted.num_rows == summary["histories"]
    want = {f"{b}|{m}": t for b, m, t in zip(*(planted[c].to_pylist() for c in ("buyer_id", "merchant_id",
                                                                                 "planted_type")))}
    assert dict(zip(feats["history_id"].to_pylist(), feats["planted_type"].to_pylist())) == want
    generated = json.loads((synth_dir / "summary.json").read_text())
    assert (summary["rows_read"], summary["buyers"]) == (generated["events"], generated["buyers"])
    assert not list(out.glob("_*")) and not list(out.parent.glob("preprocess.tmp-*"))  # scratch removed


def test_the_replayed_storefront_shows_every_page_the_traces_show(synth_dir, synth_reference, tmp_path):
    """The store section later stages build their storefront from (finetune's rollouts, the simulations'
    live shop) replays each first session of the traces page for page: the same products, prices,
    categories and merchant knobs the policy was trained on. `cfg.store` alone shows generated catalogs."""
    from simpersona.pages.observation import allowed_actions, render
    from simpersona.pages.shop import Visit
    from simpersona.store.shops import ShopSet

    ref_out, _ = synth_reference
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "preprocess").symlink_to(ref_out)
    cfg = load("preprocess", synth_args(synth_dir, tmp_path / "run"))
    traces = table(ref_out, "traces").to_pandas()
    first = traces[traces.session_idx == 0]

    def mismatches(store: dict) -> int:
        shops, bad = ShopSet(store, merchants=sorted(first.merchant_id.unique())), 0
        for (merchant, _), steps in first.groupby(["merchant_id", "history_id"], sort=False):
            shop, visit = shops.shop(merchant), Visit(merchant)
            for obs, action in zip(steps.observation, steps.action):
                page = shop.page_of(visit)
                if render(page) != obs:
                    bad += 1
                    break
                visit, _ = shop.apply(visit, action, allowed_actions(page))
        return bad

    store = replayed_store(cfg)
    assert set(store["catalog_rows"]) == set(first.merchant_id)
    assert mismatches(store) == 0
    assert mismatches(dict(cfg.store)) > first.history_id.nunique() // 2  # the generated catalogs differ


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["buyer_id", "merchant_id", "ts", "event", "product_id", "category",
                                          "price"])  # fmt: skip
        w.writeheader()
        w.writerows(rows)


def csv_rows(synth_dir: Path, n: int) -> list[dict]:
    events = pq.read_table(synth_dir / "events" / "part-00000.parquet").slice(0, n).to_pylist()
    for e in events:
        e["ts"] = e["ts"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        for k in ("product_id", "category", "price"):
            e[k] = "" if e[k] is None else e[k]
    return [{k: e[k] for k in ("buyer_id", "merchant_id", "ts", "event", "product_id", "category", "price")}
            for e in events]  # fmt: skip


@pytest.mark.slow
def test_multi_file_csv_with_bad_rows_whole_buyer_unit(ray_local, synth_dir, tmp_path):
    rows = csv_rows(synth_dir, 3000)
    rows[10]["event"] = "zap"
    rows[11]["price"] = "-3"
    rows[1700]["buyer_id"] = ""
    rows[2500]["ts"] = "yesterday"
    data = tmp_path / "in"
    data.mkdir()
    write_csv(data / "a.csv", rows[:1500])
    write_csv(data / "b.csv", rows[1500:])
    (data / "c.parquet").write_bytes(b"PAR1 cut short")  # a file that cannot be read: set aside, the run goes on
    cfg = load("preprocess", [f"data.input={data}", "data.adapter=canonical", "progress=false", "sessions.unit=buyer",
                              "sessions.day_resolution=false", "sessions.partitions=2", f"run_dir={tmp_path}/run"])
    summary = run_preprocess(cfg)
    ref = run_reference(cfg, str(tmp_path / "ref"))
    assert {k: summary[k] for k in COUNT_KEYS} == {k: ref[k] for k in COUNT_KEYS}
    assert summary["unreadable_files"] == ref["unreadable_files"]
    assert [(u.rsplit("/", 1)[-1], f["reason"]) for u, f in summary["unreadable_files"].items()] == [
        ("c.parquet", "corrupt_file")]
    assert (summary["rows_read"], summary["rows_bad"]) == (3000, 4)
    assert summary["bad_by_reason"] == {"bad_price": 1, "bad_timestamp": 1, "missing_buyer_id": 1, "unknown_event": 1}
    assert summary["planted"] == ""  # nothing planted beside a CSV folder
    out = tmp_path / "run" / "preprocess"
    assert_identical(out, tmp_path / "ref")
    feats = table(out, "features")
    assert set(feats["merchant_id"].to_pylist()) == {"*"} and set(feats["planted_type"].to_pylist()) == {-1}
    assert table(out, "quarantine").num_rows == 4


@pytest.mark.slow
def test_too_many_bad_rows_stop_the_run_with_one_line(ray_local, synth_dir, tmp_path):
    rows = csv_rows(synth_dir, 400)
    for r in rows[::3]:
        r["event"] = "zap"
    data = tmp_path / "bad.csv"
    write_csv(data, rows)
    cfg = load("preprocess", [f"data.input={data}", "data.adapter=canonical", "progress=false",
                              "sessions.day_resolution=false", f"run_dir={tmp_path}/run"])
    with pytest.raises(BadDataError) as err:
        run_preprocess(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("too many bad rows: 134 of 400 rows read (33.50%) > data.max_bad_fraction=0.01")
    assert f"most in {data}" in msg and "unknown_event=134" in msg
    assert not (tmp_path / "run" / "preprocess").exists()  # nothing half-written is left behind...
    kept = tmp_path / "run" / "preprocess.quarantine"  # ...but the bad rows are kept for a look
    assert msg.endswith(f"all bad rows in {kept}")
    assert pq.read_table(kept).num_rows == 134
    # past data.bad_check_min_rows the reading task itself stops; its error still arrives as one line
    big = tmp_path / "big.csv"
    write_csv(big, [dict(r, event="zap") if i % 2 else r for i, r in enumerate(csv_rows(synth_dir, 3000))])
    cfg = load("preprocess", [f"data.input={big}", "data.adapter=canonical", "progress=false",
                              "data.bad_check_min_rows=1000", "data.csv_block_bytes=20000",
                              "sessions.day_resolution=false", f"run_dir={tmp_path}/run2"])  # fmt: skip
    with pytest.raises(BadDataError, match=r"^too many bad rows \(stopped early\): ") as err:
        run_preprocess(cfg)
    assert "\n" not in str(err.value) and "ray" not in str(err.value).lower()
    assert not (tmp_path / "run2" / "preprocess").exists()


@pytest.mark.slow
def test_preprocess_job_on_bundled_tmall(ray_local, tmp_path):
    spec = importlib.util.spec_from_file_location("preprocess_job", ROOT / "ray_jobs" / "preprocess.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    summary = job.main([f"run_dir={tmp_path}", "config=smoke", "progress=false"])
    out = tmp_path / "preprocess"
    on_disk = json.loads((out / "summary.json").read_text())
    for key, value in {"rows_read": 182_880, "rows_bad": 0, "bad_by_reason": {}, "buyers": 884, "merchants": 9_531,
                       "histories": 57_655, "sessions": 79_520, "unit": "buyer_merchant"}.items():  # fmt: skip
        assert summary[key] == value == on_disk[key], key
    assert on_disk["trace_steps"] > 0 and on_disk["wall_s"] > 0
    assert pq.read_metadata(out / "quarantine" / "part-00000.parquet").num_rows == 0
    assert sum(pq.read_metadata(f).num_rows for f in (out / "features").glob("*.parquet")) == 57_655
    assert sum(pq.read_metadata(f).num_rows for f in (out / "events").glob("*.parquet")) == 182_880
    traces = pq.read_table(out / "traces", columns=["history_id", "event"])
    assert traces.num_rows == on_disk["trace_steps"]
    assert (out / "manifest.json").exists() and (out / "feature_spec.json").exists()
