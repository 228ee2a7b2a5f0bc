"""BrowserWorkers in Ray: killing a worker or its Chromium mid-run loses no agent and runs none twice;
re-running a run dir resumes."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from simpersona.sim.actors import DONE, AgentQueue, committed_results
from simpersona.sim.agent import AgentOutcome
from simpersona.sim.simulate import run_simulation

from .simrun import check_exactly_once, make_run_dir, sim_config


def test_queue_leases_commits_once_and_requeues_lost_workers(ray_local, tmp_path):
    specs = [{"agent_id": f"a{i}", "merchant_id": "m"} for i in range(3)]
    q = AgentQueue.remote(specs, str(tmp_path), 2, 100, 60.0)
    get = ray_local.get
    a0, a1, a2 = (get(q.take.remote(w)) for w in ("w0", "w0", "w1"))
    assert [x["spec"]["agent_id"] for x in (a0, a1, a2)] == ["a0", "a1", "a2"]
    assert a0["attempt"] == 1 and a0["session_id"].startswith("a0.") and a0["session_id"].endswith(".1")
    assert get(q.take.remote("w1")) is None  # all leased: wait, more may come back
    done = AgentOutcome("a2", "completed", 1, session_id=a2["session_id"],
                        rows=[{"agent_id": "a2", "step": 0, "observation": "o", "allowed": ["leave"],
                               "action": "leave", "logprob": 0.0, "error": "", "url": "u"}])
    assert get(q.commit.remote("w1", 1, done)) is True
    assert get(q.commit.remote("w1", 1, done)) is False  # a second completion is rejected
    assert get(q.worker_lost.remote("w0", "killed")) == 2  # a0, a1 back in the queue
    assert get(q.take.remote("w0")) == DONE  # a take that arrives after its worker was declared lost
    b0 = get(q.take.remote("w1"))
    x = b0["spec"]["agent_id"]
    assert x in ("a0", "a1") and b0["attempt"] == 2
    get(q.release.remote("w1", x, 2, "browser_crash", "Chromium died"))  # attempt 2 of 2: give up
    b1 = get(q.take.remote("w2"))
    y = b1["spec"]["agent_id"]
    assert {x, y} == {"a0", "a1"} and b1["attempt"] == 2
    state = get(q.progress.remote(["w1"]))  # w2 holds a lease but is not running: its attempt is over
    assert (state["done"], state["completed"], state["crashed"], state["requeued"]) == (3, 1, 2, 2)
    assert get(q.take.remote("w1")) == DONE
    assert get(q.flush.remote()) == 3
    results = committed_results(tmp_path).to_pandas().set_index("agent_id")
    assert sorted(results.index) == ["a0", "a1", "a2"]
    assert results.loc[x, ["status", "error_kind", "error"]].tolist() == [
        "crashed", "browser_crash", "gave up after 2 attempts: Chromium died"]
    assert results.loc[y, ["error_kind", "error"]].tolist() == [
        "worker_lost", "gave up after 2 attempts: worker no longer running"]
    assert results.loc["a2", "session_id"] == a2["session_id"]
    assert pq.read_table(tmp_path / "trajectories").num_rows == 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("actors"))


class KillOnce:
    """on_progress hook: once two agents are committed and others are in flight, kill something.
    Also records every running worker's name and the driver's last `replacements`."""

    def __init__(self, what: str):
        self.what = what
        self.killed = None
        self.seen: set[str] = set()
        self.replacements: list[dict] = []

    def __call__(self, state: dict, workers: dict) -> None:
        self.seen |= set(workers)
        self.replacements = state["replacements"]
        if self.killed or state["done"] < 2 or state["in_flight"] == 0 or not workers:
            return
        name, handle = sorted(workers.items())[0]
        self.chromium_pid = ray.get(handle.browser_pid.remote())
        if self.what == "worker":
            ray.kill(handle)
        else:
            os.kill(self.chromium_pid, signal.SIGKILL)
        self.killed = (name, dict(state))


ISOLATIONS = pytest.mark.parametrize("isolation", ["context", "page"])  # browser.isolation: both hold


@pytest.mark.browser
@pytest.mark.slow
@ISOLATIONS
def test_killing_a_worker_mid_run_completes_every_agent_exactly_once(ray_local, run_dir, isolation):
    # one worker: once it is killed, the run can only finish through its replacement. With two, the
    # survivor sometimes finished every agent before the replacement's Chromium was up on a loaded box,
    # and whether a replacement was recorded came down to that race.
    variant = f"kill_worker_{isolation}"
    cfg = sim_config(run_dir, f"sim.variant={variant}", "sim.workers=1", f"browser.isolation={isolation}")
    hook = KillOnce("worker")
    summary = run_simulation(cfg, on_progress=hook)
    assert hook.killed is not None, "the run ended before the worker could be killed"
    killed = hook.killed[0]
    assert killed == "w0"
    assert summary["agents"] == 12 and summary["completed"] == 12 and summary["crashed"] == 0
    assert summary["workers_lost"] == 1 and summary["requeued"] >= 1
    # one worker configured: a second start and the name w1 come only from replacing the killed one
    assert summary["workers_started"] == 2, summary
    assert hook.replacements == summary["worker_replacements"] == [{"worker": "w1", "replaces": "w0"}], summary
    assert hook.seen == {"w0", "w1"}, hook.seen  # the replacement came up: its Chromium launched
    out = run_dir / "simulate" / variant
    checked = check_exactly_once(out)
    retried = checked["results"][checked["results"].attempt > 1]
    assert len(retried) >= 1 and set(retried.worker) != {hook.killed[0]}  # finished elsewhere
    # the killed worker's Chromium went with it (no orphaned browsers)
    deadline = time.monotonic() + 20
    while psutil.pid_exists(hook.chromium_pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not psutil.pid_exists(hook.chromium_pid) or psutil.Process(hook.chromium_pid).status() == "zombie"


@pytest.mark.browser
@pytest.mark.slow
@ISOLATIONS
def test_killing_chromium_mid_run_completes_every_agent_exactly_once(ray_local, run_dir, isolation):
    variant = f"kill_chromium_{isolation}"
    cfg = sim_config(run_dir, f"sim.variant={variant}", f"browser.isolation={isolation}")
    hook = KillOnce("chromium")
    summary = run_simulation(cfg, on_progress=hook)
    assert hook.killed is not None, "the run ended before Chromium could be killed"
    assert summary["completed"] == 12 and summary["crashed"] == 0
    assert summary["browser_restarts"] >= 1 and summary["requeued"] >= 1 and summary["workers_lost"] == 0
    checked = check_exactly_once(run_dir / "simulate" / variant)
    assert (checked["results"].attempt > 1).any()


class Interrupt(Exception):
    pass


def interrupt_after_two(state: dict, workers: dict) -> None:
    if state["done"] >= 2 and state["in_flight"] > 0:
        raise Interrupt("driver stopped mid-run")


@pytest.mark.browser
@pytest.mark.slow
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
    assert committed_results(out).num_rows == 8

