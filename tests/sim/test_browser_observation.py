"""In Chromium, the observation extracted from the DOM is the trace renderer's text for every page kind."""

from __future__ import annotations

import asyncio

import pytest

from simpersona.pages.observation import PAGE_KINDS, PageState, allowed_actions, render
from simpersona.pages.shop import Visit
from simpersona.sim.browser import Browser, BrowserEnv
from simpersona.store.server import StoreServer
from simpersona.store.shops import ShopSet

pytestmark = pytest.mark.browser

STORE = {
    "merchants": ["m1", "m2"], "products_per_merchant": 17, "catalog_seed": 11, "page_size": 5,
    "checkout_steps": 3, "free_shipping_threshold": 150.0,
    "merchant_overrides": {"m2": {"recommendations": False, "discount_banner": "Summer sale: 20% off \"all\" <items> & more",
                                  "checkout_steps": 1}},
}


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def env(loop, tmp_path_factory):
    with StoreServer({"store": STORE}, log_dir=tmp_path_factory.mktemp("obs") / "events") as server:
        browser = loop.run_until_complete(Browser().start())
        env = BrowserEnv(browser, server.base_url)
        yield env
        loop.run_until_complete(env.close())
        loop.run_until_complete(browser.close())


class Mirror:
    """The trace model walking beside the browser: every observation must equal its rendering."""

    def __init__(self, loop, env: BrowserEnv, merchant: str):
        self.loop, self.env = loop, env
        self.shop = ShopSet({"store": STORE}).shop(merchant)
        self.visit = Visit(merchant)
        self.seen: set[str] = set()
        obs = loop.run_until_complete(env.reset(merchant, f"agent-{merchant}"))
        self.check(obs, "home")

    def check(self, obs, label: str) -> PageState:
        state = self.shop.page_of(self.visit)
        assert obs.text == render(state), f"{label}:\n{obs.text}\n!=\n{render(state)}"
        assert obs.allowed == allowed_actions(state), label
        assert obs.state == state, label
        assert not obs.error, obs.info
        self.seen.add(state.kind)
        return state

    def do(self, action: str, label: str) -> PageState:
        self.visit, _ = self.shop.apply(self.visit, action)
        obs, done, info = self.loop.run_until_complete(self.env.step(action))
        assert not done
        return self.check(obs, label)


@pytest.mark.slow
def test_every_page_kind_renders_identically(loop, env):
    m = Mirror(loop, env, "m1")
    home = m.shop.page_of(m.visit)
    assert home.has_next and len(home.categories) == 4
    m.do("next_page", "home page 2")
    m.do(f"category {home.categories[0]}", "listing")
    m.do("back", "home again")
    m.do(f"search {home.categories[1]}", "search")
    product = m.do("open 1", "product with recommendations")
    assert product.cards, "m1 shows related products"
    m.do("view_cart", "cart empty")
    m.do("back", "back to search")
    m.do("open 2", "product")
    m.do("add_to_cart", "product after cart")
    m.do("favorite", "product after favourite")
    m.do("open 1", "related product")
    m.do("add_to_cart", "product with two in cart")
    cart = m.do("view_cart", "cart non-empty")
    assert len(cart.cards) == 2
    for step in (1, 2):
        m.do("checkout" if step == 1 else "continue", f"checkout step {step}")
    m.do("back", "checkout back")
    m.do("continue", "checkout step 2 again")
    last = m.do("continue", "checkout step 3 (last)")
    assert last.checkout_step == last.checkout_steps == 3
    m.do("place_order", "confirmation")
    m.do("continue_shopping", "home after order")

    b = Mirror(loop, env, "m2")
    assert b.shop.page_of(b.visit).banner
    no_recs = b.do("open 3", "product without recommendations, with a banner")
    assert not no_recs.cards and no_recs.banner
    b.do("buy_now", "checkout single step (buy now)")
    b.do("place_order", "confirmation with a banner")
    assert m.seen | b.seen == set(PAGE_KINDS)


def test_pages_opened_by_url_render_identically(loop, env):
    """States agents rarely reach by clicking: empty search results, a last page, a cart with shipping."""
    shop = ShopSet({"store": STORE}).shop("m1")
    loop.run_until_complete(env.reset("m1", "url-agent"))

    def observe(path: str):
        loop.run_until_complete(env.page.goto(env.base_url + path))
        env.observation = loop.run_until_complete(env._observe())
        return env.observation

    empty = observe("/m/m1/search?q=zzz-nothing")
    assert empty.text == render(shop.search("zzz-nothing", 1, [])) and "products p1: none" in empty.text
    last = observe("/m/m1/?page=4")
    assert last.text == render(shop.home(4, [])) and " | more" not in last.text
    cheap = min(shop.catalog, key=lambda p: p.price)
    observe(f"/m/m1/p/{cheap.product_id}")
    _, _, info = loop.run_until_complete(env.step("add_to_cart"))
    assert not info["error"], info
    cart = observe("/m/m1/cart")
    state = shop.cart_page([cheap.product_id])
    assert state.shipping > 0 and cart.text == render(state)
