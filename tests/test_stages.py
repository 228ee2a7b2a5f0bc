"""The stage runner (simpersona.stages.run_stage): skip when current, atomic output, clean-up after a kill.

Two toy stages stand in for the real ones (their functions write files like a stage does); the runner,
manifests and config loading are the real ones.
"""

from __future__ import annotations

import json
import os

import pytest

from simpersona import manifest, stages
from simpersona.config import load

TOY = stages.Stage("toy", "toy:run", ("report",), ())
DOWN = stages.Stage("down", "down:run", ("whatif",), ("toy",))


@pytest.fixture
def runner(monkeypatch, tmp_path):
    """Registers the toy stages; `calls` counts runs, `behaviour[name]` is what the next run does."""
    calls: dict[str, int] = {"toy": 0, "down": 0}
    seen: dict[str, list] = {"toy": [], "down": []}

    def make(name):
        def run(cfg):
            calls[name] += 1
            out = stages.stage_dir(cfg, name)
            # what the stage sees while it runs: its folder is a link into a temporary sibling
            seen[name].append((out.is_symlink(), (out / "manifest.json").exists()))
            (out / "data.txt").write_text(cfg.report.title)
            if cfg.report.title == "fail":
                raise RuntimeError("stage failed")
            return {"title": cfg.report.title}
        return run

    monkeypatch.setitem(stages.STAGES, "toy", TOY)
    monkeypatch.setitem(stages.STAGES, "down", DOWN)
    monkeypatch.setattr(stages, "resolve_function", lambda spec: make(spec.split(":")[0]))
    return {"calls": calls, "seen": seen, "run_dir": tmp_path / "run"}


def cfg_for(run_dir, *overrides):
    return load("pipeline", [f"run_dir={run_dir}", *overrides])


def test_output_appears_atomically_with_summary_and_manifest_last(runner):
    run_dir = runner["run_dir"]
    summary = stages.run_stage("toy", cfg_for(run_dir, "report.title=a"))
    out = run_dir / "toy"
    assert summary == {"title": "a"}
    assert runner["seen"]["toy"] == [(True, False)]  # ran through a link, not yet marked finished
    assert out.is_dir() and not out.is_symlink()
    assert (out / "data.txt").read_text() == "a"
    assert json.loads((out / "summary.json").read_text()) == {"title": "a"}  # written for the stage
    assert manifest.read(out)["config"]["report"]["title"] == "a"
    assert sorted(p.name for p in run_dir.iterdir()) == ["toy"]  # no temporary siblings left


def test_unchanged_stage_is_skipped_and_changed_config_reruns(runner):
    run_dir = runner["run_dir"]
    stages.run_stage("toy", cfg_for(run_dir, "report.title=a"))
    again = stages.run_stage("toy", cfg_for(run_dir, "report.title=a"))
    assert again["skipped"] is True and runner["calls"]["toy"] == 1
    stages.run_stage("toy", cfg_for(run_dir, "report.title=b"))
    assert runner["calls"]["toy"] == 2 and (run_dir / "toy" / "data.txt").read_text() == "b"
    stages.run_stage("toy", cfg_for(run_dir, "report.title=b"), force=True)
    assert runner["calls"]["toy"] == 3


def test_downstream_reruns_when_upstream_changed_and_not_otherwise(runner):
    run_dir = runner["run_dir"]
    for name in ("toy", "down"):
        stages.run_stage(name, cfg_for(run_dir, "report.title=a"))
    assert stages.run_stage("down", cfg_for(run_dir, "report.title=a"))["skipped"]
    stages.run_stage("toy", cfg_for(run_dir, "report.title=b"))
    assert not stages.run_stage("down", cfg_for(run_dir, "report.title=b")).get("skipped")
    assert runner["calls"]["down"] == 2


def test_downstream_of_an_unfinished_stage_is_an_error(runner):
    with pytest.raises(FileNotFoundError, match="is not finished"):
        stages.run_stage("down", cfg_for(runner["run_dir"]))


def test_failed_run_puts_the_previous_output_back(runner):
    run_dir = runner["run_dir"]
    stages.run_stage("toy", cfg_for(run_dir, "report.title=a"))
    before = manifest.read(run_dir / "toy")
    with pytest.raises(RuntimeError, match="stage failed"):
        stages.run_stage("toy", cfg_for(run_dir, "report.title=fail"))
    out = run_dir / "toy"
    assert not out.is_symlink() and (out / "data.txt").read_text() == "a"
    assert manifest.read(out) == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["toy"]


def kill_mid_run(run_dir, token="dead0001"):
    """What SIGKILL in the middle of a stage run leaves: old output moved aside, a link to a partial folder."""
    out = run_dir / "toy"
    if out.exists():
        os.replace(out, run_dir / f".toy.old-{token}")
    (run_dir / f".toy.partial-{token}").mkdir(parents=True)
    (run_dir / f".toy.partial-{token}" / "data.txt").write_text("half")
    out.symlink_to(f".toy.partial-{token}")


def test_killed_rerun_brings_back_the_previous_output_which_may_still_be_current(runner):
    run_dir = runner["run_dir"]
    stages.run_stage("toy", cfg_for(run_dir, "report.title=a"))
    kill_mid_run(run_dir)
    assert stages.run_stage("toy", cfg_for(run_dir, "report.title=a"))["skipped"]  # the old output is back
    assert runner["calls"]["toy"] == 1 and (run_dir / "toy" / "data.txt").read_text() == "a"
    assert sorted(p.name for p in run_dir.iterdir()) == ["toy"]


def test_killed_first_run_is_cleared_and_rerun(runner):
    run_dir = runner["run_dir"]
    kill_mid_run(run_dir)
    stages.run_stage("toy", cfg_for(run_dir, "report.title=a"))
    out = run_dir / "toy"
    assert runner["calls"]["toy"] == 1 and not out.is_symlink() and (out / "data.txt").read_text() == "a"
    assert sorted(p.name for p in run_dir.iterdir()) == ["toy"]


def test_unknown_pipeline_stage_is_a_clear_error(tmp_path):
    from simpersona.pipeline import pipeline_stages

    cfg = load("pipeline", [f"run_dir={tmp_path}", "pipeline.stages=[preprocess,train]"])
    with pytest.raises(ValueError, match=r"pipeline.stages: unknown stage\(s\) \['train'\]"):
        pipeline_stages(cfg)
