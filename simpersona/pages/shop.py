"""The storefront model: what each page of a merchant's shop shows, and where each action leads.

`Shop` builds the `PageState` of every page from the catalog, the what-if knobs and the cart. The
web app (simpersona.store.app) serves exactly these states as HTML; the trace builder walks them
with `Shop.apply` to replay real sessions. Both therefore show an agent the same pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from simpersona.pages.catalog import Product
from simpersona.pages.config import ShopKnobsConfig
from simpersona.pages.observation import Card, PageState, action_verb

_STORE = ShopKnobsConfig()  # the knobs' defaults are the store config's: one place for each


@dataclass(frozen=True)
class Knobs:
    """What-if knobs of one merchant in one variant (the store config's knob fields, frozen)."""

    price_multiplier: float = _STORE.price_multiplier
    shipping_fee: float = _STORE.shipping_fee
    free_shipping_threshold: float = _STORE.free_shipping_threshold
    page_size: int = _STORE.page_size
    recommendations: bool = _STORE.recommendations
    related_products: int = _STORE.related_products
    checkout_steps: int = _STORE.checkout_steps
    discount_banner: str = _STORE.discount_banner

    @classmethod
    def from_config(cls, store_cfg, merchant_id: str | None = None) -> Knobs:
        names = cls.__dataclass_fields__
        values = {k: store_cfg[k] for k in names if k in store_cfg}
        overrides = (store_cfg.get("merchant_overrides") or {}).get(str(merchant_id), {}) if merchant_id else {}
        values.update({k: v for k, v in dict(overrides).items() if k in names})
        knobs = cls(**values)
        if knobs.page_size < 1 or knobs.checkout_steps < 1 or knobs.price_multiplier <= 0:
            raise ValueError(f"invalid store knobs for merchant {merchant_id}: {knobs}")
        return knobs


@dataclass
class Visit:
    """Server-side state of one agent's visit to one merchant (what a session cookie points to)."""

    merchant_id: str
    kind: str = "home"
    query: str = ""
    page: int = 1
    product_id: str = ""
    checkout_step: int = 0
    back_to: tuple[str, str, int] = ("home", "", 1)
    cart: list[str] = field(default_factory=list)
    orders: int = 0
    order_id: str = ""
    ended: bool = False


@dataclass(frozen=True)
class LoggedEvent:
    """An event the storefront writes to its server-side log for one request."""

    event: str
    product_id: str | None = None
    category: str | None = None
    price: float | None = None


class InvalidAction(ValueError):
    """The action is not offered by the current page."""


class Shop:
    def __init__(self, merchant_id: str, catalog: list[Product], knobs: Knobs):
        self.merchant_id = merchant_id
        self.catalog = catalog
        self.knobs = knobs
        self.by_id = {p.product_id: p for p in catalog}
        self.categories = tuple(dict.fromkeys(p.category for p in catalog))

    # ---- prices -------------------------------------------------------------------------------
    def price(self, product: Product) -> float:
        return round(product.price * self.knobs.price_multiplier, 2)

    def card(self, slot: int, product: Product) -> Card:
        return Card(slot, product.product_id, product.name, self.price(product), product.category)

    def subtotal(self, cart: list[str]) -> float:
        return round(sum(self.price(self.by_id[p]) for p in cart), 2)

    def shipping(self, cart: list[str]) -> float:
        sub = self.subtotal(cart)
        if not cart or sub >= self.knobs.free_shipping_threshold:
            return 0.0
        return round(self.knobs.shipping_fee, 2)

    # ---- pages --------------------------------------------------------------------------------
    def _base(self, kind: str, cart: list[str], **kw) -> PageState:
        return PageState(kind=kind, merchant_id=self.merchant_id, cart_count=len(cart),
                         banner=self.knobs.discount_banner, **kw)

    def _paged(self, kind: str, products: list[Product], page: int, cart: list[str], query: str = "") -> PageState:
        size = self.knobs.page_size
        pages = max(1, -(-len(products) // size))
        page = min(max(1, page), pages)
        shown = products[(page - 1) * size: page * size]
        cards = tuple(self.card(i + 1, p) for i, p in enumerate(shown))
        return self._base(kind, cart, cards=cards, page=page, has_next=page < pages, query=query,
                          categories=self.categories if kind == "home" else ())

    def home(self, page: int, cart: list[str]) -> PageState:
        return self._paged("home", self.catalog, page, cart)

    def listing(self, category: str, page: int, cart: list[str]) -> PageState:
        return self._paged("listing", [p for p in self.catalog if p.category == category], page, cart, category)

    def search(self, term: str, page: int, cart: list[str]) -> PageState:
        t = term.lower()
        hits = [p for p in self.catalog if t in p.category.lower() or t in p.name.lower()]
        return self._paged("search", hits, page, cart, term)

    def related(self, product: Product) -> list[Product]:
        if not self.knobs.recommendations:
            return []
        same = [p for p in self.catalog if p.category == product.category]
        i = same.index(product)
        return [same[(i + k) % len(same)] for k in range(1, len(same))][: self.knobs.related_products]

    def product(self, product_id: str, cart: list[str]) -> PageState:
        p = self.by_id[product_id]
        cards = tuple(self.card(i + 1, r) for i, r in enumerate(self.related(p)))
        # the delivery terms a buyer weighs before buying (the shipping fee and the checkout's length),
        # shown where the buy decision is taken: a trace that ends on a product page must show them
        return self._base("product", cart, product=self.card(0, p), cards=cards,
                          shipping=round(self.knobs.shipping_fee, 2), checkout_steps=self.knobs.checkout_steps,
                          free_shipping_over=round(self.knobs.free_shipping_threshold, 2))

    def cart_page(self, cart: list[str]) -> PageState:
        cards = tuple(self.card(i + 1, self.by_id[pid]) for i, pid in enumerate(cart))
        return self._base("cart", cart, cards=cards, subtotal=self.subtotal(cart), shipping=self.shipping(cart))

    def checkout(self, step: int, cart: list[str]) -> PageState:
        return self._base("checkout", cart, checkout_step=step, checkout_steps=self.knobs.checkout_steps,
                          subtotal=self.subtotal(cart), shipping=self.shipping(cart),
                          free_shipping_over=round(self.knobs.free_shipping_threshold, 2))

    def confirmation(self, order_id: str, cart: list[str]) -> PageState:
        return self._base("confirmation", cart, order_id=order_id)

    def page_of(self, v: Visit) -> PageState:
        if v.kind == "home":
            return self.home(v.page, v.cart)
        if v.kind == "listing":
            return self.listing(v.query, v.page, v.cart)
        if v.kind == "search":
            return self.search(v.query, v.page, v.cart)
        if v.kind == "product":
            return self.product(v.product_id, v.cart)
        if v.kind == "cart":
            return self.cart_page(v.cart)
        if v.kind == "checkout":
            return self.checkout(v.checkout_step, v.cart)
        if v.kind == "confirmation":
            return self.confirmation(v.order_id, v.cart)
        raise ValueError(f"unknown page kind {v.kind!r}")

    # ---- transitions --------------------------------------------------------------------------
    def apply(self, v: Visit, action: str, allowed: list[str] | None = None) -> tuple[Visit, list[LoggedEvent]]:
        """The visit after `action`, and the events the storefront logs for it."""
        from simpersona.pages.observation import allowed_actions

        state = self.page_of(v)
        if action not in (allowed if allowed is not None else allowed_actions(state)):
            raise InvalidAction(f"action {action!r} not offered on the {state.kind} page")
        verb = action_verb(action)
        arg = action[len(verb) + 1:]
        here = (v.kind, v.query, v.page)
        log: list[LoggedEvent] = []
        if verb == "open":
            card = state.cards[int(arg) - 1]
            back = here if v.kind in ("home", "listing", "search") else v.back_to
            v = replace(v, kind="product", product_id=card.product_id, back_to=back)
            log.append(LoggedEvent("view", card.product_id, card.category, card.price))
        elif verb in ("add_to_cart", "buy_now"):
            p = state.product
            v = replace(v, cart=v.cart + [p.product_id])
            log.append(LoggedEvent("cart", p.product_id, p.category, p.price))
            if verb == "buy_now":
                v = replace(v, kind="checkout", checkout_step=1)
        elif verb == "favorite":
            p = state.product
            log.append(LoggedEvent("favorite", p.product_id, p.category, p.price))
        elif verb == "remove":
            card = state.cards[int(arg) - 1]
            cart = list(v.cart)
            del cart[int(arg) - 1]
            v = replace(v, cart=cart)
            log.append(LoggedEvent("remove_cart", card.product_id, card.category, card.price))
        elif verb == "search":
            v = replace(v, kind="search", query=arg, page=1)
            log.append(LoggedEvent("search", None, arg, None))
        elif verb == "category":
            v = replace(v, kind="listing", query=arg, page=1)
        elif verb == "next_page":
            v = replace(v, page=v.page + 1)
        elif verb == "view_cart":
            back = here if v.kind in ("home", "listing", "search") else v.back_to
            v = replace(v, kind="cart", back_to=back)
        elif verb == "checkout":
            v = replace(v, kind="checkout", checkout_step=1)
        elif verb == "continue":
            v = replace(v, checkout_step=v.checkout_step + 1)
        elif verb == "place_order":
            for pid in v.cart:
                p = self.by_id[pid]
                log.append(LoggedEvent("purchase", pid, p.category, self.price(p)))
            order_id = f"{self.merchant_id}-o{v.orders + 1}"
            v = replace(v, kind="confirmation", order_id=order_id, orders=v.orders + 1, cart=[])
        elif verb == "back":
            if v.kind == "checkout" and v.checkout_step > 1:
                v = replace(v, checkout_step=v.checkout_step - 1)
            elif v.kind == "checkout":
                v = replace(v, kind="cart")
            else:
                kind, query, page = v.back_to
                v = replace(v, kind=kind, query=query, page=page, back_to=("home", "", 1))
        elif verb == "continue_shopping":
            v = replace(v, kind="home", page=1, query="", back_to=("home", "", 1))
        elif verb == "leave":
            v = replace(v, ended=True)
        else:
            raise InvalidAction(f"unknown action {action!r}")
        return v, log
