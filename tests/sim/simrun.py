"""A small run dir for simulation tests: merchant type distributions and an untrained tiny policy LM."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simpersona.config import load
from simpersona.pages.observation import ACTION_EVENT, action_verb
from simpersona.store.eventlog import read_events
from testkit.untrained_policy import build_untrained_model

PROBS = {"m1": [0.5, 0.3, 0.2, 0.0], "m2": [0.1, 0.1, 0.4, 0.4], "m3": [0.25, 0.25, 0.25, 0.25]}


def make_run_dir(path: Path, n_types: int = 4) -> Path:
    (path / "assign").mkdir(parents=True, exist_ok=True)
    rows = [{"merchant_id": m, "type_id": k, "count": int(100 * p) + i, "prob": p}
            for i, (m, probs) in enumerate(PROBS.items()) for k, p in enumerate(probs)]
    pq.write_table(pa.Table.from_pylist(rows), path / "assign" / "merchant_types.parquet")
    build_untrained_model(path / "finetune" / "model", n_types=n_types, seed=0)
    return path


def sim_config(run_dir: Path, *overrides: str):
    """Small and CPU-light: two half-CPU workers, an untrained LM at a high temperature (varied, longer
    sessions), results committed every two agents."""
    return load("simulate", [
        f"run_dir={run_dir}", "progress=false", "sim.merchants=2", "sim.agents_per_merchant=6", "sim.max_steps=10",
        "sim.workers=2", "sim.worker_cpus=0.5", "sim.contexts_per_worker=4", "sim.policy=local",
        "sim.commit_every=2", "sim.commit_interval_s=0.5", "serve.temperature=2.5", "serve.replica_cpus=0.5",
        *overrides,
    ])


def check_exactly_once(out: Path) -> dict:
    """Every agent in agents.parquet has exactly one result, its trajectory once, and the committed
    event log holds exactly one storefront session per agent, matching what its trajectory did."""
    agents = pq.read_table(out / "agents.parquet").column("agent_id").to_pylist()
    results = pq.read_table(out / "results").to_pandas()
    assert sorted(results.agent_id) == sorted(agents), "missing or duplicated agents in results"
    traj = pq.read_table(out / "trajectories").to_pandas()
    assert not traj.duplicated(["agent_id", "step"]).any(), "an agent step was recorded twice"
    steps = traj.groupby("agent_id").step.agg(["count", "max"])
    for r in results.itertuples():
        n = steps.loc[r.agent_id, "count"] if r.agent_id in steps.index else 0
        assert n == r.steps, (r.agent_id, n, r.steps)
        assert n == 0 or steps.loc[r.agent_id, "max"] == n - 1
    events = pq.read_table(out / "events").to_pandas()
    sessions = events.groupby("buyer_id").session_id.unique()
    committed = dict(zip(results.agent_id, results.session_id))
    for buyer, sess in sessions.items():
        assert list(sess) == [committed[buyer]], (buyer, list(sess))
    # the log records exactly the (event-making) actions of the committed attempt
    ok = traj[traj.error == ""]
    for verb in ("open", "add_to_cart", "favorite", "search"):
        want = ok[ok.action.map(action_verb) == verb].groupby("agent_id").size()
        event = ACTION_EVENT[verb]
        got = events[events.event == event].groupby("buyer_id").size()
        if event == "cart":  # buy_now logs a cart event too
            want = want.add(ok[ok.action == "buy_now"].groupby("agent_id").size(), fill_value=0)
        assert want.astype(int).to_dict() == got.astype(int).to_dict(), verb
    raw = read_events(out / "store_log").column("session_id")
    return {"results": results, "events": events, "raw_sessions": set(pc.unique(raw).to_pylist())}
