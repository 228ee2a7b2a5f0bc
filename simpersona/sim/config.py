"""Config sections of the simulate stage: the agent population and its workers (sim) and Chromium
(browser).

Defaults live here only; configs/*.yaml hold what a run changes. Merged by simpersona.config.load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BrowserConfig:
    """Chromium for the browser agents (simpersona.sim.browser): one browser, many contexts."""

    # "" = $CHROMIUM_PATH, else /usr/bin/chromium-headless-shell (headless, when installed: 2.3x the steps/s
    # on 2 cores), else /usr/bin/chromium
    executable_path: str = ""
    headless: bool = True
    args: list[str] = field(default_factory=lambda: [
        "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic",
    ])
    # Chromium's own sandbox: auto = on, except as root (Chromium refuses it there; the agents then run
    # with --no-sandbox and say so once) | on (an error as root) | off (--no-sandbox)
    sandbox: str = "auto"
    launch_timeout_s: float = 60.0
    step_timeout_s: float = 15.0  # one action: click, navigation and extraction
    retries: int = 2  # extra attempts after a timeout, a missing element or a page crash
    retry_backoff_s: float = 0.25  # wait before retry k: backoff * k
    click: str = "dom"  # dom: element.click() in the page (fast); mouse: Playwright's real mouse click
    javascript: str = "auto"  # auto (off for the project storefront, on for generic ones) | on | off
    allowed_origins: list[str] = field(default_factory=list)  # besides the storefront's own origin
    adapter: str = ""  # generic storefront adapter YAML; "" = the project storefront (exact observations)
    # HTML rewrites of matching pages, [{url, find, replace}] (simpersona.sim.page_patch): a foreign shop's what-if
    page_patches: list = field(default_factory=list)
    # how agents of one Chromium are kept apart: context (a browser context each: own cookies and storage,
    # what a foreign shop needs) | page (pages of one shared context; the project storefront tells its agents
    # apart by a per-page header, and Chromium runs one renderer per site for them) | auto (page on the
    # project storefront with scripts off, else context)
    isolation: str = "auto"
    # isolation=page: agents per shared context (0 = all of one browser); each context's pages share one
    # renderer process, whose main thread runs their page work one after another
    pages_per_context: int = 8
    viewport_width: int = 1024
    viewport_height: int = 768


@dataclass
class SimConfig:
    """Population simulation: agents of each merchant in BrowserWorker actors against the storefront."""

    # what-if variant: its store knobs are store.variants[<variant>] (a name not listed there is only a
    # label); artifacts go to <run_dir>/simulate/<variant>/
    variant: str = "baseline"
    # a foreign shop: its shop adapter YAML (adapters/<shop>.yaml) and base URL; "" = the project storefront.
    # A what-if on a foreign shop is another variant name with the base URL of another deployment.
    storefront: str = ""
    base_url: str = ""
    merchant_types: str = ""  # "" = <run_dir>/assign/merchant_types.parquet (evaluation passes a split's)
    # int N = the N merchants with the most typed buyers (0 = all); a list = exactly those ids
    merchants: Any = 0
    agents_per_merchant: int = 10
    persona_mode: str = "vq"  # vq | none | mismatch | prompt | kmeans
    kmeans_smoothing: float = 1.0  # additive smoothing of the k-means type histogram (persona_mode=kmeans)
    max_steps: int = 30
    workers: int = 2  # most BrowserWorker actors; fewer while the cluster lacks CPUs for more
    contexts_per_worker: int = 8  # concurrent agents (browser contexts) in one worker's Chromium
    # resets/steps running in one Chromium at once (0 = contexts_per_worker); the rest of the agents
    # wait for a slot (or for the policy), so a crowd of agents does not run page loads into timeouts
    browser_ops_per_worker: int = 8
    worker_cpus: float = 1.0  # Ray CPUs reserved per BrowserWorker
    policy: str = "serve"  # serve | local (one scorer per worker) | uniform (speed baseline only) | funnel (adapter check)
    max_attempts: int = 3  # attempts per agent when its worker or its Chromium dies
    commit_every: int = 64  # accepted agents buffered before a results shard is written
    commit_interval_s: float = 5.0  # ... or after this many seconds
    scale_interval_s: float = 2.0  # how often the driver looks for room to start another worker
    worker_start_timeout_s: float = 300.0  # fail when no worker has started for this long
    request_resources: bool = False  # ask a Ray autoscaler for `workers` worker-sized CPU bundles
