"""A guest buys one product from the real third-party shop (django-oscar) through its own HTML forms,
without a browser: product page -> basket -> checkout gateway (guest e-mail) -> shipping address ->
shipping method -> payment details -> preview -> place order -> thank-you. The shop's own records
(Oscar's Order model) must show exactly one more order. This is the path an agent takes; see
thirdparty/oscar/PAGES.md for the selectors."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.parse
import urllib.request
from html.parser import HTMLParser


class _Page(HTMLParser):
    """The forms (action, method, id, fields with their default values) and links of one page."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self.links: list[dict] = []
        self._form = None
        self._textarea = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._form = {"id": a.get("id", ""), "action": a.get("action", ""),
                          "method": a.get("method", "get").lower(), "fields": {}}
            self.forms.append(self._form)
        elif tag == "a" and "href" in a:
            self.links.append(a)
        elif self._form is not None and tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind in ("radio", "checkbox"):
                if "checked" in a:
                    self._form["fields"][a["name"]] = a.get("value", "on")
            elif kind not in ("submit", "button", "image"):
                self._form["fields"][a["name"]] = a.get("value", "")
        elif self._form is not None and tag in ("select", "textarea") and a.get("name"):
            self._form["fields"][a["name"]] = ""
            self._textarea = a["name"] if tag == "textarea" else None

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None

    def form(self, **match) -> dict:
        """The first form whose id/action equals the given value, or that has the given field."""
        for f in self.forms:
            field = match.get("field")
            if field is not None and field in f["fields"] and match.get("value", f["fields"][field]) == f["fields"][field]:
                return f
            if match.get("id") and f["id"] == match["id"]:
                return f
        raise AssertionError(f"no form matching {match}; forms: {[(f['id'], f['action'], list(f['fields'])) for f in self.forms]}")


class _Client:
    """urllib with a cookie jar; posts forms with the Referer a browser would send."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.url = base_url + "/"
        self.html = ""

    def _open(self, url: str, data: dict | None = None) -> _Page:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(urllib.parse.urljoin(self.url, url), data=body, headers={"Referer": self.url})
        with self.opener.open(req, timeout=30) as resp:
            assert resp.status == 200, (url, resp.status)
            self.html = resp.read().decode()
            self.url = resp.geturl()
        return _Page(self.html)

    def get(self, url: str) -> _Page:
        return self._open(url)

    def submit(self, form: dict, **values) -> _Page:
        assert form["method"] == "post", form
        return self._open(form["action"] or self.url, {**form["fields"], **values})

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.url).path


def test_guest_checkout_places_one_order_in_the_shops_own_records(oscar_shop):
    before = oscar_shop.order_count()
    c = _Client(oscar_shop.base_url)

    listing = c.get("/catalogue/")
    assert re.search(r"<strong>24</strong>\s*results", c.html), "the seeded catalogue lists 24 products"
    link = next(a for a in listing.links if a.get("title") == "Cast Iron Skillet")  # h3 > a[title] of a card

    product = c.get(link["href"])
    assert re.fullmatch(r"/catalogue/[\w-]+_\d+/", c.path), c.path
    assert '<p class="price_color">$34.00</p>' in c.html
    c.submit(product.form(id="add_to_basket_form"))  # redirects back to the product page
    assert "has been added to your cart" in c.html

    basket = c.get("/basket/")
    assert basket.form(id="basket_formset")["fields"]["form-0-quantity"] == "1"
    assert re.search(r"Standard delivery\s*</th>\s*<th[^>]*>\s*\$4\.95", c.html), "the shipping fee is shown"
    checkout = next(a["href"] for a in basket.links if a["href"] == "/checkout/")

    gateway = c.get(checkout)
    assert c.path == "/checkout/"
    address = c.submit(gateway.form(field="username"), username="ada.guest@example.com", options="anonymous")
    assert c.path == "/checkout/shipping-address/", c.path

    methods = c.submit(
        address.form(id="new_shipping_address"),
        first_name="Ada", last_name="Guest", line1="1 Loopback Road", line4="Springfield",
        state="IL", postcode="62701", country="US",
    )
    assert c.path == "/checkout/shipping-method/", c.path
    payment = c.submit(methods.form(field="method_code", value="standard-delivery"))
    assert c.path == "/checkout/payment-details/", c.path

    preview = c.get(next(a["href"] for a in payment.links if a.get("id") == "view_preview"))
    assert c.path == "/checkout/preview/", c.path
    assert re.search(r"Order total</h3></th>\s*<td[^>]*>\s*<h3 class=\"price_color\">\s*\$38\.95", c.html)

    c.submit(preview.form(id="place_order_form"))
    assert c.path == "/checkout/thank-you/", c.path
    number = re.search(r"your order number is\s*<strong>(\d+)</strong>", c.html)
    assert number, "the confirmation page shows the order number"

    assert oscar_shop.order_count() == before + 1
