"""Simulation benchmark: agents in real Chromium against the storefront, and the Serve policy.

    python benchmarks/simulate.py [compare_agents=16] [levels=[50,100,200]] [duration_s=20] [key=value ...]

Measured in one run, against one storefront process (simpersona.store.server):
  browser.shared       N agents = N browser contexts in ONE Chromium (browser.isolation=context)
  browser.shared_pages N agents = N pages of one shared context in ONE Chromium, one renderer per site
                       (browser.isolation=page); a BrowserWorker runs its default isolation (auto: page on
                       our storefront), whose figures are the headline ratios
  browser.per_agent    the same N agents, one Chromium each, kept for the agent's next sessions (a
                       browser pool: kinder to the baseline than the tools it stands for)
  browser.per_agent_launch  one Chromium launched for each agent and closed when its session ends,
                       as UXAgent and browser-use do: the steps/s ratio is judged against this one,
                       the memory ratio against per_agent (a running agent's own browser)
                       all with the uniform policy (a SPEED BASELINE, no model), so the browsers are
                       what is compared: agent-steps/s, and Chromium PSS (psutil memory_full_info().pss
                       summed over each Chromium process tree, sampled every second; peak reported)
  ramp                 shared mode at increasing concurrency (bench.levels), with at most
                       sim.browser_ops_per_worker operations in Chromium at once as in a BrowserWorker,
                       until a level is not sustained (an agent never got going, step errors above
                       bench.max_error_rate, a crash, an agent stuck, or steps/s below half the best
                       level's) or Chromium's PSS would pass bench.mem_fraction of RAM: the largest
                       level that passed is `max_sustained_agents`
  policy               the Ray Serve policy deployment under bench.policy_clients concurrent closed-loop
                       clients (one request in flight each, like agents): as agents reach it (client
                       lists of bench.batch_size joined by @serve.batch), @serve.batch alone (one call
                       per request), and neither (max_batch_size=1)
  policy_in_process    ActionPolicy.decide on batches of bench.batch_size vs single requests, no Serve:
                       the model-side gain of batching alone
  e2e                  bench.e2e_agents agents in one Chromium with the batched Serve policy: agent
                       step latency = policy decision + browser step, p50/p99
The policy model is serve.model_dir / bench.model_dir when given, else an UNTRAINED `small` LM
(persona.model.small sizes: the CPU default architecture), labelled as such: it measures serving
speed, not behaviour. The machine may be shared: `peers` gives, per section, its wall time, the CPU
seconds of this benchmark's process tree and those other people's processes took meanwhile (with the
load average); steps and requests per CPU second are given beside the per-wall-second figures.
Prints one JSON object (also written to <bench.dir>/simulate.json).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpersona.config import load  # noqa: E402

DEFAULTS = {
    "dir": "runs/bench_simulate",
    "model_dir": "",  # "" = serve.model_dir, else an untrained small LM written under dir
    "merchants": 4,
    "compare_agents": 16,  # N for shared vs one-browser-per-agent
    "duration_s": 20.0,  # measured seconds per browser configuration
    "warmup_s": 4.0,  # after every agent took its first step
    "startup_max_s": 180.0,  # longest wait for every agent's first step before measuring anyway
    "levels": [50, 100, 200],  # concurrency ramp in one Chromium
    "max_steps": 20,  # steps per session before an agent starts a new one
    "max_error_rate": 0.01,
    "browser_ops": 0,  # operations at once in a shared Chromium; 0 = sim.browser_ops_per_worker
    "mem_fraction": 0.6,
    "policy_clients": 200,
    "policy_duration_s": 20.0,
    "batch_size": 32,
    "in_process_requests": 512,
    "batch_wait_timeout_s": 0.01,
    "replica_cpus": 1.0,
    "e2e_agents": 200,
    "e2e_duration_s": 30.0,
    "sample_s": 1.0,
    "grace_s": 60.0,  # after the measured window, how long agents may take to finish their step
    "sections": ["browser", "ramp", "policy", "e2e"],  # which measurements to run
}
GIB = 1024**3
MIB = 1024**2


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 4) if xs else None


class PssSampler:
    """Peak and mean of the summed PSS of Chromium process trees, sampled in a thread."""

    def __init__(self, browsers: list, every_s: float):
        self.browsers = browsers
        self.every_s = every_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        return sum(b.pss_bytes() for b in self.browsers)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(self.sample())

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.sample())


def _tree_cpu(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


class CpuMeter:
    """CPU seconds spent, per process group, between start() and stop(): where a step's cost goes."""

    def __init__(self, browsers: list, store_pid: int | None):
        self.browsers, self.store_pid = browsers, store_pid

    def _sample(self) -> dict:
        me = psutil.Process()
        t = me.cpu_times()
        chromium = sum(_tree_cpu(b.pid) for b in self.browsers if b.pid)
        drivers = 0.0
        for child in me.children():  # Playwright's node drivers (Chromium runs under them)
            try:
                if "node" in child.name():
                    t2 = child.cpu_times()
                    drivers += t2.user + t2.system
            except psutil.Error:
                pass
        return {"python_driver": t.user + t.system, "playwright_node": drivers, "chromium": chromium,
                "storefront": _tree_cpu(self.store_pid) if self.store_pid else 0.0}

    def start(self) -> None:
        self.t0 = self._sample()

    def stop(self, steps: int) -> dict:
        t1 = self._sample()
        return {k: round((t1[k] - self.t0[k]) / max(1, steps) * 1000, 2) for k in t1}


def _system_busy_s() -> float:
    """CPU seconds every process on the machine has spent (all cores), from /proc/stat."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def _own_tree_s() -> float:
    """CPU seconds of this benchmark: this process and everything it started (Chromium, Playwright's
    driver, the storefront, Ray's raylet and workers), including descendants that already exited and
    were reaped (a per-agent Chromium closed inside a section took its CPU time into its parent's)."""
    total = 0.0
    try:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


class PeerLoad:
    """The machine is shared: per section, wall time, our CPU seconds, and the CPU seconds that other
    people's processes took meanwhile (system busy time minus ours), with the load average, so that
    wall-time figures can be read against how much of the 2 cores we actually had."""

    def __enter__(self) -> PeerLoad:
        self.t0, self.sys0, self.own0 = time.monotonic(), _system_busy_s(), _own_tree_s()
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self.t0
        busy = _system_busy_s() - self.sys0
        own = max(0.0, _own_tree_s() - self.own0)
        self.result = {"wall_s": round(wall, 1), "cores": os.cpu_count(), "own_cpu_s": round(own, 1),
                       "peers_cpu_s": round(max(0.0, busy - own), 1),
                       "peers_cores_mean": round(max(0.0, busy - own) / max(wall, 1e-9), 2),
                       "load_avg_1m": [round(self.load0, 2), round(os.getloadavg()[0], 2)]}


class Recorder:
    def __init__(self):
        self.steps = 0
        self.errors = 0
        self.crashes = 0
        self.sessions = 0
        self.first_steps = 0  # agents that have taken their first step (all up = steady state)
        self.latency: list[float] = []
        self.policy_latency: list[float] = []
        self.counting = False


async def agent_loop(idx: int, env, decide, merchants: list[str], max_steps: int, stop: dict, rec: Recorder,
                     sessions: int = 0, first_session: int = 0):
    """One agent slot, session after session (each a new agent), until stop["at"] or `sessions` of them
    (0 = no limit); counts steps once rec.counting is set."""
    from simpersona.sim.errors import SimError

    n = first_session
    first = first_session == 0
    while time.monotonic() < stop["at"] and (not sessions or n < first_session + sessions):
        try:
            obs = await env.reset(merchants[idx % len(merchants)], f"bench-{idx}-{n}")
            rec.sessions += 1
            history: list[str] = []
            for step in range(max_steps):
                t0 = time.perf_counter()
                d = await decide({"persona": idx % 4, "observation": obs.text, "history": history[-8:],
                                  "allowed": list(obs.allowed), "seed": idx * 1000 + n, "step": step})
                t1 = time.perf_counter()
                obs, done, info = await env.step(d["action"])
                if first:
                    rec.first_steps += 1
                    first = False
                if rec.counting:
                    rec.steps += 1
                    rec.latency.append(time.perf_counter() - t0)
                    rec.policy_latency.append(t1 - t0)
                    rec.errors += bool(info.get("error"))
                history.append(d["action"])
                if done or time.monotonic() >= stop["at"]:
                    break
        except SimError:
            rec.crashes += 1
            await asyncio.sleep(0.5)
        n += 1


async def launching_agent_loop(idx: int, base_url: str, browser_cfg, live: list, decide, merchants: list[str],
                               max_steps: int, stop: dict, rec: Recorder):
    """agent_loop with one Chromium per agent: launched when the agent starts, closed when it leaves.
    `live` holds the Chromiums running now (what the PSS sampler reads)."""
    from simpersona.sim.browser import Browser, BrowserEnv

    n = 0
    while time.monotonic() < stop["at"]:
        browser = await Browser(browser_cfg).start()
        live.append(browser)
        try:
            env = BrowserEnv(browser, base_url, browser_cfg)
            await agent_loop(idx, env, decide, merchants, max_steps, stop, rec, sessions=1, first_session=n)
            await env.close()
        finally:
            live.remove(browser)
            await browser.close()
        n += 1


def uniform_decider(seed: int = 0):
    from simpersona.serve.policy import PolicyRequest, UniformPolicy

    policy = UniformPolicy(seed=seed)

    async def decide(req: dict) -> dict:
        return policy.decide([PolicyRequest.from_dict(req)])[0].to_dict()

    return decide


BROWSER_MODES = ("shared", "shared_pages", "per_agent", "per_agent_launch")
# browser.isolation of each mode: a browser of its own per agent needs no sharing of contexts
ISOLATION = {"shared": "context", "shared_pages": "page", "per_agent": "context", "per_agent_launch": "context"}


def default_shared_mode(browser_cfg) -> str:
    """The shared mode a BrowserWorker with this browser section runs."""
    from simpersona.sim.browser import browser_config, isolation_of

    return "shared_pages" if isolation_of(browser_config(browser_cfg)) == "page" else "shared"


async def run_browsers(base_url: str, browser_cfg, n_agents: int, mode: str, decide, merchants, b) -> dict:
    """n_agents concurrent agents in one Chromium (shared), one Chromium each kept across their sessions
    (per_agent), or one launched per agent session (per_agent_launch); steps/s, PSS, latency, CPU."""
    from simpersona.sim.browser import Browser, BrowserEnv

    if mode not in BROWSER_MODES:
        raise ValueError(f"browser mode {mode!r}: choose one of {BROWSER_MODES}")
    browser_cfg = OmegaConf.merge(browser_cfg, {"isolation": ISOLATION[mode]})
    launching = mode == "per_agent_launch"
    t_launch = time.monotonic()
    browsers: list = []  # per_agent_launch: the Chromiums running now, changing as agents come and go
    for _ in range(0 if launching else n_agents if mode == "per_agent" else 1):
        browsers.append(await Browser(browser_cfg).start())
    envs = [] if launching else [BrowserEnv(browsers[i if mode == "per_agent" else 0], base_url, browser_cfg)
                                 for i in range(n_agents)]
    if mode.startswith("shared"):  # as in a BrowserWorker: a bounded number of operations in the shared Chromium
        from simpersona.sim.actors import ThrottledEnv

        slots = asyncio.Semaphore(int(b["browser_ops"]) or n_agents)
        envs = [ThrottledEnv(env, slots) for env in envs]
    launch_s = time.monotonic() - t_launch
    rec = Recorder()
    stop = {"at": float("inf")}  # set once every agent is up: measure the steady state, not the start
    try:
        with PssSampler(browsers, b["sample_s"]) as pss:
            if launching:
                tasks = [asyncio.create_task(launching_agent_loop(i, base_url, browser_cfg, browsers, decide, merchants,
                                                                  b["max_steps"], stop, rec)) for i in range(n_agents)]
            else:
                tasks = [asyncio.create_task(agent_loop(i, env, decide, merchants, b["max_steps"], stop, rec))
                         for i, env in enumerate(envs)]
            t_start = time.monotonic()
            while rec.first_steps < n_agents and time.monotonic() - t_start < b["startup_max_s"]:
                await asyncio.sleep(0.2)  # every agent has opened its context and taken a first step
            startup_s = time.monotonic() - t_start
            await asyncio.sleep(b["warmup_s"])
            stop["at"] = time.monotonic() + b["duration_s"]
            cpu = CpuMeter(list(browsers), b.get("store_pid"))
            cpu.start()
            own0 = _own_tree_s()  # every process of ours, Chromiums that exit meanwhile included
            rec.counting = True  # steps that finish inside the measured window count
            t0 = time.monotonic()
            await asyncio.sleep(b["duration_s"])
            rec.counting = False
            measured = time.monotonic() - t0
            own_ms = (_own_tree_s() - own0) / max(1, rec.steps) * 1000
            cpu_ms = None if launching else cpu.stop(rec.steps)  # its per-process split misses exited ones
            # agents finish their step in flight; ones stuck past the grace period are cancelled
            _, stuck = await asyncio.wait(tasks, timeout=b["grace_s"])
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        alive = all(br.connected for br in browsers)  # per_agent_launch: those still open (none, normally)
    finally:
        for env in envs:
            try:
                await env.close()
            except Exception:
                pass
        for br in browsers:
            await br.close()
    peak = max(pss.samples)
    return {
        "mode": mode, "agents": n_agents, "browsers": n_agents if launching else len(browsers),
        "browser_launch_s": round(launch_s, 2),
        "startup_s": round(startup_s, 2), "agents_up": rec.first_steps,
        "steps": rec.steps, "steps_per_s": round(rec.steps / measured, 2), "sessions": rec.sessions,
        "step_errors": rec.errors, "error_rate": round(rec.errors / max(1, rec.steps), 4),
        "agent_crashes": rec.crashes, "browsers_alive": alive, "agents_stuck_after_window": len(stuck),
        "step_latency_p50_s": pct(rec.latency, 50), "step_latency_p99_s": pct(rec.latency, 99),
        "policy_latency_p50_s": pct(rec.policy_latency, 50), "policy_latency_p99_s": pct(rec.policy_latency, 99),
        "pss_peak_gib": round(peak / GIB, 3), "pss_mean_gib": round(float(np.mean(pss.samples)) / GIB, 3),
        "pss_mib_per_agent": round(peak / MIB / n_agents, 1), "agents_per_gib": round(n_agents / (peak / GIB), 2),
        "cpu_ms_per_step": cpu_ms, "own_cpu_ms_per_step": round(own_ms, 1),
        "steps_per_cpu_s": round(1000 / max(own_ms, 1e-9), 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


async def policy_load(handle, client_batch: int, b: dict, reqs: list[dict]) -> dict:
    """Closed-loop clients (one request in flight each) in one event loop, as a BrowserWorker's agents,
    through the client agents use (HandlePolicyClient: lists of up to client_batch requests per call;
    1 = one call per request): throughput and latency."""
    from simpersona.serve.policy import HandlePolicyClient

    clients, duration_s, warmup_s = int(b["policy_clients"]), b["policy_duration_s"], b["warmup_s"]
    policy = HandlePolicyClient(handle, client_batch, b["batch_wait_timeout_s"])
    lat: list[float] = []
    done = 0
    counting = False
    stop_at = time.monotonic() + warmup_s + duration_s

    async def client(i: int):
        nonlocal done
        k = i
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            out = await policy.decide(reqs[k % len(reqs)])
            assert out["action"] in reqs[k % len(reqs)]["allowed"]
            if counting:
                lat.append(time.perf_counter() - t0)
                done += 1
            k += clients

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(warmup_s)
    await handle.reset_stats.remote()
    counting = True
    t0 = time.monotonic()
    await asyncio.gather(*tasks)
    measured = time.monotonic() - t0
    policy.close()
    stats = await handle.stats.remote()
    return {"clients": clients, "client_batch": client_batch, "requests": done, "requests_per_s": round(done / measured, 2),
            "latency_p50_s": pct(lat, 50), "latency_p99_s": pct(lat, 99), "mean_batch": round(stats["mean_batch"], 2),
            "max_batch": stats["max_batch"]}


def policy_requests(n: int) -> list[dict]:
    from simpersona.pages.observation import allowed_actions, render
    from testkit.untrained_policy import random_pages

    hist = ["open 1", "back", "open 2", "add_to_cart", "view_cart"]
    return [{"persona": [None, 0, 1, 2, 3][i % 5], "observation": render(p), "history": hist[: i % 6],
             "allowed": allowed_actions(p), "seed": i, "step": i % 9} for i, p in enumerate(random_pages(n, seed=5))]


def deploy_policy(cfg, model_dir: str, name: str, batch_size: int, b):
    from omegaconf import OmegaConf

    from simpersona.serve.app import deploy

    c = OmegaConf.merge(cfg, {"serve": {"model_dir": model_dir, "app_name": name, "route_prefix": f"/{name}",
                                        "max_batch_size": batch_size, "replica_cpus": b["replica_cpus"],
                                        "batch_wait_timeout_s": b["batch_wait_timeout_s"], "http": False}})
    return deploy(c)


def log(obj: dict) -> None:
    print(json.dumps(obj), file=sys.stderr, flush=True)


def bench_browsers(base_url: str, cfg, merchants: list[str], b: dict) -> dict:
    """Shared Chromium vs one Chromium per agent: the same N agents, the same storefront, one run."""
    n = int(b["compare_agents"])
    uniform = uniform_decider()
    out: dict = {"policy": "uniform (speed baseline, no model)"}
    for mode in BROWSER_MODES:
        out[mode] = asyncio.run(run_browsers(base_url, cfg.browser, n, mode, uniform, merchants, b))
        log({"browser": {mode: out[mode]}})
    default = out["default_isolation"] = ISOLATION[default_shared_mode(cfg.browser)]
    for shared_mode in ("shared", "shared_pages"):
        shared = out[shared_mode]
        for base in ("per_agent", "per_agent_launch"):
            other = out[base]
            ratios = {"agents_per_gib_ratio": round(shared["agents_per_gib"] / other["agents_per_gib"], 2),
                      "steps_per_s_ratio": round(shared["steps_per_s"] / max(other["steps_per_s"], 1e-9), 2)}
            out[f"{shared_mode}_vs_{base}"] = ratios
            if ISOLATION[shared_mode] == default:
                out[f"vs_{base}"] = ratios
    out["pages_vs_contexts"] = {
        "agents_per_gib_ratio": round(out["shared_pages"]["agents_per_gib"] / out["shared"]["agents_per_gib"], 2),
        "steps_per_s_ratio": round(out["shared_pages"]["steps_per_s"] / max(out["shared"]["steps_per_s"], 1e-9), 2)}
    # memory: what a running agent's own Chromium holds, from the kept browsers (per_agent_launch's samples
    # catch browsers half-launched or closing, which understates it); speed: agents that launch their own
    # Chromium, as UXAgent and browser-use do, launch cost included
    out["agents_per_gib_ratio"] = out["vs_per_agent"]["agents_per_gib_ratio"]
    out["steps_per_s_ratio"] = out["vs_per_agent_launch"]["steps_per_s_ratio"]
    out["targets"] = {"agents_per_gib_ratio>=5": out["agents_per_gib_ratio"] >= 5,
                      "agents_per_gib_judged_against": "per_agent",
                      "steps_per_s_ratio>=3": out["steps_per_s_ratio"] >= 3,
                      "steps_per_s_judged_against": "per_agent_launch"}
    return out


def bench_ramp(base_url: str, cfg, merchants: list[str], b: dict, mib_per_agent: float) -> dict:
    """Concurrency levels in one Chromium until one is not sustained (or would not fit in memory)."""
    uniform = uniform_decider()
    ramp, sustained = [], 0
    for level in b["levels"]:
        projected = level * mib_per_agent * MIB
        if projected > b["mem_fraction"] * psutil.virtual_memory().available:
            ramp.append({"agents": level, "skipped": f"projected PSS {projected / GIB:.1f} GiB passes "
                                                    f"{b['mem_fraction']} of available RAM"})
            break
        r = asyncio.run(run_browsers(base_url, cfg.browser, level, default_shared_mode(cfg.browser), uniform, merchants, b))
        # sustained: every agent up and moving, no step errors, crashes or stuck agents, and the
        # throughput held (at least half the best level's steps/s); latency is reported, not judged
        best = max([x["steps_per_s"] for x in ramp if "steps_per_s" in x] + [r["steps_per_s"]])
        r["sustained"] = bool(r["error_rate"] <= b["max_error_rate"] and r["browsers_alive"]
                              and r["agent_crashes"] == 0 and r["agents_stuck_after_window"] == 0
                              and r["agents_up"] == level and r["steps"] > 0
                              and r["steps_per_s"] >= 0.5 * best)
        ramp.append(r)
        log({"ramp": r})
        if not r["sustained"]:
            break
        sustained = level
        mib_per_agent = r["pss_mib_per_agent"]
    out: dict = {"levels": ramp, "max_sustained_agents": sustained}
    measured = [r for r in ramp if "steps_per_s" in r]
    if len(measured) >= 2:  # what one more agent costs, the browser's own base excluded
        lo, hi = measured[0], measured[-1]
        out["marginal_pss_mib_per_agent"] = round(
            (hi["pss_peak_gib"] - lo["pss_peak_gib"]) * 1024 / (hi["agents"] - lo["agents"]), 1)
    return out


def bench_policy(cfg, model_dir: str, b: dict) -> dict:
    """The Serve deployment under the same closed-loop clients, three ways: `batched` as agents use it
    (the client sends lists, the replica's @serve.batch joins them), `server_batched` (@serve.batch but
    one handle call per request: the request path before client lists) and `unbatched` (neither)."""
    from ray import serve

    reqs = policy_requests(2000)
    out: dict = {}
    size = int(b["batch_size"])
    for name, server_batch, client_batch in (("batched", size, size), ("server_batched", size, 1),
                                             ("unbatched", 1, 1)):
        handle = deploy_policy(cfg, model_dir, f"bench_{name}", server_batch, b)
        with PeerLoad() as load:
            out[name] = asyncio.run(policy_load(handle, client_batch, b, reqs))
        out[name]["max_batch_size"] = server_batch
        # requests per CPU second of ours (clients + Serve + replica; warm-up included): a figure the
        # peers' load does not distort the way it does requests per wall second
        out[name]["requests_per_own_cpu_s"] = round(out[name]["requests"] / max(load.result["own_cpu_s"], 1e-9), 2)
        out[name]["load"] = load.result
        serve.delete(f"bench_{name}")
        log({"policy": {name: out[name]}})
    out["throughput_ratio"] = round(out["batched"]["requests_per_s"] / max(out["unbatched"]["requests_per_s"], 1e-9), 2)
    out["per_cpu_s_ratio"] = round(out["batched"]["requests_per_own_cpu_s"]
                                   / max(out["unbatched"]["requests_per_own_cpu_s"], 1e-9), 2)
    out["server_batched_per_cpu_s_ratio"] = round(out["server_batched"]["requests_per_own_cpu_s"]
                                                  / max(out["unbatched"]["requests_per_own_cpu_s"], 1e-9), 2)
    out["targets"] = {"mean_batch>=16": out["batched"]["mean_batch"] >= 16,
                      "latency_p50_s<=0.2": (out["batched"]["latency_p50_s"] or 1e9) <= 0.2,
                      "per_cpu_s_ratio>=3": out["per_cpu_s_ratio"] >= 3}
    return out


def bench_policy_in_process(cfg, model_dir: str, b: dict) -> dict:
    """The same policy without Serve: decide() on batches of batch_size vs one request at a time, one
    torch thread. What batching saves in the model itself, apart from Serve's per-request cost."""
    import torch

    from simpersona.serve.policy import ActionPolicy, PolicyRequest

    torch.set_num_threads(1)
    policy = ActionPolicy.from_config(cfg.serve, model_dir)
    reqs = [PolicyRequest.from_dict(r) for r in policy_requests(int(b["in_process_requests"]))]
    out = {}
    for name, size in (("batched", int(b["batch_size"])), ("unbatched", 1)):
        policy.decide(reqs[:size])  # warm-up
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(0, len(reqs), size):
            policy.decide(reqs[i:i + size])
        # one torch thread in this thread: its CPU time is the model's cost, whatever the peers' load
        cpu = time.thread_time() - c0
        out[name] = {"batch_size": size, "requests_per_s": round(len(reqs) / (time.perf_counter() - t0), 1),
                     "requests_per_cpu_s": round(len(reqs) / max(cpu, 1e-9), 1)}
    out["throughput_ratio"] = round(out["batched"]["requests_per_s"] / out["unbatched"]["requests_per_s"], 2)
    out["per_cpu_s_ratio"] = round(out["batched"]["requests_per_cpu_s"] / out["unbatched"]["requests_per_cpu_s"], 2)
    return out


def bench_e2e(base_url: str, cfg, model_dir: str, merchants: list[str], b: dict) -> dict:
    """e2e_agents agents in one Chromium deciding through the batched Serve policy."""
    from ray import serve

    from simpersona.serve.policy import HandlePolicyClient

    handle = deploy_policy(cfg, model_dir, "bench_e2e", int(b["batch_size"]), b)

    async def run() -> dict:
        policy = HandlePolicyClient(handle, int(b["batch_size"]), b["batch_wait_timeout_s"])
        try:
            return await run_browsers(base_url, cfg.browser, int(b["e2e_agents"]), default_shared_mode(cfg.browser),
                                      policy.decide, merchants, {**b, "duration_s": b["e2e_duration_s"]})
        finally:
            policy.close()

    try:
        out = asyncio.run(run())
    finally:
        serve.delete("bench_e2e")
    return {"policy": "serve (batched)", **out}


def main(argv: list[str] | None = None, json_out=None) -> dict:
    import ray
    from ray import serve

    from simpersona.store.server import StoreServer
    from testkit.untrained_policy import build_untrained_model

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load("simulate", argv, aliases={k: f"bench.{k}" for k in DEFAULTS})
    b = {**DEFAULTS, **OmegaConf.to_container(cfg, resolve=True)["bench"]}
    b["browser_ops"] = b["browser_ops"] or cfg.sim.browser_ops_per_worker
    sections = set(b["sections"])
    out = Path(b["dir"])
    out.mkdir(parents=True, exist_ok=True)
    model_dir = b["model_dir"] or cfg.serve.model_dir
    model_note = f"the model at {model_dir}"
    if not model_dir:
        model_dir = str(out / "untrained_small")
        if not Path(model_dir, "config.json").exists():
            build_untrained_model(model_dir, n_types=8, seed=0, small_cfg=cfg.persona.model.small)
        model_note = "UNTRAINED small LM (persona.model.small sizes): serving speed only, not behaviour"
    merchants = [f"bench{i}" for i in range(b["merchants"])]
    result: dict = {"machine": {"cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
                                "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
                    "policy_model": model_note, "settings": b}
    store = StoreServer(cfg, log_dir=out / "store_log", variant="bench", merchants=merchants).start()
    b["store_pid"] = store.pid
    peers = result["peers"] = {}  # per section: our CPU seconds vs other people's on this shared machine

    def section(name: str, fn, *args):
        with PeerLoad() as load:
            result[name] = fn(*args)
        peers[name] = load.result
        log({name: result[name], "peers": load.result})

    try:
        if "browser" in sections:
            section("browser", bench_browsers, store.base_url, cfg, merchants, b)
        if "ramp" in sections:
            start_mib = result.get("browser", {}).get(default_shared_mode(cfg.browser), {}).get("pss_mib_per_agent", 100.0)
            section("ramp", bench_ramp, store.base_url, cfg, merchants, b, start_mib)
        if sections & {"policy", "e2e"}:  # a local Ray whose workers' logs stay out of the JSON on stdout
            ray.init(num_cpus=cfg.ray.num_cpus or None, include_dashboard=False, log_to_driver=False)
        if "policy" in sections:
            section("policy_in_process", bench_policy_in_process, cfg, model_dir, b)
            section("policy", bench_policy, cfg, model_dir, b)
        if "e2e" in sections:
            section("e2e", bench_e2e, store.base_url, cfg, model_dir, merchants, b)
        if "browser" in sections:  # memory: one shared Chromium at each level vs one Chromium per agent
            per_agent = result["browser"]["per_agent"]["agents_per_gib"]
            runs = [r for r in result.get("ramp", {}).get("levels", []) if "agents_per_gib" in r]
            runs += [result["e2e"]] if "e2e" in result else []
            result["agents_per_gib_ratio_by_agents"] = {
                str(r["agents"]): round(r["agents_per_gib"] / per_agent, 2) for r in runs}
    finally:
        store.stop()
        if ray.is_initialized():
            serve.shutdown()
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2, default=str)
    (out / "simulate.json").write_text(text + "\n")
    print(text, file=json_out or sys.stdout, flush=True)
    return result


if __name__ == "__main__":
    # stdout carries the JSON object only: whatever else writes to it (Ray's driver-side messages
    # about its own actors, at Serve shutdown) goes to stderr with the progress lines
    json_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    main(json_out=json_out)
