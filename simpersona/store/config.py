"""Config section of the storefront web shop (store): catalogs, variants, its server and event log, on
top of the shop knobs (simpersona.pages.config).

Defaults live here only; configs/*.yaml hold what a run changes. Merged by simpersona.config.load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simpersona.pages.config import ShopKnobsConfig


@dataclass
class StoreConfig(ShopKnobsConfig):
    """Storefront model: catalog generation and what-if knobs (one variant; the knobs' fields and
    defaults are ShopKnobsConfig's)."""

    products_per_merchant: int = 24
    catalog_seed: int = 7
    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port
    # merchants the web shop serves (besides those of catalog_path); others get a 404
    merchants: list[str] = field(default_factory=list)
    # Parquet/CSV of merchant_id, product_id, category, price[, count] (most shown first or by count):
    # catalogs from the log; "" = every catalog generated from catalog_seed
    catalog_path: str = ""
    # what-if variants: name -> {knob: value, merchant_overrides: {merchant: {knob: value}}}; a variant
    # name not listed here is only a label (the knobs above apply unchanged)
    variant: str = "baseline"
    variants: dict[str, Any] = field(default_factory=dict)
    merchant_overrides: dict[str, Any] = field(default_factory=dict)  # merchant -> {knob: value}
    log_dir: str = ""  # server-side event log; "" = <run_dir>/store/<variant>/events
    log_shard_rows: int = 20000  # events per Parquet shard of the event log
    log_fsync: bool = True  # fsync the write-ahead log before a request is answered (durability)
