"""Evaluation and what-if through the real simulate stage (Ray actors, Chromium, the storefront),
with the uniform policy so that no trained model is needed: 3 held-out Tmall merchants, 4 agents each
of up to 5 steps (the checks hold for any session length)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from simpersona.config import load
from simpersona.eval import holdout
from simpersona.eval.holdout import HALF_TYPES, read_raw_events
from simpersona.sim.experiments import run_evaluation, run_whatif

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.mark.timeout(600)
def test_evaluate_then_whatif_on_the_same_population(tmall_csv, tmp_path, ray_local):
    run = tmp_path / "run"
    common = [f"run_dir={run}", f"data.input={tmall_csv}", "progress=false", "eval.holdout.merchants=3",
              "sim.agents_per_merchant=4", "sim.policy=uniform", "sim.workers=1", "sim.contexts_per_worker=4",
              "sim.max_steps=5", "eval.bootstrap=200", "eval.ceiling_repeats=2"]
    cfg = load("evaluate", [*common, "eval.baselines=[]"])
    events = read_raw_events(cfg)
    # the assign stage's output for this test: every buyer history typed 0..3 by its position
    typed = events.select("buyer_id", "merchant_id").unique().sort("merchant_id", "buyer_id")
    (run / "assign").mkdir(parents=True)
    typed.with_columns(type_id=(pl.int_range(pl.len()) % 4).cast(pl.Int32),
                       kmeans_type_id=pl.lit(0, pl.Int32)).write_parquet(run / "assign" / "types.parquet")

    summary = run_evaluation(cfg)
    split = holdout.holdout_for(cfg)
    m = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert m["heldout_merchants"] == split.heldout and len(split.heldout) == 3
    assert m["main"]["agents"] == 12 and m["main"]["persona_mode"] == "vq"
    assert 0 <= summary["ara_overall"] <= 1 and 0 <= m["crash_rate"] <= 1
    assert m["baselines"] == {}
    # what the agents sampled: each merchant's types half only, smoothed over the 4 types
    dist = pl.read_parquet(run / "evaluate" / "heldout_merchant_types.parquet")
    assert dist.height == 3 * 4
    per = dist.group_by("merchant_id").agg(pl.col("prob").sum(), pl.col("count").sum()).sort("merchant_id")
    assert per["prob"].to_list() == pytest.approx([1.0, 1.0, 1.0])
    half0 = split.halves.filter(pl.col("half") == HALF_TYPES).group_by("merchant_id").len().sort("merchant_id")
    assert per["count"].to_list() == half0["len"].to_list()
    agents = pl.read_parquet(run / "simulate" / "eval_vq" / "agents.parquet")
    assert sorted(set(agents["merchant_id"])) == sorted(split.heldout)

    # what-if on the evaluation's population: its base is the eval_vq folder, found complete and reused
    wcfg = load("whatif", [*common, "whatif.base_variant=eval_vq", "whatif.only=[no_recommendations]",
                           "whatif.grid_knob=''", f"whatif.merchants=[{','.join(split.heldout)}]",
                           f"sim.merchant_types={run / 'evaluate' / 'heldout_merchant_types.parquet'}",
                           "whatif.bootstrap=300"])
    w = run_whatif(wcfg)
    base_sim = json.loads((run / "simulate" / "eval_vq" / "summary.json").read_text())
    assert base_sim["resumed_skipped"] == 12 and base_sim["steps_this_run"] == 0  # nothing simulated twice
    variant_agents = pl.read_parquet(run / "simulate" / "no_recommendations" / "agents.parquet")
    assert variant_agents.select("agent_id", "type_id", "seed").equals(agents.select("agent_id", "type_id", "seed"))
    d = json.loads((run / "whatif" / "deltas.json").read_text())
    assert d["agents"] == 12 and d["merchants"] == sorted(split.heldout)
    v = d["variants"]["no_recommendations"]
    assert sorted(v["per_merchant"]) == sorted(split.heldout)
    for o in ("converted", "carted", "product_pages", "events"):
        assert v["overall"][o]["lo"] <= v["overall"][o]["delta"] <= v["overall"][o]["hi"]
    assert w["variants"]["no_recommendations"]["events"]["delta"] == v["overall"]["events"]["delta"]
