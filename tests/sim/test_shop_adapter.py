"""Shop adapter YAMLs are checked when loaded: a bad one fails with one line that names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simpersona.config import load
from simpersona.sim.generic import AdapterError, GenericAdapter
from simpersona.sim.shop_adapter import ShopAdapter, load_adapter
from simpersona.sim.simulate import run_simulation

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"


def _oscar() -> dict:
    return yaml.safe_load((ADAPTERS / "oscar.yaml").read_text())


def _error(raw: dict, tmp_path: Path) -> str:
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(AdapterError) as exc:
        load_adapter(path)
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def test_bundled_adapters_load_as_shop_adapters():
    for name in ("oscar.yaml", "simpersona_store.yaml"):
        adapter = load_adapter(ADAPTERS / name)
        assert isinstance(adapter, ShopAdapter), name
    oscar = ShopAdapter.load(ADAPTERS / "oscar.yaml")
    assert [s.name for s in oscar.steps][-1] == "preview" and oscar.country == "US"
    assert isinstance(load_adapter(ADAPTERS / "example_generic.yaml"), GenericAdapter)


@pytest.mark.parametrize("kind", ["home", "product", "cart", "checkout", "confirmation"])
def test_a_missing_required_recogniser_is_named(kind, tmp_path):
    raw = _oscar()
    del raw["pages"][kind]
    assert f"pages.{kind} is required" in _error(raw, tmp_path)


def test_a_payment_step_without_a_test_method_is_refused(tmp_path):
    raw = _oscar()
    assert raw["checkout"]["steps"][3]["payment"] is True  # the shop's payment step
    del raw["checkout"]["payment"]  # ... with no test or dummy method declared for it
    message = _error(raw, tmp_path)
    assert "checkout.payment.method" in message and "test | dummy" in message
    raw["checkout"]["payment"] = {"method": "card"}
    assert "checkout.payment.method" in _error(raw, tmp_path)
    raw["checkout"]["payment"] = {"method": "test"}
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert ShopAdapter.load(path).steps[3].payment


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["product"].pop("add_to_cart"), "product.add_to_cart is required"),
    (lambda r: r["cards"].update(colour=".c"), "cards has unknown key(s) ['colour']"),
    (lambda r: r["checkout"]["steps"][1].pop("submit"), "checkout.steps[1].submit is required"),
    (lambda r: r["checkout"]["steps"][0]["fields"].update({"#x": "shoe_size"}), "checkout.steps[0].fields['#x']"),
    (lambda r: r["pages"]["cart"].update(url="^/basket/(?x)"), "pages.cart.url"),
    (lambda r: r["identity"].update(country="ZZ"), "identity.country='ZZ'"),
])
def test_bad_keys_are_named(edit, key, tmp_path):
    raw = _oscar()
    edit(raw)
    assert key in _error(raw, tmp_path)


def test_the_simulate_job_refuses_a_bad_storefront_before_any_agent(tmp_path):
    from tests.sim.simrun import make_run_dir

    run_dir = make_run_dir(tmp_path / "run")
    raw = _oscar()
    del raw["pages"]["confirmation"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    cfg = load("simulate", [f"run_dir={run_dir}", "progress=false", f"sim.storefront={bad}",
                            "sim.base_url=http://127.0.0.1:9", "sim.policy=local"])
    with pytest.raises(AdapterError, match="pages.confirmation is required"):
        run_simulation(cfg)
    with pytest.raises(ValueError, match="sim.base_url"):
        run_simulation(load("simulate", [f"run_dir={run_dir}", "progress=false",
                                         f"sim.storefront={ADAPTERS / 'oscar.yaml'}", "sim.policy=local"]))
    assert not (run_dir / "simulate" / "baseline").exists()


def test_the_readme_shows_the_shipped_oscar_adapter():
    readme = (ADAPTERS.parent / "README.md").read_text()
    section = readme.split("### Any storefront", 1)[1]
    shown = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert shown == (ADAPTERS / "oscar.yaml").read_text()
