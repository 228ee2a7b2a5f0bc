"""What-if: variant specs and their errors, and paired deltas computed from variant folders."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from simpersona.config import load
from simpersona.eval.whatif import WhatifError, compute_deltas, variant_config, variant_specs
from simpersona.store.shops import knobs_for


def test_variant_specs_and_config():
    cfg = load("whatif", ["whatif.only=[free_shipping]", "whatif.grid_values=[0.5,1.5]"])
    specs = variant_specs(cfg)
    assert specs == {"whatif_base": {}, "free_shipping": {"shipping_fee": 0.0},
                     "grid_price_multiplier_0.5": {"price_multiplier": 0.5},
                     "grid_price_multiplier_1.5": {"price_multiplier": 1.5}}
    vcfg = variant_config(cfg, "grid_price_multiplier_1.5", specs["grid_price_multiplier_1.5"])
    assert vcfg.sim.variant == "grid_price_multiplier_1.5" and cfg.sim.variant != vcfg.sim.variant
    # the storefront reads the variant's knobs from store.variants, over the base knobs
    assert knobs_for(vcfg.store, "m1", "grid_price_multiplier_1.5").price_multiplier == 1.5
    assert knobs_for(vcfg.store, "m1", "whatif_base").price_multiplier == cfg.store.price_multiplier


@pytest.mark.parametrize("overrides, message", [
    (["whatif.only=[nope]"], r"whatif.only names unknown variants \['nope'\]"),
    (["whatif.variants.cheap.price=1", "whatif.only=[cheap]"], r"whatif.variants.cheap: unknown store knob\(s\) \['price'\]"),
    (["whatif.grid_knob=colour"], r"whatif.grid_knob='colour' is not a store knob"),
    (["whatif.base_variant=free_shipping"], "the base must not be among the variants"),
])
def test_variant_spec_errors(overrides, message):
    with pytest.raises(WhatifError, match=message):
        variant_specs(load("whatif", overrides))


def write_variant(folder, agents: list[tuple[str, str]], purchases: set[str], views: dict[str, int],
                  crashed: set[str] = frozenset()):
    (folder / "events").mkdir(parents=True)
    (folder / "results").mkdir()
    pl.DataFrame({"agent_id": [a for a, _ in agents], "merchant_id": [m for _, m in agents],
                  "type_id": [0] * len(agents), "persona_mode": ["vq"] * len(agents)}).write_parquet(
        folder / "agents.parquet")
    rows = []
    for a, m in agents:
        for _ in range(views.get(a, 0)):
            rows.append((a, m, "view"))
        if a in purchases:
            rows += [(a, m, "cart"), (a, m, "purchase")]
    pl.DataFrame({"buyer_id": [r[0] for r in rows], "merchant_id": [r[1] for r in rows],
                  "event": [r[2] for r in rows], "session_id": [f"{r[0]}.0" for r in rows],
                  "ts": [datetime(2024, 1, 1)] * len(rows)}).with_columns(pl.col("ts").cast(pl.Datetime("ms"))
                                                                          ).write_parquet(folder / "events" / "e.parquet")
    pl.DataFrame({"agent_id": [a for a, _ in agents],
                  "status": ["crashed" if a in crashed else "completed" for a, _ in agents]}).write_parquet(
        folder / "results" / "r.parquet")


def test_compute_deltas_paired_by_agent(tmp_path):
    cfg = load("whatif", [f"run_dir={tmp_path}", "whatif.only=[free_shipping]", "whatif.grid_knob=''",
                          "whatif.bootstrap=400"])
    agents = [(f"m1-{i:03d}", "m1") for i in range(40)] + [(f"m2-{i:03d}", "m2") for i in range(40)]
    sim = tmp_path / "simulate"
    base_buyers = {a for a, _ in agents[::4]}  # 10 of 40 per merchant
    views = {a: 2 for a, _ in agents}
    write_variant(sim / "whatif_base", agents, base_buyers, views)
    # free shipping: the same buyers plus 10 more at m1; nobody at m2 changes; one crash
    extra = {f"m1-{i:03d}" for i in range(1, 40, 4)}
    write_variant(sim / "free_shipping", agents, base_buyers | extra, views, crashed={"m2-000"})
    d = compute_deltas(cfg, variant_specs(cfg))
    assert d["agents"] == 80 and d["merchants"] == ["m1", "m2"]
    conv = d["variants"]["free_shipping"]["overall"]["converted"]
    assert conv["base"] == pytest.approx(0.25) and conv["variant"] == pytest.approx(0.375)
    assert conv["delta"] == pytest.approx(0.125) and 0 < conv["lo"] < 0.125 < conv["hi"] and conv["significant"]
    m1 = d["variants"]["free_shipping"]["per_merchant"]["m1"]["converted"]
    m2 = d["variants"]["free_shipping"]["per_merchant"]["m2"]["converted"]
    assert m1["delta"] == pytest.approx(0.25)
    assert m2 == pytest.approx({"base": 0.25, "variant": 0.25, "delta": 0.0, "lo": 0.0, "hi": 0.0, "n": 40,
                                "significant": False})  # paired: identical agents give an exact zero
    assert d["variants"]["free_shipping"]["overall"]["product_pages"]["delta"] == 0.0
    assert d["crash_rate"] == {"whatif_base": 0.0, "free_shipping": pytest.approx(1 / 80)}
