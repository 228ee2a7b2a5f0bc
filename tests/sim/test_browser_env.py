"""BrowserEnv in Chromium: the storefront log records exactly the agents' actions; errors are
classified, retried without acting twice, and recorded; generic storefronts through an adapter."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import psutil
import pytest

from simpersona.pages.observation import allowed_actions, render
from simpersona.pages.shop import Visit
from simpersona.sim.browser import Browser, BrowserEnv, chromium_sandbox
from simpersona.sim.errors import BrowserCrash
from simpersona.store.eventlog import read_events
from simpersona.store.server import StoreServer
from simpersona.store.shops import ShopSet

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
STORE = {"merchants": ["m1", "m2", "m3"], "products_per_merchant": 16, "catalog_seed": 5, "checkout_steps": 2}


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module", params=["context", "page"])
def isolation(request):
    """browser.isolation: every exactly-once and crash check below holds in both modes."""
    return request.param


@pytest.fixture(scope="module")
def browsers(loop):
    """One Chromium per isolation mode, launched when first asked for."""
    made: dict[str, Browser] = {}

    def get(mode: str) -> Browser:
        if mode not in made:
            made[mode] = loop.run_until_complete(Browser({"isolation": mode}).start())
        return made[mode]

    yield get
    for b in made.values():
        loop.run_until_complete(b.close())


@pytest.fixture(scope="module")
def browser(browsers, isolation):
    return browsers(isolation)


@pytest.fixture()
def server(tmp_path):
    with StoreServer({"store": STORE}, log_dir=tmp_path / "events", variant="v1") as server:
        yield server


def shop(merchant: str):
    return ShopSet({"store": STORE}).shop(merchant)


@pytest.mark.slow
def test_log_records_exactly_the_actions_of_concurrent_agents(loop, browser, server):
    async def agent(i: int) -> tuple[str, str, list]:
        merchant = f"m{1 + i % 3}"
        env = BrowserEnv(browser, server.base_url)
        obs = await env.reset(merchant, f"agent-{i}")
        s, visit, expected, rng = shop(merchant), Visit(merchant), [], random.Random(i)
        for _ in range(18):
            # a shopper that mostly browses and buys, and leaves at the end
            action = rng.choice([a for a in obs.allowed if a != "leave"])
            visit, events = s.apply(visit, action)
            expected += events
            obs, done, info = await env.step(action)
            assert not info["error"] and obs.text == render(s.page_of(visit))
            assert obs.allowed == allowed_actions(s.page_of(visit)) and obs.state == s.page_of(visit)
        obs, done, info = await env.step("leave")
        assert done and obs.text == "" and obs.allowed == []
        await env.close()
        return env.session_id, merchant, expected

    async def population():
        return await asyncio.gather(*(agent(i) for i in range(4)))

    results = loop.run_until_complete(population())
    server.stop()
    log = read_events(Path(server.log_dir)).to_pylist()
    for i, (session, merchant, expected) in enumerate(results):
        mine = [e for e in log if e["session_id"] == session]
        assert [(e["event"], e["product_id"], e["category"], e["price"]) for e in mine] == [
            (e.event, e.product_id, e.category, e.price) for e in expected]
        assert {(e["buyer_id"], e["merchant_id"], e["variant"]) for e in mine} <= {(f"agent-{i}", merchant, "v1")}
    assert len(log) == sum(len(x) for *_, x in results) > 0
    assert sorted(p.name[:5] for p in Path(server.log_dir).iterdir() if not p.name.startswith(".")) == ["part-"]


def test_invalid_action_sends_nothing(loop, browser, server):
    env = BrowserEnv(browser, server.base_url)
    obs = loop.run_until_complete(env.reset("m1", "a"))
    sent, url = env.requests, env.page.url
    for action in ("place_order", "open 99", "goto http://example.com/", ""):
        o, done, info = loop.run_until_complete(env.step(action))
        assert info["error"] == "invalid_action" and not done
        assert info["reason"] == f"action {action!r} is not offered by the home page"
        assert o.text == obs.text and o.allowed == obs.allowed
    assert env.requests == sent and env.page.url == url
    assert [e["kind"] for e in env.errors] == ["invalid_action"] * 4
    loop.run_until_complete(env.close())


def test_missing_element_and_crashed_page_are_retried_once_acting_once(loop, browser, server):
    s, visit = shop("m2"), Visit("m2")
    env = BrowserEnv(browser, server.base_url)
    loop.run_until_complete(env.reset("m2", "r"))
    # the element vanishes from the page after the observation: retried after a re-sync
    loop.run_until_complete(env.page.evaluate("document.querySelector('[data-action=\"open 2\"]').remove()"))
    obs, _, info = loop.run_until_complete(env.step("open 2"))
    visit, _ = s.apply(visit, "open 2")
    assert info["error"] == "" and info["retried"] == ["element_missing"] and obs.text == render(s.page_of(visit))
    # the renderer crashes: the env opens a new page, re-syncs and acts
    loop.run_until_complete(_crash(env))
    obs, _, info = loop.run_until_complete(env.step("add_to_cart"))
    visit, _ = s.apply(visit, "add_to_cart")
    assert info["error"] == "" and obs.text == render(s.page_of(visit))
    assert [e["kind"] for e in env.errors] == ["element_missing", "page_crash"]
    loop.run_until_complete(env.close())
    server.stop()
    log = read_events(Path(server.log_dir)).to_pylist()
    assert [e["event"] for e in log] == ["view", "cart"]


async def _crash(env: BrowserEnv) -> None:
    try:
        await env.page.goto("chrome://crash", timeout=5000)
    except Exception:
        pass
    for _ in range(100):
        if env._crashed:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the page did not crash")


def test_timeout_while_the_server_hangs_acts_exactly_once(loop, browser, server):
    s, visit = shop("m3"), Visit("m3")
    env = BrowserEnv(browser, server.base_url, {"step_timeout_s": 1.0, "retries": 2, "retry_backoff_s": 0.2,
                                                "isolation": browser.cfg.isolation})
    loop.run_until_complete(env.reset("m3", "t"))

    async def hang_then_resume():
        os.kill(server.pid, signal.SIGSTOP)
        try:
            step = asyncio.ensure_future(env.step("open 1"))
            for _ in range(400):  # until the first try timed out; the re-sync then waits on the frozen server
                if env.errors:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        return await step

    obs, _, info = loop.run_until_complete(hang_then_resume())
    visit, _ = s.apply(visit, "open 1")
    assert info["error"] == "" and obs.text == render(s.page_of(visit))
    assert env.errors[0]["kind"] == "navigation_timeout" and "Timeout" in env.errors[0]["reason"]
    obs, _, info = loop.run_until_complete(env.step("add_to_cart"))
    assert info["error"] == ""
    loop.run_until_complete(env.close())
    server.stop()
    assert [e["event"] for e in read_events(Path(server.log_dir)).to_pylist()] == ["view", "cart"]


def test_browser_crash_raises(loop, server, isolation):
    async def main():
        browser = await Browser({"isolation": isolation}).start()
        env = BrowserEnv(browser, server.base_url)
        await env.reset("m1", "c")
        assert browser.pid and browser.pss_bytes() > 10 * 2**20
        # browser.sandbox=auto: Chromium's own sandbox, except as root (where Chromium refuses it)
        assert ("--no-sandbox" in psutil.Process(browser.pid).cmdline()) == (os.geteuid() == 0)
        browser.kill()
        for _ in range(100):
            if not browser.connected:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(BrowserCrash, match="Chromium is not running"):
            await env.step("open 1")
        with pytest.raises(BrowserCrash):
            await env.reset("m1", "c2")
        await browser.close()

    loop.run_until_complete(main())



def test_page_isolation_fills_each_shared_context_up_to_pages_per_context(loop, browsers, server):
    """browser.pages_per_context=2: three agents take two contexts; a place freed by a closed agent is
    taken by the next, and each agent's page sends its own identity (the log names each session once)."""
    browser = browsers("page")
    cfg = {"isolation": "page", "pages_per_context": 2}

    async def main():
        envs = [BrowserEnv(browser, server.base_url, cfg) for _ in range(3)]
        for i, env in enumerate(envs):
            await env.reset("m1", f"p{i}")
            await env.step("open 1")
        contexts = {id(env.context) for env in envs}
        sizes = sorted(len(env.context.pages) for env in envs)
        await envs[0].close()
        late = BrowserEnv(browser, server.base_url, cfg)
        await late.reset("m2", "p3")
        await late.step("open 1")
        reused = late.context is envs[1].context
        for env in (*envs[1:], late):
            await env.close()
        return contexts, sizes, reused, [e.session_id for e in (*envs, late)]

    contexts, sizes, reused, sessions = loop.run_until_complete(main())
    assert len(contexts) == 2 and sizes == [1, 2, 2] and reused
    server.stop()
    log = read_events(Path(server.log_dir)).to_pylist()
    assert sorted((e["buyer_id"], e["session_id"]) for e in log) == sorted(
        (f"p{i}", s) for i, s in enumerate(sessions))

def test_generic_adapter_finds_product_cart_and_order(loop, browsers, server):
    adapter = ROOT / "adapters" / "example_generic.yaml"
    with pytest.raises(ValueError, match="browser.isolation=page shares one cookie jar .* set browser.isolation=context"):
        BrowserEnv(browsers("page"), server.base_url, adapter=adapter)  # a foreign shop tells buyers apart by cookies
    env = BrowserEnv(browsers("context"), server.base_url, {"isolation": "auto"}, adapter=adapter)
    assert env.isolation == "context" and env.javascript  # generic storefronts keep their scripts

    def click(obs, text: str):
        line = next(ln for ln in obs.text.splitlines() if ln.split(": ", 1)[-1].startswith(text))
        action = f"click {line[1:line.index(']')]}"
        assert action in obs.allowed
        obs, done, info = loop.run_until_complete(env.step(action))
        assert not info["error"] and not done, info
        return obs

    obs = loop.run_until_complete(env.reset("m1", "g"))
    assert obs.text.startswith("page: m1 · home | url: /m/m1/\n[1] link: Shop m1\n")
    assert obs.allowed[-2:] == ["back", "leave"] and not obs.info["product_page"]
    obs = click(obs, "View ")
    assert obs.info["product_page"] and obs.info["event"] == "view"
    before = env.steps
    obs = click(obs, "Add to cart")
    assert obs.info["event"] == "cart" and env.steps == before + 1
    obs = click(obs, "Cart (1)")
    obs = click(obs, "Checkout")
    obs = click(obs, "Continue")
    assert not obs.info["order_placed"]
    obs = click(obs, "Place order")
    assert obs.info["order_placed"] and obs.info["event"] == "purchase"
    obs, done, info = loop.run_until_complete(env.step("leave"))
    assert done and obs.text == ""
    loop.run_until_complete(env.close())
    server.stop()
    assert [e["event"] for e in read_events(Path(server.log_dir)).to_pylist()] == ["view", "cart", "purchase"]


def test_example_adapter_and_bad_adapters(tmp_path):
    from simpersona.sim.generic import AdapterError, GenericAdapter

    ad = GenericAdapter.load(ROOT / "adapters" / "example_generic.yaml")
    assert ad.start("http://127.0.0.1:9/", "m7") == "http://127.0.0.1:9/m/m7/"
    assert ad.origins("http://127.0.0.1:9") == ("http://127.0.0.1:9",)
    bad = tmp_path / "bad.yaml"
    bad.write_text("start_url: /\nrecognisers: {product_page: {url: '('}}\n")
    with pytest.raises(AdapterError, match="recognisers.product_page.url is not a valid regex"):
        GenericAdapter.load(bad)
    bad.write_text("start_url: /\nallowed_origins: ['http://x.test/path']\n")
    with pytest.raises(AdapterError, match="is not an origin"):
        GenericAdapter.load(bad)
    with pytest.raises(AdapterError, match="does not exist"):
        GenericAdapter.load(tmp_path / "nope.yaml")


def test_sandbox_modes(monkeypatch, caplog):
    """auto: sandboxed for an unprivileged user, off (said once) for root; on as root: one clear error."""
    import simpersona.sim.browser as browser_module

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert chromium_sandbox({"sandbox": "auto"}) is True and chromium_sandbox({"sandbox": "off"}) is False
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(browser_module, "_root_warned", False)
    with caplog.at_level("WARNING"):
        assert chromium_sandbox({"sandbox": "auto"}) is False and chromium_sandbox({}) is False
    assert [r.message for r in caplog.records].count(
        "running as root: Chromium runs without its sandbox (--no-sandbox); run the BrowserWorkers as an "
        "unprivileged user to sandbox the agents") == 1
    with pytest.raises(ValueError, match="^browser.sandbox=on, but this process runs as root"):
        chromium_sandbox({"sandbox": "on"})
    with pytest.raises(ValueError, match=r"^browser.sandbox='yes': expected one of auto, on, off$"):
        chromium_sandbox({"sandbox": "yes"})
