"""Durable atomic writes (simpersona.storage.replace_durably and its callers): synced, renamed, folder synced."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from simpersona import manifest, stages, storage
from simpersona.sim import actors, population, simulate


@pytest.fixture
def disk(monkeypatch):
    """Records every fsync (by the path its descriptor has) and every os.replace, in order."""
    calls: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def assert_published_durably(calls: list[tuple], final: Path, files: tuple[str, ...] = ()) -> None:
    """`final` appeared by a rename whose source (and each of `files` inside it) was synced before, and
    whose folder was synced after."""
    final = os.path.realpath(final)
    at = next(i for i, c in enumerate(calls) if c[0] == "replace" and c[2] == final)
    src = calls[at][1]
    synced_before = {c[1] for c in calls[:at] if c[0] == "fsync"}
    assert src in synced_before
    for name in files:
        assert os.path.join(src, name) in synced_before, name
    assert ("fsync", os.path.dirname(final)) in calls[at + 1:]


TABLE = pa.table({"x": [1, 2]})


@pytest.mark.parametrize("write", [
    lambda p: storage.write_json(str(p), {"a": 1}),
    lambda p: storage.write_parquet_durably(TABLE, p),
    lambda p: population.write_population(TABLE, p),
], ids=["summary json", "parquet shard", "population"])
def test_a_file_write_is_synced_before_its_rename_and_its_folder_after(write, disk, tmp_path):
    path = tmp_path / "out" / "file"
    path.parent.mkdir()
    write(path)
    assert path.exists()
    assert_published_durably(disk, path)


def test_result_shards_trajectories_and_simulated_events_go_through_the_durable_writer():
    assert actors.write_parquet_durably is simulate.write_parquet_durably is storage.write_parquet_durably


def test_a_manifest_is_synced_and_so_is_its_folder(disk, tmp_path):
    manifest.write(tmp_path, manifest.build("toy", {}, {}))
    assert_published_durably(disk, tmp_path / "manifest.json")


def test_an_atomic_output_folder_has_every_file_synced_before_it_is_published(disk, tmp_path):
    with storage.atomic_output_dir(str(tmp_path / "stage")) as out:
        (Path(out) / "sub").mkdir()
        (Path(out) / "sub" / "part-0.parquet").write_bytes(b"rows")
        (Path(out) / "summary.json").write_text("{}")
    assert_published_durably(disk, tmp_path / "stage", ("sub/part-0.parquet", "summary.json", "sub"))


def test_a_stage_folder_is_synced_before_it_is_published(disk, tmp_path):
    out = tmp_path / "run" / "toy"

    def stage():
        (out / "data.txt").write_text("a")  # through the stage's link into its partial folder
        return {"title": "a"}

    stages.publish_stage(out, stage)
    assert_published_durably(disk, out, ("data.txt", "summary.json"))
