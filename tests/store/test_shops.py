"""Knobs per merchant and variant, catalogs from a file or generated."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simpersona.config import load
from simpersona.pages.catalog import generate_catalog
from simpersona.store.shops import ShopSet, UnknownMerchant, knobs_for


def store(**kw) -> dict:
    base = {"products_per_merchant": 12, "catalog_seed": 7, "merchants": ["m1", "m2"], "shipping_fee": 8.0,
            "price_multiplier": 1.0, "checkout_steps": 2, "variant": "baseline"}
    return {**base, **kw}


def test_variant_wins_over_merchant_setup_and_per_merchant_variant_wins_over_variant():
    cfg = store(merchant_overrides={"m1": {"shipping_fee": 5.0, "checkout_steps": 3}},
                variants={"free": {"shipping_fee": 0.0, "merchant_overrides": {"m2": {"price_multiplier": 1.5}}}})
    assert knobs_for(cfg, "m1", "baseline").shipping_fee == 5.0
    assert knobs_for(cfg, "m1", "baseline").checkout_steps == 3
    assert knobs_for(cfg, "m2", "baseline").shipping_fee == 8.0
    free_m1, free_m2 = knobs_for(cfg, "m1", "free"), knobs_for(cfg, "m2", "free")
    assert (free_m1.shipping_fee, free_m1.checkout_steps, free_m1.price_multiplier) == (0.0, 3, 1.0)
    assert (free_m2.shipping_fee, free_m2.price_multiplier) == (0.0, 1.5)
    # a variant name without overrides is a label only
    assert knobs_for(cfg, "m2", "persona_none") == knobs_for(cfg, "m2", "baseline")


def test_unknown_knob_in_a_variant_is_a_clear_error():
    with pytest.raises(ValueError, match=r"store.variants.typo: unknown store knob\(s\) \['shiping_fee'\]"):
        knobs_for(store(variants={"typo": {"shiping_fee": 0}}), "m1", "typo")
    with pytest.raises(ValueError, match="invalid store knobs for merchant m1"):
        ShopSet(store(variants={"bad": {"page_size": 0}}), "bad")


def test_configs_store_yaml_variants_load():
    cfg = load("store", ["store.variant=free_shipping"])
    shops = ShopSet(cfg)
    assert shops.variant == "free_shipping"
    assert shops.shop("m1").knobs.shipping_fee == 0.0
    assert knobs_for(cfg, "m1", "extra_checkout_step").checkout_steps == 3


def test_unknown_merchant_and_empty_merchant_list():
    shops = ShopSet(store())
    with pytest.raises(UnknownMerchant, match=r"unknown merchant 'zz' \(this storefront serves 2 merchant\(s\): m1, m2\)"):
        shops.shop("zz")
    with pytest.raises(ValueError, match="serves no merchants"):
        ShopSet(store(merchants=[]))


def test_generated_catalog_is_the_trace_catalog():
    shops = ShopSet(store())
    assert shops.shop("m1").catalog == generate_catalog("m1", 12, 7)


def test_catalog_file_products_first_by_count_then_generated(tmp_path):
    table = pa.table({"merchant_id": ["9", "9", "9", "8"], "product_id": ["p1", "p2", "p3", "q1"],
                      "category": ["tea", None, "tea", "toys"], "price": [10.0, 20.0, None, 5.0],
                      "count": [1, 5, 3, 2]})
    path = tmp_path / "catalog.parquet"
    pq.write_table(table, path)
    shops = ShopSet(store(merchants=["m1"], catalog_path=str(path)))
    assert shops.merchants == ("m1", "8", "9")
    cat = shops.shop("9").catalog
    assert [p.product_id for p in cat[:3]] == ["p2", "p3", "p1"]
    assert cat[0].price == 20.0 and cat[2].category == "tea" and cat[0].category  # missing category filled
    assert len(cat) == 12 and cat[3].product_id == "9-003"
    csv = tmp_path / "catalog.csv"
    csv.write_text("merchant_id,product_id,category,price\n7,001,tea,3.5\n")
    assert ShopSet(store(merchants=[], catalog_path=str(csv))).shop("7").catalog[0].product_id == "001"


def test_written_catalog_file_rebuilds_the_same_catalogs(tmp_path):
    from simpersona.pages.catalog import catalog_from_log
    from simpersona.store.shops import write_catalog_file

    rows = {"42": [("b", "tea", 3.0), ("a", None, None)], "7": [("z", "toys", 9.5)]}
    path = write_catalog_file(rows, tmp_path / "preprocess" / "catalog.parquet")
    shops = ShopSet(store(merchants=[], catalog_path=str(path)))
    for m, items in rows.items():
        assert shops.shop(m).catalog == catalog_from_log(m, items, 12, 7)
