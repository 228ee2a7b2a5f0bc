"""In-page JavaScript of shop adapters: a foreign page read by its adapter's selectors, in one evaluate.

READ_SHOP_JS recognises the page kind (the adapter's recognisers, in order), reads the fields the
canonical PageState needs as text, and tags each element that performs a canonical action with
`data-sp-act="<action>"` (`open 3`, `add_to_cart`, `checkout`, `continue`, ...): acting is then a
click on the tagged element, as on the project storefront's `data-action` buttons. Only usable
elements are tagged (visible, enabled, link or form target on an allowed origin: extract._PRELUDE).
"""

from __future__ import annotations

from simpersona.sim.extract import _PRELUDE

# ([spec, origins]) -> {loading: true} | {kind: null, url} | {kind, url, fields..., tagged: [actions]}
READ_SHOP_JS = "([spec, origins]) => {" + _PRELUDE + r"""
  if (document.readyState === 'loading') return {loading: true};
  for (const el of document.querySelectorAll('[data-sp-act]')) el.removeAttribute('data-sp-act');
  const path = location.pathname + location.search;
  const bodyText = document.body ? document.body.innerText : '';
  const qa = (root, sel) => { if (!sel || !root) return []; try { return Array.from(root.querySelectorAll(sel)); }
                              catch (e) { return []; } };
  const q = (root, sel) => qa(root, sel)[0] || null;
  const clean = (s) => String(s || '').replace(/\s+/g, ' ').trim();
  const split = (f) => { const i = f.lastIndexOf('@');
    return i >= 0 && /^[\w:-]+$/.test(f.slice(i + 1)) ? [f.slice(0, i).trim(), f.slice(i + 1)] : [f.trim(), '']; };
  const read = (root, f) => {
    if (!f || !root) return '';
    const [sel, attr] = split(String(f));
    const el = sel ? q(root, sel) : root;
    if (!el) return '';
    if (!attr) return clean(el.textContent);  // the source text: CSS text-transform is not the name
    return clean(attr === 'href' && el.href ? el.href : el.getAttribute(attr));
  };
  const holds = (r) => (!r.url || new RegExp(r.url, r.url_flags).test(path))
    && (!r.selector || q(document, r.selector) !== null)
    && (!r.text || new RegExp(r.text, r.text_flags).test(bodyText));
  const tagged = [];
  const tag = (el, action) => {
    if (!el || !usable(el) || el.hasAttribute('data-sp-act') || tagged.includes(action)) return false;
    el.setAttribute('data-sp-act', action); tagged.push(action); return true;
  };
  // the first usable match: a selector may also match a hidden copy (a mobile menu, a closed dropdown)
  const tagFirst = (root, sel, action) => { for (const el of qa(root, sel)) if (tag(el, action)) return true; return false; };
  const hrefPath = (el) => { try { const u = new URL(el.href, document.baseURI); return u.pathname; } catch (e) { return ''; } };
  const cardsOf = (items, sub, max, verb) => {
    const out = [];
    for (const item of items) {
      if (out.length >= max) break;
      const link = sub.link ? q(item, sub.link) : item;
      const name = read(item, sub.name), price = read(item, sub.price);
      if (!name || !price || (verb && (!link || !usable(link)))) continue;
      const slot = out.length + 1;
      if (verb && !tag(link, `${verb} ${slot}`)) continue;
      out.push({slot, name, price, category: read(item, sub.category),
                product_id: sub.product_id ? read(item, sub.product_id) : (link && link.href ? hrefPath(link) : name)});
    }
    return out;
  };

  let kind = null;
  for (const k of spec.order) if (holds(spec.pages[k])) { kind = k; break; }
  if (kind === null) return {kind: null, url: location.href};
  const h = spec.header, c = spec.cards, p = spec.product, cart = spec.cart, co = spec.checkout;
  const out = {kind, url: location.href, cart_count: read(document, h.cart_count), categories: [], cards: [],
               product: null, lines: [], has_next: false, query: '', step: 0, steps: spec.steps.length,
               subtotal: '', shipping: '', error: false, added: false, order_id: '', tagged};
  for (const el of qa(document, h.categories)) {
    const name = clean(el.textContent);
    if (name && !out.categories.includes(name) && tag(el, `category ${name}`)) out.categories.push(name);
  }
  tagFirst(document, h.cart_link, 'view_cart');
  const search = q(document, h.search_input);
  if (search && visible(search) && !search.disabled) tagged.push('search');
  if (kind === 'home' || kind === 'listing' || kind === 'search') {
    out.cards = cardsOf(qa(document, c.item), c, c.max, 'open');
    out.has_next = tagFirst(document, c.next_page, 'next_page');
    if (kind === 'search') out.query = (search && search.value) || new URLSearchParams(location.search).get('q') || '';
    else if (kind === 'listing') out.query = read(document, c.title || 'h1');
  } else if (kind === 'product') {
    out.product = {slot: 0, name: read(document, p.name), price: read(document, p.price),
                   category: read(document, p.category),
                   product_id: p.product_id ? read(document, p.product_id) : location.pathname};
    tagFirst(document, p.add_to_cart, 'add_to_cart');
    tagFirst(document, p.buy_now, 'buy_now');
    tagFirst(document, p.favorite, 'favorite');
    out.added = !!(p.added && q(document, p.added));
    out.cards = p.related ? cardsOf(qa(document, p.related), c, c.max, 'open') : [];
  } else if (kind === 'cart') {
    const lines = [];
    for (const line of qa(document, cart.line)) {
      const name = read(line, cart.name), price = read(line, cart.price);
      if (!name) continue;
      const slot = lines.length + 1;
      const link = q(line, 'a[href]');
      lines.push({slot, name, price, category: read(line, cart.category),
                  product_id: cart.product_id ? read(line, cart.product_id) : (link ? hrefPath(link) : name)});
      tagFirst(line, cart.remove, `remove ${slot}`);
    }
    out.lines = lines;
    out.subtotal = read(document, cart.subtotal);
    out.shipping = read(document, cart.shipping);
    tagFirst(document, cart.checkout, 'checkout');
  } else if (kind === 'checkout') {
    for (let i = 0; i < spec.steps.length; i++) if (holds(spec.steps[i])) { out.step = i + 1; break; }
    if (out.step) {
      const last = out.step === spec.steps.length;
      const sel = last ? (co.place_order || spec.steps[out.step - 1].submit) : spec.steps[out.step - 1].submit;
      tagFirst(document, sel, last ? 'place_order' : 'continue');
    }
    out.subtotal = read(document, co.subtotal);
    out.shipping = read(document, co.shipping);
    out.error = !!(co.error && q(document, co.error));
  } else if (kind === 'confirmation') {
    out.order_id = read(document, spec.confirmation.order_id);
  }
  return out;
}"""

# ([action, origins, click]) -> whether the usable element tagged `action` exists; clicks it (dom mode)
CLICK_TAGGED_JS = "([action, origins, click]) => {" + _PRELUDE + r"""
  for (const el of document.querySelectorAll('[data-sp-act]')) {
    if (el.getAttribute('data-sp-act') === action && usable(el)) { if (click) el.click(); return true; }
  }
  return false;
}"""
