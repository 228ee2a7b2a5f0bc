"""Merchant catalogs: products from the event log where it has them, generated deterministically
where it has not (Tmall 2014 logs brands only, no products or prices)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

# category -> the noun a product of it is called by
CATEGORIES = {
    "shoes": "shoe", "bags": "bag", "dresses": "dress", "shirts": "shirt", "jackets": "jacket",
    "watches": "watch", "skincare": "cream", "snacks": "snack", "toys": "toy", "kitchen": "pan",
    "phones": "phone", "books": "book", "bedding": "quilt", "sports": "racket", "jewelry": "ring",
    "tea": "tea",
}
CATEGORY_NAMES = tuple(CATEGORIES)
ADJECTIVES = (
    "classic", "urban", "soft", "bright", "silk", "linen", "velvet", "light", "royal",
    "golden", "nordic", "cosy", "crisp", "swift", "pure", "bold", "calm", "vivid",
)
NOUNS = ("edition", "series", "line", "pick", "set", "style", "model", "design")


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    price: float  # base price, before the what-if price multiplier
    category: str


def _rng(seed: int, merchant_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{merchant_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def generate_catalog(merchant_id: str, n_products: int, seed: int, n_categories: int = 4) -> list[Product]:
    """The same merchant and seed give the same catalog on every machine (numpy's PCG64)."""
    rng = _rng(seed, merchant_id)
    cats = [CATEGORY_NAMES[i] for i in rng.choice(len(CATEGORY_NAMES), size=n_categories, replace=False)]
    level = float(np.exp(rng.normal(np.log(80.0), 0.8)))  # merchants differ in price level
    products = []
    for k in range(n_products):
        cat = cats[k % n_categories]
        price = round(float(level * np.exp(rng.normal(0.0, 0.6))), 2)
        name = f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]} {CATEGORIES[cat]} {NOUNS[rng.integers(len(NOUNS))]}"
        products.append(Product(f"{merchant_id}-{k:03d}", name, max(price, 0.5), cat))
    return products


def catalog_from_log(merchant_id: str, rows: list[tuple[str, str | None, float | None]], n_products: int,
                     seed: int) -> list[Product]:
    """Catalog from logged (product_id, category, price) rows, topped up with generated products.

    The log's most frequent products come first; missing categories/prices are filled from the
    generated catalog so every product is shown the same way.
    """
    generated = generate_catalog(merchant_id, n_products, seed)
    products: list[Product] = []
    seen: set[str] = set()
    for i, (pid, cat, price) in enumerate(rows):
        if pid is None or pid in seen or len(products) >= n_products:
            continue
        seen.add(pid)
        filler = generated[i % len(generated)]
        products.append(
            Product(str(pid), filler.name, round(float(price), 2) if price is not None else filler.price,
                    cat or filler.category)
        )
    products += generated[len(products):]
    return products
