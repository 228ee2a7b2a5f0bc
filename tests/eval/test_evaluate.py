"""run_evaluation end to end on the bundled Tmall data, with simulation folders whose storefront
logs are real buyers' events: a "simulation" that replays the rates half must score ARA = 1, one that
replays the types half must score exactly the ceiling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from simpersona.config import load
from simpersona.eval import holdout
from simpersona.eval.artifacts import ArtifactError
from simpersona.eval.evaluate import EvaluationError
from simpersona.eval.holdout import HALF_RATES, HALF_TYPES, read_raw_events
from simpersona.sim.experiments import run_evaluation


@pytest.fixture(scope="module")
def real_events(tmall_csv, tmp_path_factory):
    cfg = load("evaluate", [f"data.input={tmall_csv}", "data.adapter=tmall2014", "sessions.day_resolution=true",
                            "progress=false"])
    events = read_raw_events(cfg)
    folder = tmp_path_factory.mktemp("real") / "events"
    folder.mkdir()
    events.write_parquet(folder / "part-0.parquet")
    return events, folder


def write_run(folder, events: pl.DataFrame, crash_every: int, persona_mode: str, type_of=None):
    """A simulate/<run> folder whose agents are the buyers of `events` (one agent per history)."""
    ev = events.with_columns(buyer_id=pl.concat_str(["buyer_id", "merchant_id"], separator="@"))
    agents = ev.select("buyer_id", "merchant_id").unique().sort("buyer_id").rename({"buyer_id": "agent_id"})
    agents = agents.with_columns(
        type_id=(pl.int_range(pl.len()) % 3).cast(pl.Int32) if type_of is None else type_of(agents),
        persona_mode=pl.lit(persona_mode))
    (folder / "events").mkdir(parents=True)
    (folder / "results").mkdir()
    agents.write_parquet(folder / "agents.parquet")
    ev.write_parquet(folder / "events" / "part-0.parquet")
    status = pl.when(pl.int_range(pl.len()) % crash_every == 0).then(pl.lit("crashed")).otherwise(pl.lit("completed"))
    error_kind = pl.when(status == "crashed").then(pl.lit("browser_crash")).otherwise(pl.lit(""))
    agents.select("agent_id").with_columns(status=status, attempt=pl.lit(0), error_kind=error_kind).write_parquet(
        folder / "results" / "part-0.parquet")
    return agents


def test_run_evaluation_identities(real_events, tmp_path):
    events, folder = real_events
    run_dir = tmp_path / "run"
    overrides = [f"run_dir={run_dir}", f"eval.real_events={folder}", "eval.ceiling_repeats=3", "eval.bootstrap=300",
                 "eval.simulate=false", "eval.require_baselines=false", "progress=false"]
    cfg = load("evaluate", overrides)
    split = holdout.holdout_for(cfg)
    assert holdout.holdout_dir(cfg) == run_dir / "holdout" / "hash-n42-seed0-salt0"
    assert split.heldout == holdout.make_split(events, 42, 0, "hash", "0").heldout
    rates = holdout.half_events(events, split, HALF_RATES)
    types = holdout.half_events(events, split, HALF_TYPES)
    write_run(run_dir / "simulate" / "eval_vq", rates, crash_every=10, persona_mode="vq")
    write_run(run_dir / "simulate" / "eval_none", types, crash_every=4, persona_mode="none")
    # types.parquet of the types half: the "vq" agents draw types 0,1,2 evenly, so does the empirical mix
    typed = types.select("buyer_id", "merchant_id").unique().sort("merchant_id", "buyer_id")
    (run_dir / "assign").mkdir()
    typed.with_columns(type_id=(pl.int_range(pl.len()) % 3).cast(pl.Int32),
                       kmeans_type_id=pl.lit(0, pl.Int32)).write_parquet(run_dir / "assign" / "types.parquet")

    summary = run_evaluation(cfg)
    m = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert summary["ara_overall"] == m["ara_overall"] and summary["targets_met"]["above_no_persona"] is True
    assert m["heldout_merchants"] == split.heldout
    assert m["ara_overall"] == pytest.approx(1.0) and m["ara_minmax_overall"] == pytest.approx(1.0)
    assert m["spearman_cr"] == pytest.approx(1.0)
    assert all(s["ara"] == pytest.approx(1.0) for s in m["main"]["strata"].values())
    assert m["crash_rate"] == pytest.approx(0.1, abs=0.01)
    assert m["main"]["failure_rates"] == {"browser_crash": pytest.approx(m["crash_rate"], abs=1e-4)}
    none = m["baselines"]["no_persona"]
    assert none["ara_overall"] == pytest.approx(m["ara_ceiling"])  # the types half scored as a simulation
    assert none["ara_ceiling"] == m["ara_ceiling"] and none["ara_ci"][0] < none["ara_overall"] < none["ara_ci"][1]
    assert none["spearman_cr"] == pytest.approx(m["spearman_ceiling"])
    assert none["crash_rate"] == pytest.approx(0.25, abs=0.01)
    assert none["type_mix_js"] is None  # no persona, no type mix
    assert m["main"]["type_mix_js"] < 0.05
    assert 0 < m["ara_ceiling"] < 1 and m["ceiling_spread"]["ara_overall"]["n"] == 3
    # the ideal simulator with the main run's sample size (here: every rates-half buyer, replayed)
    at_n = m["ceiling_at_sim_size"]
    assert at_n["units_per_merchant_mean"] == pytest.approx(m["split"]["buyers_rates_half"] / 42)
    assert 0 < at_n["ara_overall"] < m["ara_ceiling"] + 0.05  # binomial noise on top of the halves' own
    assert m["baselines"]["mismatch"] is None and m["baselines"]["kmeans"] is None
    t = m["targets"]
    assert t["ara_at_least"]["met"] and t["ceiling_fraction"]["met"]
    assert t["above_baselines"]["no_persona"]["met"] and t["above_baselines"]["mismatch"]["met"] is None
    assert t["crash_ratio"]["value"] == pytest.approx(m["crash_rate"] / none["crash_rate"])
    assert len(m["per_merchant"]) == 42
    row = m["per_merchant"][0]
    assert row["real"] == pytest.approx(row["sim"]) and row["no_persona"] == pytest.approx(row["real_types_half"])
    assert json.loads((run_dir / "evaluate" / "summary.json").read_text())["baselines"]["mismatch"] is None


def test_run_evaluation_errors(real_events, tmp_path):
    events, folder = real_events
    run_dir = tmp_path / "run"
    base = [f"run_dir={run_dir}", f"eval.real_events={folder}", "progress=false"]
    with pytest.raises(ArtifactError, match=r"no agent specs at .*simulate/eval_vq/agents.parquet"):
        run_evaluation(load("evaluate", [*base, "eval.simulate=false"]))
    # the split is made (and kept) before the runs are read; another setting gets its own folder
    assert (run_dir / "holdout" / "hash-n42-seed0-salt0" / "heldout.json").exists()
    with pytest.raises(EvaluationError, match=r"no buyer types at .*assign/types.parquet \(run the assign stage\)"):
        run_evaluation(load("evaluate", [*base, "eval.holdout.split=time"]))
    assert (run_dir / "holdout" / "time-n42-seed0-salt0" / "halves.parquet").exists()
    with pytest.raises(EvaluationError, match="eval.rate='conversion' is not a metric"):
        run_evaluation(load("evaluate", [*base, "eval.rate=conversion"]))
    with pytest.raises(EvaluationError, match=r"eval.baselines: unknown \['larger_model'\].*eval.larger_model.name_or_path"):
        run_evaluation(load("evaluate", [*base, "eval.baselines=[no_persona,larger_model]"]))


def _base_lm(folder, hidden: int):
    """A plain causal LM folder (no persona tokens): the "larger base model" of these tests."""
    from omegaconf import OmegaConf

    from simpersona.pages.observation import allowed_actions, render
    from simpersona.persona.config import SmallLMConfig
    from simpersona.persona.model_loading import save
    from simpersona.persona.small import build_model, train_tokenizer
    from testkit.untrained_policy import random_pages

    small = OmegaConf.merge(OmegaConf.structured(SmallLMConfig),
                            {"vocab_size": 400, "hidden_size": hidden, "layers": 1, "heads": 2, "intermediate_size": 64})
    tokenizer = train_tokenizer([render(p) + " " + " ".join(allowed_actions(p)) for p in random_pages(100, 0)], 400)
    save(build_model(tokenizer, small, 0), tokenizer, folder)
    return folder


def test_larger_model_baseline_simulates_that_model_without_personas(real_events, tmp_path):
    from simpersona.persona.scoring import ActionScorer, ScoreRequest
    from simpersona.sim.simulate import variant_dir

    events, folder = real_events
    run_dir = tmp_path / "run"
    base_lm = _base_lm(tmp_path / "base_lm", hidden=32)
    overrides = [f"run_dir={run_dir}", f"eval.real_events={folder}", "eval.ceiling_repeats=2", "eval.bootstrap=100",
                 "eval.baselines=[no_persona]", f"eval.larger_model.name_or_path={base_lm}", "persona.history_len=3",
                 "progress=false"]
    cfg = load("evaluate", overrides)
    split = holdout.holdout_for(cfg)
    rates = holdout.half_events(events, split, HALF_RATES)
    types = holdout.half_events(events, split, HALF_TYPES)
    typed = types.select("buyer_id", "merchant_id").unique()
    (run_dir / "assign").mkdir(parents=True)
    typed.with_columns(type_id=pl.lit(0, pl.Int32), kmeans_type_id=pl.lit(0, pl.Int32)).write_parquet(
        run_dir / "assign" / "types.parquet")
    calls = []

    def simulate(vcfg):  # what the simulate stage would be asked; its "agents" replay real buyers
        calls.append((vcfg.sim.variant, vcfg.sim.persona_mode, vcfg.serve.model_dir))
        out = variant_dir(vcfg)
        if not (out / "agents.parquet").exists():
            write_run(out, rates if vcfg.sim.persona_mode == "vq" else types, crash_every=5,
                      persona_mode=vcfg.sim.persona_mode)

    run_evaluation(cfg, simulate=simulate)
    (variant, mode, model_dir), = [c for c in calls if c[0] == "eval_larger_model"]
    assert mode == "none" and [c[0] for c in calls] == ["eval_vq", "eval_none", "eval_larger_model"]
    assert all(c[2] == "" for c in calls[:2])  # the main run and the other baselines keep their model
    prepared = Path(model_dir)
    assert prepared.parent == run_dir / "evaluate" / "larger_model"
    info = json.loads((prepared / "persona.json").read_text())
    assert info["codebook_size"] == 0 and info["history_len"] == 3 and info["base_model"] == str(base_lm)
    scorer = ActionScorer(prepared)  # what the policy loads: the base model, no persona tokens
    assert scorer.n_personas == 0 and scorer.history_len == 3
    (lp,) = scorer.score([ScoreRequest(None, "page: home", ["open 1"], ["search shoes", "leave"])])
    assert len(lp) == 2 and abs(sum(np.exp(lp)) - 1) < 1e-6

    m = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    larger, none = m["baselines"]["larger_model"], m["baselines"]["no_persona"]
    assert larger["model"]["name_or_path"] == str(base_lm) and larger["persona_mode"] == "none"
    assert larger["ara_overall"] == pytest.approx(none["ara_overall"])  # both replayed the types half
    assert larger["ara_overall"] == pytest.approx(m["ara_ceiling"]) and m["ara_overall"] == pytest.approx(1.0)
    assert larger["ara_ceiling"] == m["ara_ceiling"] and "larger_model" in m["targets"]["above_baselines"]
    assert m["simulation_seconds"].keys() == {"vq", "no_persona", "larger_model"}

    mtime = (prepared / "config.json").stat().st_mtime_ns
    run_evaluation(cfg, simulate=simulate)  # the same source: the copy is reused, not written again
    assert (prepared / "config.json").stat().st_mtime_ns == mtime
    other = _base_lm(tmp_path / "other_lm", hidden=48)  # another source: another folder, so another fingerprint
    run_evaluation(load("evaluate", [*overrides, f"eval.larger_model.name_or_path={other}"]), simulate=simulate)
    assert calls[-1][2] != model_dir and Path(calls[-1][2]).parent == prepared.parent


def test_larger_model_that_cannot_load_fails_before_any_simulation(real_events, tmp_path):
    events, folder = real_events
    calls = []
    cfg = load("evaluate", [f"run_dir={tmp_path / 'run'}", f"eval.real_events={folder}", "progress=false",
                            f"eval.larger_model.name_or_path={tmp_path / 'no_such_model'}"])
    with pytest.raises(EvaluationError, match=r"eval.larger_model.name_or_path=.*no_such_model.*could not load"):
        run_evaluation(cfg, simulate=calls.append)
    assert calls == [] and not list((tmp_path / "run" / "evaluate" / "larger_model").glob("*/config.json"))


def test_a_simulation_fingerprint_sees_values_that_manifests_redact(tmp_path):
    from simpersona.sim.experiments import fingerprint as sim_fingerprint

    def fingerprint(*overrides):
        return sim_fingerprint(load("evaluate", [f"run_dir={tmp_path}", *overrides]), None)["config"]

    same = fingerprint("sim.base_url=http://agent:one@127.0.0.1:8000")
    assert same == fingerprint("sim.base_url=http://agent:one@127.0.0.1:8000")
    assert same != fingerprint("sim.base_url=http://agent:two@127.0.0.1:8000")  # only the password differs
