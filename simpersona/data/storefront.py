"""The storefront a run's traces were replayed on, recorded by preprocess for every stage that builds one.

Traces show each merchant's products as the event log has them (ids, categories, mean prices) and, on a
synthetic input with merchant knobs, each merchant's own shipping fee, checkout steps and related products.
A storefront built from `store.*` alone shows generated catalogs and the config's knobs instead: other
prices and categories than the ones the policy was trained on. So preprocess writes DIR/preprocess/
storefront.json:

    {"knobs": {knob: value},                             # the store section's what-if knobs (every merchant)
     "merchant_overrides": {merchant: {knob: value}},    # the data's knobs the traces were replayed with
     "logged_knobs": {merchant: {knob: value}},          # ... and those its logged prices already carry
     "planted_world": {...} | null,                      # a synthetic input's generator config (true effects)
     "catalogs": {merchant: [[product_id, category, price], ...]}}   # catalog order, at most
                                                                      # store.products_per_merchant

and `replayed_store(cfg)` is `cfg.store` with those catalogs (unless `store.catalog_path` names a file of
its own) and knobs (under the config's own `store.merchant_overrides`, which win), the store section that
the finetune stage's rollouts and the simulations' live storefront use (simpersona.store.shops.ShopSet
reads `catalog_rows`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from simpersona.data.traces import as_mapping
from simpersona.store.shops import KNOB_NAMES

log = logging.getLogger(__name__)

STOREFRONT_FILE = "storefront.json"


def write_storefront(uri: str, store: Mapping, catalogs: Mapping[str, list], s3cfg=None) -> str:
    """Write the record of the storefront the traces were replayed on (`store`: its store section)."""
    from simpersona.storage import write_json

    record = {
        "knobs": {k: store[k] for k in KNOB_NAMES if k in store},  # a merchant without overrides had these
        "merchant_overrides": {str(m): dict(k) for m, k in (store.get("merchant_overrides") or {}).items()},
        "logged_knobs": {str(m): dict(k) for m, k in (store.get("logged_knobs") or {}).items()},
        "planted_world": store.get("planted_world"),
        "catalogs": {str(m): [[pid, cat, price] for pid, cat, price in rows] for m, rows in catalogs.items()},
    }
    write_json(uri, record, s3cfg)
    return uri


def replayed_store(cfg) -> dict:
    """`cfg.store` as a plain dict, with the catalogs and merchant knobs of DIR/preprocess/storefront.json.

    Without that file (a run dir made by hand, or a preprocess output written before the file existed)
    `cfg.store` is returned unchanged, with a warning where a preprocess output exists."""
    store = dict(as_mapping(cfg.store))  # a copy: only top-level keys are replaced below
    preprocess = Path(cfg.run_dir) / "preprocess"
    path = preprocess / STOREFRONT_FILE
    if not path.exists():
        if (preprocess / "traces").exists():
            log.warning("%s is missing (preprocess ran before it was written): the storefront shows "
                        "generated catalogs, not the products the traces showed; re-run preprocess", path)
        return store
    record = json.loads(path.read_text())
    configured = store.get("merchant_overrides") or {}
    merged = {m: dict(k) for m, k in record.get("merchant_overrides", {}).items()}
    for m, knobs in configured.items():
        merged[str(m)] = {**merged.get(str(m), {}), **dict(knobs)}
    store["merchant_overrides"] = merged
    if not store.get("catalog_path"):
        store["catalog_rows"] = record.get("catalogs", {})
    return store

