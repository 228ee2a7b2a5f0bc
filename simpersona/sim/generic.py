"""Generic storefronts: an adapter YAML instead of the project's data attributes.

    name: example
    start_url: /m/{merchant}/          # absolute, or relative to the environment's base URL
    allowed_origins: []                # besides the start URL's origin
    max_elements: 40                   # interactive elements listed per page
    settle_s: 0.3                      # wait after a click for in-page (non-navigating) changes
    javascript: true
    recognisers:                       # every given condition must hold
      product_page: {url: "/p/[^/?#]+$", selector: "[data-product]", text: "(?i)add to cart"}
      add_to_cart:  {text: "(?i)add to cart"}          # tested on the clicked element
      order_placed: {url: "/order/", text: "(?i)order placed"}

Observation: the page title and path, then the visible, enabled, on-origin links and buttons,
numbered; actions are `click <n>`, `back` and `leave`. Recognisers turn pages and clicks into the
canonical events (view on a product page, cart on an add-to-cart click, purchase when an order is
placed), since a foreign storefront keeps no log for us.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import yaml

RECOGNISERS = ("product_page", "add_to_cart", "order_placed")


class AdapterError(ValueError):
    """An adapter YAML that cannot be used; the message names the file and the key."""


def origin_of(url: str) -> str:
    """The origin a browser computes for `url` (scheme://host[:port], default ports dropped)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        return "null"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port
    except ValueError:
        return "null"
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def read_adapter_yaml(path: str | Path):
    """The parsed YAML of an adapter file; a one-line AdapterError when it is missing or malformed."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"adapter file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise AdapterError(f"cannot parse adapter {path}: {exc}") from None


@dataclass(frozen=True)
class Recogniser:
    url: str = ""
    selector: str = ""
    text: str = ""

    @property
    def empty(self) -> bool:
        return not (self.url or self.selector or self.text)


@dataclass(frozen=True)
class GenericAdapter:
    name: str
    start_url: str
    allowed_origins: tuple[str, ...] = ()
    max_elements: int = 40
    settle_s: float = 0.3
    javascript: bool = True
    recognisers: dict[str, Recogniser] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> GenericAdapter:
        return cls.from_dict(read_adapter_yaml(path), str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "adapter") -> GenericAdapter:
        if not isinstance(raw, dict):
            raise AdapterError(f"{where}: expected a mapping, got {type(raw).__name__}")
        known = {"name", "start_url", "allowed_origins", "max_elements", "settle_s", "javascript", "recognisers"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise AdapterError(f"{where}: unknown key(s) {unknown}; expected {sorted(known)}")
        if not raw.get("start_url"):
            raise AdapterError(f"{where}: start_url is required")
        recs = {}
        for name, spec in (raw.get("recognisers") or {}).items():
            if name not in RECOGNISERS:
                raise AdapterError(f"{where}: unknown recogniser {name!r}; expected one of {RECOGNISERS}")
            bad = sorted(set(spec or {}) - {"url", "selector", "text"})
            if bad:
                raise AdapterError(f"{where}: recognisers.{name} has unknown key(s) {bad}; use url/selector/text")
            rec = Recogniser(**{k: str(v) for k, v in (spec or {}).items()})
            for key in ("url", "text"):
                try:
                    re.compile(getattr(rec, key))
                except re.error as exc:
                    raise AdapterError(f"{where}: recognisers.{name}.{key} is not a valid regex: {exc}") from None
            if rec.empty:
                raise AdapterError(f"{where}: recognisers.{name} needs at least one of url/selector/text")
            recs[name] = rec
        origins = tuple(str(o).rstrip("/") for o in raw.get("allowed_origins") or ())
        for o in origins:
            if origin_of(o) != o:
                raise AdapterError(f"{where}: allowed_origins entry {o!r} is not an origin (scheme://host[:port])")
        return cls(name=str(raw.get("name") or Path(where).stem), start_url=str(raw["start_url"]),
                   allowed_origins=origins, max_elements=int(raw.get("max_elements", 40)),
                   settle_s=float(raw.get("settle_s", 0.3)), javascript=bool(raw.get("javascript", True)),
                   recognisers=recs)

    def start(self, base_url: str, merchant_id: str) -> str:
        return urljoin(base_url.rstrip("/") + "/", self.start_url.replace("{merchant}", merchant_id))

    def origins(self, base_url: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys((origin_of(self.start(base_url, "x")), *self.allowed_origins)))

    def selectors(self) -> dict[str, str]:
        """Recogniser selectors evaluated in the page by SNAPSHOT_JS."""
        return {name: r.selector for name, r in self.recognisers.items() if r.selector}

    def page_is(self, name: str, snap: dict) -> bool:
        """Whether the snapshot's page is a `name` page (product_page / order_placed)."""
        rec = self.recognisers.get(name)
        if rec is None:
            return False
        path = urlsplit(snap["url"])
        where = path.path + (f"?{path.query}" if path.query else "")
        return ((not rec.url or re.search(rec.url, where) is not None)
                and (not rec.selector or bool(snap["present"].get(name)))
                and (not rec.text or re.search(rec.text, snap["text"]) is not None))

    def is_add_to_cart(self, element: dict) -> bool:
        rec = self.recognisers.get("add_to_cart")
        if rec is None:
            return False
        return ((not rec.selector or bool(element["matches"].get("add_to_cart")))
                and (not rec.text or re.search(rec.text, element["text"]) is not None))

    @staticmethod
    def observation(snap: dict) -> tuple[str, list[str]]:
        """(text, allowed actions) of a generic snapshot."""
        parts = urlsplit(snap["url"])
        where = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"page: {snap['title'] or '(untitled)'} | url: {where}"]
        lines += [f"[{e['idx']}] {e['kind']}: {e['text']}" for e in snap["elements"]]
        return "\n".join(lines), [f"click {e['idx']}" for e in snap["elements"]] + ["back", "leave"]
