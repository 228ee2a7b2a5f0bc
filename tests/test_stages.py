"""The stage runner (simpersona.stages.run_stage): skip when current, atomic output, clean-up after a kill.

Two toy stages stand in for the real ones (their functions write files like a stage does); the runner,
manifests and config loading are the real ones.
"""

from __future__ import annotations

import json
import os

import pytest

from simpersona import manifest, stages, storage
from simpersona.config import load

TOY = stages.Stage("toy", "toy:run", ("report",), ())
DOWN = stages.Stage("down", "down:run", ("whatif",), ("toy",))
LATER = stages.Stage("later", "later:run", ("report",), ())
OPTIONAL = stages.Stage("opt", "opt:run", ("whatif",), ("toy",), optional=("later",))


@pytest.fixture
def runner(monkeypatch, tmp_path):
    """Registers the toy stages; `calls` counts runs, `behaviour[name]` is what the next run does."""
    calls: dict[str, int] = {"toy": 0, "down": 0, "later": 0, "opt": 0}
    seen: dict[str, list] = {name: [] for name in calls}

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
    monkeypatch.setitem(stages.STAGES, "later", LATER)
    monkeypatch.setitem(stages.STAGES, "opt", OPTIONAL)
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


def test_an_optional_upstream_is_read_when_finished_and_its_later_arrival_makes_the_stage_stale(runner):
    """The report runs without a what-if (a pipeline that has none: config=planted stopped here); once the
    what-if finishes, the report is stale and runs again."""
    run_dir = runner["run_dir"]
    stages.run_stage("toy", cfg_for(run_dir))
    first = stages.run_stage("opt", cfg_for(run_dir))
    assert not first.get("skipped") and manifest.read(run_dir / "opt")["inputs"]["later"] == "absent"
    assert stages.run_stage("opt", cfg_for(run_dir))["skipped"]
    stages.run_stage("later", cfg_for(run_dir))
    assert not stages.run_stage("opt", cfg_for(run_dir)).get("skipped") and runner["calls"]["opt"] == 2
    assert manifest.read(run_dir / "opt")["inputs"]["later"] != "absent"
    assert stages.STAGES["report"].optional == ("evaluate", "whatif")


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


# --- a remote storage root: s3://bucket/prefix on a real S3 API (moto) on loopback --------------------


@pytest.fixture(scope="module")
def s3_server():
    from s3_server import MotoS3Server

    with MotoS3Server() as server:
        server.client().create_bucket(Bucket="runs")
        yield server


def s3_cfg(server, root, cache, *overrides):
    c = server.s3_config()
    return cfg_for(root, f"cache_dir={cache}", f"data.s3.endpoint_url={c.endpoint_url}", f"data.s3.region={c.region}",
                   f"data.s3.access_key={c.access_key}", f"data.s3.secret_key={c.secret_key}", *overrides)


def s3_keys(server, prefix):
    listing = server.client().list_objects_v2(Bucket="runs", Prefix=prefix)
    # pyarrow marks folders with empty "<name>/" objects: not outputs
    return sorted(o["Key"][len(prefix):] for o in listing.get("Contents", []) if not o["Key"].endswith("/"))


def s3_text(server, key):
    return server.client().get_object(Bucket="runs", Key=key)["Body"].read().decode()


def test_remote_root_runs_on_a_mirror_uploads_outputs_and_manifest_last_and_skips(runner, s3_server, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be made in the working folder (no local "s3:" folder)
    root = "s3://runs/t1"
    cfg = s3_cfg(s3_server, root, tmp_path / "cache", "report.title=a")
    assert stages.run_stage("toy", cfg) == {"title": "a"}
    assert runner["seen"]["toy"] == [(True, False)]  # on the mirror: through a link, not yet finished
    assert s3_keys(s3_server, "t1/") == ["toy/data.txt", "toy/manifest.json", "toy/summary.json"]
    assert s3_text(s3_server, "t1/toy/data.txt") == "a"
    remote = json.loads(s3_text(s3_server, "t1/toy/manifest.json"))
    assert remote["config"]["report"]["title"] == "a" and remote["config"]["seed"] == 0
    assert os.listdir(tmp_path) == ["cache"]
    mirror = stages.mirror_dir(cfg)
    assert mirror.parent == tmp_path / "cache" and (mirror / "toy" / "data.txt").read_text() == "a"

    assert stages.run_stage("toy", cfg)["skipped"] and runner["calls"]["toy"] == 1  # current: skipped
    stages.run_stage("toy", s3_cfg(s3_server, root, tmp_path / "cache", "report.title=b"))
    assert runner["calls"]["toy"] == 2 and s3_text(s3_server, "t1/toy/data.txt") == "b"


def test_remote_stage_without_its_manifest_is_unfinished_and_a_failed_run_leaves_it_so(runner, s3_server, tmp_path):
    root = "s3://runs/t2"
    cfg = s3_cfg(s3_server, root, tmp_path / "cache", "report.title=a")
    client = s3_server.client()
    client.put_object(Bucket="runs", Key="t2/toy/data.txt", Body=b"half")  # a run killed before its manifest
    with pytest.raises(FileNotFoundError, match="is not finished"):
        stages.run_stage("down", cfg)
    stages.run_stage("toy", cfg)
    assert runner["calls"]["toy"] == 1 and s3_text(s3_server, "t2/toy/data.txt") == "a"
    with pytest.raises(RuntimeError, match="stage failed"):
        stages.run_stage("toy", s3_cfg(s3_server, root, tmp_path / "cache", "report.title=fail"))
    assert "toy/manifest.json" not in s3_keys(s3_server, "t2/")  # never taken as finished
    assert not stages.run_stage("toy", cfg).get("skipped") and runner["calls"]["toy"] == 3


def test_downstream_on_another_machine_fetches_the_finished_upstream(runner, s3_server, tmp_path):
    root = "s3://runs/t3"
    stages.run_stage("toy", s3_cfg(s3_server, root, tmp_path / "here", "report.title=a"))
    elsewhere = s3_cfg(s3_server, root, tmp_path / "there", "report.title=a")  # an empty cache: a fresh machine
    stages.run_stage("down", elsewhere)
    mirror = stages.mirror_dir(elsewhere)
    assert (mirror / "toy" / "data.txt").read_text() == "a"
    assert (mirror / "toy" / "manifest.json").read_text() == s3_text(s3_server, "t3/toy/manifest.json")
    assert "down/manifest.json" in s3_keys(s3_server, "t3/")
    assert stages.run_stage("down", s3_cfg(s3_server, root, tmp_path / "here", "report.title=a"))["skipped"]


# --- input identity ----------------------------------------------------------------------------------


def test_input_identity_is_the_content_not_the_location(s3_server, tmp_path, tmall_csv, monkeypatch):
    a, b = tmp_path / "a" / tmall_csv.name, tmp_path / "b" / tmall_csv.name
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(tmall_csv.read_bytes())
    os.utime(b, (1, 1))  # another modification time: the same input
    s3_server.client().put_object(Bucket="runs", Key="raw/t.csv", Body=tmall_csv.read_bytes())
    s3c = s3_server.s3_config()
    fingerprints = {manifest.file_fingerprint([str(p)]) for p in (tmall_csv, a, b)}
    fingerprints.add(manifest.file_fingerprint(["s3://runs/raw/t.csv"], s3c))
    assert len(fingerprints) == 1

    ms = [stages.stage_manifest(cfg_for(tmp_path / "run", f"data.input={p}"), stages.STAGES["preprocess"])
          for p in (a, b)]
    assert ms[0]["inputs_hash"] == ms[1]["inputs_hash"] and ms[0]["sources"] == [str(a)] != ms[1]["sources"]

    data = bytearray(tmall_csv.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle
    b.write_bytes(bytes(data))
    assert manifest.file_fingerprint([str(b)]) != manifest.file_fingerprint([str(a)])
    # a file over the full-hash limit: identified by its size, first and last bytes
    monkeypatch.setattr(manifest, "FULL_HASH_MAX_BYTES", 1 << 20)
    monkeypatch.setattr(manifest, "SAMPLE_BYTES", 1 << 16)
    assert manifest.file_fingerprint([str(b)]) == manifest.file_fingerprint([str(a)])  # the middle is not read
    data[-1:] = b"\n" if data[-1:] != b"\n" else b" "
    b.write_bytes(bytes(data))
    assert manifest.file_fingerprint([str(b)]) != manifest.file_fingerprint([str(a)])


def test_a_synthetic_inputs_merchant_knobs_are_part_of_the_preprocess_input_identity(tmp_path):
    """The traces replay each merchant's knobs from merchant_knobs.json: new knobs, new preprocess inputs."""
    synth = tmp_path / "synth"
    for sub in ("events", "planted"):
        (synth / sub).mkdir(parents=True)
        (synth / sub / "part-00000.parquet").write_bytes(b"PAR1 the same bytes every time")

    def inputs_hash() -> str:
        cfg = cfg_for(tmp_path / "run", f"data.input={synth / 'events'}", "data.adapter=canonical")
        return stages.stage_manifest(cfg, stages.STAGES["preprocess"])["inputs_hash"]

    without = inputs_hash()
    (synth / "merchant_knobs.json").write_text(json.dumps({"merchants": {"m0": {"shipping_fee": 4.0}}}))
    with_knobs = inputs_hash()
    (synth / "merchant_knobs.json").write_text(json.dumps({"merchants": {"m0": {"shipping_fee": 8.0}}}))
    assert len({without, with_knobs, inputs_hash()}) == 3


def test_a_fetch_of_a_folder_rewritten_meanwhile_keeps_the_old_copy(tmp_path):
    """storage.fetch_folder copies only a folder whose marker still reads what the caller saw: a remote
    stage re-run during the copy fails the fetch, and the mirror keeps its old, whole copy."""
    remote, local = tmp_path / "remote" / "vqvae", tmp_path / "mirror" / "vqvae"
    remote.mkdir(parents=True)
    (remote / "manifest.json").write_text("run 1")
    (remote / "codebook.txt").write_text("one")
    assert storage.fetch_folder(str(remote), local, "manifest.json", "run 1")
    assert not storage.fetch_folder(str(remote), local, "manifest.json", "run 1")  # current: nothing copied
    (remote / "manifest.json").write_text("run 2")
    (remote / "codebook.txt").write_text("two")
    with pytest.raises(RuntimeError, match="changed while it was being fetched"):
        storage.fetch_folder(str(remote), local, "manifest.json", "run 1.5")
    assert (local / "codebook.txt").read_text() == "one"
    assert sorted(p.name for p in local.parent.iterdir()) == ["vqvae"]  # no half-copied sibling left
