"""BrowserWorkers in Ray: killing a worker or its Chromium mid-run loses no agent and runs none twice;
re-running a run dir resumes."""

from __future__ import annotations

import os
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from simpersona.sim.actors import committed_results
from simpersona.sim.simulate import run_simulation

from .simrun import check_exactly_once, make_run_dir, sim_config

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("actors"))


class KillOnce:
    """on_progress hook: once two agents are committed and others are in flight, kill something."""

    def __init__(self, what: str):
        self.what = what
        self.killed = None

    def __call__(self, state: dict, workers: dict) -> None:
        if self.killed or state["done"] < 2 or state["in_flight"] == 0 or not workers:
            return
        name, handle = sorted(workers.items())[0]
        if self.what == "worker":
            ray.kill(handle)
        else:
            os.kill(ray.get(handle.browser_pid.remote()), signal.SIGKILL)
        self.killed = (name, dict(state))


def test_killing_a_worker_mid_run_completes_every_agent_exactly_once(ray_local, run_dir):
    cfg = sim_config(run_dir, "sim.variant=kill_worker")
    hook = KillOnce("worker")
    summary = run_simulation(cfg, on_progress=hook)
    assert hook.killed is not None, "the run ended before the worker could be killed"
    assert summary["agents"] == 12 and summary["completed"] == 12 and summary["crashed"] == 0
    assert summary["workers_lost"] == 1 and summary["requeued"] >= 1
    assert summary["workers_started"] >= 3  # the dead worker was replaced
    out = run_dir / "simulate" / "kill_worker"
    checked = check_exactly_once(out)
    retried = checked["results"][checked["results"].attempt > 1]
    assert len(retried) >= 1 and set(retried.worker) != {hook.killed[0]}  # finished elsewhere


def test_killing_chromium_mid_run_completes_every_agent_exactly_once(ray_local, run_dir):
    cfg = sim_config(run_dir, "sim.variant=kill_chromium")
    hook = KillOnce("chromium")
    summary = run_simulation(cfg, on_progress=hook)
    assert hook.killed is not None, "the run ended before Chromium could be killed"
    assert summary["completed"] == 12 and summary["crashed"] == 0
    assert summary["browser_restarts"] >= 1 and summary["requeued"] >= 1 and summary["workers_lost"] == 0
    checked = check_exactly_once(run_dir / "simulate" / "kill_chromium")
    assert (checked["results"].attempt > 1).any()


class Interrupt(Exception):
    pass


def interrupt_after_two(state: dict, workers: dict) -> None:
    if state["done"] >= 2 and state["in_flight"] > 0:
        raise Interrupt("driver stopped mid-run")


def test_rerunning_a_run_dir_skips_finished_agents(ray_local, run_dir):
    cfg = sim_config(run_dir, "sim.variant=resume", "sim.agents_per_merchant=4", "sim.workers=1")
    out = run_dir / "simulate" / "resume"
    with pytest.raises(Interrupt):
        run_simulation(cfg, on_progress=interrupt_after_two)
    before = committed_results(out).to_pandas().set_index("agent_id")
    assert 2 <= len(before) < 8
    # a trajectory shard whose results shard never landed (a crash between the two renames)
    orphan = {"agent_id": "m9-00000", "step": 0, "observation": "x", "allowed": ["leave"], "action": "leave",
              "logprob": 0.0, "error": "", "url": ""}
    pq.write_table(pa.Table.from_pylist([orphan]), out / "trajectories" / "part-orphan.parquet")
    resumed = run_simulation(cfg)
    assert resumed["resumed_skipped"] == len(before) and resumed["completed"] == 8
    assert not (out / "trajectories" / "part-orphan.parquet").exists()
    after = committed_results(out).to_pandas().set_index("agent_id")
    assert after.loc[before.index, "session_id"].equals(before.session_id)  # finished ones did not rerun
    check_exactly_once(out)  # one committed session per agent: the interrupted run's are not in events/
    again = run_simulation(cfg)  # nothing left: no worker starts
    assert again["resumed_skipped"] == 8 and again["steps_this_run"] == 0 and again["workers_started"] == 0
    grown = run_simulation(sim_config(run_dir, "sim.variant=resume", "sim.agents_per_merchant=5", "sim.workers=1"))
    assert grown["agents"] == 10 and grown["resumed_skipped"] == 8 and grown["completed"] == 10
    check_exactly_once(out)
