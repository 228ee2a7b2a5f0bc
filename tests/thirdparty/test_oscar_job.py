"""`python ray_jobs/simulate.py sim.storefront=adapters/oscar.yaml sim.base_url=URL`: a sampled population
on the real third-party shop in BrowserWorker actors, its events read from the agents' pages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simpersona.eval.simruns import SimRun
from simpersona.pages.observation import action_verb
from simpersona.sim.simulate import run_simulation
from tests.sim.simrun import make_run_dir, sim_config

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ADAPTER = Path(__file__).resolve().parents[2] / "adapters" / "oscar.yaml"


def test_a_population_on_the_foreign_shop_as_a_job(tmp_path, oscar_shop, ray_local):
    run_dir = make_run_dir(tmp_path / "run")
    before = oscar_shop.order_count()
    cfg = sim_config(run_dir, f"sim.storefront={ADAPTER}", f"sim.base_url={oscar_shop.base_url}",
                     "sim.variant=oscar", "sim.agents_per_merchant=4", "sim.max_steps=12")
    summary = run_simulation(cfg)
    out = run_dir / "simulate" / "oscar"
    traj = pq.read_table(out / "trajectories").to_pandas()
    results = pq.read_table(out / "results").to_pandas()
    events = pq.read_table(out / "events").to_pandas()
    assert summary["storefront"] == str(ADAPTER) and summary["agents"] == 8 == len(results)
    # pages read as canonical ones: every observation but the counted unrecognised pages starts "page: <kind>"
    canonical = traj.observation.str.match(r"^page: (home|listing|search|product|cart|checkout|confirmation) \|")
    unrecognised = int(traj.error.str.startswith("unrecognised_page").sum())
    assert summary["failures"].get("unrecognised_page", 0) == unrecognised
    assert int((~canonical).sum()) <= unrecognised + 1  # a step's failure shows on the page it lands on
    # failures by kind: exactly the trajectories' errors, and the shop's own order count
    kinds = Counter(e.split(":", 1)[0] for e in traj.error if e)
    for kind, n in kinds.items():
        assert summary["failures"][kind] >= n
    orders = oscar_shop.order_count() - before
    purchased = events[events.event == "purchase"].buyer_id.nunique()
    assert orders == purchased
    # the client-side log: one session per agent, a view per product page an `open` landed on
    assert set(events.buyer_id) <= set(results.agent_id)
    for agent, sess in events.groupby("buyer_id").session_id.unique().items():
        assert list(sess) == [results.set_index("agent_id").session_id[agent]]
    opened = traj[(traj.action.map(action_verb) == "open") & (traj.error == "")]
    landed = opened.merge(traj.assign(step=traj.step - 1)[["agent_id", "step", "observation"]],
                          on=["agent_id", "step"], suffixes=("", "_next"))
    seen = int(landed.observation_next.str.startswith("page: product").sum())  # the last step's page is unseen
    assert seen <= int((events.event == "view").sum()) <= len(opened)
    assert summary["events"] == len(events) and list(events.seq) == sorted(events.seq)
    # evaluation reads the folder as it reads one simulated on our own storefront
    run = SimRun(out)
    assert run.events.height == len(events)


SOLD_OUT = r"""{sold_out: {page_patches: [{url: '/catalogue/[\w-]+_\d+/$', find: '<form[^>]*add_to_basket_form.*?</form>',
                                        replace: '<p>Sold out</p>'}]}}"""


def test_a_whatif_on_the_foreign_shop_with_a_page_patch(tmp_path, oscar_shop, ray_local):
    """Known answer: with the add-to-cart form patched away, no agent can cart; the same agents carted
    on the unpatched shop, so the carted delta is minus the base arm's carted share, agent by agent."""
    import json

    from simpersona.config import load
    from simpersona.sim.experiments import run_whatif

    run_dir = make_run_dir(tmp_path / "run")
    cfg = load("whatif", [
        f"run_dir={run_dir}", "progress=false", f"sim.storefront={ADAPTER}", f"sim.base_url={oscar_shop.base_url}",
        "sim.policy=uniform", "sim.workers=2", "sim.worker_cpus=0.5", "sim.contexts_per_worker=4", "sim.max_steps=8",
        "whatif.merchants=2", "whatif.agents_per_merchant=8", "whatif.grid_knob=''", f"whatif.variants={SOLD_OUT}",
        "whatif.only=[sold_out]", "whatif.bootstrap=200", "whatif.outcomes=[carted,converted,product_pages]"])
    run_whatif(cfg)
    deltas = json.loads((run_dir / "whatif" / "deltas.json").read_text())
    base = pq.read_table(run_dir / "simulate" / "whatif_base" / "events").to_pandas()
    patched = pq.read_table(run_dir / "simulate" / "sold_out" / "events").to_pandas()
    base_agents = pq.read_table(run_dir / "simulate" / "whatif_base" / "agents.parquet").to_pandas()
    patched_agents = pq.read_table(run_dir / "simulate" / "sold_out" / "agents.parquet").to_pandas()
    assert list(base_agents.agent_id) == list(patched_agents.agent_id)
    assert list(base_agents.seed) == list(patched_agents.seed)
    carted = base[base.event == "cart"].buyer_id.nunique() / len(base_agents)
    assert carted > 0 and not (patched.event == "cart").any() and not (patched.event == "purchase").any()
    assert deltas["variants"]["sold_out"]["overall"]["carted"]["delta"] == pytest.approx(-carted)
    # the patched product pages were still read as product pages, without the action
    traj = pq.read_table(run_dir / "simulate" / "sold_out" / "trajectories").to_pandas()
    product = traj[traj.observation.str.startswith("page: product")]
    assert len(product) and not product.allowed.map(lambda a: "add_to_cart" in a).any()
