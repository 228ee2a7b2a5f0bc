"""HTML of the storefront's pages: a person can shop with it, and an agent's extractor reads it back.

Every field of the page's `PageState` is on the page as a data attribute (the root `#sp-page`
carries the page-level fields; each product card carries `data-card` plus slot, id, name, price and
category; the product of a product page carries `data-product`; category buttons carry
`data-category-link`). Every action is a submit button of the one form `#sp-act` whose
`data-action` (and submitted value) is the exact action string, in `allowed_actions` order, so
the DOM lists exactly the actions the observation model offers. No scripts, no external assets.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from simpersona.pages.observation import Card, PageState, allowed_actions, money

STYLE = """
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
color:#1d2433;background:#f4f5f8}a{color:#2b5fd9;text-decoration:none}
header.top{display:flex;gap:16px;align-items:center;padding:10px 24px;background:#1d2433;color:#fff}
header.top .brand{color:#fff;font-weight:700;font-size:18px}header.top .cartcount{margin-left:auto}
header.top form{display:flex;gap:4px}header.top input{padding:5px 8px;border:0;border-radius:4px}
.banner{background:#ffe27a;padding:8px 24px;font-weight:600}
main{max-width:1060px;margin:0 auto;padding:16px 24px}
#sp-act{display:flex;flex-direction:column;gap:14px}.toolbar{order:-1;display:flex;gap:8px}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:8px 0}
.grid{list-style:none;padding:0;margin:0;display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}
.card{background:#fff;border-radius:8px;padding:12px;box-shadow:0 1px 3px #0002;display:flex;flex-direction:column;gap:4px}
.card .name{font-weight:600;text-transform:capitalize}.price{color:#b3261e;font-weight:700}
.cat{color:#667;font-size:13px}.pager{display:flex;gap:10px;align-items:center}
.chips{display:flex;flex-wrap:wrap;gap:6px}
button{font:inherit;cursor:pointer;border:1px solid #c5cad6;background:#fff;border-radius:6px;padding:5px 12px}
button:hover{background:#eef1f8}button.primary{background:#2b5fd9;border-color:#2b5fd9;color:#fff}
.product{background:#fff;border-radius:8px;padding:18px;box-shadow:0 1px 3px #0002}
.product .name{font-size:22px;font-weight:700;text-transform:capitalize}
.product .buy{display:flex;gap:8px;margin-top:10px}
table.lines{width:100%;border-collapse:collapse;background:#fff}table.lines td{padding:8px;border-bottom:1px solid #e3e6ee}
.totals{background:#fff;border-radius:8px;padding:12px}.steps{color:#667}
"""


def _num(x: float) -> str:
    """Exact text of a float: repr round-trips through JavaScript's parseFloat."""
    return repr(float(x))


def _attrs(**kw) -> str:
    return "".join(f' {k.replace("_", "-")}="{escape(str(v), quote=True)}"' for k, v in kw.items())


class _Actions:
    """Emits the action buttons and remembers their order (checked against allowed_actions)."""

    def __init__(self):
        self.order: list[str] = []

    def button(self, action: str, label: str, primary: bool = False, aria: str = "", **data) -> str:
        self.order.append(action)
        extra = _attrs(**{f"data_{k}": v for k, v in data.items()})
        if aria:
            extra += _attrs(aria_label=aria)
        cls = ' class="primary"' if primary else ""
        return (f'<button type="submit" name="a"{_attrs(value=action)}{_attrs(data_action=action)}'
                f'{extra}{cls}>{escape(label)}</button>')


def _card_attrs(c: Card) -> str:
    return _attrs(data_slot=c.slot, data_product_id=c.product_id, data_name=c.name,
                  data_price=_num(c.price), data_category=c.category)


def _grid(cards: tuple[Card, ...], acts: _Actions) -> str:
    if not cards:
        return '<p class="empty">No products here.</p>'
    items = []
    for c in cards:
        items.append(
            f'<li class="card" data-card{_card_attrs(c)}><span class="name">{escape(c.name)}</span>'
            f'<span class="price">{money(c.price)}</span><span class="cat">{escape(c.category)}</span>'
            f'{acts.button(f"open {c.slot}", "View", aria=f"View {c.name}")}</li>'
        )
    return f'<ul class="grid">{"".join(items)}</ul>'


def _listing(s: PageState, acts: _Actions) -> str:
    title = {"home": "All products", "listing": f"Category: {s.query}", "search": f"Search: {s.query}"}[s.kind]
    parts = [f"<h1>{escape(title)}</h1>", _grid(s.cards, acts)]
    nxt = acts.button("next_page", "Next page \u2192") if s.has_next else ""
    parts.append(f'<div class="pager"><span>Page {s.page}</span>{nxt}</div>')
    if s.kind == "home":
        cats = "".join(acts.button(f"category {c}", c, category_link=c) for c in s.categories)
        parts.append(f'<section><h2>Categories</h2><div class="chips">{cats}</div></section>')
        searches = "".join(acts.button(f"search {c}", f"Search {c}") for c in s.categories)
        parts.append(f'<section><h2>Popular searches</h2><div class="chips">{searches}</div></section>')
    return "".join(parts)


def _product(s: PageState, acts: _Actions) -> str:
    p = s.product
    assert p is not None, "a product page without a product"
    buy = (acts.button("add_to_cart", "Add to cart", primary=True) + acts.button("buy_now", "Buy now")
           + acts.button("favorite", "\u2661 Favourite"))
    parts = [
        f'<section class="product" data-product{_card_attrs(p)}><div class="name">{escape(p.name)}</div>'
        f'<div class="price">{money(p.price)}</div><div class="cat">{escape(p.category)}</div>'
        f'<div class="buy">{buy}</div></section>'
    ]
    if s.checkout_steps:
        parts.append(f'<div class="delivery">Shipping {money(s.shipping)} (free over {money(s.free_shipping_over)})'
                     f' \u00b7 checkout in {s.checkout_steps} steps</div>')
    if s.cards:
        parts.append(f"<section><h2>You may also like</h2>{_grid(s.cards, acts)}</section>")
    return "".join(parts)


def _cart(s: PageState, acts: _Actions) -> str:
    parts = ["<h1>Your cart</h1>"]
    if s.cards:
        rows = "".join(
            f'<tr class="line" data-card{_card_attrs(c)}><td class="name">{escape(c.name)}</td>'
            f'<td class="cat">{escape(c.category)}</td><td class="price">{money(c.price)}</td>'
            f'<td>{acts.button(f"remove {c.slot}", "Remove", aria=f"Remove {c.name}")}</td></tr>'
            for c in s.cards
        )
        parts.append(f'<table class="lines">{rows}</table>')
    else:
        parts.append('<p class="empty">Your cart is empty.</p>')
    parts.append(f'<div class="totals">Subtotal {money(s.subtotal)} \u00b7 Shipping {money(s.shipping)}</div>')
    if s.cards:
        parts.append(f"<div>{acts.button('checkout', 'Checkout', primary=True)}</div>")
    return "".join(parts)


def _checkout(s: PageState, acts: _Actions) -> str:
    last = s.checkout_step >= s.checkout_steps
    names = ["Address", "Delivery", "Payment", "Review"]
    step_name = names[min(s.checkout_step, len(names)) - 1] if s.checkout_step >= 1 else ""
    button = (acts.button("place_order", "Place order", primary=True) if last
              else acts.button("continue", "Continue", primary=True))
    return (f"<h1>Checkout</h1><p class=\"steps\">Step {s.checkout_step} of {s.checkout_steps}: "
            f"{escape(step_name)}</p><div class=\"totals\">Total {money(s.subtotal + s.shipping)} "
            f"(shipping {money(s.shipping)}, free over {money(s.free_shipping_over)})</div><div>{button}</div>")


def _confirmation(s: PageState, acts: _Actions) -> str:
    return (f"<h1>Thank you!</h1><p>Order placed: <strong>{escape(s.order_id)}</strong></p>"
            f"<div>{acts.button('continue_shopping', 'Continue shopping', primary=True)}</div>")


def _toolbar(s: PageState, acts: _Actions) -> str:
    buttons = []
    if s.kind not in ("home", "confirmation"):
        buttons.append(acts.button("back", "\u2190 Back"))
    if s.kind not in ("cart", "checkout", "confirmation"):
        buttons.append(acts.button("view_cart", f"Cart ({s.cart_count})"))
    buttons.append(acts.button("leave", "Leave shop"))
    return f'<nav class="toolbar">{"".join(buttons)}</nav>'


def _document(title: str, merchant_id: str, body: str, search: bool = False, cart_count: int | None = None) -> str:
    home = f"/m/{quote(merchant_id, safe='')}/" if merchant_id else "/"
    form = (f'<form method="get" action="{home}search"><input name="q" placeholder="Search this shop" '
            f'aria-label="Search this shop"><button type="submit">Search</button></form>') if search else ""
    if cart_count is not None:
        form += f'<span class="cartcount">Cart: {cart_count} item(s)</span>'
    brand = f"Shop {merchant_id}" if merchant_id else "SimPersona storefront"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">'
            f'<style>{STYLE}</style></head><body><header class="top"><a class="brand" href="{escape(home)}">'
            f"{escape(brand)}</a>{form}</header>{body}</body></html>")


def render_page(state: PageState, version: int) -> str:
    """The HTML page of `state`; `version` goes into the form so a stale page cannot act twice."""
    acts = _Actions()
    if state.kind in ("home", "listing", "search"):
        content = _listing(state, acts)
    else:
        content = {"product": _product, "cart": _cart, "checkout": _checkout,
                   "confirmation": _confirmation}[state.kind](state, acts)
    toolbar = _toolbar(state, acts)
    expected = allowed_actions(state)
    if acts.order != expected:  # a programming error: the page must offer exactly the model's actions
        raise RuntimeError(f"{state.kind} page offers {acts.order}, the model {expected}")
    m = state.merchant_id
    root = _attrs(
        data_page=state.kind, data_merchant=m, data_cart=state.cart_count, data_query=state.query,
        data_page_num=state.page, data_has_next=int(state.has_next), data_checkout_step=state.checkout_step,
        data_checkout_steps=state.checkout_steps, data_subtotal=_num(state.subtotal),
        data_shipping=_num(state.shipping), data_free_shipping_over=_num(state.free_shipping_over),
        data_banner=state.banner, data_order_id=state.order_id, data_version=version,
    )
    banner = f'<div class="banner">{escape(state.banner)}</div>' if state.banner else ""
    body = (f'{banner}<main id="sp-page"{root}><form id="sp-act" method="post" '
            f'action="/m/{quote(m, safe="")}/act"><input type="hidden" name="v" value="{version}">'
            f"{content}{toolbar}</form></main>")
    return _document(f"{m} \u00b7 {state.kind}", m, body, search=state.kind in ("home", "listing", "search"),
                     cart_count=state.cart_count)


def render_message(title: str, message: str, merchant_id: str = "", links: tuple[tuple[str, str], ...] = (),
                   kind: str = "message") -> str:
    """A plain page (errors, the index, `kind="ended"` after leaving); `data-page` says which."""
    items = "".join(f'<li><a href="{escape(href, quote=True)}">{escape(text)}</a></li>' for href, text in links)
    body = (f'<main id="sp-message" data-page="{kind}"><h1>{escape(title)}</h1><p class="message">'
            f'{escape(message)}</p>{"<ul>" + items + "</ul>" if items else ""}</main>')
    return _document(title, merchant_id, body)
