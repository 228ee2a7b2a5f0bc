"""ray_jobs/synthetic.py through `ray job submit --working-dir .` against a local `ray start --head`: it
writes its planted clickstream. The stage scripts and serve_policy.py are submitted in
test_pipeline_storage, which has a finished run for them; simulate.py in tests/sim/test_simulate_job.py.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from cluster.test_jobs import submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _json_line(stdout: str, key: str) -> dict:
    """The job's printed summary: the last stdout line that is a JSON object holding `key`."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{") and f'"{key}"' in line:
            return json.loads(line)
    raise AssertionError(f"no JSON summary with {key!r} in the job's output:\n{stdout[-3000:]}")


def test_synthetic_job(ray_head, tmp_path):
    done = submit(ray_head, ["ray_jobs/synthetic.py", f"run_dir={tmp_path}", "synth.buyers=400",
                             "synth.merchants=6", "synth.shard_buyers=200", "progress=false"])
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _json_line(done.stdout, "buyers")
    assert summary["buyers"] == 400
    events = pq.read_table(tmp_path / "synthetic" / "events")
    planted = pq.read_table(tmp_path / "synthetic" / "planted")
    assert events.num_rows == summary["events"] > 0
    assert len(set(events["buyer_id"].to_pylist())) == 400  # two shards, every buyer once
    assert planted.num_rows > 0 and set(planted["planted_type"].to_pylist()) <= set(range(8))
