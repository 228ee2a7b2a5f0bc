"""In-page JavaScript of the browser environment: DOM -> PageState, clicks, the generic snapshot.

An element counts as an action only when it is visible, enabled, and (for links and form buttons)
its target is on an allowed origin: the action set is closed, whatever the page's text says.
The same filter picks the element a click goes to, so an excluded duplicate is never clicked.
"""

from __future__ import annotations

from simpersona.pages.observation import Card, PageState

# Shared helpers, prepended to each function body (`origins` is in scope).
_PRELUDE = r"""
  const allowedOrigins = new Set(origins);
  const onOrigin = (u) => { try { return allowedOrigins.has(new URL(u, document.baseURI).origin); }
                            catch (e) { return false; } };
  const target = (el) => {
    if (el.tagName === 'A' || el.tagName === 'AREA') return el.getAttribute('href') === null ? null : el.href;
    if (el.form && (el.type === 'submit' || el.type === 'image' || el.tagName === 'BUTTON' && !el.type)) {
      return el.hasAttribute('formaction') ? el.formAction : el.form.action;
    }
    return null;
  };
  const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  const usable = (el) => !el.disabled && visible(el) && (target(el) === null || onOrigin(target(el)));
"""

# -> {kind, actions, version, url, state} ; state is None on pages without #sp-page ; {loading: true}
# while the document is still being parsed
EXTRACT_JS = "(origins) => {" + _PRELUDE + r"""
  if (document.readyState === 'loading') return {loading: true};
  const actions = [];
  for (const el of document.querySelectorAll('[data-action]')) if (usable(el)) actions.push(el.dataset.action);
  const root = document.getElementById('sp-page');
  if (!root) {
    const msg = document.querySelector('[data-page]');
    return {kind: msg ? msg.dataset.page : null, actions, version: null, url: location.href, state: null};
  }
  const d = root.dataset;
  const card = (e) => ({slot: parseInt(e.dataset.slot, 10), product_id: e.dataset.productId, name: e.dataset.name,
                        price: parseFloat(e.dataset.price), category: e.dataset.category});
  const p = root.querySelector('[data-product]');
  return {kind: d.page, actions, version: d.version, url: location.href, state: {
    kind: d.page, merchant_id: d.merchant, cart_count: parseInt(d.cart, 10),
    cards: Array.from(root.querySelectorAll('[data-card]'), card), product: p ? card(p) : null,
    categories: Array.from(root.querySelectorAll('[data-category-link]'), (e) => e.dataset.categoryLink),
    query: d.query, page: parseInt(d.pageNum, 10), has_next: d.hasNext === '1',
    checkout_step: parseInt(d.checkoutStep, 10), checkout_steps: parseInt(d.checkoutSteps, 10),
    subtotal: parseFloat(d.subtotal), shipping: parseFloat(d.shipping),
    free_shipping_over: parseFloat(d.freeShippingOver), banner: d.banner, order_id: d.orderId}};
}"""

# ([action, origins, click]) -> index among [data-action] elements of the usable one, or -1; clicks it
# in the page when `click` (dom mode); mouse mode clicks that index with Playwright afterwards.
FIND_ACTION_JS = "([action, origins, click]) => {" + _PRELUDE + r"""
  const all = document.querySelectorAll('[data-action]');
  for (let i = 0; i < all.length; i++) {
    if (all[i].dataset.action === action && usable(all[i])) { if (click) all[i].click(); return i; }
  }
  return -1;
}"""

# ([origins, maxElements, selectors]) -> generic snapshot; tags the listed elements with data-sp-idx
SNAPSHOT_JS = "([origins, maxElements, selectors]) => {" + _PRELUDE + r"""
  if (document.readyState === 'loading') return {loading: true};
  for (const el of document.querySelectorAll('[data-sp-idx]')) el.removeAttribute('data-sp-idx');
  const query = 'a[href], button, input[type=submit], input[type=button], input[type=image], [role=button], [role=link]';
  const elements = [];
  for (const el of document.querySelectorAll(query)) {
    if (elements.length >= maxElements) break;
    if (!usable(el)) continue;
    const raw = el.getAttribute('aria-label') || el.innerText || el.value || el.title || el.alt || '';
    const text = raw.replace(/\s+/g, ' ').trim().slice(0, 80);
    if (!text) continue;
    const idx = elements.length + 1;
    el.setAttribute('data-sp-idx', String(idx));
    const link = el.tagName === 'A' || el.getAttribute('role') === 'link';
    const matches = {};
    for (const [name, sel] of Object.entries(selectors)) { try { matches[name] = el.matches(sel); } catch (e) { matches[name] = false; } }
    elements.push({idx, kind: link ? 'link' : 'button', text, matches});
  }
  const present = {};
  for (const [name, sel] of Object.entries(selectors)) {
    try { present[name] = document.querySelector(sel) !== null; } catch (e) { present[name] = false; }
  }
  return {title: document.title, url: location.href, elements, present,
          text: document.body ? document.body.innerText.slice(0, 20000) : ''};
}"""

# ([idx, origins, click]) -> whether element data-sp-idx=idx is still there and usable; clicks it (dom mode)
CLICK_INDEX_JS = "([idx, origins, click]) => {" + _PRELUDE + r"""
  const el = document.querySelector(`[data-sp-idx="${idx}"]`);
  if (!el || !usable(el)) return false;
  if (click) el.click();
  return true;
}"""


def _card(d: dict) -> Card:
    return Card(int(d["slot"]), str(d["product_id"]), str(d["name"]), float(d["price"]), str(d["category"]))


def state_from_dom(s: dict) -> PageState:
    """The PageState that EXTRACT_JS read from a storefront page."""
    return PageState(
        kind=s["kind"], merchant_id=s["merchant_id"], cart_count=int(s["cart_count"]),
        cards=tuple(_card(c) for c in s["cards"]), product=_card(s["product"]) if s["product"] else None,
        categories=tuple(s["categories"]), query=s["query"], page=int(s["page"]), has_next=bool(s["has_next"]),
        checkout_step=int(s["checkout_step"]), checkout_steps=int(s["checkout_steps"]),
        subtotal=float(s["subtotal"]), shipping=float(s["shipping"]),
        free_shipping_over=float(s["free_shipping_over"]), banner=s["banner"], order_id=s["order_id"],
    )
