"""The web shop over HTTP (in-process): transitions through Shop.apply, logging, errors, sessions."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from simpersona.pages.observation import allowed_actions
from simpersona.pages.shop import Visit
from simpersona.store.app import canonical_url, create_app
from simpersona.store.eventlog import read_events
from simpersona.store.html import render_page
from simpersona.store.shops import ShopSet

STORE = {"merchants": ["m1", "m2"], "products_per_merchant": 14, "catalog_seed": 7, "checkout_steps": 2,
         "variants": {"pricey": {"price_multiplier": 2.0}}, "log_shard_rows": 1000}


@pytest.fixture()
def client(tmp_path):
    app = create_app({"store": STORE}, log_dir=tmp_path / "events", variant="baseline")
    with TestClient(app, base_url="http://shop.test") as c:
        c.get("/m/m1/?agent=a1&session=s1")
        yield c


def actions_in(html: str) -> list[str]:
    return re.findall(r'data-action="([^"]*)"', html)


def version_in(html: str) -> str:
    return re.search(r'data-version="(\d+)"', html).group(1)


def test_actions_follow_shop_apply_and_log_its_events(client, tmp_path):
    shop = ShopSet({"store": STORE}).shop("m1")
    visit, expected = Visit("m1"), []
    page = client.get("/m/m1/").text
    for action in ["category " + shop.categories[1], "open 2", "add_to_cart", "favorite", "open 1", "buy_now",
                   "back", "back", "view_cart", "remove 1", "checkout", "continue", "place_order"]:
        assert action in actions_in(page)
        r = client.post("/m/m1/act", data={"a": action, "v": version_in(page)}, follow_redirects=False)
        visit, events = shop.apply(visit, action)
        assert r.status_code == 303 and r.headers["location"] == canonical_url(visit)
        assert len(r.headers["x-logged-seqs"].split(",")) == len(events) or not events
        expected += events
        page = client.get(r.headers["location"]).text
        assert actions_in(page) == allowed_actions(shop.page_of(visit))
        assert page == render_page(shop.page_of(visit), int(version_in(page)))
    client.close()
    log = read_events(tmp_path / "events").to_pylist()
    assert [(e["event"], e["product_id"], e["category"], e["price"]) for e in log] == [
        (e.event, e.product_id, e.category, e.price) for e in expected]
    assert {(e["buyer_id"], e["session_id"], e["merchant_id"], e["variant"]) for e in log} == {
        ("a1", "s1", "m1", "baseline")}
    assert [e["event"] for e in log].count("purchase") == 1


def test_stale_page_and_invalid_action_do_not_act(client, tmp_path):
    page = client.get("/m/m1/").text
    v = version_in(page)
    r = client.post("/m/m1/act", data={"a": "open 1", "v": v}, follow_redirects=False)
    assert "x-stale" not in r.headers
    again = client.post("/m/m1/act", data={"a": "open 1", "v": v}, follow_redirects=False)  # double submit
    assert again.status_code == 303 and again.headers["x-stale"] == "1"
    assert again.headers["location"] == r.headers["location"]
    bad = client.post("/m/m1/act", data={"a": "next_page"})
    assert bad.status_code == 409
    assert "action &#x27;next_page&#x27; not offered on the product page." in bad.text
    client.close()
    assert [e["event"] for e in read_events(tmp_path / "events").to_pylist()] == ["view"]


def test_unknown_merchant_product_category_step_and_path_are_404_with_a_message(client):
    cases = {
        "/m/zz/": "unknown merchant &#x27;zz&#x27; (this storefront serves 2 merchant(s): m1, m2)",
        "/m/m1/p/nope": "merchant &#x27;m1&#x27; has no product &#x27;nope&#x27;",
        "/m/m1/c/nope": "merchant &#x27;m1&#x27; has no category &#x27;nope&#x27;",
        "/m/m1/checkout/9": "merchant &#x27;m1&#x27; has checkout steps 1..2, not 9",
        "/m/m1/order/m1-o7": "no order &#x27;m1-o7&#x27; in this session at merchant &#x27;m1&#x27;",
        "/nowhere": "no page at /nowhere",
    }
    for path, message in cases.items():
        r = client.get(path)
        assert r.status_code == 404, path
        assert message in r.text, (path, r.text[-400:])
    assert client.get("/m/m1/?page=x").status_code == 400


def test_direct_navigation_logs_what_analytics_would(client, tmp_path):
    shop = ShopSet({"store": STORE}).shop("m1")
    p = shop.catalog[3]
    assert client.get(f"/m/m1/p/{p.product_id}").status_code == 200
    assert client.get(f"/m/m1/p/{p.product_id}").status_code == 200  # a reload is not a new view
    assert 'data-page="search"' in client.get("/m/m1/search?q=tea").text
    assert client.get("/m/m1/checkout/1", follow_redirects=False).headers["location"] == "/m/m1/cart"
    far = client.get("/m/m1/?page=99", follow_redirects=False)
    assert far.status_code == 303 and far.headers["location"] == "/m/m1/?page=3"
    client.close()
    log = read_events(tmp_path / "events").to_pylist()
    assert [(e["event"], e["product_id"], e["category"]) for e in log] == [
        ("view", p.product_id, p.category), ("search", None, "tea")]
    assert log[0]["price"] == shop.price(p)


def test_sessions_are_separate_and_here_points_to_the_current_page(client):
    client.post("/m/m1/act", data={"a": "open 2"})
    assert client.get("/m/m1/here", follow_redirects=False).headers["location"].startswith("/m/m1/p/")
    assert client.get("/m/m2/here", follow_redirects=False).headers["location"] == "/m/m2/"  # other merchant
    other = TestClient(client.app, base_url="http://shop.test")
    other.get("/m/m1/?agent=b&session=s2")
    assert other.get("/m/m1/here", follow_redirects=False).headers["location"] == "/m/m1/"
    assert other.cookies["sp_agent"] == "b"



def test_identity_headers_name_the_session_ahead_of_cookies_and_set_none(client, tmp_path):
    """Agents that share one cookie jar (browser.isolation=page) send their buyer and session as headers:
    two of them on one client keep apart, ahead of the client's cookie (a1/s1), and no cookie is set."""
    def as_agent(agent: str, session: str) -> dict:
        return {"x-simpersona-agent": agent, "x-simpersona-session": session}

    r = client.post("/m/m1/act", data={"a": "open 2"}, headers=as_agent("h1", "t1"), follow_redirects=False)
    assert r.headers["location"].startswith("/m/m1/p/") and "set-cookie" not in r.headers
    assert client.get("/m/m1/here", headers=as_agent("h2", "t2"), follow_redirects=False).headers["location"] == "/m/m1/"
    assert client.get("/m/m1/here", headers=as_agent("h1", "t1"), follow_redirects=False).headers["location"] == \
        r.headers["location"]
    assert client.get("/m/m1/here", follow_redirects=False).headers["location"] == "/m/m1/"  # the cookie's a1/s1
    client.close()
    views = [(e["buyer_id"], e["session_id"]) for e in read_events(tmp_path / "events").to_pylist()]
    assert views == [("h1", "t1")]

def test_leave_ends_the_visit(client):
    r = client.post("/m/m1/act", data={"a": "leave"})
    assert r.url.path == "/m/m1/bye" and 'data-page="ended"' in r.text
    assert client.post("/m/m1/act", data={"a": "open 1"}, follow_redirects=False).headers["location"] == "/m/m1/bye"
    assert 'data-page="home"' in client.get("/m/m1/").text  # coming back starts a new visit


def test_variant_knobs_show_on_the_pages(tmp_path):
    base = ShopSet({"store": STORE}).shop("m1").catalog[0].price
    with TestClient(create_app({"store": STORE}, tmp_path / "ev", variant="pricey")) as c:
        page = c.get("/m/m1/").text
    assert f'data-price="{round(base * 2, 2)!r}"' in page
    assert "variant pricey" in TestClient(create_app({"store": STORE}, tmp_path / "ev2", "pricey")).get("/").text
