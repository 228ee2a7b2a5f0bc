"""Agents on the real third-party shop (django-oscar) through adapters/oscar.yaml: a scripted agent
places an order the shop records, foreign pages render as canonical observations, and injected
failures (a hanging page, a form that rejects input, a redirect loop, an agent that changes nothing)
get their named kinds."""

from __future__ import annotations

import asyncio
import http.server
import threading
from pathlib import Path

import pytest
import yaml

from simpersona.pages.observation import render
from simpersona.sim.browser import Browser, BrowserEnv
from simpersona.sim.errors import NavigationTimeout, Stuck
from simpersona.sim.shop_adapter import ShopAdapter

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "adapters" / "oscar.yaml"
FAST = {"step_timeout_s": 4.0, "retries": 0, "retry_backoff_s": 0.0}  # injected hangs fail quickly


def catalogue() -> dict[str, tuple[float, str]]:
    """name -> (price, category), from the shop's seed data (not from its pages)."""
    raw = yaml.safe_load((ROOT / "thirdparty" / "oscar" / "catalogue.yaml").read_text())
    return {p["title"]: (float(p["price"]), c["name"]) for c in raw["categories"] for p in c["products"]}


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def browser(loop):
    browser = loop.run_until_complete(Browser().start())
    yield browser
    loop.run_until_complete(browser.close())


def adapter_with(tmp_path: Path, edit) -> ShopAdapter:
    raw = yaml.safe_load(ADAPTER.read_text())
    edit(raw)
    path = tmp_path / "oscar_edited.yaml"
    path.write_text(yaml.safe_dump(raw))
    return ShopAdapter.load(path)


async def to_checkout(env: BrowserEnv, slot: int = 1):
    obs = await env.reset("m1", f"agent-{slot}")
    for action in (f"open {slot}", "add_to_cart", "view_cart", "checkout"):
        assert action in obs.allowed, (action, obs.text, obs.allowed)
        obs, _, info = await env.step(action)
        assert not info.get("error"), info
    return obs


def test_a_scripted_agent_places_one_order_that_the_shop_records(loop, browser, oscar_shop):
    prices = catalogue()
    before = oscar_shop.order_count()

    async def shop() -> list[dict]:
        env = BrowserEnv(browser, oscar_shop.base_url, adapter=ADAPTER)
        obs, events = await to_checkout(env, slot=2), []
        while "place_order" not in obs.allowed:
            assert obs.allowed[0] == "continue", obs.text
            obs, _, info = await env.step("continue")
            assert not info.get("error"), info
        assert obs.state.checkout_step == obs.state.checkout_steps == 5
        obs, _, info = await env.step("place_order")
        events += info["events"]
        assert obs.state.kind == "confirmation" and obs.state.order_id.isdigit() and obs.state.cart_count == 0
        await env.close()
        return events

    events = loop.run_until_complete(shop())
    assert oscar_shop.order_count() == before + 1
    (purchase,) = events
    name = "Chef Knife"  # the second card of the catalogue's first page
    assert purchase["event"] == "purchase" and (purchase["price"], purchase["category"]) == prices[name]


def test_a_foreign_product_page_renders_through_the_canonical_render(loop, browser, oscar_shop):
    prices = catalogue()

    async def look():
        env = BrowserEnv(browser, oscar_shop.base_url, adapter=ADAPTER)
        home = await env.reset("m1", "agent-render")
        product, _, info = await env.step("open 3")
        added, _, _ = await env.step("add_to_cart")
        await env.close()
        return home, product, info, added

    home, product, info, added = loop.run_until_complete(look())
    assert home.state.kind == "home" and len(home.state.cards) == 8 and home.state.has_next
    for card in home.state.cards:
        assert (card.price, card.name in prices) == (prices[card.name][0], True)
    state = product.state
    assert state.kind == "product" and product.text == render(state)
    assert (state.product.price, state.product.category) == prices[state.product.name]
    assert product.text.splitlines()[1] == f"product: {state.product.name} | {state.product.price:.2f} | " \
                                           f"{state.product.category}"
    assert "delivery: shipping 4.95 (free over 50.00) | checkout 5 steps" in product.text
    assert product.allowed == ["add_to_cart", "buy_now", "back", "view_cart", "leave"]
    assert info["events"][0]["event"] == "view" and info["events"][0]["product_id"] == state.product.product_id
    assert added.state.cart_count == 1 and added.text.startswith("page: product | cart: 1")


def test_a_page_patch_reaches_pages_opened_and_pages_reached_by_a_redirect(loop, browser, oscar_shop):
    """The add-to-basket POST redirects back to the product page; Chromium follows redirects
    unrouted, so that landing must still arrive patched, with the add still counted."""
    patches = [{"url": r"/catalogue/[\w-]+_\d+/$", "find": r"(<h1>)(.*?)(</h1>)", "replace": r"\1\2 (new)\3"},
               {"url": r"/basket/$", "find": r"no such markup", "replace": ""}]

    async def look():
        env = BrowserEnv(browser, oscar_shop.base_url, {"page_patches": patches}, adapter=ADAPTER)
        await env.reset("m1", "agent-patched")
        opened, _, _ = await env.step("open 2")
        added, _, added_info = await env.step("add_to_cart")
        cart, _, cart_info = await env.step("view_cart")
        await env.close()
        return opened, added, added_info, cart_info

    opened, added, added_info, cart_info = loop.run_until_complete(look())
    assert opened.state.product.name == added.state.product.name == "Chef Knife (new)"
    assert [e["event"] for e in added_info["events"]] == ["cart"] and added.state.cart_count == 1
    assert not added_info.get("failure") and cart_info["failure"] == "patch_missed"


def test_a_form_that_rejects_input_is_form_rejected_and_then_stuck(loop, browser, oscar_shop, tmp_path):
    def bad_postcode(raw):  # a US shipping form given a postcode it must refuse
        raw["checkout"]["steps"][1]["fields"]["#id_postcode"] = "=ABC"
        raw["stuck_steps"] = 3

    adapter = adapter_with(tmp_path, bad_postcode)

    async def shop():
        env = BrowserEnv(browser, oscar_shop.base_url, adapter=adapter)
        await to_checkout(env)
        obs, _, first = await env.step("continue")  # the gateway takes the e-mail
        assert obs.state.checkout_step == 2 and not first.get("failure")
        kinds = []
        with pytest.raises(Stuck) as stuck:
            for _ in range(5):
                obs, _, info = await env.step("continue")
                kinds.append(info.get("failure"))
                assert obs.state.checkout_step == 2
        await env.close()
        return kinds, stuck.value

    kinds, stuck = loop.run_until_complete(shop())
    assert kinds == ["form_rejected", "form_rejected"] and stuck.kind == "stuck"


@pytest.fixture()
def redirect_loop():
    """A loopback server whose every page redirects to itself."""
    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_hanging_page_and_a_redirect_loop_are_navigation_failures(loop, browser, oscar_shop, redirect_loop):
    async def shop():
        cfg = {**FAST, "allowed_origins": [redirect_loop]}
        env = BrowserEnv(browser, oscar_shop.base_url, adapter=ADAPTER, cfg=cfg)
        home = await env.reset("m1", "agent-hang")
        hang, looping = home.state.cards[0].product_id, home.state.cards[1].product_id

        async def never_answer(route):
            await asyncio.sleep(60)

        await env.page.route(f"**{hang}", never_answer)
        # the shop's second product moved to a page that redirects to itself
        await env.page.route(f"**{looping}", lambda route: route.fulfill(
            status=302, headers={"Location": f"{redirect_loop}/moved{looping}"}))
        results = []
        for action in ("open 1", "open 2"):
            try:
                obs, _, info = await env.step(action)
                results.append((info.get("error"), obs.state.kind if obs.state else obs.info.get("page")))
            except NavigationTimeout as exc:
                results.append((exc.kind, None))
        await env.page.unroute_all(behavior="ignoreErrors")
        await env.close()
        return results

    (hang_kind, hang_page), (loop_kind, loop_page) = loop.run_until_complete(shop())
    assert hang_kind == "navigation_timeout" and hang_page == "home"
    assert loop_kind == "navigation_timeout" and loop_page == "home"
