"""Agent-training traces: each real session replayed as (observation, action) steps on the storefront model.

A session starts with `Visit(merchant)` on the home page of the merchant's `Shop` (catalog and
what-if knobs from `store:`, a merchant's own from `store.merchant_overrides`; preprocess adds there the
knobs of a synthetic input's merchant_knobs.json, transform.store_section, so traces show each merchant's
shipping fee, checkout step counter and related-product cards). Every canonical event, in session order, becomes the step(s) that make
the storefront log that event:

view         `open <slot>` of a product card. The card: the event's product when it is on the page,
             else the card whose price is nearest the event's price, else one picked by a stable hash
             of (product_id or history_id, seq). Pages without product cards (cart, checkout,
             confirmation; a product page without related products) are left first with
             `back` / `continue_shopping` (navigation steps).
cart         `add_to_cart` on a product page (elsewhere an `open` navigation step comes first);
favorite     `favorite`, likewise;
remove_cart  `view_cart` (navigation) then `remove <slot>` (the event's product when it is in the cart,
             else a hashed line); skipped, and counted, when the cart is empty;
search       `search <term>` from the home page (reached by navigation steps); the term is the shop
             category closest to the event's category (difflib), else a hashed category;
purchase     with items in the cart (and not on the page of a product outside it): `view_cart`,
             `checkout`, `continue` per extra checkout step, `place_order`; else `buy_now` on a
             product page (an `open` first elsewhere), `continue`s, `place_order`. Only `place_order`
             carries the event "purchase"; the confirmation page follows.
end          `leave`.

Each step row (contract preprocess -> persona): history_id, buyer_id, merchant_id (the shop's),
session_id, session_idx, step, observation = render(page before the action), allowed =
allowed_actions(that page), action (asserted to be in allowed), event (the replayed event, "" for
navigation), planted_type.

Only the most recent `traces.max_sessions_per_history` sessions of a history are replayed (0 = all),
of a `traces.history_fraction` of histories chosen by a stable hash; a session's events beyond
`traces.max_steps_per_session` steps are cut (counted as `truncated_events`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from collections import Counter
from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa

from simpersona.pages.catalog import Product, catalog_from_log, generate_catalog
from simpersona.pages.observation import PageState, allowed_actions, render
from simpersona.pages.shop import Knobs, Shop, Visit

TRACE_SCHEMA = pa.schema(
    [
        pa.field("history_id", pa.string()),
        pa.field("buyer_id", pa.string()),
        pa.field("merchant_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("session_idx", pa.int32()),
        pa.field("step", pa.int32()),
        pa.field("observation", pa.string()),
        pa.field("allowed", pa.list_(pa.string())),
        pa.field("action", pa.string()),
        pa.field("event", pa.string()),
        pa.field("planted_type", pa.int32()),
    ]
)
SKIP_REASONS: tuple[str, ...] = ("remove_cart_empty_cart", "truncated_events")
CARD_PAGES = ("home", "listing", "search", "product")
MAX_NAVIGATION = 12  # back/continue_shopping steps that always reach a page with cards on this model


class TraceError(RuntimeError):
    """The replay would take an action the page does not offer (a bug, never bad data)."""


def check(cfg) -> None:
    if cfg.max_sessions_per_history < 0 or cfg.max_steps_per_session < 0:
        raise ValueError("traces.max_sessions_per_history and traces.max_steps_per_session must be >= 0")
    if not 0.0 <= cfg.history_fraction <= 1.0:
        raise ValueError(f"traces.history_fraction={cfg.history_fraction}: must be in [0, 1]")


def stable_hash(*parts) -> int:
    """A hash that is the same in every process and on every machine (unlike hash())."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def keep_history(history_id: str, fraction: float) -> bool:
    return fraction >= 1.0 or stable_hash("trace-sample", history_id) < fraction * 2.0**64


# ---------------------------------------------------------------------------------------------------
# Catalogs and shops


def catalog_rows(products: pl.DataFrame) -> dict[str, list[tuple[str, str | None, float | None]]]:
    """merchant → its logged products, most frequent first (merged merchant statistics as input).

    Each row is (product_id, category, mean price); merchants whose log has no product ids are absent
    (their catalogs are generated)."""
    logged = products.filter(pl.col("product_id") != "").with_columns(
        pl.when(pl.col("price_n") > 0)
        .then(pl.col("price_cents").cast(pl.Float64) / 100.0 / pl.col("price_n").cast(pl.Float64))
        .alias("price")
    )
    out: dict[str, list] = {}
    for m, pid, cat, price in (
        logged.sort(["merchant_id", "n", "product_id"], descending=[False, True, False])
        .select("merchant_id", "product_id", "category", "price")
        .iter_rows()
    ):
        out.setdefault(m, []).append((pid, cat, price))
    return out


def top_catalog_rows(products: pl.DataFrame, n_products: int) -> dict[str, list]:
    return {m: rows[:n_products] for m, rows in catalog_rows(products).items()}


def as_mapping(cfg) -> dict:
    """A plain dict of a config section (dataclass, OmegaConf node or dict): picklable for Ray tasks."""
    if isinstance(cfg, dict):
        return cfg
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def build_catalog(merchant_id: str, rows: list | None, store: dict) -> list[Product]:
    n, seed = store["products_per_merchant"], store["catalog_seed"]
    if rows:
        return catalog_from_log(merchant_id, rows, n, seed)
    return generate_catalog(merchant_id, n, seed)


class Memo:
    """Page and transition caches shared by all shops of a worker, bounded in entries (then cleared)."""

    def __init__(self, limit: int = 200_000):
        self.limit = limit
        self.pages: dict[tuple, tuple[PageState, str, list[str]]] = {}
        self.moves: dict[tuple, Visit] = {}


class ReplayShop(Shop):
    """A Shop whose pages and transitions are memoised: replaying millions of events shows the same
    pages again and again. Page states are immutable and visits are only ever replaced (never
    mutated) by `Shop.apply`, so sharing them changes nothing the Shop would do."""

    def __init__(self, merchant_id: str, catalog: list[Product], knobs: Knobs, memo: Memo | None = None):
        super().__init__(merchant_id, catalog, knobs)
        self.memo = memo or Memo()

    def view(self, v: Visit) -> tuple[PageState, str, list[str]]:
        """(page state, its rendering, its allowed actions) for visit `v`."""
        key = (self.merchant_id, v.kind, v.query, v.page, v.product_id, v.checkout_step, tuple(v.cart), v.order_id)
        pages = self.memo.pages
        hit = pages.get(key)
        if hit is None:
            if len(pages) >= self.memo.limit:
                pages.clear()
            state = Shop.page_of(self, v)
            hit = pages[key] = (state, render(state), allowed_actions(state))
        return hit

    def page_of(self, v: Visit) -> PageState:
        return self.view(v)[0]

    def step(self, v: Visit, action: str, allowed: list[str]) -> Visit:
        """`Shop.apply` of `action`, memoised on (visit, action)."""
        key = (self.merchant_id, v.kind, v.query, v.page, v.product_id, v.checkout_step, v.back_to,
               tuple(v.cart), v.orders, v.order_id, v.ended, action)  # fmt: skip
        moves = self.memo.moves
        nxt = moves.get(key)
        if nxt is None:
            if len(moves) >= self.memo.limit:
                moves.clear()
            nxt = moves[key] = self.apply(v, action, allowed)[0]
        return nxt


# ---------------------------------------------------------------------------------------------------
# Replaying one session


class SessionReplay:
    """Replays one session's events; `steps` holds (observation, allowed, action, event) tuples."""

    def __init__(self, shop: ReplayShop, history_id: str, max_steps: int):
        self.shop = shop
        self.history_id = history_id
        self.max_steps = max_steps
        self.visit = Visit(shop.merchant_id)
        self.steps: list[tuple[str, list[str], str, str]] = []
        self.skipped: Counter = Counter()
        # False once a choice depended on the history id or an event's seq (a hashed fallback): only
        # then can the same events at the same merchant replay differently in another session
        self.reusable = True

    def _hashed(self, key, seq) -> int:
        self.reusable = False
        return stable_hash(key, seq)

    # -- primitives ---------------------------------------------------------------------------------
    def _do(self, action: str, event: str, out: list) -> None:
        _, obs, allowed = self.shop.view(self.visit)
        if action not in allowed:
            raise TraceError(
                f"history {self.history_id}: action {action!r} for event {event or 'navigation'!r} is not "
                f"offered on the {self.visit.kind} page (allowed: {allowed})"
            )
        out.append((obs, allowed, action, event))
        self.visit = self.shop.step(self.visit, action, allowed)

    def _state(self) -> PageState:
        return self.shop.view(self.visit)[0]

    def _to_cards(self, out: list) -> PageState:
        """Navigate (back / continue_shopping) until the page shows product cards."""
        for _ in range(MAX_NAVIGATION):
            state = self._state()
            if state.kind in CARD_PAGES and state.cards:
                return state
            self._do("continue_shopping" if state.kind == "confirmation" else "back", "", out)
        raise TraceError(
            f"history {self.history_id}: no page with product cards within {MAX_NAVIGATION} steps"
        )

    def _home(self, out: list) -> None:
        for _ in range(MAX_NAVIGATION):
            kind = self.visit.kind
            if kind == "home":
                return
            self._do("continue_shopping" if kind == "confirmation" else "back", "", out)
        raise TraceError(f"history {self.history_id}: home page not reached within {MAX_NAVIGATION} steps")

    def _pick(self, cards, product_id, price, seq) -> int:
        if product_id is not None:
            for c in cards:
                if c.product_id == product_id:
                    return c.slot
        if price is not None and price == price:  # not NaN
            return min(cards, key=lambda c: (abs(c.price - price), c.slot)).slot
        return cards[self._hashed(product_id or self.history_id, seq) % len(cards)].slot

    def _open_product(self, product_id, price, seq, event: str, out: list) -> None:
        state = self._to_cards(out)
        self._do(f"open {self._pick(state.cards, product_id, price, seq)}", event, out)

    def _on_product(self, product_id, price, seq, out: list) -> None:
        if self.visit.kind != "product":
            self._open_product(product_id, price, seq, "", out)

    # -- one event ----------------------------------------------------------------------------------
    def event_steps(self, event: str, product_id, category, price, seq) -> list | None:
        """The steps reproducing one event (applied to the visit), or None when it is skipped."""
        out: list = []
        if event == "view":
            self._open_product(product_id, price, seq, "view", out)
        elif event in ("cart", "favorite"):
            self._on_product(product_id, price, seq, out)
            self._do("add_to_cart" if event == "cart" else "favorite", event, out)
        elif event == "remove_cart":
            if not self.visit.cart:
                return None
            for _ in range(MAX_NAVIGATION):
                if self.visit.kind not in ("checkout",):
                    break
                self._do("back", "", out)
            if self.visit.kind != "cart":
                self._do("view_cart", "", out)
            cards = self._state().cards
            slot = next(
                (c.slot for c in cards if product_id is not None and c.product_id == product_id), None
            )
            if slot is None:
                slot = cards[self._hashed(product_id or self.history_id, seq) % len(cards)].slot
            self._do(f"remove {slot}", "remove_cart", out)
        elif event == "search":
            self._home(out)
            self._do(f"search {self._term(category, seq)}", "search", out)
        elif event == "purchase":
            self._purchase(product_id, price, seq, out)
        else:
            raise TraceError(f"history {self.history_id}: unknown event {event!r}")
        return out

    def _term(self, category, seq) -> str:
        cats = list(self._state().categories)
        if category:
            exact = [c for c in cats if c.lower() == str(category).lower()]
            close = exact or difflib.get_close_matches(str(category).lower(), cats, n=1, cutoff=0.6)
            if close:
                return close[0]
        return cats[self._hashed(category or self.history_id, seq) % len(cats)]

    def _purchase(self, product_id, price, seq, out: list) -> None:
        v = self.visit
        on_new_product = v.kind == "product" and v.product_id not in v.cart
        if v.cart and not on_new_product:
            if v.kind == "checkout":
                pass  # already on the way
            else:
                if v.kind != "cart":
                    if v.kind == "confirmation":  # cannot happen with items in the cart; be safe
                        self._do("continue_shopping", "", out)
                    self._do("view_cart", "", out)
                self._do("checkout", "", out)
        else:
            self._on_product(product_id, price, seq, out)
            self._do("buy_now", "", out)
        for _ in range(self.shop.knobs.checkout_steps + 1):
            if "place_order" in self.shop.view(self.visit)[2]:
                break
            self._do("continue", "", out)
        self._do("place_order", "purchase", out)

    # -- the session --------------------------------------------------------------------------------
    def run(self, events: Iterable[tuple]) -> list[tuple[str, list[str], str, str]]:
        """Replay (event, product_id, category, price, seq) rows in order, then `leave`."""
        for event, product_id, category, price, seq in events:
            if self.max_steps and self.skipped["truncated_events"]:
                self.skipped["truncated_events"] += 1
                continue
            before = self.visit
            out = self.event_steps(event, product_id, category, price, seq)
            if out is None:
                self.skipped[f"{event}_empty_cart"] += 1
                continue
            if self.max_steps and len(self.steps) + len(out) + 1 > self.max_steps:
                self.visit = before  # undo: the session is cut before this event
                self.skipped["truncated_events"] += 1
                continue
            self.steps.extend(out)
        self._do("leave", "", self.steps)
        return self.steps


# ---------------------------------------------------------------------------------------------------
# Many sessions → an Arrow table


class ShopCache:
    """The shops of one worker, built on first use (catalog rows from the merged merchant statistics).

    Shops are small (a catalog of store.products_per_merchant products); their pages live in one
    shared, bounded Memo."""

    def __init__(self, catalogs: dict[str, list], store_cfg, max_shops: int = 100_000,
                 memo_entries: int = 200_000, session_entries: int = 200_000):
        self.catalogs = catalogs
        self.store_cfg = as_mapping(store_cfg)
        self.max_shops = max_shops
        self.memo = Memo(memo_entries)
        self.shops: dict[str, ReplayShop] = {}
        # (merchant, session events without seq) → (steps, skip counts) of a replay that used no hashed
        # fallback: identical sessions are common (one view of a popular product), and replaying them
        # again would give the same steps
        self.sessions: dict[tuple, tuple[list, Counter]] = {}
        self.max_sessions = session_entries  # 0 = replay every session afresh

    def replay(self, merchant_id: str, history_id: str, events: list[tuple], max_steps: int) -> tuple[list, Counter]:
        """The steps and skip counts of one session (its (event, product_id, category, price, seq) rows)."""
        key = (merchant_id, max_steps, *((e, p, c, pr) for e, p, c, pr, _ in events))
        hit = self.sessions.get(key)
        if hit is not None:
            return hit
        replay = SessionReplay(self.get(merchant_id), history_id, max_steps)
        result = (replay.run(events), replay.skipped)
        if replay.reusable and self.max_sessions > 0:
            if len(self.sessions) >= self.max_sessions:
                self.sessions.clear()
            self.sessions[key] = result
        return result

    def get(self, merchant_id: str) -> ReplayShop:
        shop = self.shops.get(merchant_id)
        if shop is None:
            if len(self.shops) >= self.max_shops:
                self.shops.clear()
            knobs = Knobs.from_config(self.store_cfg, merchant_id)
            catalog = build_catalog(merchant_id, self.catalogs.get(merchant_id), self.store_cfg)
            shop = self.shops[merchant_id] = ReplayShop(merchant_id, catalog, knobs, self.memo)
        return shop


def build_traces(
    sessions: pl.DataFrame, shops: ShopCache, cfg, planted_types: dict[str, int] | None = None
) -> tuple[pa.Table, Counter, dict[str, int]]:
    """Sessionized events (`sessionize` order) → (trace steps, skip counts, steps per history).

    Steps are built in Python (the replay walks the storefront model), but every string column is
    assembled by Arrow: distinct pages are rendered once and expanded with `take`.
    """
    check(cfg)
    skipped: Counter = Counter({r: 0 for r in SKIP_REASONS})
    per_history: dict[str, int] = {}
    if sessions.height == 0:
        return TRACE_SCHEMA.empty_table(), skipped, per_history
    keep_n = cfg.max_sessions_per_history
    sel = sessions
    if keep_n:
        n_sess = pl.col("session_idx").max().over("history_id")
        sel = sel.filter(pl.col("session_idx") > n_sess - keep_n)
    if cfg.history_fraction <= 0.0:
        sel = sel.clear()
    elif cfg.history_fraction < 1.0:
        hids = sel["history_id"].unique().to_list()
        chosen = [h for h in hids if keep_history(h, cfg.history_fraction)]
        sel = sel.filter(pl.col("history_id").is_in(chosen))
    sid = sel["session_id"]
    if int((sid != sid.shift(1)).fill_null(True).sum()) != sid.n_unique():
        # whole-buyer histories interleave the sessions of their merchants: group them (stable, so the
        # (ts, seq) order inside each session stays)
        sel = sel.sort(["history_id", "session_idx"], maintain_order=True)
    if sel.height == 0:
        return TRACE_SCHEMA.empty_table(), skipped, per_history

    page_ids: dict[int, int] = {}  # id(allowed list) → row in the page table (pages are memoised)
    page_obs: list[str] = []
    page_allowed: list[list[str]] = []
    page_of_step: list[int] = []
    actions: list[str] = []
    events: list[str] = []
    meta_rows: list[int] = []  # per step: index of its session in `sess_meta`
    step_no: list[int] = []
    sess_meta: list[tuple] = []
    keep_alive: list = []  # allowed lists referenced by page_ids stay alive (ids stay unique)

    cols = ["history_id", "buyer_id", "merchant_id", "session_id", "session_idx",
            "event", "product_id", "category", "price", "seq"]  # fmt: skip
    rows = sel.select(cols).iter_rows()
    current = None
    buf: list[tuple] = []

    def flush(key):
        hid, buyer, merchant, sid, sidx = key
        steps, skips = shops.replay(merchant, hid, buf, cfg.max_steps_per_session)
        skipped.update(skips)
        m = len(sess_meta)
        sess_meta.append(key)
        for i, (obs, allowed, action, event) in enumerate(steps):
            pid = page_ids.get(id(allowed))
            if pid is None:
                pid = page_ids[id(allowed)] = len(page_obs)
                page_obs.append(obs)
                page_allowed.append(allowed)
                keep_alive.append(allowed)
            page_of_step.append(pid)
            actions.append(action)
            events.append(event)
            meta_rows.append(m)
            step_no.append(i)
        per_history[hid] = per_history.get(hid, 0) + len(steps)

    for hid, buyer, merchant, sid, sidx, event, product_id, category, price, seq in rows:
        key = (hid, buyer, merchant, sid, sidx)
        if key != current:
            if current is not None:
                flush(current)
                buf = []
            current = key
        buf.append((event, product_id, category, price, seq))
    flush(current)

    take_pages = pa.array(np.asarray(page_of_step, dtype=np.int64))
    take_meta = pa.array(np.asarray(meta_rows, dtype=np.int64))
    meta = list(zip(*sess_meta))
    types = planted_types or {}
    table = pa.Table.from_arrays(
        [
            pa.array(meta[0], pa.string()).take(take_meta),
            pa.array(meta[1], pa.string()).take(take_meta),
            pa.array(meta[2], pa.string()).take(take_meta),
            pa.array(meta[3], pa.string()).take(take_meta),
            pa.array(meta[4], pa.int32()).take(take_meta),
            pa.array(np.asarray(step_no, dtype=np.int32)),
            pa.array(page_obs, pa.string()).take(take_pages),
            pa.array(page_allowed, pa.list_(pa.string())).take(take_pages),
            pa.array(actions, pa.string()),
            pa.array(events, pa.string()),
            pa.array([types.get(h, -1) for h in meta[0]], pa.int32()).take(take_meta),
        ],
        schema=TRACE_SCHEMA,
    )
    return table, skipped, per_history
