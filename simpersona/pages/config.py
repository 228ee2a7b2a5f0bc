"""The shop knobs' defaults: what a what-if can change on a merchant's pages (prices, shipping, page
size, recommendations, checkout steps, a banner).

`store.*` (simpersona.store.config.StoreConfig) extends these with the web shop's own settings, and
the page model's frozen `Knobs` (simpersona.pages.shop) takes its defaults from here, so each default
is written once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShopKnobsConfig:
    """One variant's knobs, as the store config section holds them (per merchant: store.merchant_overrides)."""

    page_size: int = 6
    related_products: int = 3
    recommendations: bool = True
    price_multiplier: float = 1.0
    shipping_fee: float = 8.0
    free_shipping_threshold: float = 99.0
    checkout_steps: int = 2
    discount_banner: str = ""
