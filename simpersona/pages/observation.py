"""What an agent sees: the page-state model, its text rendering and the actions it allows.

This module is the single source of truth for observations. The trace builder renders the pages a
real session would have seen through `render`; the storefront puts every field of `PageState` on
its pages as data attributes; the browser extractor reads them back into a `PageState` and calls
the same `render`. So a trace observation and a live observation of the same page are
byte-identical by construction, and a test checks it in Chromium.

Action strings (the action vocabulary, shared by traces, the policy and the browser):
  open <slot>      open the product card numbered <slot> on this page        (view)
  add_to_cart      put the product of this product page in the cart          (cart)
  favorite         favourite the product of this product page                (favorite)
  buy_now          cart this product and go straight to checkout             (cart)
  remove <slot>    remove cart line <slot>                                   (remove_cart)
  search <term>    search the shop for <term>                                (search)
  category <name>  open a category listing
  next_page        next page of a listing
  view_cart        open the cart
  checkout         start checkout from the cart
  continue         next checkout step
  place_order      place the order on the last checkout step                 (purchase)
  back             return to the listing the agent came from
  continue_shopping  leave the confirmation page for the home page
  leave            end the session
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

PAGE_KINDS = ("home", "listing", "search", "product", "cart", "checkout", "confirmation")


@dataclass(frozen=True)
class Card:
    """A product as shown on a page: its slot number is what actions refer to."""

    slot: int
    product_id: str
    name: str
    price: float
    category: str


@dataclass(frozen=True)
class PageState:
    kind: str
    merchant_id: str
    cart_count: int = 0
    cards: tuple[Card, ...] = ()  # listing/search/home products, related products, or cart lines
    product: Card | None = None  # the product of a product page (slot 0)
    categories: tuple[str, ...] = ()  # category links shown in the header
    query: str = ""  # search term or category name of a listing
    page: int = 1
    has_next: bool = False
    checkout_step: int = 0
    checkout_steps: int = 0
    subtotal: float = 0.0
    shipping: float = 0.0
    free_shipping_over: float = 0.0
    banner: str = ""
    order_id: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # not rendered

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("meta")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PageState:
        d = dict(d)
        d.pop("meta", None)
        d["cards"] = tuple(Card(**c) for c in d.get("cards", ()))
        d["product"] = Card(**d["product"]) if d.get("product") else None
        d["categories"] = tuple(d.get("categories", ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def money(x: float) -> str:
    return f"{x:.2f}"


def _cards(cards: tuple[Card, ...]) -> str:
    return "; ".join(f"[{c.slot}] {c.name} {money(c.price)}" for c in cards)


def render(state: PageState) -> str:
    """Compact text observation of a page (kept short: CPU language models pay per token)."""
    lines = [f"page: {state.kind} | cart: {state.cart_count}"]
    if state.banner:
        lines.append(f"banner: {state.banner}")
    if state.kind in ("home", "listing", "search"):
        if state.query:
            lines.append(f"{'search' if state.kind == 'search' else 'category'}: {state.query}")
        more = " | more" if state.has_next else ""
        lines.append(f"products p{state.page}{more}: {_cards(state.cards) or 'none'}")
    elif state.kind == "product" and state.product is not None:
        p = state.product
        lines.append(f"product: {p.name} | {money(p.price)} | {p.category}")
        if state.checkout_steps:  # a foreign store's adapter may not know its delivery terms
            lines.append(f"delivery: shipping {money(state.shipping)} (free over {money(state.free_shipping_over)})"
                         f" | checkout {state.checkout_steps} steps")
        if state.cards:
            lines.append(f"related: {_cards(state.cards)}")
    elif state.kind == "cart":
        lines.append(f"items: {_cards(state.cards) or 'empty'}")
        lines.append(f"subtotal: {money(state.subtotal)} | shipping: {money(state.shipping)}")
    elif state.kind == "checkout":
        lines.append(f"step {state.checkout_step}/{state.checkout_steps}")
        lines.append(
            f"total: {money(state.subtotal + state.shipping)} (shipping {money(state.shipping)}, "
            f"free over {money(state.free_shipping_over)})"
        )
    elif state.kind == "confirmation":
        lines.append(f"order placed: {state.order_id}")
    return "\n".join(lines)


def allowed_actions(state: PageState) -> list[str]:
    """Every action the page offers, in page order. The policy scores only these."""
    acts: list[str] = []
    if state.kind in ("home", "listing", "search"):
        acts += [f"open {c.slot}" for c in state.cards]
        if state.has_next:
            acts.append("next_page")
        if state.kind == "home":
            acts += [f"category {c}" for c in state.categories]
            acts += [f"search {c}" for c in state.categories]  # the shop's "popular searches"
        else:
            acts.append("back")
    elif state.kind == "product":
        acts += ["add_to_cart", "buy_now", "favorite"]
        acts += [f"open {c.slot}" for c in state.cards]
        acts.append("back")
    elif state.kind == "cart":
        acts += [f"remove {c.slot}" for c in state.cards]
        if state.cards:
            acts.append("checkout")
        acts.append("back")
    elif state.kind == "checkout":
        acts.append("place_order" if state.checkout_step >= state.checkout_steps else "continue")
        acts.append("back")
    elif state.kind == "confirmation":
        acts.append("continue_shopping")
    if state.kind not in ("cart", "checkout", "confirmation"):
        acts.append("view_cart")
    acts.append("leave")
    return acts


# The canonical event a storefront logs for an action (None: navigation only).
ACTION_EVENT = {
    "open": "view",
    "add_to_cart": "cart",
    "buy_now": "cart",
    "favorite": "favorite",
    "remove": "remove_cart",
    "search": "search",
    "place_order": "purchase",
}


def action_verb(action: str) -> str:
    return action.split(" ", 1)[0]


class Observation(NamedTuple):
    """What the agent sees: unpacks as (text, allowed, info)."""

    text: str
    allowed: list[str]
    info: dict

    @property
    def url(self) -> str:
        return self.info.get("url", "")

    @property
    def error(self) -> str:
        return self.info.get("error", "")

    @property
    def state(self) -> PageState | None:
        return self.info.get("state")
