"""The storefront web app (Starlette, served by uvicorn): many merchants under /m/{merchant}/.

Pages (GET; `page` is the listing page number):
    /m/{m}/?page=N          home              /m/{m}/c/{category}?page=N   category listing
    /m/{m}/search?q=T       search results    /m/{m}/p/{product}           product page
    /m/{m}/cart             cart              /m/{m}/checkout/{step}       checkout step
    /m/{m}/order/{order}    confirmation      /m/{m}/bye                   after leaving
    /m/{m}/here             303 to the page the session is on (how an agent re-syncs after a timeout)
Actions: POST /m/{m}/act with a=<action string> (and v=<page version>), answered 303 to the next page.

A session cookie (`sp_session`, with `sp_agent` = the buyer) selects a server-side `Visit` per
(session, merchant). Every action goes through `Shop.apply` and every page is `Shop.page_of(visit)`,
so the web shop and the trace model cannot disagree; the events `Shop.apply` returns are written to
the event log (durably, see eventlog.py) before the answer. A form carries the version of the
page it came from: a stale page (double submit, a retry after a timeout whose first try got
through) is redirected to the current page without acting again. Opening a page's URL directly
(a person's Back button or address bar) moves the visit there, logging what analytics would:
a product view for a product page, a search for a search page.
`?agent=<id>&session=<id>` on any page sets the cookies (for clients without a cookie API). Headers
`x-simpersona-agent` and `x-simpersona-session` on a request name its buyer and session ahead of any
cookie and set none: browser agents that share one cookie jar (browser.isolation=page) send them.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from simpersona.pages.shop import InvalidAction, LoggedEvent, Shop, Visit
from simpersona.store.eventlog import EventLog
from simpersona.store.html import render_message, render_page
from simpersona.store.shops import ShopSet, UnknownMerchant, store_section

log = logging.getLogger(__name__)

SESSION_COOKIE = "sp_session"
AGENT_COOKIE = "sp_agent"
AGENT_HEADER = "x-simpersona-agent"
SESSION_HEADER = "x-simpersona-session"
LIST_KINDS = ("home", "listing", "search")
NO_STORE = {"Cache-Control": "no-store"}


def q(part: str) -> str:
    return quote(str(part), safe="")


def canonical_url(v: Visit) -> str:
    """The URL of the page a visit is on (the target of every action's redirect)."""
    m = f"/m/{q(v.merchant_id)}"
    page = f"?page={v.page}" if v.page != 1 else ""
    if v.ended:
        return f"{m}/bye"
    if v.kind == "home":
        return f"{m}/{page}"
    if v.kind == "listing":
        return f"{m}/c/{q(v.query)}{page}"
    if v.kind == "search":
        return f"{m}/search?" + urlencode({"q": v.query} | ({"page": v.page} if v.page != 1 else {}))
    if v.kind == "product":
        return f"{m}/p/{q(v.product_id)}"
    if v.kind == "cart":
        return f"{m}/cart"
    if v.kind == "checkout":
        return f"{m}/checkout/{v.checkout_step}"
    if v.kind == "confirmation":
        return f"{m}/order/{q(v.order_id)}"
    raise ValueError(f"unknown page kind {v.kind!r}")


def position(v: Visit) -> tuple:
    """What a page URL determines about a visit (two visits at one position show the same page)."""
    k = v.kind
    return (k, v.query if k in ("listing", "search") else "", v.page if k in LIST_KINDS else 1,
            v.product_id if k == "product" else "", v.checkout_step if k == "checkout" else 0,
            v.order_id if k == "confirmation" else "")


def navigate(v: Visit, target: Visit, shop: Shop) -> tuple[Visit, list[LoggedEvent]]:
    """The visit after opening `target`'s URL directly, and the events analytics would log for it."""
    here = (v.kind, v.query, v.page)
    back = here if v.kind in LIST_KINDS else v.back_to
    events: list[LoggedEvent] = []
    k = target.kind
    if k in LIST_KINDS:
        v = replace(v, kind=k, query=target.query, page=target.page)
        if k == "search" and (here[0], here[1]) != ("search", target.query):
            events.append(LoggedEvent("search", None, target.query, None))
    elif k == "product":
        p = shop.by_id[target.product_id]
        v = replace(v, kind=k, product_id=p.product_id, back_to=back)
        events.append(LoggedEvent("view", p.product_id, p.category, shop.price(p)))
    elif k == "cart":
        v = replace(v, kind=k, back_to=back)
    elif k == "checkout":
        v = replace(v, kind=k, checkout_step=target.checkout_step)
    elif k == "confirmation":
        v = replace(v, kind=k)
    return v, events


@dataclass
class Tab:
    """Server-side state of one (session, merchant): the visit, its page version and its buyer."""

    visit: Visit
    version: int
    agent_id: str


class Storefront:
    """The web shop's state: the variant's shops, every session's visits, the event log."""

    def __init__(self, shops: ShopSet, event_log: EventLog):
        self.shops = shops
        self.log = event_log
        self.tabs: dict[tuple[str, str], Tab] = {}
        self.requests = 0
        self.actions = 0

    def tab(self, session_id: str, agent_id: str, merchant_id: str) -> Tab:
        key = (session_id, merchant_id)
        tab = self.tabs.get(key)
        if tab is None:
            tab = self.tabs[key] = Tab(Visit(merchant_id), 0, agent_id)
        return tab

    async def record(self, tab: Tab, session_id: str, events: list[LoggedEvent]) -> list[int]:
        rows = [{"buyer_id": tab.agent_id, "merchant_id": tab.visit.merchant_id, "event": e.event,
                 "product_id": e.product_id, "category": e.category, "price": e.price, "session_id": session_id}
                for e in events]
        return await self.log.append(rows)


def _html(text: str, status: int = 200, headers: dict | None = None) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers={**NO_STORE, **(headers or {})})


def _not_found(message: str, merchant_id: str = "") -> HTMLResponse:
    links = ((f"/m/{q(merchant_id)}/", "Back to the shop's home page"),) if merchant_id else (("/", "All shops"),)
    return _html(render_message("Not found", message, merchant_id, links), 404)


def _identity(request: Request) -> tuple[str, str, bool]:
    """(agent id, session id, whether the cookies must be set) of a request."""
    agent, session = request.headers.get(AGENT_HEADER), request.headers.get(SESSION_HEADER)
    if agent and session:
        return unquote(agent), unquote(session), False
    session = request.cookies.get(SESSION_COOKIE)
    agent = request.cookies.get(AGENT_COOKIE)
    if session and agent:
        return unquote(agent), unquote(session), False
    session = unquote(session) if session else uuid.uuid4().hex
    return (unquote(agent) if agent else f"anon-{session[:8]}"), session, True


def _set_identity(resp: Response, agent: str, session: str) -> Response:
    resp.set_cookie(AGENT_COOKIE, q(agent), path="/", httponly=True, samesite="lax")
    resp.set_cookie(SESSION_COOKIE, q(session), path="/", httponly=True, samesite="lax")
    return resp


def _int(value: str | None, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {value!r}") from None


def create_app(cfg: Any = None, log_dir: str | Path | None = None, variant: str | None = None,
               merchants: list[str] | None = None) -> Starlette:
    """The storefront of `variant` (default store.variant) logging to `log_dir`.

    `cfg` is the whole config or its `store` section (None = defaults); `merchants` overrides
    store.merchants. `log_dir` None = store.log_dir, else <run_dir>/store/<variant>/events.
    """
    store = store_section(cfg)
    shops = ShopSet(store, variant, merchants)
    if log_dir is None:
        if store.get("log_dir"):
            log_dir = store["log_dir"]
        else:
            run_dir = cfg.get("run_dir", "runs/default") if cfg is not None and "run_dir" in cfg else "runs/default"
            log_dir = Path(run_dir) / "store" / shops.variant / "events"
    if shops.variant not in (store.get("variants") or {}):
        log.info("store variant %r has no overrides in store.variants: the store knobs apply", shops.variant)
    front = Storefront(shops, EventLog(log_dir, shops.variant, int(store.get("log_shard_rows", 20000)),
                                       bool(store.get("log_fsync", True))))

    def shop_of(merchant: str) -> Shop:
        try:
            return shops.shop(merchant)
        except UnknownMerchant as exc:
            raise HTTPException(404, str(exc)) from None

    async def show(request: Request, merchant: str, target: Visit | None) -> Response:
        """Answer a page GET: move the session's visit to `target` (None = stay) and render it."""
        shop = shop_of(merchant)
        front.requests += 1
        if "agent" in request.query_params or "session" in request.query_params:
            rest = {k: v for k, v in request.query_params.items() if k not in ("agent", "session")}
            agent = request.query_params.get("agent") or _identity(request)[0]
            session = request.query_params.get("session") or uuid.uuid4().hex
            url = request.url.path + ("?" + urlencode(rest) if rest else "")
            return _set_identity(RedirectResponse(url, 303, headers=NO_STORE), agent, session)
        agent, session, new = _identity(request)
        tab = front.tab(session, agent, merchant)
        if tab.visit.ended and target is not None:  # back after leaving: a new visit of the same session
            tab.visit, tab.version = Visit(merchant), tab.version + 1
        if target is None and tab.visit.ended:
            resp = _html(render_message("Goodbye", f"You left shop {merchant}.", merchant,
                                        ((f"/m/{q(merchant)}/", "Enter the shop again"),), kind="ended"))
            return _set_identity(resp, agent, session) if new else resp
        if target is not None and target.kind in LIST_KINDS:
            clamped = shop.page_of(target).page
            if clamped != target.page:
                return RedirectResponse(canonical_url(replace(target, page=clamped)), 303, headers=NO_STORE)
        if target is not None and position(target) != position(tab.visit):
            visit, events = navigate(tab.visit, target, shop)
            tab.visit, tab.version = visit, tab.version + 1
            await front.record(tab, session, events)
        resp = _html(render_page(shop.page_of(tab.visit), tab.version))
        return _set_identity(resp, agent, session) if new else resp

    async def home(request: Request) -> Response:
        m = request.path_params["merchant"]
        return await show(request, m, Visit(m, "home", page=_int(request.query_params.get("page"), 1, "page")))

    async def listing(request: Request) -> Response:
        m, cat = request.path_params["merchant"], request.path_params["category"]
        if cat not in shop_of(m).categories:
            return _not_found(f"merchant {m!r} has no category {cat!r}", m)
        return await show(request, m, Visit(m, "listing", query=cat,
                                            page=_int(request.query_params.get("page"), 1, "page")))

    async def search(request: Request) -> Response:
        m = request.path_params["merchant"]
        term = request.query_params.get("q", "").strip()
        if not term:
            return RedirectResponse(f"/m/{q(m)}/", 303, headers=NO_STORE)
        return await show(request, m, Visit(m, "search", query=term,
                                            page=_int(request.query_params.get("page"), 1, "page")))

    async def product(request: Request) -> Response:
        m, pid = request.path_params["merchant"], request.path_params["product"]
        if pid not in shop_of(m).by_id:
            return _not_found(f"merchant {m!r} has no product {pid!r}", m)
        return await show(request, m, Visit(m, "product", product_id=pid))

    async def cart(request: Request) -> Response:
        m = request.path_params["merchant"]
        return await show(request, m, Visit(m, "cart"))

    async def checkout(request: Request) -> Response:
        m, step = request.path_params["merchant"], request.path_params["step"]
        steps = shop_of(m).knobs.checkout_steps
        if not 1 <= step <= steps:
            return _not_found(f"merchant {m!r} has checkout steps 1..{steps}, not {step}", m)
        agent, session, _ = _identity(request)
        if not front.tab(session, agent, m).visit.cart:
            return RedirectResponse(f"/m/{q(m)}/cart", 303, headers=NO_STORE)
        return await show(request, m, Visit(m, "checkout", checkout_step=step))

    async def order(request: Request) -> Response:
        m, oid = request.path_params["merchant"], request.path_params["order"]
        shop_of(m)
        agent, session, _ = _identity(request)
        if front.tab(session, agent, m).visit.order_id != oid:
            return _not_found(f"no order {oid!r} in this session at merchant {m!r}", m)
        return await show(request, m, Visit(m, "confirmation", order_id=oid))

    async def bye(request: Request) -> Response:
        m = request.path_params["merchant"]
        agent, session, _ = _identity(request)
        if not front.tab(session, agent, m).visit.ended:
            return RedirectResponse(f"/m/{q(m)}/here", 303, headers=NO_STORE)
        return await show(request, m, None)

    async def here(request: Request) -> Response:
        m = request.path_params["merchant"]
        shop_of(m)
        agent, session, _ = _identity(request)
        return RedirectResponse(canonical_url(front.tab(session, agent, m).visit), 303, headers=NO_STORE)

    async def act(request: Request) -> Response:
        m = request.path_params["merchant"]
        shop = shop_of(m)
        front.requests += 1
        form = parse_qs((await request.body()).decode(), keep_blank_values=True)
        action = (form.get("a") or [""])[0]
        version = form.get("v", [None])[0]
        agent, session, new = _identity(request)
        tab = front.tab(session, agent, m)
        if tab.visit.ended or (version is not None and _int(version, -1, "v") != tab.version):
            resp = RedirectResponse(canonical_url(tab.visit), 303, headers={**NO_STORE, "X-Stale": "1"})
        else:
            try:
                visit, events = shop.apply(tab.visit, action)
            except InvalidAction as exc:
                return _html(render_message("Action not available", f"{exc}.", m,
                                            ((canonical_url(tab.visit), "Back to the page"),)), 409)
            tab.visit, tab.version = visit, tab.version + 1
            seqs = await front.record(tab, session, events)
            front.actions += 1
            resp = RedirectResponse(canonical_url(visit), 303,
                                    headers={**NO_STORE, "X-Logged-Seqs": ",".join(map(str, seqs))})
        return _set_identity(resp, agent, session) if new else resp

    async def index(request: Request) -> Response:
        links = tuple((f"/m/{q(m)}/", f"Shop {m}") for m in shops.merchants)
        return _html(render_message("SimPersona storefront", f"{len(shops.merchants)} shops "
                                    f"(variant {shops.variant}).", links=links))

    async def health(request: Request) -> Response:
        return PlainTextResponse(f"ok requests={front.requests} actions={front.actions} "
                                 f"events={front.log.rows_written}")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":
            return _not_found(f"no page at {request.url.path}")
        merchant = request.path_params.get("merchant", "") if exc.status_code != 404 else ""
        title = "Not found" if exc.status_code == 404 else "Bad request"
        return _html(render_message(title, str(exc.detail), merchant), exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        front.log.open()
        try:
            yield
        finally:
            front.log.close()

    routes = [
        Route("/", index), Route("/healthz", health),
        Route("/m/{merchant}/", home), Route("/m/{merchant}/c/{category:path}", listing),
        Route("/m/{merchant}/search", search), Route("/m/{merchant}/p/{product:path}", product),
        Route("/m/{merchant}/cart", cart), Route("/m/{merchant}/checkout/{step:int}", checkout),
        Route("/m/{merchant}/order/{order:path}", order), Route("/m/{merchant}/bye", bye),
        Route("/m/{merchant}/here", here), Route("/m/{merchant}/act", act, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.storefront = front
    return app
