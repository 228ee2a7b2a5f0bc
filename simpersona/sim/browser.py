"""The browser environment: agents act on a storefront through real Chromium (async Playwright).

    async with Browser(cfg.browser) as browser:                   # one Chromium, launched once
        env = BrowserEnv(browser, server.base_url, cfg.browser)   # one agent = one BrowserContext
        obs = await env.reset(merchant_id, agent_id)              # Observation(text, allowed, info)
        obs, done, info = await env.step("open 2")                # info: allowed, url, error, reason, ...
        await env.close()

Isolation (`browser.isolation`): with `context` each agent has its own browser context (cookies, storage);
with `page` the agents of one Chromium are pages of shared contexts (SharedContext, browser.pages_per_context
each), whose pages share one renderer per site (--process-per-site), and each page sends its agent and session in headers that
the project storefront reads before its cookies. A foreign shop keeps its buyers apart by cookies, so a
shop adapter or page patches need `context`; `auto` picks `page` only for the project storefront.

The environment drives the browser; the agent only picks one of `allowed`. On the project
storefront an action is a click on the element whose `data-action` is the action string, and the
observation is `render(PageState)` rebuilt from the page's data attributes: byte-identical to the
trace observation of the same page. With a generic adapter (simpersona.sim.generic) the observation
is a numbered list of the page's links and buttons.

Origins, in layers: (1) only visible, enabled elements whose link/form target is on an allowed
origin count as actions, so the action set is closed whatever the page says; (2) context.route
answers every off-origin navigation with 204 No Content (Chromium stays on the current page) and
aborts every other off-origin request, web sockets included; (3) redirect hops, which route()
never sees, go to a dead local proxy that only the allowed origins bypass, so they fail inside
Chromium; (4) popups are closed. A page left on Chromium's error page (a blocked redirect) is
re-synced before the next action. Every blocked URL is recorded in `blocked` and info["blocked"].

Errors (simpersona.sim.errors): an action the page does not offer returns `invalid_action` without
sending anything. Timeouts, missing elements and page crashes are retried (`retries`) after a
re-sync: on the project storefront the env loads /m/{m}/here, which shows the page the server's
visit is on, and compares page versions, so an action whose first try got through is never sent
again (forms carry the page version as well). `step` returns the error kind in `info["error"]`
when the action did not go through, and raises `BrowserCrash` when Chromium is gone, or the error
when no page can be loaded at all.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
import uuid
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from simpersona.pages.observation import Observation, PageState, render
from simpersona.sim.config import BrowserConfig
from simpersona.sim.errors import (
    BrowserCrash,
    ElementMissing,
    InvalidAction,
    NavigationTimeout,
    OffOrigin,
    PageCrash,
    SimError,
    Stuck,
    classify,
)
from simpersona.sim.extract import CLICK_INDEX_JS, EXTRACT_JS, FIND_ACTION_JS, SNAPSHOT_JS, state_from_dom
from simpersona.sim.generic import GenericAdapter, origin_of
from simpersona.sim.page_patch import install as install_patches
from simpersona.sim.page_patch import landed_unpatched, parse_patches
from simpersona.sim.shop_adapter import ShopAdapter, load_adapter
from simpersona.sim.shop_page import ShopDriver

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Debian's chromium-headless-shell: Chromium's old headless mode (what Playwright itself launches for
# headless), without the desktop browser's UI layer. On 2 cores, 8 agents in one browser took 9.0
# storefront steps/s with /usr/bin/chromium in its new headless mode and 20.8 with the shell (same run:
# browser-process CPU 27.0 s vs 8.6 s, renderers 31.7 s vs 12.3 s for 80 agents and 358 steps).
HEADLESS_SHELL = "/usr/lib/chromium/chromium-headless-shell"  # the binary: /usr/bin/'s wrapper script does not exec it


def chromium_executable(cfg) -> str:
    """browser.executable_path, else $CHROMIUM_PATH, else the headless shell when headless and
    installed, else /usr/bin/chromium."""
    if cfg.executable_path or os.environ.get("CHROMIUM_PATH"):
        return str(cfg.executable_path or os.environ["CHROMIUM_PATH"])
    if bool(cfg.headless) and Path(HEADLESS_SHELL).exists():
        return HEADLESS_SHELL
    return DEFAULT_CHROMIUM
AGENT_COOKIE = "sp_agent"  # the storefront's cookies (simpersona.store.app)
SESSION_COOKIE = "sp_session"
AGENT_HEADER = "x-simpersona-agent"  # ... and the headers it reads first (browser.isolation=page)
SESSION_HEADER = "x-simpersona-session"
ISOLATION_MODES = ("auto", "context", "page")
PROCESS_PER_SITE = "--process-per-site"  # the pages of one context on one site share a renderer


SANDBOX_MODES = ("auto", "on", "off")
_root_warned = False


def chromium_sandbox(cfg: Any = None) -> bool:
    """Whether Chromium runs with its own sandbox (browser.sandbox). Playwright adds --no-sandbox unless
    asked for the sandbox, and Chromium refuses the sandbox to root: so `auto` is on for an unprivileged
    user and off, said once in the log, for root; `on` as root is an error before any browser starts."""
    global _root_warned
    mode = str(browser_config(cfg).sandbox)
    if mode not in SANDBOX_MODES:
        raise ValueError(f"browser.sandbox={mode!r}: expected one of {', '.join(SANDBOX_MODES)}")
    root = os.geteuid() == 0
    if mode == "on" and root:
        raise ValueError("browser.sandbox=on, but this process runs as root, where Chromium refuses its sandbox: "
                         "run the BrowserWorkers as an unprivileged user, or set browser.sandbox=auto")
    if mode == "auto" and root and not _root_warned:
        _root_warned = True
        import logging

        logging.getLogger(__name__).warning("running as root: Chromium runs without its sandbox (--no-sandbox); "
                                            "run the BrowserWorkers as an unprivileged user to sandbox the agents")
    return mode == "on" or (mode == "auto" and not root)


def browser_config(cfg: Any = None) -> BrowserConfig:
    """The browser section, typed and with its defaults filled in, from a whole config, the section (a
    mapping or a BrowserConfig), or None."""
    from omegaconf import OmegaConf

    if isinstance(cfg, BrowserConfig):
        return cfg
    base = OmegaConf.structured(BrowserConfig)
    if cfg is None:
        return OmegaConf.to_object(base)
    if is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    if "browser" in cfg and "step_timeout_s" not in cfg:
        cfg = cfg["browser"]
    return OmegaConf.to_object(OmegaConf.merge(base, cfg))


def isolation_of(cfg: BrowserConfig, adapter: Any = None) -> str:
    """`context` or `page` for agents with this browser section (and shop adapter, if any), or a ValueError
    where the shared cookie jar of `page` would mix the agents of a shop that tells them apart by cookies."""
    mode = str(cfg.isolation)
    if mode not in ISOLATION_MODES:
        raise ValueError(f"browser.isolation={mode!r}: expected one of {', '.join(ISOLATION_MODES)}")
    foreign = adapter is not None or bool(cfg.adapter) or bool(cfg.page_patches)
    if mode == "page" and foreign:
        what = "page patches" if cfg.page_patches and adapter is None and not cfg.adapter else "a shop adapter"
        raise ValueError(f"browser.isolation=page shares one cookie jar between agents, which only the project "
                         f"storefront allows (it reads each agent from its page's headers); with {what} set "
                         "browser.isolation=context (or auto)")
    if mode == "auto":  # scripts can open popups, whose first request no agent's page can be named for
        return "context" if foreign or _flag(cfg.javascript, auto=False) else "page"
    return mode


def _flag(value: Any, auto: bool) -> bool:
    text = str(value).strip().lower()
    if text == "auto":
        return auto
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"browser.javascript must be auto, on or off, got {value!r}")


class Browser:
    """One Chromium shared by many BrowserEnv contexts (a context costs ~56 MiB PSS, a browser far more)."""

    def __init__(self, cfg: Any = None):
        self.cfg = browser_config(cfg)
        self._pw = None
        self.browser = None
        self.pid: int | None = None  # Chromium's main process (kill it to test crash handling)
        self._disconnected = False
        # A bound, never-listening local port: the "proxy" every off-origin request is sent to, so
        # that it fails before leaving Chromium. context.route cannot see redirect hops; this can.
        self._sink: socket.socket | None = None
        self._shared: dict[tuple, list[SharedContext]] = {}  # browser.isolation=page: contexts per fence
        self._shared_lock = asyncio.Lock()

    @property
    def sink_proxy(self) -> str:
        if self._sink is None:
            self._sink = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sink.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{self._sink.getsockname()[1]}"

    async def start(self) -> Browser:
        exe = chromium_executable(self.cfg)
        if not Path(exe).exists():
            raise FileNotFoundError(f"no Chromium at {exe}: set browser.executable_path or $CHROMIUM_PATH")
        sandbox = chromium_sandbox(self.cfg)
        from playwright.async_api import async_playwright

        self._pw = await async_playwright().start()
        # Chromium ignores unknown switches: this one finds our browser process among all of them
        marker = f"--simpersona-browser={uuid.uuid4().hex}"
        args = [*self.cfg.args, marker]
        if isolation_of(self.cfg) == "page" and PROCESS_PER_SITE not in args:
            args.append(PROCESS_PER_SITE)
        try:
            self.browser = await self._pw.chromium.launch(
                executable_path=exe, headless=bool(self.cfg.headless), args=args,
                chromium_sandbox=sandbox, timeout=float(self.cfg.launch_timeout_s) * 1000)
        except Exception as exc:
            await self._pw.stop()
            self._pw = None
            hint = " (with its sandbox on: where the platform forbids it, browser.sandbox=off)" if sandbox else ""
            raise BrowserCrash(f"Chromium failed to launch from {exe}{hint}: {str(exc).strip().splitlines()[0]}") from exc
        self.browser.on("disconnected", lambda _: setattr(self, "_disconnected", True))
        self.pid = self._find_pid(marker)
        return self

    async def request_client(self):
        """A fresh Playwright HTTP client with no proxy and no cookie jar of its own (dispose it)."""
        return await self._pw.request.new_context()

    @staticmethod
    def _find_pid(marker: str) -> int | None:
        """Chromium's main process: the descendant of ours launched with `marker` (not a child process)."""
        import psutil

        for proc in psutil.Process().children(recursive=True):
            try:
                cmdline = proc.cmdline()
            except psutil.Error:
                continue
            if marker in cmdline and not any(a.startswith("--type=") for a in cmdline):
                return proc.pid
        return None

    @property
    def connected(self) -> bool:
        return self.browser is not None and not self._disconnected and self.browser.is_connected()

    async def new_context(self, **options):
        if not self.connected:
            raise BrowserCrash("Chromium is not running (it crashed or was closed)")
        return await self.browser.new_context(**options)

    async def join_shared_context(self, env, key: tuple, open_shared) -> SharedContext:
        """A context of the agents behind one origin fence (`key`) with room for `env` (browser.pages_per_context;
        one renderer serves each context's pages, so more contexts use more cores), opened by `open_shared()`."""
        cap = int(env.cfg.pages_per_context)
        async with self._shared_lock:
            pool = self._shared.setdefault(key, [])
            pool[:] = [c for c in pool if c.open]
            shared = next((c for c in pool if cap <= 0 or len(c.members) < cap), None)
            if shared is None:
                shared = await open_shared()
                pool.append(shared)
            shared.members.add(env)
            return shared

    def pss_bytes(self) -> int:
        """Proportional set size of Chromium's processes (memory per agent = this / contexts)."""
        import psutil

        if self.pid is None:
            return 0
        total = 0
        try:
            root = psutil.Process(self.pid)
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except psutil.Error:
                    pass
        except psutil.Error:
            return 0
        return total

    def kill(self) -> None:
        """SIGKILL Chromium (crash tests); environments then raise BrowserCrash."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def close(self) -> None:
        self._shared.clear()
        if self.browser is not None:
            try:
                await self.browser.close()
            except Exception:  # already dead: nothing to close
                pass
            self.browser = None
        if self._pw is not None:
            try:
                await self._pw.stop()
            except Exception:
                pass
            self._pw = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    async def __aenter__(self) -> Browser:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()


class SharedContext:
    """One browser context whose pages are many agents (browser.isolation=page).

    Each agent's page carries its own origin fence routes, request listeners and identity headers; the
    context's own fence catches what those cannot see: popups (closed at once), whose requests are blocked
    for the agent that opened them, and requests no agent's page can be named for (a popup's first
    navigation comes before its frame), which are blocked and kept in `unattributed`. Only scripts open
    popups: `auto` isolation picks page mode only where they are off."""

    POPUP_GRACE_S = 1.0  # an agent's own new page is registered right after new_page() returns

    def __init__(self, context, origins: tuple[str, ...]):
        self.context = context
        self.origins = origins
        self.agents: dict = {}  # page -> its BrowserEnv
        self.members: set = set()  # the BrowserEnvs that hold a place here (one page each)
        self.unattributed: list[dict] = []  # off-origin requests blocked for no agent in particular
        self.open = True
        context.on("close", lambda _: setattr(self, "open", False))
        context.on("page", lambda page: asyncio.ensure_future(self._close_if_popup(page)))

    async def _owner(self, page):
        env = self.agents.get(page)
        if env is None and page is not None:
            try:
                env = self.agents.get(await page.opener())
            except Exception:  # closed meanwhile
                env = None
        return env

    async def on_route(self, route) -> None:
        request = route.request
        try:
            page = request.frame.page
        except Exception:  # a service worker's or a detached frame's request
            page = None
        env = await self._owner(page)
        if env is not None:
            await env._on_route(route)
        elif origin_of(request.url) in self.origins:
            await BrowserEnv._settle_route(route.continue_())
        else:
            self.unattributed.append({"url": request.url, "type": request.resource_type,
                                      "navigation": request.is_navigation_request()})
            await BrowserEnv._settle_route(route.abort("blockedbyclient"))

    @staticmethod
    async def on_websocket(ws) -> None:
        try:
            await ws.close(code=1008, reason="off-origin")
        except Exception:
            pass

    async def _close_if_popup(self, page) -> None:
        try:
            if await page.opener() is None:  # an agent's own page, or a popup opened with noopener
                deadline = time.monotonic() + self.POPUP_GRACE_S
                while page not in self.agents and time.monotonic() < deadline and not page.is_closed():
                    await asyncio.sleep(0.02)
                if page in self.agents:
                    return
        except Exception:
            pass
        await BrowserEnv._close_quietly(page)


class BrowserEnv:
    """One agent's browser context on one storefront: reset(merchant, agent) then step(action).

    Attributes after reset: merchant_id, agent_id, session_id, observation, state (PageState or
    None for generic storefronts), allowed, url, done, steps, errors (every error with its reason),
    blocked (every off-origin request that was aborted), requests (requests the page sent).
    """

    def __init__(self, browser: Browser, base_url: str, cfg: Any = None,
                 adapter: GenericAdapter | ShopAdapter | str | Path | None = None):
        self.browser = browser
        self.cfg = browser_config(cfg) if cfg is not None else browser.cfg
        self.base_url = base_url.rstrip("/")
        if adapter is None and self.cfg.adapter:
            adapter = self.cfg.adapter
        if isinstance(adapter, (str, Path)):
            adapter = load_adapter(adapter)
        self.adapter: GenericAdapter | ShopAdapter | None = adapter
        # a shop adapter reads foreign pages into the canonical PageState (simpersona.sim.shop_page)
        self.shop = ShopDriver(adapter) if isinstance(adapter, ShopAdapter) else None
        self._unchanged = 0  # actions in a row that left the page and its observation as they were
        self.patches = parse_patches(self.cfg.page_patches)
        self.patch_misses = self._patch_misses_seen = 0  # pages a patch applied to whose HTML it did not find
        self.patched_url = ""  # the last document the patches were applied to
        origins = [origin_of(self.base_url)]
        if adapter is not None:
            origins += adapter.origins(self.base_url)
        origins += [str(o).rstrip("/") for o in self.cfg.allowed_origins]
        self.origins = tuple(dict.fromkeys(origins))
        self.javascript = _flag(self.cfg.javascript, auto=adapter.javascript if adapter else False)
        self.timeout_ms = float(self.cfg.step_timeout_s) * 1000
        # Playwright's own timeouts cover clicks and navigations, not in-page scripts: a hung renderer
        # would block an evaluate forever, so every attempt also runs under this hard limit
        self.hard_timeout_s = 2 * float(self.cfg.step_timeout_s) + 1
        alts = "|".join(re.escape(o) for o in self.origins)
        self._off_origin = re.compile(rf"^(?!(?:{alts})(?:[/?#]|$))")
        ws_alts = "|".join(re.escape(o.replace("http", "ws", 1)) for o in self.origins)
        self._off_origin_ws = re.compile(rf"^(?!(?:{ws_alts})(?:[/?#]|$))")
        self.isolation = isolation_of(self.cfg, adapter)
        self.shared: SharedContext | None = None
        self.context = None
        self.page = None
        self.merchant_id = self.agent_id = self.session_id = ""
        self.observation: Observation | None = None
        self.done = False
        self.steps = 0
        self.errors: list[dict] = []
        self.blocked: list[dict] = []
        self.requests = 0
        self._crashed = False
        self._opening = False
        self._nav_blocked = asyncio.Event()  # set when a main-frame navigation off-origin is blocked
        self._elements: dict[int, dict] = {}
        self._last_good_url = ""

    # ---- public state -------------------------------------------------------------------------
    @property
    def allowed(self) -> list[str]:
        return self.observation.allowed if self.observation else []

    @property
    def state(self) -> PageState | None:
        return self.observation.state if self.observation else None

    @property
    def url(self) -> str:
        return self.observation.url if self.observation else ""

    # ---- context and page ---------------------------------------------------------------------
    async def _new_context(self):
        # Only the allowed origins bypass the sink proxy ("<-loopback>": 127.0.0.1 is proxied too).
        bypass = ",".join(["<-loopback>", *self.origins])
        return await self.browser.new_context(
            java_script_enabled=self.javascript, service_workers="block", accept_downloads=False,
            viewport={"width": int(self.cfg.viewport_width), "height": int(self.cfg.viewport_height)},
            proxy={"server": self.browser.sink_proxy, "bypass": bypass})

    def _shared_key(self) -> tuple:
        """What every agent of one shared context must have alike: the fence and the context options."""
        return (self.origins, self.javascript, int(self.cfg.viewport_width), int(self.cfg.viewport_height))

    async def _open_shared(self) -> SharedContext:
        ctx = await self._new_context()
        shared = SharedContext(ctx, self.origins)
        await ctx.route(self._off_origin, shared.on_route)
        await ctx.route_web_socket(self._off_origin_ws, shared.on_websocket)
        return shared

    async def _open_context(self) -> None:
        if self.isolation == "page":
            self.shared = await self.browser.join_shared_context(self, self._shared_key(), self._open_shared)
            self.context = self.shared.context
            await self._new_page()
            return
        ctx = await self._new_context()
        ctx.set_default_timeout(self.timeout_ms)
        ctx.set_default_navigation_timeout(self.timeout_ms)
        await ctx.route(self._off_origin, self._on_route)
        await ctx.route_web_socket(self._off_origin_ws, self._on_websocket)
        self.context = ctx
        if self.patches:  # routed after the origin fence, so tried first; off-origin requests fall back to it
            await install_patches(self, self.patches)
        ctx.on("page", self._on_page)
        ctx.on("request", self._on_request)
        ctx.on("requestfailed", self._on_request_failed)
        self.context = ctx
        await self._new_page()

    async def _new_page(self) -> None:
        self._opening = True
        try:
            page = await self.context.new_page()
        finally:
            self._opening = False
        page.on("crash", lambda _: setattr(self, "_crashed", self._crashed or page is self.page))
        page.on("dialog", lambda d: asyncio.ensure_future(d.dismiss()))
        if self.shared is not None:  # this page's own fence, listeners and identity in the shared context
            self.shared.agents[page] = self
            page.set_default_timeout(self.timeout_ms)
            page.set_default_navigation_timeout(self.timeout_ms)
            await page.route(self._off_origin, self._on_route)
            await page.route_web_socket(self._off_origin_ws, self._on_websocket)
            page.on("request", self._on_request)
            page.on("requestfailed", self._on_request_failed)
            await self._send_identity(page)
        self.page = page
        self._crashed = False

    async def _send_identity(self, page) -> None:
        await page.set_extra_http_headers({AGENT_HEADER: quote(self.agent_id, safe=""),
                                           SESSION_HEADER: quote(self.session_id, safe="")})

    async def _close_page(self, page) -> None:
        if self.shared is not None:
            self.shared.agents.pop(page, None)
        await self._close_quietly(page)

    def _on_request(self, request) -> None:
        self.requests += 1

    def _on_request_failed(self, request) -> None:
        if "ERR_PROXY_CONNECTION_FAILED" in (request.failure or ""):  # a redirect hop off-origin
            self._block(request)

    def _block(self, request) -> None:
        self.blocked.append({"step": self.steps, "url": request.url, "type": request.resource_type,
                             "navigation": request.is_navigation_request()})

    def _on_page(self, page) -> None:
        if not self._opening and page is not self.page:  # popups: the agent has one tab
            asyncio.ensure_future(self._close_quietly(page))

    @staticmethod
    async def _close_quietly(page) -> None:
        try:
            await page.close()
        except Exception:
            pass

    async def _on_route(self, route) -> None:
        request = route.request
        if origin_of(request.url) in self.origins:  # the pattern is only a prefilter
            await self._settle_route(route.continue_())
            return
        self._block(request)
        navigation = request.is_navigation_request()
        if navigation:
            try:
                if request.frame.parent_frame is None and request.frame.page is self.page:
                    self._nav_blocked.set()
            except Exception:  # a popup or frame that is already gone
                pass
            # 204 No Content makes Chromium drop the navigation and keep the current page (an abort
            # would replace it with an error page): links, refreshes and scripts go nowhere
            await self._settle_route(route.fulfill(status=204))
        else:
            await self._settle_route(route.abort("blockedbyclient"))

    @staticmethod
    async def _settle_route(call) -> None:
        try:
            await asyncio.wait_for(call, 10)
        except Exception:  # the page or context closed meanwhile: nothing left to answer
            pass

    async def _on_websocket(self, ws) -> None:
        self.blocked.append({"step": self.steps, "url": ws.url, "type": "websocket", "navigation": False})
        try:
            await ws.close(code=1008, reason="off-origin")
        except Exception:
            pass

    def _check_browser(self) -> None:
        if not self.browser.connected:
            raise BrowserCrash("Chromium is not running (it crashed or was closed)")

    def _page_broken(self) -> bool:
        return self.page is None or self._crashed or self.page.is_closed()

    # ---- observing ----------------------------------------------------------------------------
    def _info(self, **kw) -> dict:
        info = {"url": "", "allowed": [], "error": "", "error_kind": "", "reason": "", "page": "",
                "state": None, "version": None, "step": self.steps, "attempts": 1, "retried": [],
                "blocked": [], "event": ""}
        info.update(kw)
        return info

    async def _read(self, script: str, arg) -> dict:
        """Evaluate an in-page reader once the document is parsed (it answers {"loading": true} before).

        Readiness is read from the document itself, not from Playwright's lifecycle events: those
        wait for the page's latest navigation, and one that was blocked (answered 204) never loads.
        """
        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            try:
                data = await self.page.evaluate(script, arg)
                if not data.get("loading"):
                    return data
            except Exception as exc:  # a navigation replaced the document mid-read: read the new one
                if "context was destroyed" not in str(exc) or time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise NavigationTimeout(f"{self.page.url} was still loading after {self.timeout_ms / 1000:g} s")
            await asyncio.sleep(0.01)

    async def _observe(self) -> Observation:
        url = self.page.url
        if url.startswith("chrome-error://"):  # Chromium's error page: a refused, failed or looping navigation
            raise NavigationTimeout(f"the navigation from {self._last_good_url or 'the start'} failed")
        if origin_of(url) not in self.origins:
            raise OffOrigin(f"the page is not on an allowed origin (at {url})")
        if self.shop is not None:
            return await self.shop.observe(self)
        if self.adapter is not None:
            return await self._observe_generic()
        data = await self._read(EXTRACT_JS, list(self.origins))
        url = data["url"]
        if origin_of(url) not in self.origins:  # the document changed between the two looks
            raise OffOrigin(f"the page is not on an allowed origin (at {url})")
        if data["state"] is None:
            if data["kind"] == "ended":
                return Observation("", [], self._info(url=url, page="ended"))
            raise ElementMissing(f"{url} is not a storefront page (no #sp-page element; kind {data['kind']!r})")
        state = state_from_dom(data["state"])
        allowed = list(data["actions"])
        obs = Observation(render(state), allowed, self._info(url=url, allowed=allowed, page=state.kind,
                                                             state=state, version=data["version"]))
        self._last_good_url = url
        return obs

    async def _observe_generic(self) -> Observation:
        assert self.adapter is not None
        snap = await self._read(SNAPSHOT_JS, [list(self.origins), self.adapter.max_elements, self.adapter.selectors()])
        if origin_of(snap["url"]) not in self.origins:
            raise OffOrigin(f"the page is not on an allowed origin (at {snap['url']})")
        self._elements = {e["idx"]: e for e in snap["elements"]}
        text, allowed = self.adapter.observation(snap)
        flags = {name: self.adapter.page_is(name, snap) for name in ("product_page", "order_placed")}
        event = "purchase" if flags["order_placed"] else "view" if flags["product_page"] else ""
        self._last_good_url = snap["url"]
        return Observation(text, allowed, self._info(url=snap["url"], allowed=allowed, page="generic",
                                                     event=event, **flags))

    async def _load(self, url: str) -> Observation:
        """Open `url` and observe it, retrying; raises the last error when no attempt succeeds."""
        last: SimError | None = None
        for attempt in range(1, int(self.cfg.retries) + 2):
            try:
                self._check_browser()
                if self._page_broken() or isinstance(last, NavigationTimeout):  # a hung renderer: fresh page
                    await self._close_page(self.page)
                    await self._new_page()
                return await asyncio.wait_for(self._goto_observe(url), self.hard_timeout_s)
            except Exception as exc:
                err = classify(exc, f"loading {url}", browser_alive=self.browser.connected)
                if isinstance(err, BrowserCrash) or not self.browser.connected:
                    raise BrowserCrash(f"Chromium died while loading {url}: {err.reason}") from exc
                self._record(err, "", attempt)
                last = err
                if isinstance(err, OffOrigin):
                    break
                await asyncio.sleep(float(self.cfg.retry_backoff_s) * attempt)
        assert last is not None
        raise last

    async def _goto_observe(self, url: str) -> Observation:
        await self.page.goto(url, wait_until="commit", timeout=self.timeout_ms)  # _read waits for the DOM
        return await self._observe()

    async def _resync(self) -> Observation:
        """Back to a valid page: the page the server's visit is on (storefront) or the last good URL."""
        if self.adapter is None:
            return await self._load(f"{self.base_url}/m/{quote(self.merchant_id, safe='')}/here")
        return await self._load(self._last_good_url or self.adapter.start(self.base_url, self.merchant_id))

    def _record(self, err: SimError, action: str, attempt: int) -> None:
        url = "" if self.page is None or self.page.is_closed() else self.page.url
        self.errors.append({"step": self.steps, "kind": err.kind, "reason": err.reason, "action": action,
                            "attempt": attempt, "url": url})

    # ---- acting -------------------------------------------------------------------------------
    async def reset(self, merchant_id: str, agent_id: str, session_id: str | None = None) -> Observation:
        """Start a session of `agent_id` at `merchant_id`'s home page (a fresh session cookie)."""
        self._check_browser()
        self.merchant_id, self.agent_id = str(merchant_id), str(agent_id)
        self.session_id = session_id or f"{agent_id}-{uuid.uuid4().hex[:12]}"
        self.done, self.steps, self.errors, self.blocked, self.observation = False, 0, [], [], None
        self._unchanged = 0
        if self.shop is not None:
            self.shop.reset(self.agent_id)
        try:
            if self.context is None:
                await self._open_context()
            elif self.shared is not None:
                await self._send_identity(self.page)
            else:
                await self.context.clear_cookies()
            if self.shop is None and self.shared is None:  # the storefront's identity cookies; a foreign shop sets its own
                await self.context.add_cookies([
                    {"name": AGENT_COOKIE, "value": quote(self.agent_id, safe=""), "url": self.base_url},
                    {"name": SESSION_COOKIE, "value": quote(self.session_id, safe=""), "url": self.base_url},
                ])
        except SimError:
            raise
        except Exception as exc:
            err = classify(exc, "opening a browser context", browser_alive=self.browser.connected)
            if isinstance(err, BrowserCrash):
                raise err from exc
            raise PageCrash(err.reason) from exc
        start = (self.adapter.start(self.base_url, self.merchant_id) if self.adapter
                 else f"{self.base_url}/m/{quote(self.merchant_id, safe='')}/")
        self._last_good_url = ""
        self.observation = await self._load(start)
        return self.observation

    def _refuse(self, err: SimError, action: str) -> tuple[Observation, bool, dict]:
        """An error that sends nothing: the agent stays on the page it saw."""
        self._record(err, action, 1)
        prev = self.observation
        info = {**prev.info, "error": err.kind, "error_kind": err.kind, "reason": err.reason, "step": self.steps,
                "retried": [], "blocked": [], "event": ""}
        return Observation(prev.text, prev.allowed, info), self.done, info

    async def step(self, action: str) -> tuple[Observation, bool, dict]:
        """Take `action` (one of `allowed`); returns (observation, done, info)."""
        if self.observation is None:
            raise RuntimeError("call reset() before step()")
        self._check_browser()
        self.steps += 1
        mark = len(self.blocked)
        if self.done:
            return self._refuse(InvalidAction("the session has ended (the agent left)"), action)
        if action not in self.allowed:
            page = self.observation.info.get("page") or "current"
            return self._refuse(InvalidAction(f"action {action!r} is not offered by the {page} page"), action)
        if self.adapter is not None and action == "leave":
            self.done = True
            info = self._info(url=self.url, page="ended")
            self.observation = Observation("", [], info)
            return self.observation, True, info
        if self._page_broken() or origin_of(self.page.url) not in self.origins:
            # the page crashed or navigated off-origin by itself since the last step (a blocked refresh)
            self._record(PageCrash("the page crashed since the last step") if self._page_broken() else
                         OffOrigin(f"the page left the allowed origins by itself (at {self.page.url})"), action, 0)
            self.observation = await self._resync()
            if action not in self.allowed:
                return self._refuse(InvalidAction(f"action {action!r} is gone after a re-sync"), action)
        before = self.observation
        retried: list[str] = []
        error: SimError | None = None
        attempt = 0
        t0 = time.monotonic()
        while True:
            attempt += 1
            try:
                event, obs = await asyncio.wait_for(self._attempt(action), self.hard_timeout_s)
                error = None
                break
            except Exception as exc:
                err = classify(exc, f"action {action!r}", browser_alive=self.browser.connected)
                if isinstance(err, BrowserCrash) or not self.browser.connected:
                    raise BrowserCrash(f"Chromium died during action {action!r}: {err.reason}") from exc
                self._record(err, action, attempt)
                retried.append(err.kind)
                error, event = err, ""
                obs = await self._resync()  # raises when no page can be loaded: the agent cannot go on
                if self._went_through(before, obs):
                    error = None
                    break
                if isinstance(err, OffOrigin) and not getattr(err, "retryable", False):
                    break  # the action itself leads off-origin: trying again leads there again
                if attempt > int(self.cfg.retries):
                    break
                await asyncio.sleep(float(self.cfg.retry_backoff_s) * attempt)
        if error is None and action == "leave":
            self.done = True
        info = obs.info
        info.update(step=self.steps, attempts=attempt, retried=retried if error is None else retried[:-1],
                    blocked=[b["url"] for b in self.blocked[mark:]], seconds=round(time.monotonic() - t0, 4))
        if event:  # the click's own event (add to cart) wins over the page it lands on
            info["event"] = event
        if error is not None:
            info.update(error=error.kind, error_kind=error.kind, reason=error.reason)
        elif self.shop is not None:
            obs = self._shop_outcome(action, before, obs, info)
        self.observation = obs
        return obs, self.done, info

    def _shop_outcome(self, action: str, before: Observation, obs: Observation, info: dict) -> Observation:
        """A foreign shop's client-side events and failures of the action (and the observation with the cart
        count they imply); stuck agents are stopped."""
        events, failure = self.shop.outcome(action, before.state, obs)
        if not failure and self.patch_misses > self._patch_misses_seen:
            failure = "patch_missed"  # a what-if's page patch found nothing to change on this page
        self._patch_misses_seen = self.patch_misses
        obs = self.shop.refreshed(self, obs)
        now_ms = int(time.time() * 1000)
        info["events"] = [{**e, "ts_ms": now_ms} for e in events]
        failure = failure or info.get("failure", "")
        if failure:
            info.update(failure=failure, error=failure, error_kind=failure,
                        reason=f"{failure} after {action!r} at {obs.url}")
            self.errors.append({"step": self.steps, "kind": failure, "reason": info["reason"], "action": action,
                                "attempt": 1, "url": obs.url})
        same = obs.url == before.url and obs.text == before.text and action != "leave"
        self._unchanged = self._unchanged + 1 if same else 0
        if self.shop.adapter.stuck_steps and self._unchanged >= self.shop.adapter.stuck_steps:
            raise Stuck(f"{self._unchanged} actions in a row changed nothing at {obs.url} (last: {action!r})")
        return obs

    async def _attempt(self, action: str) -> tuple[str, Observation]:
        self.patched_url = ""
        event = await self._act(action)
        obs = await self._observe()
        if self.patches and landed_unpatched(self):  # reached by a redirect: load the page again, patched
            landing = self.shop.raw if self.shop is not None else None
            await self.page.goto(self.page.url, wait_until="commit", timeout=self.timeout_ms)
            obs = await self._observe()
            if landing is not None:
                self.shop.carry_outcome(landing)
        return event, obs

    def _went_through(self, before: Observation, after: Observation) -> bool:
        """Whether an action whose step failed reached the server anyway (the page moved on)."""
        if self.adapter is None:
            return (after.info.get("version"), after.info.get("page")) != (before.info.get("version"),
                                                                          before.info.get("page"))
        return after.url != before.url

    async def _act(self, action: str) -> str:
        """Click the action's element and wait for the page it leads to; returns a generic event."""
        dom_click = str(self.cfg.click) == "dom"
        if self.shop is not None:
            await self.shop.act(self, action, dom_click)
            return ""
        if self.adapter is not None:
            return await self._act_generic(action, dom_click)
        self._nav_blocked.clear()
        async with self.page.expect_navigation(wait_until="commit", timeout=self.timeout_ms) as nav:
            idx = await self.page.evaluate(FIND_ACTION_JS, [action, list(self.origins), dom_click])
            if idx < 0:
                raise ElementMissing(f"no usable element with data-action={action!r} on {self.page.url}")
            if not dom_click:
                await self.page.locator("[data-action]").nth(idx).click(timeout=self.timeout_ms)
            await self._await_navigation(nav, action)
        return ""

    async def _await_navigation(self, nav, action: str) -> None:
        """Wait for the click's navigation, unless the page meanwhile started one off-origin: that one
        (answered 204, so nothing commits) cancelled ours, and waiting would only run into the timeout."""
        done = asyncio.ensure_future(nav.value)
        blocked = asyncio.ensure_future(self._nav_blocked.wait())
        try:
            await asyncio.wait({done, blocked}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():  # a grace period: our navigation may still win the race
                await asyncio.wait({done}, timeout=0.5)
        finally:
            blocked.cancel()
        if done.done():
            exc = done.exception()  # else raised by expect_navigation's exit
            if exc is None or "ERR_ABORTED" not in str(exc) or not self._nav_blocked.is_set():
                return
        # ours was cancelled by a navigation of the page itself, which was blocked (answered 204)
        err = OffOrigin(f"action {action!r}: the page navigated off-origin meanwhile (blocked: "
                        f"{self.blocked[-1]['url'] if self.blocked else '?'})")
        err.retryable = True  # a race with the page's own navigation, not the action's target
        raise err

    async def _act_generic(self, action: str, dom_click: bool) -> str:
        assert self.adapter is not None
        if action == "back":
            await self.page.go_back(wait_until="commit", timeout=self.timeout_ms)
            return ""
        idx = int(action.split(" ", 1)[1])
        element = self._elements.get(idx)
        ok = await self.page.evaluate(CLICK_INDEX_JS, [idx, list(self.origins), dom_click])
        if not ok or element is None:
            raise ElementMissing(f"element [{idx}] is gone from {self.page.url}")
        if not dom_click:
            await self.page.locator(f'[data-sp-idx="{idx}"]').click(timeout=self.timeout_ms)
        await asyncio.sleep(self.adapter.settle_s)  # a navigation it started commits meanwhile
        return "cart" if self.adapter.is_add_to_cart(element) else ""

    async def close(self) -> None:
        if self.shared is not None:  # the context is the browser's: only this agent's page goes
            if self.page is not None:
                await self._close_page(self.page)
            self.shared.members.discard(self)
            self.shared = self.context = self.page = None
            return
        if self.context is not None:
            try:
                await self.context.close()
            except Exception:  # the browser is gone already
                pass
            self.context = None
            self.page = None
