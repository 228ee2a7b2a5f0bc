"""End to end: `python ray_jobs/pipeline.py run_dir=DIR config=smoke`, exactly as a user runs it.

One clean run on the bundled Tmall data with a local Ray and real Chromium (the session's `smoke_run`,
tests/smoke_pipeline.py); then the same command again (every stage skipped, outputs untouched), one
changed what-if key (only whatif and report re-run), and a run killed with SIGKILL during evaluation and
started again (finished stages skipped, the same metrics.json as the clean run). The tests share the run
folder and run in file order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from scipy import stats
from smoke_pipeline import PLANTED_SECRETS, RUN_TIMEOUT_S, end_session, run_pipeline, start_pipeline

# the clean run is set up inside the first test's time limit (pytest-timeout counts fixtures)
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(1500)]

STAGES = ["preprocess", "vqvae", "assign", "finetune", "evaluate", "whatif", "report"]
HEADLINE = ["ara_overall", "ara_minmax_overall", "ara_ceiling", "spearman_cr", "crash_rate", "heldout_merchants"]
BASELINES = ["no_persona", "mismatch", "prompt_persona", "kmeans"]
SMOKE_HELDOUT = 3  # eval.holdout.merchants in configs/smoke.yaml
# keys of metrics.json that measure time (session_length_s: wall-clock seconds between an agent's first
# and last request, which the box's speed sets) or name the run's own folders, not results
TIMING_KEYS = {"simulation_seconds", "seconds", "wall_s", "session_length_s", "steps_per_s", "folder"}


def stage_files(run_dir: Path, stages=STAGES) -> dict[str, float]:
    """mtime of every file of the given stages' outputs."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns
            for s in stages for p in sorted((run_dir / s).rglob("*")) if p.is_file()}


def pipeline_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "pipeline.json").read_text())


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 9)  # sums in another order differ in the last bits (type_mix_js did)
    return obj


@pytest.fixture(scope="module")
def smoke(smoke_run):
    return smoke_run  # the session's one clean run (tests/conftest.py)


def test_every_stage_finished_with_summary_and_manifest(smoke):
    run_dir = smoke["run_dir"]
    record = pipeline_record(run_dir)
    assert list(record["stages"]) == STAGES
    assert not any(t["skipped"] for t in record["stages"].values())
    for stage in STAGES:
        folder = run_dir / stage
        assert folder.is_dir() and not folder.is_symlink(), f"{folder}: not a published stage folder"
        assert json.loads((folder / "summary.json").read_text()), f"{stage}: empty summary.json"
        m = json.loads((folder / "manifest.json").read_text())
        assert m["stage"] == stage and len(m["config_hash"]) == 16 and m["wall_s"] > 0
        assert not list(run_dir.glob(f".{stage}.*")), f"{stage}: temporary folders left behind"
    # the 5-minute budget of configs/smoke.yaml is for an idle box: reported, not asserted (shared CI cores)
    print(f"smoke pipeline: {smoke['wall']:.0f} s; " + ", ".join(
        f"{s} {t['wall_s']} s" for s, t in record["stages"].items()))


def _check_fields(name: str, block: dict, heldout: int) -> None:
    for key in ("ara_overall", "ara_minmax_overall", "ara_ceiling", "crash_rate"):
        value = block[key]
        assert isinstance(value, float) and 0.0 <= value <= 1.0, f"{name}.{key} = {value!r}"
    assert block["spearman_cr"] is None or isinstance(block["spearman_cr"], float), block["spearman_cr"]
    merchants = block["heldout_merchants"]
    assert merchants == heldout or (isinstance(merchants, list) and len(set(merchants)) == heldout), merchants


def _rank_correlation(sim: list, real: list) -> float | None:
    """Spearman of per-merchant rates over the merchants the simulation reached (sim None: no agent
    visited); None where it is undefined: fewer than 3 merchants, or one side constant."""
    pairs = [(x, y) for x, y in zip(sim, real) if x is not None]
    if len(pairs) < 3 or len({x for x, _ in pairs}) == 1 or len({y for _, y in pairs}) == 1:
        return None
    xs, ys = zip(*pairs)
    return float(stats.spearmanr(xs, ys).statistic)



def test_planted_credentials_reach_no_file_of_any_stage_and_nothing_printed(smoke):
    """The run's config holds S3 keys and its environment AWS credentials (tests/smoke_pipeline.py): every
    stage's manifest, summary, model, simulation folder and report, and the run's output, are free of them."""
    run_dir = smoke["run_dir"]
    planted = [s.encode() for s in PLANTED_SECRETS.values()]
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file()]
    leaks = [(str(p.relative_to(run_dir)), s.decode()) for p in files for s in planted if s in p.read_bytes()]
    assert leaks == []
    assert {p.relative_to(run_dir).parts[0] for p in files} >= set(STAGES)  # every stage's folder was read
    assert not [s for s in PLANTED_SECRETS.values() if s in smoke["out"]]
    written = json.loads((run_dir / "preprocess" / "manifest.json").read_text())["config"]["data"]["s3"]
    assert "***" in json.dumps(written)  # the keys were there, and redacted where the config is written

def test_metrics_json_has_headline_and_every_baseline(smoke):
    m = json.loads((smoke["run_dir"] / "evaluate" / "metrics.json").read_text())
    assert len(m["heldout_merchants"]) == len(set(m["heldout_merchants"])) == SMOKE_HELDOUT
    _check_fields("metrics", {k: m[k] for k in HEADLINE}, SMOKE_HELDOUT)
    assert m["ara_ceiling"] > 0.0  # two real halves of the busiest merchants agree somewhat
    assert set(m["baselines"]) == set(BASELINES)
    for name in BASELINES:
        b = m["baselines"][name]
        assert b is not None, f"baseline {name} missing"
        _check_fields(f"baselines.{name}", b, SMOKE_HELDOUT)
        assert b["ara_ceiling"] == m["ara_ceiling"]  # same merchants, same real halves

    # spearman_cr ranks the held-out merchants by simulated against real (rates half) conversion: each
    # mode's must be the rank correlation of its own per-merchant rates in per_merchant (column "sim" for
    # the main run, the baseline's name for a baseline), the ceiling's that of the two real halves
    rows = m["per_merchant"]
    assert [r["merchant_id"] for r in rows] == m["heldout_merchants"]
    real = [r["real"] for r in rows]
    for name, block in [("sim", m), *((n, m["baselines"][n]) for n in BASELINES)]:
        want, got = _rank_correlation([r[name] for r in rows], real), block["spearman_cr"]
        assert (got is None and want is None) or (got is not None and want is not None
                                                  and abs(got - want) < 1e-9), (name, got, want, rows)
    ceiling = _rank_correlation([r["real_types_half"] for r in rows], real)
    got = m["spearman_ceiling"]
    assert got is not None and ceiling is not None and abs(got - ceiling) < 1e-9, (got, ceiling, rows)
    # the two real halves rank the storefronts alike (0.5 on the bundled data: both put 21110 lowest)
    assert m["spearman_ceiling"] > 0.0, rows


def test_report_is_written_and_printed_last(smoke):
    report = smoke["run_dir"] / "report" / "report.html"
    html = report.read_text()
    assert "data:image/png;base64," in html and "<table" in html
    last = smoke["out"].strip().splitlines()[-1]
    assert last == f"report: {report.resolve()}", last


def test_second_run_skips_every_stage_and_touches_nothing(smoke):
    run_dir = smoke["run_dir"]
    before = stage_files(run_dir)
    out, wall = run_pipeline(run_dir)
    for stage in STAGES:
        assert f"[{stage}] up to date, skipped" in out, f"{stage} was not skipped:\n{out[-3000:]}"
    assert all(t["skipped"] for t in pipeline_record(run_dir)["stages"].values())
    assert stage_files(run_dir) == before
    assert "Started a local Ray instance" not in out  # nothing to run: Ray is not even started
    assert wall < 60, f"a run with nothing to do took {wall:.0f} s"


def test_changed_whatif_key_reruns_only_whatif_and_report(smoke):
    run_dir = smoke["run_dir"]
    upstream = ["preprocess", "vqvae", "assign", "finetune", "evaluate"]
    before, deltas = stage_files(run_dir, upstream), (run_dir / "whatif" / "deltas.json").stat().st_mtime_ns
    out, _ = run_pipeline(run_dir, "whatif.bootstrap=150")
    stages = pipeline_record(run_dir)["stages"]
    assert [s for s in STAGES if not stages[s]["skipped"]] == ["whatif", "report"], stages
    assert stage_files(run_dir, upstream) == before
    assert (run_dir / "whatif" / "deltas.json").stat().st_mtime_ns != deltas
    assert json.loads((run_dir / "whatif" / "manifest.json").read_text())["config"]["whatif"]["bootstrap"] == 150


# evaluation's simulation folders in the order evaluate runs them (vq, then eval.baselines in order)
EVAL_SIMS = ["eval_vq", "eval_none", "eval_mismatch", "eval_prompt", "eval_kmeans"]
KILLED_SIM = "eval_prompt"  # killed during this one; one more simulation follows it, so the stage is unfinished


def test_killed_pipeline_resumes_after_finished_stages_with_the_same_metrics(smoke, tmp_path):
    """SIGKILL during one of evaluation's simulations; the re-run skips preprocess..finetune, reuses the
    simulations the interrupted run had finished, resumes the killed one and ends with the clean run's
    metrics.json (same seed).

    What the interrupted run had finished is the clean run's: its stages preprocess..finetune and the
    simulations before KILLED_SIM. The interrupted run's folder takes the clean run's place (the clean one is
    moved aside and put back at the end), since a simulation folder counts as done only for the same inputs,
    the path of the held-out type distribution included. (That fresh simulations give the same metrics again
    is tests/cluster/test_pipeline_storage.py's check: two whole runs, one metrics.json.)"""
    clean = smoke["run_dir"]
    reference = json.loads((clean / "evaluate" / "metrics.json").read_text())
    saved = clean.parent / "clean_run"
    os.rename(clean, saved)
    run_dir = clean
    try:
        run_dir.mkdir()
        finished = ["preprocess", "vqvae", "assign", "finetune"]
        for stage in finished:  # what an interrupted run had finished before it reached evaluate
            shutil.copytree(saved / stage, run_dir / stage, symlinks=True)
        done_sims = EVAL_SIMS[:EVAL_SIMS.index(KILLED_SIM)]
        for sim in done_sims:  # ... and the simulations evaluate ran before the one it was killed in
            shutil.copytree(saved / "simulate" / sim, run_dir / "simulate" / sim, symlinks=True)
        before = stage_files(run_dir, finished)

        log = tmp_path / "killed.log"
        with open(log, "w") as fh:  # a file, not a pipe: nobody reads the output until the run is killed
            proc = start_pipeline(run_dir, stdout=fh)
        try:
            deadline = time.time() + RUN_TIMEOUT_S
            results = run_dir / "simulate" / KILLED_SIM / "results"
            while time.time() < deadline and not list(results.glob("*.parquet")):
                assert proc.poll() is None, f"pipeline ended before it was killed:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
            assert list(results.glob("*.parquet")), "evaluation never committed an agent"
            proc.send_signal(signal.SIGKILL)  # mid-evaluation: some agents committed, the stage unfinished
            proc.wait(timeout=30)
        finally:
            end_session(proc)  # what it started in its session (its local Ray, Chromium)
        assert not (run_dir / "evaluate" / "manifest.json").exists()

        out, _ = run_pipeline(run_dir)
        stages = pipeline_record(run_dir)["stages"]
        assert [s for s in STAGES if stages[s]["skipped"]] == finished, stages
        assert stage_files(run_dir, finished) == before
        assert not list(run_dir.glob(".evaluate.*")) and not (run_dir / "evaluate").is_symlink()
        for sim in done_sims:  # the finished simulations were reused, not simulated again
            summary = json.loads((run_dir / "simulate" / sim / "summary.json").read_text())
            assert summary["resumed_skipped"] == summary["agents"] and summary["steps_this_run"] == 0, (sim, summary)
        resumed = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
        assert without_timings(resumed) == without_timings(reference)
    finally:
        if run_dir.exists():
            os.rename(run_dir, tmp_path / "killed")
        os.rename(saved, clean)
