"""Agent populations: seeded, the merchant's type distribution, common random numbers across variants."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from simpersona.sim.config import SimConfig
from simpersona.sim.population import (
    SPEC_SCHEMA,
    PersonaResolver,
    PopulationError,
    build_population,
    write_population,
)

PROBS = {"shoes": [0.6, 0.3, 0.1, 0.0], "tea": [0.0, 0.0, 0.5, 0.5], "toys": [0.25, 0.25, 0.25, 0.25]}
COUNTS = {"shoes": 500, "tea": 120, "toys": 900}


@pytest.fixture
def run_dir(tmp_path):
    rows = [{"merchant_id": m, "type_id": k, "count": int(COUNTS[m] * p), "prob": p}
            for m, probs in PROBS.items() for k, p in enumerate(probs)]
    (tmp_path / "assign").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "assign" / "merchant_types.parquet")
    return tmp_path


def sim(**kw):
    cfg = OmegaConf.structured(SimConfig)
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_population_is_deterministic_and_has_the_spec_schema(run_dir):
    a = build_population(run_dir, sim(agents_per_merchant=20), seed=3)
    b = build_population(run_dir, sim(agents_per_merchant=20), seed=3)
    assert a.schema == SPEC_SCHEMA and a.equals(b)
    assert a.num_rows == 60 and len(set(a.column("agent_id").to_pylist())) == 60
    assert set(a.column("max_steps").to_pylist()) == {30}
    c = build_population(run_dir, sim(agents_per_merchant=20), seed=4)
    assert c.column("seed").to_pylist() != a.column("seed").to_pylist()
    write_population(a, run_dir / "simulate" / "x" / "agents.parquet")
    assert pq.read_table(run_dir / "simulate" / "x" / "agents.parquet").equals(a)


def test_types_follow_each_merchants_distribution(run_dir):
    t = build_population(run_dir, sim(agents_per_merchant=4000), seed=0).to_pandas()
    for m, probs in PROBS.items():
        freq = np.bincount(t[t.merchant_id == m].type_id, minlength=4) / 4000
        assert np.abs(freq - probs).max() < 0.03, (m, freq)
        assert all(freq[k] == 0 for k, p in enumerate(probs) if p == 0)  # impossible types never drawn


def test_common_random_numbers_across_variants_and_persona_modes(run_dir):
    base = build_population(run_dir, sim(agents_per_merchant=50, variant="baseline"), seed=1)
    what_if = build_population(run_dir, sim(agents_per_merchant=50, variant="free_shipping"), seed=1)
    assert set(what_if.column("variant").to_pylist()) == {"free_shipping"}
    assert base.drop(["variant"]).equals(what_if.drop(["variant"]))  # same agents, types and seeds
    none = build_population(run_dir, sim(agents_per_merchant=50, persona_mode="none"), seed=1)
    assert set(none.column("type_id").to_pylist()) == {-1}
    assert none.column("seed").equals(base.column("seed"))
    mismatch = build_population(run_dir, sim(agents_per_merchant=50, persona_mode="mismatch"), seed=1)
    vq = np.array(base.column("type_id").to_pylist())
    assert mismatch.column("type_id").to_pylist() == ((vq + 2) % 4).tolist()  # K=4: shifted by K//2
    # more agents keep the ones already drawn (prefix-stable)
    more = build_population(run_dir, sim(agents_per_merchant=80), seed=1).to_pandas()
    fewer = base.to_pandas()
    merged = fewer.merge(more, on="agent_id", suffixes=("", "_more"))
    assert len(merged) == 150 and (merged.type_id == merged.type_id_more).all() and (merged.seed == merged.seed_more).all()


def test_merchant_selection(run_dir):
    top2 = build_population(run_dir, sim(merchants=2, agents_per_merchant=1), seed=0)
    assert top2.column("merchant_id").to_pylist() == ["toys", "shoes"]  # most typed buyers first
    listed = build_population(run_dir, sim(merchants=["tea"], agents_per_merchant=2), seed=0)
    assert listed.column("agent_id").to_pylist() == ["tea-00000", "tea-00001"]
    with pytest.raises(PopulationError) as err:
        build_population(run_dir, sim(merchants=["tea", "nope"]), seed=0)
    assert str(err.value) == "sim.merchants: unknown merchant(s) ['nope'] (not in merchant_types.parquet)"


def test_kmeans_mode_uses_the_kmeans_histogram(run_dir):
    rows = [{"history_id": f"b{i}|tea", "buyer_id": f"b{i}", "merchant_id": "tea", "type_id": 2,
             "kmeans_type_id": 1 if i < 90 else 0} for i in range(100)]
    pq.write_table(pa.Table.from_pylist(rows), run_dir / "assign" / "types.parquet")
    t = build_population(run_dir, sim(merchants=["tea"], agents_per_merchant=3000, persona_mode="kmeans",
                                      kmeans_smoothing=0.0), seed=0)
    freq = np.bincount(t.column("type_id").to_numpy(), minlength=2) / 3000
    assert abs(freq[1] - 0.9) < 0.03


def test_prompt_mode_resolves_prose_descriptions(run_dir):
    (run_dir / "assign" / "type_profiles.json").write_text(json.dumps(
        [{"type_id": k, "description": f"type {k} buyer"} for k in range(3)]))
    resolve = PersonaResolver.from_run_dir(run_dir)
    assert resolve("prompt", 2) == "type 2 buyer"
    assert resolve("vq", 2) == 2 and resolve("kmeans", 1) == 1 and resolve("none", -1) is None
    with pytest.raises(PopulationError, match="no description of type 3"):
        resolve("prompt", 3)


def test_bad_inputs_fail_with_one_line(tmp_path, run_dir):
    with pytest.raises(PopulationError) as err:
        build_population(tmp_path / "empty", sim(), seed=0)
    assert str(err.value) == (f"no merchant type distributions at {tmp_path / 'empty' / 'assign' / 'merchant_types.parquet'}"
                              " (run the assign stage first)")
    with pytest.raises(PopulationError) as err:
        build_population(run_dir, sim(persona_mode="llm"), seed=0)
    assert str(err.value) == "sim.persona_mode must be one of vq|none|mismatch|prompt|kmeans, got 'llm'"
    with pytest.raises(PopulationError, match="persona_mode=kmeans needs"):
        build_population(run_dir, sim(persona_mode="kmeans"), seed=0)
