"""Type-level alignment on hand-made populations whose answers are worked out by hand."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import polars as pl
import pytest

from simpersona.eval import type_alignment as ta
from simpersona.eval.config import TypeAlignmentConfig
from simpersona.eval.holdout import HALF_RATES, HALF_TYPES, HoldoutSplit

T0 = datetime(2014, 5, 1)


def history(buyer: str, merchant: str, bought: bool) -> list[dict]:
    """One session: a product view, and a purchase when `bought` (a bounce otherwise)."""
    rows = [{"buyer_id": buyer, "merchant_id": merchant, "session_id": f"{buyer}#0", "event": "view", "ts": T0}]
    if bought:
        rows.append({**rows[0], "event": "purchase", "ts": T0 + timedelta(seconds=30)})
    return rows


def population(prefix: str, conversions: dict[int, list[bool]], merchant: str = "m1"):
    """events + (merchant_id, buyer_id, type_id) of buyers whose purchases are given per type."""
    events, typed = [], []
    for k, outcomes in conversions.items():
        for i, bought in enumerate(outcomes):
            b = f"{prefix}{k}-{i}"
            events += history(b, merchant, bought)
            typed.append({"merchant_id": merchant, "buyer_id": b, "type_id": k})
    return pl.DataFrame(events), pl.DataFrame(typed)


# real: type 0 converts 1/4, type 1 2/4, type 2 4/4; simulated: 2/4, 1/4, 4/4
REAL = {0: [True, False, False, False], 1: [True, True, False, False], 2: [True] * 4}
SIM = {0: [True, True, False, False], 1: [True, False, False, False], 2: [True] * 4}


def test_type_metrics_and_comparison_known_answers():
    real_ev, real_typed = population("r", REAL)
    sim_ev, sim_typed = population("s", SIM)
    real = ta.type_metrics(real_ev, real_typed)
    sim = ta.type_metrics(sim_ev, sim_typed)
    assert real.sort("type_id")["buyer_conversion"].to_list() == [0.25, 0.5, 1.0]
    assert real.sort("type_id")["bounce_rate"].to_list() == [0.75, 0.5, 0.0]
    out = ta.compare_types(sim, real, min_agents=4, min_real=4)
    assert out["types"] == [0, 1, 2]
    # ranks sim (2, 1, 3) vs real (1, 2, 3): 1 - 6 * 2 / (3 * 8) = 0.5
    assert out["spearman_conversion"] == pytest.approx(0.5)
    # ARA per type: 1 - 0.25 / 0.25 -> 0; 1 - 0.25 / 0.5 = 0.5; 1
    assert out["ara_conversion"] == pytest.approx(0.5)
    # bounce: sim 0.5 / 0.75 / 0 against real 0.75 / 0.5 / 0 -> 1 - 0.25 / 0.75, 1 - 0.25 / 0.5, 1 (both 0)
    assert out["ara_bounce"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_types_below_the_minimum_are_left_out():
    real_ev, real_typed = population("r", {**REAL, 3: [True]})
    sim_ev, sim_typed = population("s", {**SIM, 3: [False]})
    out = ta.compare_types(ta.type_metrics(sim_ev, sim_typed), ta.type_metrics(real_ev, real_typed), 4, 4)
    assert out["types"] == [0, 1, 2]
    assert {r["type_id"] for r in out["rows"]} == {0, 1, 2, 3}


def test_action_js_per_page_kind():
    sim = ta.verb_counts(["product"] * 4 + ["home"] * 2, ["buy_now", "buy_now", "back", "back", "open 1", "open 2"],
                         [0] * 6)
    real = ta.verb_counts(["product"] * 4 + ["home"] * 2, ["buy_now", "buy_now", "back", "back", "leave", "leave"],
                          [0] * 6)
    js = ta.action_js(sim, real, min_steps=2)
    assert js[0]["per_page"]["product"] == pytest.approx(0.0)
    assert js[0]["per_page"]["home"] == pytest.approx(1.0)  # disjoint verbs
    assert js[0]["js"] == pytest.approx((0 * 4 + 1 * 2) / 6)  # weighted by the real steps per page
    assert ta.action_js(sim, real, min_steps=3)[0]["per_page"] == {"product": pytest.approx(0.0)}


def test_majority_map_and_ideal_simulator():
    typed = pl.DataFrame({"type_id": [0, 0, 0, 1, 1], "planted_type": [5, 5, 6, 7, 6]})
    assert ta.majority_map(typed) == {0: 5, 1: 6}  # a tie goes to the smaller label
    real = pl.DataFrame({"type_id": [0, 1, 2], "buyers": [1000] * 3, "buyer_conversion": [0.0, 0.5, 1.0]})
    ideal = ta.ideal_at_sample_size(real, real, {0: 50, 1: 50, 2: 50}, 10, 10, 50, seed=0)
    assert ideal["spearman_conversion"]["mean"] == pytest.approx(1.0)
    few = ta.ideal_at_sample_size(real, real, {0: 50, 1: 5, 2: 50}, 10, 10, 50, seed=0)
    assert few["n_types"] == 2 and few["spearman_conversion"] is None  # two types: no Spearman


class FakeRun(SimpleNamespace):
    def trajectories(self):
        return self.steps


def test_every_mode_is_grouped_by_the_type_the_agent_was_drawn_as():
    """A mismatched or persona-less agent counts under the main run's type for the same agent id."""
    real_ev, real_typed = population("r", REAL)
    half = real_typed.select("merchant_id", "buyer_id").with_columns(pl.lit(HALF_RATES).alias("half"))
    types_half = half.with_columns(pl.lit(HALF_TYPES).alias("half"))  # the same buyers in both halves
    split = HoldoutSplit(["m1"], pl.concat([half, types_half]), "hash", 0, "0")
    sim_ev, sim_typed = population("a", SIM)
    agents = sim_typed.rename({"buyer_id": "agent_id"})
    steps = pl.DataFrame({"agent_id": agents["agent_id"], "observation": ["page: product | cart: 0"] * agents.height,
                          "action": ["buy_now"] * agents.height})
    main = FakeRun(agents=agents.with_columns(pl.lit("vq").alias("persona_mode")), events=sim_ev,
                   persona_mode="vq", steps=steps)
    shifted = agents.with_columns(((pl.col("type_id") + 1) % 3).alias("type_id"), pl.lit("mismatch").alias("persona_mode"))
    mismatch = FakeRun(agents=shifted, events=sim_ev, persona_mode="mismatch", steps=steps)
    out = ta.evaluate_types({"vq": main, "mismatch": mismatch}, "vq", real_ev, split, real_typed, "/nonexistent",
                            TypeAlignmentConfig(min_agents=4, min_real=4, ideal_repeats=20), seed=0)
    assert out["vq"]["spearman_conversion"] == pytest.approx(0.5)
    assert out["mismatch"]["spearman_conversion"] == pytest.approx(0.5)  # same agents, same drawn types
    assert out["vq"]["real_vs_real"]["spearman_conversion"] == pytest.approx(1.0)
    assert out["vq"]["typing"] == "vq"


def test_signal_budget_reads_each_stage_beside_its_peer(tmp_path):
    import json

    from simpersona.eval.signal_budget import signal_budget

    (tmp_path / "vqvae").mkdir()
    (tmp_path / "finetune").mkdir()
    (tmp_path / "vqvae" / "summary.json").write_text(json.dumps(
        {"nmi_planted": 0.9, "type_auc_purchase": 0.99, "kmeans": {"nmi_planted": 0.7}}))
    (tmp_path / "finetune" / "summary.json").write_text(json.dumps(
        {"heldout_nll_persona": 1.2, "heldout_nll_no_persona": 1.4, "heldout_acc_persona": 0.5,
         "type_conversion_spearman": 0.8, "type_conversion_spearman_mismatch": 0.1,
         "type_conversion_spearman_ideal": {"mean": 0.85, "lo": 0.6, "hi": 1.0}}))
    live = {"vq": {"spearman_conversion": 0.9, "n_types": 5, "ideal_at_sim_size": {"spearman_conversion": {"mean": 0.95}}},
            "no_persona": {"spearman_conversion": 0.2}}
    rows = {r["stage"]: r for r in signal_budget(tmp_path, live)}
    assert list(rows) == ["types", "offline", "rollout", "live"]
    assert rows["types"]["persona"]["nmi_planted"] == 0.9 and rows["types"]["peer_value"] == {"nmi_planted": 0.7}
    assert rows["offline"]["persona"]["nll"] == 1.2 and rows["offline"]["peer_value"]["nll"] == 1.4
    assert rows["rollout"]["peer_value"]["type_conversion_spearman"] == 0.1
    assert rows["rollout"]["ideal_at_sim_size"]["mean"] == 0.85
    assert rows["live"]["persona"]["type_conversion_spearman"] == 0.9
    assert rows["live"]["peer_value"]["type_conversion_spearman"] == 0.2
    assert rows["live"]["ideal_at_sim_size"]["mean"] == 0.95
