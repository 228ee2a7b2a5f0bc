"""Agents in Ray actors: BrowserWorkers pull agent specs from one AgentQueue and run them in Chromium.

    driver ── run_workers ──► AgentQueue (one actor, on the driver's node: the only writer of results)
                   │                ▲ take / commit / release
                   └─► BrowserWorker × W (one Chromium each, C concurrent agents = C browser contexts)

Exactly once. An agent is *leased* to a worker for one attempt. The AgentQueue accepts the first
completion per agent_id and rejects any later one, and only accepted agents reach the results. When
a worker actor dies (the driver sees RayActorError) all its leases return to the queue with the
next attempt number; when its Chromium dies, the worker itself releases its in-flight agents and
relaunches the browser. Each attempt has its own storefront session "<agent_id>.<run tag>.<attempt>",
so the events of abandoned attempts (in this run or an interrupted earlier one) can be told apart
from the committed one (simulate.py keeps only committed sessions).

Durable commit. Accepted agents are buffered and written as a pair of shards with the same name,
trajectories/<part>.parquet then results/<part>.parquet, each via write-then-rename. The results
shard is the commit record: on resume, agents in results/ are skipped, and a trajectory shard
whose results shard never appeared (a crash between the two renames) is deleted.

Scale. The driver starts workers while the cluster has CPUs free for one (so workers on nodes that
an autoscaler adds are used), up to sim.workers, and replaces dead ones while agents remain.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import deque
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from simpersona.sim.agent import TRAJECTORY_SCHEMA, AgentOutcome, run_agent
from simpersona.sim.config import BrowserConfig
from simpersona.sim.errors import BrowserCrash
from simpersona.storage import write_parquet_durably

RESULT_SCHEMA = pa.schema([
    ("agent_id", pa.string()),
    ("status", pa.string()),  # completed | crashed
    ("steps", pa.int32()),
    ("error_kind", pa.string()),
    ("worker", pa.string()),
    ("attempt", pa.int32()),
    ("error", pa.string()),  # the reason, one line ("" when none)
    ("session_id", pa.string()),  # storefront session of the committed attempt
    ("merchant_id", pa.string()),
])

DONE = "done"  # AgentQueue.take: every agent is committed; the worker may exit


def session_of(agent_id: str, run_tag: str, attempt: int) -> str:
    """Storefront session of one attempt; the run tag keeps a resumed run's attempts apart from
    the abandoned ones of the run it resumes."""
    return f"{agent_id}.{run_tag}.{attempt}"


# ---- durable results ----------------------------------------------------------------------------


def committed_results(out_dir: str | Path) -> pa.Table:
    """Results of committed agents (first row per agent_id), after removing uncommitted shards."""
    out = Path(out_dir)
    res_dir, traj_dir = out / "results", out / "trajectories"
    for d in (res_dir, traj_dir):
        d.mkdir(parents=True, exist_ok=True)
        for tmp in d.glob(".*.tmp"):
            tmp.unlink()
    parts = {p.name for p in res_dir.glob("*.parquet")}
    for orphan in (p for p in traj_dir.glob("*.parquet") if p.name not in parts):
        orphan.unlink()  # its agents were never committed: they run again
    if not parts:
        return RESULT_SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(res_dir / p, schema=RESULT_SCHEMA) for p in sorted(parts)])
    seen: set[str] = set()
    keep = []
    for i, a in enumerate(table.column("agent_id").to_pylist()):
        if a not in seen:
            seen.add(a)
            keep.append(i)
    return table.take(keep)


@ray.remote(num_cpus=0)
class AgentQueue:
    """The shared queue of agent specs, the lease table and the single committer of results."""

    def __init__(self, specs: list[dict], out_dir: str, max_attempts: int, commit_every: int,
                 commit_interval_s: float):
        self.out = Path(out_dir)
        (self.out / "results").mkdir(parents=True, exist_ok=True)
        (self.out / "trajectories").mkdir(parents=True, exist_ok=True)
        self.specs = {s["agent_id"]: s for s in specs}
        self.pending: deque[tuple[str, int]] = deque((a, 1) for a in self.specs)
        self.leases: dict[str, tuple[str, int]] = {}  # agent_id -> (worker, attempt)
        self.committed: set[str] = set()
        self.lost: set[str] = set()  # workers declared dead: no more leases for them
        self.processes: dict[str, tuple[str, list]] = {}  # worker -> (node id, [(pid, create time)])
        self.max_attempts = max_attempts
        self.commit_every = commit_every
        self.commit_interval_s = commit_interval_s
        self.results: list[dict] = []
        self.rows: list[dict] = []
        self.run_tag = uuid.uuid4().hex[:8]  # names this run's shards and storefront sessions
        self.parts = 0
        self.last_flush = time.monotonic()
        self.counts = {"completed": 0, "crashed": 0, "steps": 0, "requeued": 0, "rejected": 0,
                       "workers_lost": 0, "browser_restarts": 0}
        self.lost_attempts: dict[str, int] = {}  # error kind -> attempts lost to it (a browser crash, a lost worker)

    def take(self, worker: str) -> dict | str | None:
        """The next agent as {"spec", "attempt", "session_id"}; None = nothing free now (agents in
        flight elsewhere may come back); DONE = every agent is committed (or the caller was declared lost)."""
        if worker in self.lost:  # a take sent just before the worker died can arrive after worker_lost
            return DONE
        while self.pending:
            agent_id, attempt = self.pending.popleft()
            if agent_id in self.committed or agent_id in self.leases:
                continue
            self.leases[agent_id] = (worker, attempt)
            return {"spec": self.specs[agent_id], "attempt": attempt,
                    "session_id": session_of(agent_id, self.run_tag, attempt)}
        return DONE if len(self.committed) == len(self.specs) else None

    def commit(self, worker: str, attempt: int, outcome: AgentOutcome) -> bool:
        """Accept the first completion of an agent; False (and nothing recorded) for any later one."""
        agent_id = outcome.agent_id
        if agent_id in self.committed or agent_id not in self.specs:
            self.counts["rejected"] += 1
            if self.leases.get(agent_id) == (worker, attempt):  # a duplicate attempt: drop its lease
                del self.leases[agent_id]
            return False
        if self.leases.get(agent_id, (None, None))[0] == worker:
            del self.leases[agent_id]
        self._record(outcome, worker, attempt)
        return True

    def release(self, worker: str, agent_id: str, attempt: int, error_kind: str, error: str) -> None:
        """The worker lost this agent's attempt (its browser died): queue the next attempt."""
        if self.leases.get(agent_id) == (worker, attempt):
            del self.leases[agent_id]
            self._retry(agent_id, attempt, worker, error_kind, error)

    def worker_lost(self, worker: str, error: str) -> int:
        """A worker actor died: every agent it held goes back to the queue. Returns how many."""
        self.counts["workers_lost"] += 1
        self.lost.add(worker)
        return self._requeue_held_by({worker}, error)

    def _requeue_held_by(self, workers: set[str], error: str) -> int:
        lost = [(a, w, att) for a, (w, att) in self.leases.items() if w in workers]
        for agent_id, worker, attempt in lost:
            del self.leases[agent_id]
            self._retry(agent_id, attempt, worker, "worker_lost", error)
        return len(lost)

    def browser_restarted(self) -> None:
        self.counts["browser_restarts"] += 1

    def register_processes(self, worker: str, node_id: str, processes: list) -> None:
        self.processes[worker] = (node_id, processes)

    def processes_of(self, worker: str) -> tuple[str, list] | None:
        return self.processes.get(worker)

    def _retry(self, agent_id: str, attempt: int, worker: str, error_kind: str, error: str) -> None:
        if agent_id in self.committed:
            return
        self.lost_attempts[error_kind] = self.lost_attempts.get(error_kind, 0) + 1
        if attempt < self.max_attempts:
            self.counts["requeued"] += 1
            self.pending.appendleft((agent_id, attempt + 1))  # first in line: it has waited already
        else:
            out = AgentOutcome(agent_id, "crashed", 0, error_kind, f"gave up after {attempt} attempts: {error}",
                               session_of(agent_id, self.run_tag, attempt))
            self._record(out, worker, attempt)

    def _record(self, outcome: AgentOutcome, worker: str, attempt: int) -> None:
        self.committed.add(outcome.agent_id)
        self.counts[outcome.status] += 1
        self.counts["steps"] += outcome.steps
        self.results.append({
            "agent_id": outcome.agent_id, "status": outcome.status, "steps": outcome.steps,
            "error_kind": outcome.error_kind, "worker": worker, "attempt": attempt, "error": outcome.error,
            "session_id": outcome.session_id or session_of(outcome.agent_id, self.run_tag, attempt),
            "merchant_id": self.specs[outcome.agent_id]["merchant_id"],
        })
        self.rows += outcome.rows
        if len(self.results) >= self.commit_every:
            self.flush()

    def flush(self) -> int:
        """Write buffered agents durably (trajectories, then the results shard that commits them)."""
        self.last_flush = time.monotonic()
        if not self.results:
            return 0
        name = f"part-{self.run_tag}-{self.parts:05d}.parquet"
        self.parts += 1
        write_parquet_durably(pa.Table.from_pylist(self.rows, schema=TRAJECTORY_SCHEMA), self.out / "trajectories" / name)
        write_parquet_durably(pa.Table.from_pylist(self.results, schema=RESULT_SCHEMA), self.out / "results" / name)
        n = len(self.results)
        self.results, self.rows = [], []
        return n

    def progress(self, alive: list[str] | None = None) -> dict:
        """Counters for the driver's progress bar; flushes when the commit interval has passed.

        `alive`: the workers the driver knows to be running; leases held by any other worker are
        re-queued (a safety net under worker_lost, whatever the order in which calls arrive).
        """
        if alive is not None:
            stale = {w for w, _ in self.leases.values()} - set(alive)
            if stale:
                self.lost |= stale
                self._requeue_held_by(stale, "worker no longer running")
        if time.monotonic() - self.last_flush >= self.commit_interval_s:
            self.flush()
        return {**self.counts, "lost_attempts": dict(self.lost_attempts), "done": len(self.committed), "total": len(self.specs),
                "pending": len(self.pending), "in_flight": len(self.leases)}


# ---- the worker -----------------------------------------------------------------------------------


class ThrottledEnv:
    """A BrowserEnv whose reset/step wait for a slot of the worker's shared Chromium.

    One Chromium serves many contexts, but its browser process handles their navigations one
    after another: started all at once, hundreds of agents' page loads queue inside Chromium and
    run into the step timeout. Queued here instead, every operation gets the browser's full time.
    """

    def __init__(self, env, slots: asyncio.Semaphore):
        self.env = env
        self.slots = slots

    @property
    def browser(self):
        return self.env.browser

    async def reset(self, *args, **kwargs):
        async with self.slots:
            return await self.env.reset(*args, **kwargs)

    async def step(self, action: str):
        async with self.slots:
            return await self.env.step(action)

    async def close(self) -> None:
        await self.env.close()


def browser_processes(browser) -> list[tuple[int, float]]:
    """(pid, create time) of this process's Playwright drivers and of the browser's Chromium."""
    import psutil

    procs = [p for p in psutil.Process().children() if "node" in p.name()]
    if browser.pid:
        procs.append(psutil.Process(browser.pid))
    out = []
    for proc in procs:
        try:
            out.append((proc.pid, proc.create_time()))
        except psutil.Error:
            pass
    return out


@ray.remote(num_cpus=0)
def reap_processes(processes: list[tuple[int, float]]) -> int:
    """SIGKILL the listed processes that still exist (same pid AND create time: never a reused pid)."""
    import psutil

    killed = 0
    for pid, created in processes:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:
                proc.kill()
                killed += 1
        except psutil.Error:
            pass
    return killed


async def _close_quietly(env) -> None:
    if env is not None:
        try:
            await env.close()
        except Exception:  # a dead browser's contexts cannot be closed; nothing leaks
            pass


def make_policy_client(policy_spec: dict):
    """Build the worker's policy from a picklable spec (kind, serve: a ServeConfig, and a Serve handle
    or a model_dir): a client of the Serve app, or an in-process policy."""
    from simpersona.serve.policy import HandlePolicyClient, LocalPolicyClient, make_policy

    serve_cfg = policy_spec["serve"]
    if policy_spec["kind"] == "serve":
        return HandlePolicyClient(policy_spec["handle"], serve_cfg.max_batch_size, serve_cfg.batch_wait_timeout_s,
                                  serve_cfg.client_lists_in_flight)
    import torch

    torch.set_num_threads(serve_cfg.torch_threads or 1)  # the worker's CPUs are Chromium's too
    policy = make_policy(serve_cfg, policy_spec.get("model_dir", ""), policy_spec["kind"])
    return LocalPolicyClient(policy, serve_cfg.max_batch_size, serve_cfg.batch_wait_timeout_s)


@ray.remote(max_restarts=0, max_task_retries=0)
class BrowserWorker:
    """One Chromium, up to `contexts` concurrent agents (one BrowserContext each)."""

    def __init__(self, worker: str, queue, base_url: str, browser_cfg: BrowserConfig, policy_spec: dict,
                 contexts: int, history_len: int, personas: dict, browser_ops: int = 0):
        from simpersona.sim.population import PersonaResolver

        self.worker = worker
        self.queue = queue
        self.base_url = base_url
        self.browser_cfg = browser_cfg
        self.policy_spec = policy_spec
        self.contexts = contexts
        # at most this many resets/steps in Chromium at once; the other agents wait here (or on the
        # policy), so a step's own timeout never includes a queue inside the browser
        self.browser_ops = asyncio.Semaphore(browser_ops or contexts)
        self.history_len = history_len
        self.persona = PersonaResolver(personas)
        self.browser = None
        self.generation = 0
        self.restart_lock = asyncio.Lock()
        self.stats = {"agents": 0, "steps": 0, "browser_restarts": 0, "rejected": 0}

    async def _launch(self) -> None:
        from simpersona.sim.browser import Browser

        self.browser = await Browser(self.browser_cfg).start()
        # told to the queue so that the driver can end them if this actor dies: a killed worker's
        # Playwright driver does not always take its Chromium down with it
        await self.queue.register_processes.remote(self.worker, ray.get_runtime_context().get_node_id(),
                                                   browser_processes(self.browser))

    async def ready(self) -> dict:
        """Launch Chromium; returns where this worker runs (the driver waits on this)."""
        if self.browser is None:
            await self._launch()
        return {"worker": self.worker, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "browser_pid": self.browser.pid}

    def browser_pid(self) -> int | None:
        """Chromium's main process (tests kill it to check that agents are re-queued)."""
        return self.browser.pid if self.browser is not None else None

    async def _restart_browser(self, seen_generation: int) -> None:
        """Relaunch Chromium once per crash, however many agents noticed it."""
        async with self.restart_lock:
            if self.generation != seen_generation:
                return
            try:
                await self.browser.close()
            except Exception:  # it is dead already; closing only frees the driver's side
                pass
            await self._launch()
            self.generation += 1
            self.stats["browser_restarts"] += 1
            await self.queue.browser_restarted.remote()

    async def _slot(self, policy) -> None:
        """One agent at a time in one browser context, reused across agents (reset clears cookies)."""
        from simpersona.sim.browser import BrowserEnv

        env = None
        try:
            while True:
                if not self.browser.connected:  # found dead between agents: relaunch before leasing
                    await self._restart_browser(self.generation)
                lease = await self.queue.take.remote(self.worker)
                if lease == DONE:
                    return
                if lease is None:  # agents are in flight elsewhere and may come back: wait
                    await asyncio.sleep(0.2)
                    continue
                spec, attempt = lease["spec"], lease["attempt"]
                generation = self.generation
                if env is None or env.browser is not self.browser:
                    env = ThrottledEnv(BrowserEnv(self.browser, self.base_url, self.browser_cfg), self.browser_ops)
                try:
                    persona = self.persona(spec["persona_mode"], int(spec["type_id"]))
                    outcome = await run_agent(env, policy, spec, persona, self.history_len,
                                              session_id=lease["session_id"])
                except BrowserCrash as exc:
                    await self.queue.release.remote(self.worker, spec["agent_id"], attempt, exc.kind, str(exc))
                    await _close_quietly(env)
                    env = None
                    await self._restart_browser(generation)
                    continue
                self.stats["agents"] += 1
                self.stats["steps"] += outcome.steps
                if not await self.queue.commit.remote(self.worker, attempt, outcome):
                    self.stats["rejected"] += 1
        finally:
            await _close_quietly(env)

    async def run(self) -> dict:
        """Run agents until the queue is done; returns this worker's counters."""
        await self.ready()
        policy = make_policy_client(self.policy_spec)
        try:
            await asyncio.gather(*(self._slot(policy) for _ in range(self.contexts)))
        finally:
            policy.close()
            try:
                await self.browser.close()
            except Exception:
                pass
        return {"worker": self.worker, **self.stats}


# ---- the driver -----------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else type(exc).__name__


def _reap(queue, worker: str) -> None:
    """End a dead worker's Chromium and Playwright driver on its node (they can outlive the actor)."""
    where = ray.get(queue.processes_of.remote(worker))
    if where:
        node_id, processes = where
        reap_processes.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)).remote(processes)


def _placeable(worker_cpus: float) -> bool:
    return ray.available_resources().get("CPU", 0.0) >= worker_cpus - 1e-9


def run_workers(specs: list[dict], out_dir: str | Path, sim_cfg, base_url: str, browser_cfg: BrowserConfig,
                policy_spec: dict, personas: dict | None = None, history_len: int = 8,
                progress: bool = True, on_progress=None) -> dict:
    """Run `specs` (agents not yet committed) to completion; returns counters and per-worker stats.

    Workers are named w0, w1, ... in the order they are started. A worker that comes up while a dead
    worker has not been replaced yet is that worker's replacement: `replacements` lists
    {"worker": its name, "replaces": the dead worker's name} (only a worker death produces an entry).

    `on_progress(state, workers)` is called on every turn of the driver loop with the queue's
    counters plus the driver's `workers_started` and `replacements`, and {name: handle} of the
    running workers (tests use it to kill a worker mid-run).
    """
    here = ray.get_runtime_context().get_node_id()
    queue = AgentQueue.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(specs, str(out_dir), sim_cfg.max_attempts, sim_cfg.commit_every, sim_cfg.commit_interval_s)
    if sim_cfg.request_resources:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"CPU": sim_cfg.worker_cpus}] * sim_cfg.workers)
    live: dict[str, tuple] = {}  # name -> (handle, run ObjectRef)
    starting: tuple | None = None  # (name, handle, ready ref)
    finished: list[dict] = []
    serial = 0
    unreplaced: deque[str] = deque()  # dead workers whose place no new worker has taken yet
    replacements: list[dict] = []
    t0 = time.monotonic()
    no_worker_since = time.monotonic()
    last_probe = float("-inf")
    bar = tqdm(total=len(specs), desc="agents", unit="agent", disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    state = ray.get(queue.progress.remote())
    try:
        while state["done"] < state["total"]:
            # start another worker when agents wait and the cluster has room for one more (looked
            # at every scale_interval_s, so CPUs that an autoscaler adds are noticed)
            probe = time.monotonic() - last_probe >= sim_cfg.scale_interval_s
            if (starting is None and len(live) < sim_cfg.workers and state["pending"] > 0
                    and (not live or (probe and _placeable(sim_cfg.worker_cpus)))):
                name = f"w{serial}"
                serial += 1
                handle = BrowserWorker.options(num_cpus=sim_cfg.worker_cpus, name=None).remote(
                    name, queue, base_url, browser_cfg, policy_spec, sim_cfg.contexts_per_worker, history_len,
                    personas or {}, sim_cfg.browser_ops_per_worker)
                starting = (name, handle, handle.ready.remote())
            if probe:
                last_probe = time.monotonic()
            if starting is not None:
                # a worker that cannot be placed stays pending: that is the demand an autoscaler
                # answers with a new node; it starts there, or is dropped when the run ends
                name, handle, ready_ref = starting
                done_refs, _ = ray.wait([ready_ref], timeout=0)
                if done_refs:
                    starting = None
                    try:
                        ray.get(ready_ref)
                        live[name] = (handle, handle.run.remote())
                        if unreplaced:
                            replacements.append({"worker": name, "replaces": unreplaced.popleft()})
                    except RayError as exc:  # Chromium would not launch there, or the actor died
                        ray.kill(handle)
                        tqdm.write(f"worker {name} failed to start: {_first_line(exc)}")
            if live:
                no_worker_since = time.monotonic()
            elif time.monotonic() - no_worker_since > sim_cfg.worker_start_timeout_s:
                raise RuntimeError(f"no BrowserWorker could start within {sim_cfg.worker_start_timeout_s:.0f} s "
                                   f"(each needs {sim_cfg.worker_cpus} CPU; cluster has {ray.cluster_resources()})")
            refs = {ref: name for name, (_, ref) in live.items()}
            ready, _ = ray.wait(list(refs), timeout=0.25, num_returns=1) if refs else ([], [])
            for ref in ready:
                name = refs[ref]
                handle, _ = live.pop(name)
                try:
                    finished.append(ray.get(ref))
                except RayError as exc:  # killed, OOM, node lost, browser unrecoverable: re-queue its agents
                    ray.kill(handle)
                    n = ray.get(queue.worker_lost.remote(name, _first_line(exc)))
                    unreplaced.append(name)
                    tqdm.write(f"worker {name} died ({_first_line(exc)}); {n} in-flight agent(s) re-queued")
                    _reap(queue, name)
            if not refs:
                time.sleep(0.1)
            state = ray.get(queue.progress.remote(list(live)))
            elapsed = max(time.monotonic() - t0, 1e-9)
            bar.set_postfix(steps_s=f"{state['steps'] / elapsed:.1f}", crashed=state["crashed"],
                            requeued=state["requeued"], workers=len(live), refresh=False)
            bar.update(state["done"] - bar.n)
            if on_progress is not None:
                on_progress({**state, "workers_started": serial, "replacements": list(replacements)},
                            {name: h for name, (h, _) in live.items()})
        ray.get(queue.flush.remote())
        # workers exit by themselves once take() says DONE; wait for their counters
        for _, ref in list(live.values()):
            try:
                finished.append(ray.get(ref, timeout=60))
            except (RayError, GetTimeoutError):
                pass
        state = ray.get(queue.progress.remote())
    finally:
        bar.close()
        try:  # interrupted or failed: what was accepted so far is still committed
            ray.get(queue.flush.remote(), timeout=60)
        except Exception:
            pass
        leftover = [(name, handle) for name, (handle, _) in live.items()]
        if starting is not None:
            leftover.append(starting[:2])
        for name, handle in leftover:  # only after an interruption: finished workers have exited
            ray.kill(handle)
            try:
                _reap(queue, name)
            except Exception:
                pass
        ray.kill(queue)
    return {**state, "wall_s": time.monotonic() - t0, "workers_started": serial, "replacements": replacements,
            "worker_stats": finished}
