"""Which shop each merchant is in one variant: its catalog and its what-if knobs.

Knobs of merchant m in variant V, later layers winning:
    store.<knob>  <-  store.merchant_overrides[m]  <-  store.variants[V]  <-  store.variants[V].merchant_overrides[m]
(a variant is a what-if applied to every merchant's own setup). A variant name that is not listed
in `store.variants` is only a label: the store knobs apply unchanged.

Catalogs: `store.catalog_path` (Parquet or CSV with merchant_id, product_id, category, price and
optionally count; rows ordered by count when present, else in file order) gives the products the
log has for a merchant, topped up by `generate_catalog`; else `store.catalog_rows` (merchant ->
[[product_id, category, price], ...], the catalogs a run's traces were replayed on, which
simpersona.data.storefront.replayed_store puts there); without either every catalog is generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from simpersona.pages.catalog import Product, catalog_from_log, generate_catalog
from simpersona.pages.shop import Knobs, Shop

KNOB_NAMES = tuple(Knobs.__dataclass_fields__)
CATALOG_COLUMNS = ("merchant_id", "product_id", "category", "price")


class UnknownMerchant(KeyError):
    """The storefront does not serve this merchant."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown merchant"


def store_section(cfg: Any) -> Mapping:
    """The `store` section from a whole config, a store section itself, or None (defaults)."""
    if cfg is None or is_dataclass(cfg):
        from omegaconf import OmegaConf

        from simpersona.store.config import StoreConfig

        cfg = OmegaConf.structured(cfg if cfg is not None else StoreConfig)
    if "store" in cfg and "products_per_merchant" not in cfg:
        return cfg["store"]
    return cfg


def _plain(x: Any) -> dict:
    if x is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(x, DictConfig):
            return OmegaConf.to_container(x, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(x)


def _check_knobs(values: Mapping, where: str) -> dict:
    bad = sorted(set(values) - set(KNOB_NAMES))
    if bad:
        raise ValueError(f"{where}: unknown store knob(s) {bad}; knobs are {list(KNOB_NAMES)}")
    return dict(values)


def knobs_for(store_cfg: Any, merchant_id: str, variant: str | None = None) -> Knobs:
    """The knobs of `merchant_id` in `variant` (None = store.variant)."""
    store = store_section(store_cfg)
    variant = store.get("variant", "baseline") if variant is None else variant
    base = {k: store[k] for k in KNOB_NAMES if k in store}
    layers = [_check_knobs(_plain(store.get("merchant_overrides")).get(str(merchant_id), {}),
                           f"store.merchant_overrides.{merchant_id}")]
    spec = _plain(_plain(store.get("variants")).get(str(variant), {}))
    per_merchant = _plain(spec.pop("merchant_overrides", {}))
    layers.append(_check_knobs(spec, f"store.variants.{variant}"))
    layers.append(_check_knobs(_plain(per_merchant.get(str(merchant_id), {})),
                               f"store.variants.{variant}.merchant_overrides.{merchant_id}"))
    merged: dict = {}
    for layer in layers:
        merged.update(layer)
    return Knobs.from_config({**base, "merchant_overrides": {str(merchant_id): merged}}, str(merchant_id))


def read_catalog_file(path: str | Path) -> dict[str, list[tuple[str, str | None, float | None]]]:
    """merchant_id -> [(product_id, category, price), ...] from a catalog Parquet/CSV file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"store.catalog_path: no file {path}")
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={"merchant_id": pa.string(), "product_id": pa.string(), "category": pa.string()}))
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    missing = [c for c in ("merchant_id", "product_id") if c not in table.column_names]
    if missing:
        raise ValueError(f"catalog file {path} lacks column(s) {missing}; has {table.column_names}")
    if "count" in table.column_names:  # most frequent products first, stable within equal counts
        order = pc.sort_indices(table, sort_keys=[("count", "descending")])
        table = table.take(order)
    cols = {c: (table.column(c).cast(pa.float64() if c == "price" else pa.string()).to_pylist()
                if c in table.column_names else [None] * table.num_rows) for c in CATALOG_COLUMNS}
    out: dict[str, list] = {}
    for m, pid, cat, price in zip(cols["merchant_id"], cols["product_id"], cols["category"], cols["price"]):
        if m is not None:
            out.setdefault(m, []).append((pid, cat, price))
    return out


class ShopSet:
    """The shops of one variant, built on first use, for a fixed set of merchants."""

    def __init__(self, store_cfg: Any = None, variant: str | None = None, merchants: Iterable[str] | None = None):
        self.store = store_section(store_cfg)
        self.variant = str(self.store.get("variant", "baseline") if variant is None else variant)
        self.log_rows: dict[str, list] = {}
        if self.store.get("catalog_path"):
            self.log_rows = read_catalog_file(self.store["catalog_path"])
        elif self.store.get("catalog_rows"):  # a run's replayed catalogs (simpersona.data.storefront)
            self.log_rows = {str(m): [tuple(r) for r in rows] for m, rows in _plain(self.store["catalog_rows"]).items()}
        listed = [str(m) for m in (merchants if merchants is not None else self.store.get("merchants") or [])]
        self.merchants = tuple(dict.fromkeys(listed + sorted(self.log_rows)))
        if not self.merchants:
            raise ValueError("the storefront serves no merchants: set store.merchants or store.catalog_path")
        self._known = set(self.merchants)
        for m in self.merchants:  # fail at start-up, not on the first request, on bad knobs
            knobs_for(self.store, m, self.variant)
        self._shops: dict[str, Shop] = {}

    def __contains__(self, merchant_id: str) -> bool:
        return merchant_id in self._known

    def catalog(self, merchant_id: str) -> list[Product]:
        n, seed = int(self.store["products_per_merchant"]), int(self.store["catalog_seed"])
        if merchant_id in self.log_rows:
            return catalog_from_log(merchant_id, self.log_rows[merchant_id], n, seed)
        return generate_catalog(merchant_id, n, seed)

    def shop(self, merchant_id: str) -> Shop:
        shop = self._shops.get(merchant_id)
        if shop is None:
            if merchant_id not in self._known:
                shown = ", ".join(self.merchants[:10]) + (" ..." if len(self.merchants) > 10 else "")
                raise UnknownMerchant(f"unknown merchant {merchant_id!r} (this storefront serves "
                                      f"{len(self.merchants)} merchant(s): {shown})")
            shop = Shop(merchant_id, self.catalog(merchant_id), knobs_for(self.store, merchant_id, self.variant))
            self._shops[merchant_id] = shop
        return shop


def write_catalog_file(rows: Mapping[str, list[tuple[str, str | None, float | None]]], path: str | Path) -> Path:
    """Write merchant -> [(product_id, category, price), ...] in catalog order, for store.catalog_path.

    The trace builder and the storefront then build identical catalogs (catalog_from_log of the
    same rows), so live observations show the products the traces showed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [(m, pid, cat, price) for m, items in rows.items() for pid, cat, price in items]
    table = pa.table({name: pa.array([r[i] for r in flat], pa.float64() if name == "price" else pa.string())
                      for i, name in enumerate(CATALOG_COLUMNS)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
