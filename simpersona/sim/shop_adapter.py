"""Shop adapters: a foreign storefront's pages read into the canonical `PageState`.

The persona policy was trained on `render(PageState)` and the canonical actions (`open <slot>`,
`add_to_cart`, `checkout`, `continue`, `place_order`, ...). A shop adapter YAML says where those live
on another shop's pages, so the same `render` gives the same kind of text, and the same policy and
persona tokens act on any store. Every selector is CSS; a field is `"css"` (the element's text),
`"css@attr"` (an attribute) or `"@attr"` (an attribute of the enclosing element); regexes are Python
syntax, with `(?i)` allowed only at the start.

    name: myshop
    start_url: /                       # absolute, or relative to the base URL the job is given
    pages:                             # page kind -> recogniser (url regex on path+query, selector, text)
      confirmation: {url: "^/checkout/thank-you/"}    # tried in this order; the first that holds wins
      checkout: {url: "^/checkout/"}
      cart: {url: "^/basket/$"}
      product: {selector: "article.product_page"}
      search: {url: "^/search/"}
      listing: {url: "^/catalogue/category/"}
      home: {url: "^/$"}
    header: {cart_count: ".basket-mini", cart_link: "a[href$='/basket/']", categories: "nav .dropdown-menu a",
             search_input: "input[name=q]", cart_url: /basket/}   # cart_url: opened when no cart link shows
    cards: {item: "article.product_pod", name: "h3 a@title", price: ".price_color", link: "h3 a",
            next_page: "li.next a", max: 8}
    product: {name: "h1", price: ".price_color", category: ".breadcrumb li:nth-last-child(2)",
              add_to_cart: "#add_to_basket_form button[type=submit]", related: ".related article"}
    cart: {line: ".basket-items", name: "h3 a", price: ".price_color", remove: "a[data-behaviours~=remove]",
           subtotal: ".basket-subtotal", checkout: "a[href*='/checkout/']"}
    checkout:
      steps:                           # in order; each: recogniser keys, submit (its button), fields
        - {url: "^/checkout/$", submit: "form button[type=submit]", fields: {"input[name=username]": email}}
        - ...
      place_order: "#place-order"      # the last step's button
      error: ".alert-danger, .errorlist"   # present after a rejected form
      payment: {method: test}          # required when a step says `payment: true`: test | dummy
    confirmation: {order_id: ".sub-header h1"}
    identity: {country: GB}            # the synthetic buyer's address country (simpersona.sim.identity)
    terms: {shipping: 7.0, free_shipping_over: 0, checkout_steps: 4}   # optional: the product page's delivery line

A field value in `fields` is an identity key (simpersona.sim.identity.KEYS), `=literal` for a fixed
value, or `=check` for a checkbox or radio button to tick. Pages no recogniser matches fall back to
the generic observation (links and buttons, numbered) and are counted as `unrecognised_page`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

from simpersona.sim.generic import AdapterError, GenericAdapter, origin_of, read_adapter_yaml
from simpersona.sim.identity import KEYS as IDENTITY_KEYS
from simpersona.sim.identity import LOCALES

# recognised in this order: a thank-you page is under /checkout/ on many shops, a cart page may list products
PAGE_ORDER = ("confirmation", "checkout", "cart", "product", "search", "listing", "home")
REQUIRED_PAGES = ("home", "product", "cart", "checkout", "confirmation")
PAYMENT_METHODS = ("test", "dummy")
SECTIONS = {
    "header": {"cart_count", "cart_link", "cart_url", "categories", "search_input", "search_submit"},
    "cards": {"item", "name", "price", "category", "link", "product_id", "next_page", "title", "max"},
    "product": {"name", "price", "category", "product_id", "add_to_cart", "buy_now", "favorite", "related",
                "added"},
    "cart": {"line", "name", "price", "category", "product_id", "remove", "subtotal", "shipping", "checkout"},
    "checkout": {"steps", "place_order", "error", "payment", "shipping", "subtotal"},
    "confirmation": {"order_id"},
    "identity": {"country"},
    "terms": {"shipping", "free_shipping_over", "checkout_steps"},
}
REQUIRED = {"cards": ("item", "name", "price", "link"), "product": ("name", "price", "add_to_cart"),
            "cart": ("line", "name", "price", "checkout"), "checkout": ("steps", "place_order")}
TOP = {"name", "start_url", "allowed_origins", "max_elements", "settle_s", "javascript", "stuck_steps", "pages",
       *SECTIONS}
RECOGNISER_KEYS = {"url", "selector", "text"}
STEP_KEYS = RECOGNISER_KEYS | {"submit", "fields", "payment", "name"}


def _regex(where: str, pattern: str) -> str:
    """`pattern` checked for Python and for the page's JavaScript (a leading (?i) becomes the i flag)."""
    body = pattern[4:] if pattern.startswith("(?i)") else pattern
    if re.search(r"\(\?[a-zA-Z]", body):
        raise AdapterError(f"{where}: inline regex flags other than a leading (?i) do not work in the page: {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise AdapterError(f"{where} is not a valid regex: {exc}") from None
    return pattern


def _recogniser(where: str, spec) -> dict:
    if not isinstance(spec, dict):
        raise AdapterError(f"{where}: expected a mapping with url/selector/text, got {spec!r}")
    bad = sorted(set(spec) - RECOGNISER_KEYS)
    if bad:
        raise AdapterError(f"{where} has unknown key(s) {bad}; use url/selector/text")
    rec = {k: str(spec.get(k) or "") for k in ("url", "selector", "text")}
    if not any(rec.values()):
        raise AdapterError(f"{where} needs at least one of url/selector/text")
    for key in ("url", "text"):
        if rec[key]:
            _regex(f"{where}.{key}", rec[key])
    return rec


@dataclass(frozen=True)
class CheckoutStep:
    name: str
    recogniser: dict
    submit: str
    fields: dict[str, str]  # css -> identity key | =literal | =check
    payment: bool = False


@dataclass(frozen=True)
class ShopAdapter:
    name: str
    start_url: str
    pages: dict[str, dict]  # kind -> recogniser, in PAGE_ORDER
    header: dict = field(default_factory=dict)
    cards: dict = field(default_factory=dict)
    product: dict = field(default_factory=dict)
    cart: dict = field(default_factory=dict)
    steps: tuple[CheckoutStep, ...] = ()
    checkout: dict = field(default_factory=dict)  # place_order, error, shipping, subtotal
    confirmation: dict = field(default_factory=dict)
    country: str = "GB"
    terms: dict = field(default_factory=dict)
    allowed_origins: tuple[str, ...] = ()
    max_elements: int = 40
    settle_s: float = 0.3
    javascript: bool = True
    stuck_steps: int = 6  # the same page and observation after this many actions in a row: the agent is stuck

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> ShopAdapter:
        adapter = load_adapter(path)
        if not isinstance(adapter, cls):
            raise AdapterError(f"{path}: pages is required (the recognisers of the shop's page kinds)")
        return adapter

    @classmethod
    def from_dict(cls, raw: dict, where: str = "adapter") -> ShopAdapter:
        if not isinstance(raw, dict):
            raise AdapterError(f"{where}: expected a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - TOP)
        if unknown:
            raise AdapterError(f"{where}: unknown key(s) {unknown}; expected {sorted(TOP)}")
        if not raw.get("start_url"):
            raise AdapterError(f"{where}: start_url is required")
        pages_raw = raw.get("pages") or {}
        if not isinstance(pages_raw, dict):
            raise AdapterError(f"{where}: pages must map page kinds to recognisers")
        bad = sorted(set(pages_raw) - set(PAGE_ORDER))
        if bad:
            raise AdapterError(f"{where}: pages has unknown kind(s) {bad}; expected {list(PAGE_ORDER)}")
        for kind in REQUIRED_PAGES:
            if kind not in pages_raw:
                raise AdapterError(f"{where}: pages.{kind} is required (the recogniser of the {kind} page)")
        pages = {k: _recogniser(f"{where}: pages.{k}", pages_raw[k]) for k in PAGE_ORDER if k in pages_raw}
        sections = {}
        for name, keys in SECTIONS.items():
            sec = raw.get(name) or {}
            if not isinstance(sec, dict):
                raise AdapterError(f"{where}: {name} must be a mapping")
            extra = sorted(set(sec) - keys)
            if extra:
                raise AdapterError(f"{where}: {name} has unknown key(s) {extra}; expected {sorted(keys)}")
            for key in REQUIRED.get(name, ()):
                if not sec.get(key):
                    raise AdapterError(f"{where}: {name}.{key} is required")
            sections[name] = dict(sec)
        steps = cls._steps(where, sections["checkout"])
        payment = sections["checkout"].get("payment") or {}
        if any(s.payment for s in steps):
            method = str(payment.get("method", "")) if isinstance(payment, dict) else ""
            if method not in PAYMENT_METHODS:
                raise AdapterError(f"{where}: checkout.payment.method must declare the shop's test payment "
                                   f"({' | '.join(PAYMENT_METHODS)}) because a checkout step takes payment; "
                                   "agents never pay with a real method")
        country = str(sections["identity"].get("country", "GB")).upper()
        if country not in LOCALES:
            raise AdapterError(f"{where}: identity.country={country!r} is not one of {sorted(LOCALES)}")
        origins = tuple(str(o).rstrip("/") for o in raw.get("allowed_origins") or ())
        for o in origins:
            if origin_of(o) != o:
                raise AdapterError(f"{where}: allowed_origins entry {o!r} is not an origin (scheme://host[:port])")
        cards = sections["cards"]
        try:
            cards["max"] = int(cards.get("max", 8))
        except (TypeError, ValueError):
            raise AdapterError(f"{where}: cards.max must be an integer") from None
        checkout = {k: v for k, v in sections["checkout"].items() if k not in ("steps", "payment")}
        return cls(name=str(raw.get("name") or Path(where).stem), start_url=str(raw["start_url"]), pages=pages,
                   header=sections["header"], cards=cards, product=sections["product"], cart=sections["cart"],
                   steps=steps, checkout=checkout, confirmation=sections["confirmation"], country=country,
                   terms=cls._terms(where, sections["terms"]), allowed_origins=origins,
                   max_elements=int(raw.get("max_elements", 40)), settle_s=float(raw.get("settle_s", 0.3)),
                   javascript=bool(raw.get("javascript", True)), stuck_steps=int(raw.get("stuck_steps", 6)))

    @staticmethod
    def _steps(where: str, checkout: dict) -> tuple[CheckoutStep, ...]:
        raw_steps = checkout.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise AdapterError(f"{where}: checkout.steps must list the checkout's steps in order")
        steps = []
        for i, spec in enumerate(raw_steps):
            at = f"{where}: checkout.steps[{i}]"
            if not isinstance(spec, dict):
                raise AdapterError(f"{at}: expected a mapping")
            bad = sorted(set(spec) - STEP_KEYS)
            if bad:
                raise AdapterError(f"{at} has unknown key(s) {bad}; expected {sorted(STEP_KEYS)}")
            last = i == len(raw_steps) - 1
            if not last and not spec.get("submit"):
                raise AdapterError(f"{at}.submit is required (the button that goes on to the next step)")
            fields = spec.get("fields") or {}
            if not isinstance(fields, dict):
                raise AdapterError(f"{at}.fields must map CSS selectors to identity keys")
            for css, key in fields.items():
                key = str(key)
                if not key.startswith("=") and key not in IDENTITY_KEYS:
                    raise AdapterError(f"{at}.fields[{css!r}]: {key!r} is neither an identity key "
                                       f"({', '.join(IDENTITY_KEYS)}) nor =literal / =check")
            rec = _recogniser(at, {k: spec[k] for k in RECOGNISER_KEYS if k in spec})
            steps.append(CheckoutStep(str(spec.get("name") or f"step {i + 1}"), rec, str(spec.get("submit") or ""),
                                      {str(k): str(v) for k, v in fields.items()}, bool(spec.get("payment", False))))
        return tuple(steps)

    @staticmethod
    def _terms(where: str, terms: dict) -> dict:
        out = {}
        for key in ("shipping", "free_shipping_over"):
            if key in terms:
                try:
                    out[key] = float(terms[key])
                except (TypeError, ValueError):
                    raise AdapterError(f"{where}: terms.{key} must be a number") from None
        if "checkout_steps" in terms:
            out["checkout_steps"] = int(terms["checkout_steps"])
        return out

    # ---- use ----------------------------------------------------------------------------------
    def start(self, base_url: str, merchant_id: str) -> str:
        return urljoin(base_url.rstrip("/") + "/", self.start_url.replace("{merchant}", merchant_id))

    def origins(self, base_url: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys((origin_of(self.start(base_url, "x")), *self.allowed_origins)))

    def page_spec(self) -> dict:
        """What the in-page reader (shop_js.READ_SHOP_JS) needs: selectors and JavaScript regexes."""
        def js(rec: dict) -> dict:
            out = dict(rec)
            for key in ("url", "text"):
                pat = rec.get(key, "")
                out[key + "_flags"] = "i" if pat.startswith("(?i)") else ""
                out[key] = pat[4:] if pat.startswith("(?i)") else pat
            return out

        return {"order": [k for k in PAGE_ORDER if k in self.pages], "pages": {k: js(v) for k, v in self.pages.items()},
                "header": {k: v for k, v in self.header.items()}, "cards": dict(self.cards),
                "product": dict(self.product), "cart": dict(self.cart), "checkout": dict(self.checkout),
                "steps": [{**js(s.recogniser), "submit": s.submit} for s in self.steps],
                "confirmation": dict(self.confirmation)}


def load_adapter(path: str | Path) -> ShopAdapter | GenericAdapter:
    """The adapter in a YAML file: a shop adapter when it declares `pages`, else a generic one."""
    raw = read_adapter_yaml(path)
    if isinstance(raw, dict) and "pages" in raw:
        return ShopAdapter.from_dict(raw, str(path))
    return GenericAdapter.from_dict(raw, str(path))
