"""run_simulation(cfg): one variant's population of browser agents against the storefront.

    DIR/simulate/<variant>/
        agents.parquet          agent specs (simpersona.sim.population)
        results/*.parquet       one row per agent, committed exactly once (simpersona.sim.actors)
        trajectories/*.parquet  one row per agent step
        store_log/              the storefront's raw server-side event log (every attempt)
        events/events.parquet   the event log of committed attempts only: the simulated traffic
        summary.json            agents, completed, crashed, steps, failures (kind -> count), wall_s, ...

With sim.storefront=adapters/<shop>.yaml and sim.base_url=URL the population shops a foreign store
through its shop adapter instead: no storefront is started, and events.parquet holds the agents'
client-side events (simpersona.sim.outcomes). Re-running the same run dir and variant resumes:
committed agents are skipped, the rest run.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray
from omegaconf import OmegaConf

from simpersona.runtime import init_ray
from simpersona.sim.actors import committed_results, run_workers
from simpersona.sim.browser import browser_config
from simpersona.sim.outcomes import blocked_requests, client_events, failure_counts
from simpersona.sim.page_patch import parse_patches
from simpersona.sim.population import PersonaResolver, build_population, write_population
from simpersona.storage import write_json, write_parquet_durably

POLICIES = ("serve", "local", "uniform", "funnel")  # uniform: a speed baseline; funnel: an adapter check


def variant_dir(cfg) -> Path:
    return Path(cfg.run_dir) / "simulate" / cfg.sim.variant


@contextlib.contextmanager
def storefront(cfg, merchants: list[str], log_dir: Path):
    """Serve the variant's shops for `merchants` (a child process), logging to `log_dir`; yields the
    URL the workers use (the node's IP when store.host is 0.0.0.0, for workers on other nodes)."""
    from simpersona.data.storefront import replayed_store
    from simpersona.store.server import StoreServer

    # the storefront the traces were replayed on (their catalogs and merchant knobs), with the variant's knobs
    store = replayed_store(cfg)
    with StoreServer({"store": store}, log_dir=log_dir, variant=cfg.sim.variant, merchants=merchants) as server:
        host = server.host
        if host in ("0.0.0.0", "::", ""):
            host = ray.util.get_node_ip_address()
        yield f"http://{host}:{server.port}"


@contextlib.contextmanager
def policy_for(cfg):
    """The workers' policy spec: a Serve handle (deployed here, or a running app attached), or in-process."""
    kind = cfg.sim.policy
    if kind not in POLICIES:
        raise ValueError(f"sim.policy must be one of {'|'.join(POLICIES)}, got {kind!r}")
    from simpersona.serve.app import deploy, model_dir_of, running_handle

    if kind != "serve":
        model_dir = model_dir_of(cfg)
        if kind == "local" and not Path(model_dir).exists():
            raise FileNotFoundError(f"no policy model at {model_dir} (run the finetune stage or set serve.model_dir)")
        yield {"kind": "lm" if kind == "local" else kind, "serve": OmegaConf.to_object(cfg.serve),
               "model_dir": str(Path(model_dir).resolve())}
        return
    from ray import serve

    handle = running_handle(cfg.serve.app_name)
    owned = handle is None
    if owned:
        handle = deploy(cfg, "lm")
    try:
        yield {"kind": "serve", "handle": handle, "serve": OmegaConf.to_object(cfg.serve)}
    finally:
        if owned:
            serve.delete(cfg.serve.app_name)


def foreign_store(cfg) -> str:
    """The base URL of sim.storefront's shop, its adapter checked (a bad one stops the job before any agent)."""
    from simpersona.sim.generic import AdapterError
    from simpersona.sim.shop_adapter import ShopAdapter

    if not cfg.sim.base_url:
        raise ValueError("sim.storefront needs sim.base_url: the foreign shop's base URL (http://host:port)")
    try:
        ShopAdapter.load(cfg.sim.storefront)
    except FileNotFoundError:
        raise AdapterError(f"sim.storefront={cfg.sim.storefront}: no such adapter file") from None
    return str(cfg.sim.base_url).rstrip("/")


def committed_events(raw: pa.Table, results: pa.Table) -> pa.Table:
    """Events of the committed attempt of each agent (sessions of abandoned attempts are dropped)."""
    sessions = pa.array(sorted(set(results.column("session_id").to_pylist())), pa.string())
    return raw.filter(pc.is_in(raw.column("session_id"), value_set=sessions))


def run_simulation(cfg, on_progress=None) -> dict:
    """Simulate cfg.sim.variant; returns (and writes) its summary. `on_progress`: see run_workers."""
    from simpersona.store.eventlog import read_events

    t0 = time.monotonic()
    sim = cfg.sim
    for key in ("workers", "contexts_per_worker", "max_attempts"):
        if sim[key] < 1:
            raise ValueError(f"sim.{key} must be >= 1, got {sim[key]}")
    browser = browser_config(cfg.browser)  # typed: the workers get a BrowserConfig
    parse_patches(browser.page_patches)  # a bad patch stops the job here, not in every worker
    foreign = bool(sim.storefront)
    if foreign:
        foreign_url = foreign_store(cfg)
        browser.adapter = str(sim.storefront)
    out = variant_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    specs = build_population(cfg.run_dir, sim, cfg.seed)
    write_population(specs, out / "agents.parquet")
    done_before = set(committed_results(out).column("agent_id").to_pylist())
    todo = [s for s in specs.to_pylist() if s["agent_id"] not in done_before]
    merchants = sorted(set(specs.column("merchant_id").to_pylist()))
    personas = PersonaResolver.from_run_dir(cfg.run_dir).descriptions if sim.persona_mode == "prompt" else {}
    stats: dict = {"wall_s": 0.0, "steps": 0, "requeued": 0, "workers_lost": 0, "browser_restarts": 0,
                   "rejected": 0, "workers_started": 0, "replacements": []}
    if todo:
        init_ray(cfg)
        store = contextlib.nullcontext(foreign_url) if foreign else storefront(cfg, merchants, out / "store_log")
        with policy_for(cfg) as policy_spec, store as base_url:
            stats = run_workers(todo, out, sim, base_url, browser, policy_spec, personas,
                                cfg.serve.history, cfg.progress, on_progress)
    results = committed_results(out)
    if foreign:
        events = client_events(out, results, sim.variant)
    else:
        events = committed_events(read_events(out / "store_log"), results)
    write_parquet_durably(events, out / "events" / "events.parquet")
    wanted = set(specs.column("agent_id").to_pylist())
    status = [s for a, s in zip(results.column("agent_id").to_pylist(), results.column("status").to_pylist())
              if a in wanted]
    summary = {
        "variant": sim.variant,
        "persona_mode": sim.persona_mode,
        "policy": sim.policy,  # "uniform" marks a speed baseline, not a model's behaviour
        "merchants": len(merchants),
        "agents": specs.num_rows,
        "completed": status.count("completed"),
        "crashed": status.count("crashed"),
        "resumed_skipped": len(done_before & wanted),
        "steps": int(pc.sum(results.column("steps")).as_py() or 0),
        "steps_this_run": int(stats["steps"]),
        "steps_per_s": round(stats["steps"] / stats["wall_s"], 3) if stats["wall_s"] else 0.0,
        "requeued": stats["requeued"],
        "workers_lost": stats["workers_lost"],
        "browser_restarts": stats["browser_restarts"],
        "duplicate_completions_rejected": stats["rejected"],
        "workers_started": stats["workers_started"],
        "worker_replacements": stats["replacements"],  # [{worker, replaces}]: who took a lost worker's place
        "events": events.num_rows,
        "storefront": str(sim.storefront) or "simpersona",
        "failures": failure_counts(out, results, stats.get("lost_attempts")),
        "blocked_requests": blocked_requests(out, results),
        "wall_s": round(time.monotonic() - t0, 3),
    }
    write_json(str(out / "summary.json"), summary)  # atomic and synced, as every stage summary
    return summary
