"""The HTML report: built from a real evaluation of the Tmall held-out split and real what-if
statistics, then opened in Chromium to check that its tables and embedded plots render."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from simpersona.config import load
from simpersona.eval import holdout
from simpersona.eval.holdout import HALF_RATES, HALF_TYPES, read_raw_events
from simpersona.eval.whatif import compute_deltas, variant_specs
from simpersona.report.html import build_report, normalise_profiles, render_report, run_report
from simpersona.sim.experiments import run_evaluation

PLOTS = ("plot-conversion", "plot-scatter", "plot-baselines", "plot-funnel", "plot-profiles", "plot-mix",
         "plot-whatif", "plot-grid")


def replay_run(folder: Path, events: pl.DataFrame, persona_mode: str, crash_every: int) -> pl.DataFrame:
    """A simulation folder whose storefront log is `events` (one agent per buyer history)."""
    ev = events.with_columns(buyer_id=pl.concat_str(["buyer_id", "merchant_id"], separator="@"))
    agents = (ev.select(pl.col("buyer_id").alias("agent_id"), "merchant_id").unique().sort("agent_id")
              .with_columns(type_id=(pl.int_range(pl.len()) % 3).cast(pl.Int32), persona_mode=pl.lit(persona_mode)))
    for sub in ("events", "results"):
        (folder / sub).mkdir(parents=True)
    agents.write_parquet(folder / "agents.parquet")
    ev.write_parquet(folder / "events" / "part-0.parquet")
    status = pl.when(pl.int_range(pl.len()) % crash_every == 0).then(pl.lit("crashed")).otherwise(pl.lit("completed"))
    error_kind = pl.when(status == "crashed").then(pl.lit("browser_crash")).otherwise(pl.lit(""))
    agents.select("agent_id").with_columns(status=status, error_kind=error_kind).write_parquet(
        folder / "results" / "part-0.parquet")
    return agents


def whatif_folder(folder: Path, agents: list[tuple[str, str]], buyers: set[str]) -> None:
    for sub in ("events", "results"):
        (folder / sub).mkdir(parents=True)
    pl.DataFrame({"agent_id": [a for a, _ in agents], "merchant_id": [m for _, m in agents],
                  "type_id": [0] * len(agents)}).write_parquet(folder / "agents.parquet")
    rows = [(a, m, e) for a, m in agents for e in (["view", "cart", "purchase"] if a in buyers else ["view"])]
    pl.DataFrame({"buyer_id": [r[0] for r in rows], "merchant_id": [r[1] for r in rows], "event": [r[2] for r in rows],
                  "session_id": [r[0] for r in rows], "ts": [datetime(2024, 1, 1)] * len(rows)}).with_columns(
        pl.col("ts").cast(pl.Datetime("ms"))).write_parquet(folder / "events" / "e.parquet")
    pl.DataFrame({"agent_id": [a for a, _ in agents], "status": ["completed"] * len(agents),
                  "error_kind": [""] * len(agents)}).write_parquet(
        folder / "results" / "r.parquet")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tmall_csv) -> Path:
    """A run folder holding what the report reads: metrics.json, type profiles and mixes, deltas.json."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    real = load("evaluate", [f"data.input={tmall_csv}", "sessions.day_resolution=true", "progress=false"])
    events = read_raw_events(real)
    (root / "real").mkdir()
    events.write_parquet(root / "real" / "events.parquet")
    cfg = load("evaluate", [f"run_dir={run}", f"eval.real_events={root / 'real'}", "eval.simulate=false",
                            "eval.baselines=[no_persona,mismatch]", "eval.require_baselines=false",
                            "eval.ceiling_repeats=2", "eval.bootstrap=200", "progress=false"])
    split = holdout.holdout_for(cfg)
    replay_run(run / "simulate" / "eval_vq", holdout.half_events(events, split, HALF_RATES), "vq", 10)
    replay_run(run / "simulate" / "eval_none", holdout.half_events(events, split, HALF_TYPES), "none", 3)
    run_evaluation(cfg)
    rng = np.random.default_rng(0)
    (run / "assign").mkdir()
    profiles = [{"type_id": k, "share": 0.25, "conversion": float(rng.random() * 0.3), "events_per_session": 2.0 + k,
                 "cart_rate": 0.01 * k, "favorite_rate": 0.02, "price_level": 0.5,
                 "description": f"type {k} <script>alert(1)</script>"} for k in range(4)]
    (run / "assign" / "type_profiles.json").write_text(json.dumps({"types": profiles}))
    mix = [{"merchant_id": m, "type_id": k, "count": 10, "prob": p}
           for m in split.heldout for k, p in enumerate(rng.dirichlet(np.ones(4)))]
    pl.DataFrame(mix).write_parquet(run / "assign" / "merchant_types.parquet")
    wcfg = load("whatif", [f"run_dir={run}", "whatif.only=[free_shipping]", "whatif.grid_values=[1.2]",
                           "whatif.bootstrap=200"])
    specs = variant_specs(wcfg)
    agents = [(f"m{j}-{i:02d}", f"m{j}") for j in range(3) for i in range(30)]
    for k, name in enumerate(specs):
        whatif_folder(run / "simulate" / name, agents, {a for a, _ in agents[:: 5 + k]})
    (run / "whatif").mkdir()
    (run / "whatif" / "deltas.json").write_text(json.dumps(compute_deltas(wcfg, specs)))
    return run


def test_report_sections_without_inputs():
    html = render_report(None)
    assert "No evaluation yet: run ray_jobs/evaluate.py." in html
    assert "No what-if results: run ray_jobs/whatif.py." in html
    assert "<img" not in html


def test_profiles_formats():
    as_list = [{"type_id": 1, "share": 0.5}, {"type_id": 0, "share": 0.5}]
    assert [p["type_id"] for p in normalise_profiles(as_list)] == [0, 1]
    assert normalise_profiles({"types": as_list}) == normalise_profiles({"1": {"share": 0.5}, "0": {"share": 0.5}})


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_chromium(run_dir):
    from playwright.sync_api import sync_playwright

    summary = run_report(load("report", [f"run_dir={run_dir}"]))
    path = Path(summary["report"])
    assert path == run_dir / "report" / "report.html"
    html = path.read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html  # profiles are escaped
    assert 'src="http' not in html and "<link" not in html  # self-contained
    bcfg = load("report").browser
    exe = bcfg.executable_path or os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="report-chromium-"), executable_path=exe,
                                                    headless=True, args=list(bcfg.args))
        try:
            page = ctx.new_page()
            page.goto(path.as_uri())
            images = page.evaluate("Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, "
                                   "i.naturalHeight, i.src.slice(0, 22)])")
            rows = dict(page.evaluate("Array.from(document.querySelectorAll('table')).map(t => [t.id, t.rows.length])"))
            headline = page.locator("#headline-table tr").nth(1).inner_text()
            ceiling_note = page.locator("#ceiling-at-sim-size").inner_text()
            page.locator("details summary").first.click()  # the per-merchant table opens
            merchant_table_visible = page.locator("#merchant-table").is_visible()
        finally:
            ctx.close()
    assert sorted(i[0] for i in images) == sorted(PLOTS)
    for img_id, complete, width, height, src in images:
        assert complete and width > 100 and height > 100, img_id
        assert src == "data:image/png;base64,", img_id
    assert rows["headline-table"] == 6 and rows["targets-table"] == 1 + 5
    assert rows["merchant-table"] == 1 + 42
    assert rows["baselines-table"] == 1 + 3 and rows["funnel-table"] == 1 + 4
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    for rate in (metrics["main"]["failure_rates"]["browser_crash"],
                 metrics["baselines"]["no_persona"]["failure_rates"]["browser_crash"]):
        assert f"browser_crash {rate:.3f}" in html  # each run's failures in the baselines table
    assert rows["profiles-table"] == 1 + 4
    assert rows["whatif-table"] == 1 + 2 and rows["whatif-merchant-table"] == 1 + 2 * 3
    assert headline.split("\t")[:2] == ["ARA 1 - |sim - real| / real (mean over merchants)", "1.000"]
    assert merchant_table_visible
    # the replayed rates half has ~all its buyers per merchant as simulated units: the note says how many
    per_merchant = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["ceiling_at_sim_size"]
    note = " ".join(ceiling_note.split())
    assert f"With {per_merchant['units_per_merchant_mean']:.3f} simulated units" in note and "ideal simulator" in note
    assert build_report(load("report", [f"run_dir={run_dir}", f"report.path={run_dir / 'copy.html'}"])).exists()
