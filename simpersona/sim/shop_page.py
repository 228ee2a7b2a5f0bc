"""One agent on a foreign shop through its adapter: the page as a canonical PageState, canonical
actions performed on the shop's own elements, and the events a storefront log would have held.

    driver = ShopDriver(adapter, identity)          # BrowserEnv makes one per agent session
    obs = await driver.observe(env)                 # Observation(render(state), allowed, info)
    await driver.act(env, "add_to_cart", dom_click)

A foreign shop keeps no log for us, so events come from the pages, on the client side: `view` when
an action lands on a product page, `cart` when an add-to-cart is confirmed (the cart count rose, or
the adapter's `product.added` marker shows), `purchase` per cart line when `place_order` lands on the
confirmation page, and `search`, `remove_cart`, `favorite` as their actions go through. Failures that
do not stop the agent are reported in `info["failure"]`: `unrecognised_page` (no recogniser held:
the observation falls back to the page's numbered links and buttons), `form_rejected` (a checkout
step showed the adapter's error marker and stayed where it was), `action_refused` (an add-to-cart
that the cart did not take).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
import zlib
from urllib.parse import urljoin

from simpersona.pages.observation import Card, Observation, PageState, allowed_actions, render
from simpersona.sim.errors import ElementMissing, NavigationTimeout
from simpersona.sim.generic import GenericAdapter
from simpersona.sim.identity import BuyerIdentity, buyer_identity
from simpersona.sim.shop_adapter import ShopAdapter
from simpersona.sim.shop_js import CLICK_TAGGED_JS, READ_SHOP_JS

_NUMBER = re.compile(r"\d[\d.,\s]*")
MARK_JS = "(t) => { window.__spDoc = t; return true; }"
IS_MARKED_JS = "(t) => window.__spDoc === t"
FIELD_KIND_JS = "(el) => [el.tagName.toLowerCase(), (el.type || '').toLowerCase()]"


def parse_price(text: str) -> float:
    """The first amount in `text` ('£1,234.50', '12,99 €', 'Total: 7.00'), 0.0 when there is none."""
    m = _NUMBER.search(text or "")
    if not m:
        return 0.0
    s = re.sub(r"\s", "", m.group(0)).rstrip(".,")
    if "," in s and "." in s:  # the later separator is the decimal one
        s = s.replace(",", "") if s.rfind(".") > s.rfind(",") else s.replace(".", "").replace(",", ".")
    elif "," in s:
        head, _, tail = s.rpartition(",")
        s = f"{head.replace(',', '')}.{tail}" if len(tail) in (1, 2) else s.replace(",", "")
    try:
        return float(s)
    except ValueError:
        return 0.0


def parse_count(text: str) -> int | None:
    m = re.search(r"\d+", text or "")
    return int(m.group(0)) if m else None


def identity_for(agent_id: str, country: str) -> BuyerIdentity:
    """The agent's buyer identity: seeded by its id, so every attempt and every arm fills the same forms."""
    return buyer_identity(zlib.crc32(str(agent_id).encode()), country, tag=agent_id)


class ShopDriver:
    """Reads and acts on a foreign shop for one BrowserEnv (its page, origins and timeouts)."""

    def __init__(self, adapter: ShopAdapter):
        self.adapter = adapter
        self.spec = adapter.page_spec()
        self.identity: BuyerIdentity | None = None
        self.cart_count = 0  # the driver's own count where the shop shows none
        self.cart_lines: tuple[Card, ...] = ()  # the last cart page seen: what an order holds
        self.raw: dict = {}
        self.categories: dict[str, str] = {}  # product id -> category, where a page showed it
        self.unrecognised = 0

    def reset(self, agent_id: str) -> None:
        self.identity = identity_for(agent_id, self.adapter.country)
        self.cart_count, self.cart_lines, self.raw, self.categories = 0, (), {}, {}

    # ---- observing ----------------------------------------------------------------------------
    def state_of(self, raw: dict, merchant_id: str) -> PageState:
        """The canonical PageState of a page the reader recognised."""
        def card(d: dict) -> Card:
            pid, category = str(d["product_id"]), str(d.get("category") or "")
            if category:
                self.categories[pid] = category
            return Card(int(d["slot"]), pid, str(d["name"]), parse_price(d["price"]), category or self.categories.get(pid, ""))

        kind = raw["kind"]
        shown = parse_count(raw.get("cart_count", ""))
        if kind == "cart":
            self.cart_lines = tuple(card(c) for c in raw["lines"])
            self.cart_count = len(self.cart_lines)
        cart_count = shown if shown is not None else self.cart_count
        terms = self.adapter.terms
        steps = len(self.adapter.steps)
        fields: dict = {"kind": kind, "merchant_id": merchant_id, "cart_count": int(cart_count),
                        "categories": tuple(raw.get("categories") or ())}
        if kind in ("home", "listing", "search"):
            fields.update(cards=tuple(card(c) for c in raw["cards"]), query=str(raw.get("query") or ""),
                          has_next=bool(raw.get("has_next")))
        elif kind == "product":
            p = raw["product"]
            product = card({**p, "slot": 0})
            fields.update(product=product, cards=tuple(card(c) for c in raw["cards"]))
            if "shipping" in terms:  # delivery terms the adapter knows: the product page's delivery line
                fields.update(shipping=terms["shipping"], free_shipping_over=terms.get("free_shipping_over", 0.0),
                              checkout_steps=int(terms.get("checkout_steps", steps)))
        elif kind == "cart":
            subtotal = parse_price(raw.get("subtotal", "")) or sum(c.price for c in self.cart_lines)
            shipping = parse_price(raw["shipping"]) if raw.get("shipping") else self._fee(subtotal)
            fields.update(cards=self.cart_lines, subtotal=subtotal, shipping=shipping)
        elif kind == "checkout":
            subtotal = parse_price(raw.get("subtotal", "")) or sum(c.price for c in self.cart_lines)
            shipping = parse_price(raw["shipping"]) if raw.get("shipping") else self._fee(subtotal)
            fields.update(checkout_step=int(raw.get("step") or 0), checkout_steps=steps, subtotal=subtotal,
                          shipping=shipping, free_shipping_over=terms.get("free_shipping_over", 0.0))
        elif kind == "confirmation":
            fields.update(order_id=str(raw.get("order_id") or ""))
        return PageState(**fields)

    def _fee(self, subtotal: float) -> float:
        """The delivery fee of a cart by the adapter's terms, where the page shows none."""
        terms = self.adapter.terms
        free_over = terms.get("free_shipping_over", 0.0)
        if not subtotal or (free_over and subtotal >= free_over):
            return 0.0
        return terms.get("shipping", 0.0)

    def refreshed(self, env, obs):
        """`obs` again after an action's outcome changed what the driver counts (a confirmed add, an order)."""

        state = obs.info.get("state")
        if state is None or not self.raw.get("kind"):
            return obs
        new = self.state_of(self.raw, env.merchant_id)
        if new == state:
            return obs
        allowed = self.allowed(new, self.raw["tagged"])
        obs.info.update(state=new, allowed=allowed)
        return Observation(render(new), allowed, obs.info)

    def carry_outcome(self, landing: dict) -> None:
        """Keep the outcome marks of the page an action landed on after that page was loaded again
        (a page patch): a shop's "added" or error message shows once."""
        for mark in ("added", "error"):
            self.raw[mark] = self.raw.get(mark) or landing.get(mark)

    def allowed(self, state: PageState, tagged: list[str]) -> list[str]:
        """The canonical actions of `state` this page can perform: a tagged element, or a built-in way."""
        have = set(tagged)
        out = []
        for action in allowed_actions(state):
            verb = action.split(" ", 1)[0]
            if (action in have or action in ("back", "leave", "continue_shopping")
                    or (verb == "search" and "search" in have)
                    or (action == "view_cart" and self.adapter.header.get("cart_url"))
                    or (action == "buy_now" and "add_to_cart" in have
                        and ("view_cart" in have or self.adapter.header.get("cart_url")))):
                out.append(action)
        return out

    async def observe(self, env):
        """Observation of the env's current page (env._read waits for the document)."""

        raw = await env._read(READ_SHOP_JS, [self.spec, list(env.origins)])
        self.raw = raw
        if raw.get("kind") is None:
            self.unrecognised += 1
            return await self._observe_generic(env)
        state = self.state_of(raw, env.merchant_id)
        allowed = self.allowed(state, raw["tagged"])
        failure = ""
        if state.kind == "checkout" and not state.checkout_step:
            failure = "unrecognised_page"  # a checkout page none of the declared steps recognises
        env._last_good_url = raw["url"]
        return Observation(render(state), allowed, env._info(url=raw["url"], allowed=allowed, page=state.kind,
                                                          state=state, failure=failure))

    async def _observe_generic(self, env):
        from simpersona.sim.extract import SNAPSHOT_JS

        snap = await env._read(SNAPSHOT_JS, [list(env.origins), self.adapter.max_elements, {}])
        env._elements = {e["idx"]: e for e in snap["elements"]}
        text, allowed = GenericAdapter.observation(snap)
        return Observation(text, allowed, env._info(url=snap["url"], allowed=allowed, page="unrecognised",
                                                    failure="unrecognised_page"))

    # ---- acting -------------------------------------------------------------------------------
    async def act(self, env, action: str, dom_click: bool) -> None:
        """Perform `action` on the page; the env observes the page it leads to afterwards."""
        page = env.page
        verb, _, arg = action.partition(" ")
        if env.observation is not None and env.observation.info.get("page") == "unrecognised":
            if verb == "click":
                await env._act_generic(action, dom_click)
                return
        if action == "back":
            await self._navigate(env, lambda: page.go_back(wait_until="commit", timeout=env.timeout_ms))
            if page.url in ("", "about:blank"):
                await page.goto(self.adapter.start(env.base_url, env.merchant_id), wait_until="commit")
        elif action == "view_cart":
            await self._view_cart(env, dom_click)
        elif action == "continue_shopping":
            await page.goto(self.adapter.start(env.base_url, env.merchant_id), wait_until="commit",
                            timeout=env.timeout_ms)
        elif verb == "search":
            selector = self.adapter.header["search_input"]
            await page.fill(selector, arg, timeout=env.timeout_ms)
            submit = self.adapter.header.get("search_submit")
            await self._navigate(env, lambda: page.click(submit, timeout=env.timeout_ms) if submit
                                 else page.press(selector, "Enter", timeout=env.timeout_ms))
        elif action == "buy_now" and "buy_now" not in self.raw.get("tagged", ()):
            await self._click(env, "add_to_cart", dom_click)  # cart, then straight to checkout
            await self.observe(env)
            await self._view_cart(env, dom_click)
            await self.observe(env)
            if "checkout" in self.raw.get("tagged", ()):
                await self._click(env, "checkout", dom_click)
        else:
            if action in ("continue", "place_order"):
                await self.fill_step(env)
            await self._click(env, action, dom_click)

    async def _view_cart(self, env, dom_click: bool) -> None:
        if "view_cart" in self.raw.get("tagged", ()):
            await self._click(env, "view_cart", dom_click)
        else:  # no cart link on this page: open the cart's address, as a buyer would
            cart = urljoin(env.base_url + "/", str(self.adapter.header["cart_url"]))
            await env.page.goto(cart, wait_until="commit", timeout=env.timeout_ms)

    async def fill_step(self, env) -> int:
        """Fill the current checkout step's declared fields from the buyer identity; returns how many."""
        step_no = int(self.raw.get("step") or 0)
        if not step_no or self.identity is None:
            return 0
        filled = 0
        for css, key in self.adapter.steps[step_no - 1].fields.items():
            loc = env.page.locator(css)
            if await loc.count() == 0:
                continue  # an optional field this form does not show (a returning visitor, a saved address)
            el = loc.first
            tag, kind = await el.evaluate(FIELD_KIND_JS)
            value = key[1:] if key.startswith("=") else self.identity.get(key)
            if kind in ("checkbox", "radio") or key == "=check":
                await el.check(timeout=env.timeout_ms)
            elif tag == "select":
                try:
                    await el.select_option(value=value, timeout=env.timeout_ms)
                except Exception:
                    await el.select_option(label=value, timeout=env.timeout_ms)
            else:
                await el.fill(value, timeout=env.timeout_ms)
            filled += 1
        return filled

    async def _click(self, env, action: str, dom_click: bool) -> None:
        page = env.page

        async def click() -> None:
            ok = await page.evaluate(CLICK_TAGGED_JS, [action, list(env.origins), dom_click])
            if not ok:
                raise ElementMissing(f"no usable element for {action!r} on {page.url}")
            if not dom_click:
                await page.locator(f"[data-sp-act={_css_string(action)}]").first.click(timeout=env.timeout_ms)

        await self._navigate(env, click)

    async def _navigate(self, env, do) -> None:
        """Run `do` and wait for the document it leads to: a navigation that starts within the adapter's
        settle time is awaited until a new document is there; otherwise the change was in-page."""
        page = env.page
        token = uuid.uuid4().hex
        await page.evaluate(MARK_JS, token)
        started = asyncio.Event()

        def on_request(request) -> None:
            try:
                if request.is_navigation_request() and request.frame == page.main_frame:
                    started.set()
            except Exception:
                pass

        env._nav_blocked.clear()
        page.on("request", on_request)
        try:
            await do()
            try:
                await asyncio.wait_for(started.wait(), self.adapter.settle_s)
            except (asyncio.TimeoutError, TimeoutError):
                return  # no navigation: the page changed in place (or not at all)
            deadline = time.monotonic() + env.timeout_ms / 1000
            while time.monotonic() < deadline:
                if env._nav_blocked.is_set():
                    return  # answered 204 off-origin: the page stays
                try:
                    if not await page.evaluate(IS_MARKED_JS, token):
                        return
                except Exception:  # the old document went away mid-evaluate: the new one is coming
                    pass
                await asyncio.sleep(0.02)
            raise NavigationTimeout(f"{page.url}: no new page {env.timeout_ms / 1000:g} s after the action")
        finally:
            page.remove_listener("request", on_request)

    # ---- events -------------------------------------------------------------------------------
    def outcome(self, action: str, before: PageState | None, after) -> tuple[list[dict], str]:
        """(canonical events, failure kind or "") of `action`, from the pages before and after it."""
        state: PageState | None = after.info.get("state")
        verb, _, arg = action.partition(" ")

        def event(name: str, card: Card | None) -> dict:
            return {"event": name, "product_id": card.product_id if card else None,
                    "category": card.category if card else None, "price": card.price if card else None}

        if before is None:
            return [], ""
        if verb == "open" and state is not None and state.kind == "product":
            return [event("view", state.product)], ""
        if action in ("add_to_cart", "buy_now") and before.product is not None:
            took = bool(self.raw.get("added")) or (state is not None and state.cart_count > before.cart_count) \
                or (state is not None and state.kind in ("cart", "checkout") and action == "buy_now")
            if took:
                if not (state is not None and state.cart_count > before.cart_count):
                    self.cart_count = before.cart_count + 1
                return [event("cart", before.product)], ""
            return [], "action_refused"
        if action == "place_order":
            if state is not None and state.kind == "confirmation":
                lines = self.cart_lines or ((before.product,) if before.product else ())
                self.cart_lines, self.cart_count = (), 0
                return [event("purchase", c) for c in lines] or [event("purchase", None)], ""
            if state is not None and state.kind == "checkout" and self.raw.get("error"):
                return [], "form_rejected"
        if action == "continue" and state is not None and state.kind == "checkout" and self.raw.get("error") \
                and state.checkout_step == before.checkout_step:
            return [], "form_rejected"
        if verb == "search" and state is not None:
            return [{"event": "search", "product_id": None, "category": arg, "price": None}], ""
        if verb == "remove" and before.kind == "cart" and state is not None and state.kind == "cart":
            slot = int(arg) if arg.isdigit() else 0
            if len(state.cards) < len(before.cards) and 1 <= slot <= len(before.cards):
                return [event("remove_cart", before.cards[slot - 1])], ""
        if action == "favorite" and before.product is not None:
            return [event("favorite", before.product)], ""
        return [], ""


def _css_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
