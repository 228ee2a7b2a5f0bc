"""What-if: variant specs and their errors, and paired deltas computed from variant folders."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pytest

from simpersona.config import load
from simpersona.eval.whatif import WhatifError, compute_deltas, variant_specs
from simpersona.sim.experiments import variant_config
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


FOREIGN = ["sim.storefront=adapters/oscar.yaml", "sim.base_url=http://127.0.0.1:8000", "whatif.grid_knob=''"]


def test_a_foreign_shops_variants_are_deployments_or_page_patches():
    patch = {"url": "/catalogue/", "find": "<form.*?</form>", "replace": ""}
    cfg = load("whatif", [*FOREIGN, "whatif.variants={staging: {base_url: 'http://127.0.0.1:8001'}, "
                          "no_forms: {page_patches: [{url: /catalogue/, find: '<form.*?</form>', replace: ''}]}}",
                          "whatif.only=[staging,no_forms]"])
    specs = variant_specs(cfg)
    assert list(specs) == ["whatif_base", "staging", "no_forms"]
    base, staging, patched = (variant_config(cfg, n, k) for n, k in specs.items())
    assert (base.sim.base_url, list(base.browser.page_patches)) == ("http://127.0.0.1:8000", [])
    assert (staging.sim.base_url, list(staging.browser.page_patches)) == ("http://127.0.0.1:8001", [])
    assert patched.sim.base_url == "http://127.0.0.1:8000" and list(patched.browser.page_patches) == [patch]
    assert all(v.store.variants == cfg.store.variants for v in (base, staging, patched))


@pytest.mark.parametrize("overrides, message", [
    (["whatif.only=[free_shipping]"], r"on a foreign shop \(sim.storefront\) a variant is base_url and/or page_patches"),
    (["whatif.grid_knob=price_multiplier", "whatif.variants={s: {base_url: x}}", "whatif.only=[s]"],
     "whatif.grid_knob='price_multiplier'"),
    (["whatif.variants={bad: {page_patches: [{find: '('}]}}", "whatif.only=[bad]"], r"page_patches\[0\]: not a valid regex"),
])
def test_foreign_variant_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        variant_specs(load("whatif", [*FOREIGN, *overrides]))


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


# ---- the planted truth beside the simulated effect, and the knobs' support in the training traces

PLANTED = {"buyers": 3000, "shard_buyers": 3000, "merchants": 6, "seed": 5, "executor": "serial",
           "knobs": {"enabled": True}}


def planted_run(tmp_path, traced: dict[str, dict], store_knobs: dict, logged: dict | None = None,
                world_in: str = "record"):
    """A run folder as the planted pipeline leaves it for whatif: the record of the storefront the traces
    were replayed on, with the generator's world in it (`world_in="record"`) or, as runs made before that
    record had it, in the synthetic stage's manifest ("manifest")."""
    from dataclasses import asdict

    from simpersona import manifest
    from simpersona.data.synthetic import as_synth

    synth = asdict(as_synth(PLANTED))
    if world_in == "manifest":
        manifest.write(tmp_path / "synthetic", manifest.build("synthetic", {"synth": synth, "seed": 0}, {}))
    (tmp_path / "preprocess").mkdir(parents=True, exist_ok=True)
    record = {"knobs": store_knobs, "merchant_overrides": traced, "catalogs": {m: [] for m in traced},
              "logged_knobs": logged or {}, "planted_world": synth if world_in == "record" else None}
    (tmp_path / "preprocess" / "storefront.json").write_text(json.dumps(record))
    return as_synth(synth)


@pytest.mark.parametrize("world_in", ["record", "manifest"])
def test_a_planted_world_puts_the_true_effect_beside_the_simulated_one(tmp_path, world_in):
    from simpersona.data.synthetic import merchant_knobs, true_effect

    world = planted_run(tmp_path, {}, {}, world_in=world_in)
    own = merchant_knobs(world)
    fee = 12.0
    merchants = ["m0", "m1", "m2", "m3", "m4", "m5"]
    cfg = load("whatif", [f"run_dir={tmp_path}", "whatif.variants.ship_12={shipping_fee: 12.0}", "whatif.only=[ship_12]",
                          "whatif.grid_knob=''", "whatif.bootstrap=200"])
    agents = [(f"{m}-{i:03d}", m) for m in merchants for i in range(30)]
    write_variant(tmp_path / "simulate" / "whatif_base", agents, set(), {a: 1 for a, _ in agents})
    # the simulation says a higher fee makes buyers buy more: the wrong sign
    write_variant(tmp_path / "simulate" / "ship_12", agents, {a for a, _ in agents[::3]}, {a: 1 for a, _ in agents})
    d = compute_deltas(cfg, variant_specs(cfg))
    v = d["variants"]["ship_12"]
    t = v["true_effect"]["converted"]
    replay = true_effect(world, {"shipping_fee": fee}, merchants)["per_merchant"]
    for m in merchants:  # the per-session conversion of the replay, and no change where the fee already was 12
        assert t["per_merchant"][m]["effect"] == pytest.approx(replay[m]["session_conversion"]["effect"])
        if own[m]["shipping_fee"] == fee:
            assert t["per_merchant"][m]["effect"] == 0.0
    assert t["effect"] == pytest.approx(sum(replay[m]["session_conversion"]["effect"] for m in merchants) / 6)
    assert t["effect"] < 0  # price-sensitive types buy less
    # a perfectly faithful simulator's noise at 30 agents a merchant: from each merchant's paired variance
    ideal = (sum(r["se"] ** 2 * r["histories"] / 30 for r in t["per_merchant"].values())) ** 0.5 / 6
    assert t["ideal_se"] == pytest.approx(ideal) and t["ideal_se"] > 3 * t["se"]
    c = v["validity"]["converted"]
    assert not c["sign_agrees"] and c["interval_excludes_zero"] and c["ratio"] < 0
    # 180 agents cannot resolve an effect of this size: no verdict, and nothing counted in the agreement
    assert abs(t["effect"]) < 3 * t["ideal_se"] and not c["beyond_noise"] and c["passed"] is None
    assert d["agreement"] == {"cells": 0, "direction_accuracy": None, "passed": None}


def test_validity_verdicts():
    from simpersona.eval.whatif_truth import agreement, validity

    def sim(delta, lo, hi):
        return {"overall": {"converted": {"delta": delta, "lo": lo, "hi": hi, "significant": lo > 0 or hi < 0}},
                "per_merchant": {m: {"converted": {"delta": delta * k}} for k, m in enumerate("abc", 1)}}

    def true(effect, ideal_se=0.01, scale=(1, 2, 3)):
        return {"converted": {"effect": effect, "se": 0.001, "ideal_se": ideal_se,
                              "per_merchant": {m: {"effect": effect * k} for k, m in zip(scale, "abc")}}}

    band = (0.67, 1.5)
    ok = validity(sim(-0.05, -0.08, -0.02), true(-0.06), 3.0, band)["converted"]
    assert ok["beyond_noise"] and ok["passed"] is True and ok["merchant_spearman"] == pytest.approx(1.0)
    assert validity(sim(-0.05, -0.08, -0.02), true(-0.06, scale=(3, 2, 1)), 3.0, band)["converted"][
        "merchant_spearman"] == pytest.approx(-1.0)
    too_big = validity(sim(-0.2, -0.25, -0.15), true(-0.06), 3.0, band)["converted"]
    assert too_big["sign_agrees"] and not too_big["ratio_within_band"] and too_big["passed"] is False
    unclear = validity(sim(-0.05, -0.1, 0.01), true(-0.06), 3.0, band)["converted"]
    assert unclear["sign_agrees"] and unclear["passed"] is False  # its interval holds 0
    small = validity(sim(-0.05, -0.08, -0.02), true(-0.02), 3.0, band)["converted"]
    assert not small["beyond_noise"] and small["passed"] is None  # under 3 ideal standard errors
    a = agreement({"x": {"validity": {"converted": ok}}, "y": {"validity": {"converted": unclear}},
                   "z": {"validity": {"converted": small}}})
    assert a == {"cells": 2, "direction_accuracy": 0.5, "sign_accuracy": 1.0, "passed": 0.5}


def test_training_variation_flags_a_knob_that_never_varied_and_a_value_outside_the_range(tmp_path):
    from simpersona.eval.whatif_truth import traced_knobs, training_variation
    from simpersona.report.html import render_report

    traced = {"a": {"shipping_fee": 0.0}, "b": {"shipping_fee": 4.0}, "c": {}}  # c: the store's 8.0
    planted_run(tmp_path, traced, {"shipping_fee": 8.0, "checkout_steps": 2, "recommendations": True,
                                   "price_multiplier": 1.0})
    knobs = traced_knobs(tmp_path, {})
    assert knobs["c"]["shipping_fee"] == 8.0 and knobs["a"]["checkout_steps"] == 2
    assert training_variation(knobs, {"shipping_fee": 4.0})["shipping_fee"]["supported"] is True
    out = training_variation(knobs, {"shipping_fee": 20.0, "checkout_steps": 3, "recommendations": False})
    assert out["shipping_fee"]["supported"] is False and "outside" in out["shipping_fee"]["note"]
    assert out["checkout_steps"] == {**out["checkout_steps"], "varied": False, "supported": False,
                                     "values": {"2": 3}}
    assert out["checkout_steps"]["note"] == ("checkout_steps: no variation in the training traces (every "
                                             "merchant 2): the effect is extrapolated")
    assert out["recommendations"]["supported"] is False
    merchant_only = training_variation(knobs, {"merchant_overrides": {"a": {"shipping_fee": 4.0}}})
    assert merchant_only["shipping_fee"]["supported"] is True
    assert training_variation(None, {"shipping_fee": 0.0})["shipping_fee"]["supported"] is None
    # a record without per-merchant catalogs or knobs (Tmall): every merchant had the store's knobs
    bare = tmp_path / "bare"
    planted_run(bare, {}, {"shipping_fee": 8.0, "checkout_steps": 2, "recommendations": True, "price_multiplier": 1.0})
    assert training_variation(traced_knobs(bare, {}), {"shipping_fee": 0.0})["shipping_fee"]["note"] == (
        "shipping_fee: no variation in the training traces (every merchant 8.0): the effect is extrapolated")

    # a price level the logged prices carry: the policy saw 0.9 and 1.25; a variant multiplies it
    logged = {"a": {"price_multiplier": 0.9}, "b": {"price_multiplier": 1.25}}
    planted_run(tmp_path, traced, {"shipping_fee": 8.0, "checkout_steps": 2, "recommendations": True,
                                   "price_multiplier": 1.0}, logged)
    seen = traced_knobs(tmp_path, {})
    assert [seen[m]["price_multiplier"] for m in "abc"] == [0.9, 1.25, 1.0]
    up = {"price_multiplier": 1.1}
    assert training_variation(seen, up, ["a"], logged)["price_multiplier"]["supported"] is True  # 0.99
    beyond = training_variation(seen, up, ["a", "b"], logged)["price_multiplier"]  # b: 1.375
    assert beyond["supported"] is False and "outside" in beyond["note"]

    # the report shows the flag where the deltas are
    cfg = load("whatif", [f"run_dir={tmp_path}", "whatif.only=[extra_checkout_step]", "whatif.grid_knob=''",
                          "whatif.bootstrap=100", "whatif.true_effect=false"])
    agents = [(f"a-{i:03d}", "a") for i in range(20)]
    for name in ("whatif_base", "extra_checkout_step"):
        write_variant(tmp_path / "simulate" / name, agents, set(), {a: 1 for a, _ in agents})
    d = compute_deltas(cfg, variant_specs(cfg))
    assert not d["planted"] and "true_effect" not in d["variants"]["extra_checkout_step"]
    html = render_report(None, d)
    assert 'id="whatif-support-table"' in html and "whatif-truth-table" not in html
    assert "checkout_steps: no variation in the training traces (every merchant 2): the effect is extrapolated" in html
