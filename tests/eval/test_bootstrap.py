"""Paired bootstrap intervals: nominal coverage on synthetic paired data, pairing, stratification."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from simpersona.eval import bootstrap


def paired_sample(rng: np.random.Generator, n: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Common random numbers: each agent's latent propensity drives both runs."""
    u = rng.random(n)
    p = rng.beta(2, 5, n)  # agents differ a lot (the variance pairing removes)
    base = (u < p).astype(float)
    variant = (u < np.clip(p + delta, 0, 1)).astype(float)
    return base, variant


def test_paired_ci_covers_known_delta_at_nominal_rate():
    rng = np.random.default_rng(123)
    delta, n, reps = 0.06, 300, 300
    # the true mean delta of this design, by simulation with many agents
    b, v = paired_sample(np.random.default_rng(9), 2_000_000, delta)
    true = float((v - b).mean())
    hits = 0
    for r in range(reps):
        base, variant = paired_sample(rng, n, delta)
        ci = bootstrap.paired_delta(base, variant, n_boot=1000, seed=r)
        hits += ci["lo"] <= true <= ci["hi"]
    coverage = hits / reps
    assert 0.90 <= coverage <= 0.985, coverage


def test_pairing_narrows_the_interval():
    rng = np.random.default_rng(0)
    base, variant = paired_sample(rng, 500, 0.05)
    paired = bootstrap.paired_delta(base, variant, n_boot=2000, seed=1)
    shuffled = bootstrap.paired_delta(base, rng.permutation(variant), n_boot=2000, seed=1)
    assert paired["delta"] == pytest.approx(shuffled["delta"])
    assert (paired["hi"] - paired["lo"]) < 0.6 * (shuffled["hi"] - shuffled["lo"])
    assert paired["significant"] and paired["lo"] > 0


def test_stratified_resampling_keeps_group_sizes():
    # group a always gains 1, group b never: with strata kept, every replicate has the same mean
    diff_groups = np.array(["a"] * 30 + ["b"] * 70)
    base = np.zeros(100)
    variant = np.where(diff_groups == "a", 1.0, 0.0)
    ci = bootstrap.paired_delta(base, variant, diff_groups, n_boot=500, seed=0)
    assert ci["delta"] == pytest.approx(0.3) and ci["lo"] == pytest.approx(0.3) and ci["hi"] == pytest.approx(0.3)
    loose = bootstrap.paired_delta(base, variant, None, n_boot=500, seed=0)
    assert loose["hi"] - loose["lo"] > 0.1


def test_delta_table_per_merchant_and_overall():
    agents = [f"a{i:03d}" for i in range(200)]
    merchants = ["m1"] * 100 + ["m2"] * 100
    rng = np.random.default_rng(4)
    conv = (rng.random(200) < 0.3).astype(float)
    base = pl.DataFrame({"agent_id": agents, "merchant_id": merchants, "converted": conv, "events": np.full(200, 3.0)})
    lift = np.where(np.array(merchants) == "m1", 1.0, 0.0)  # m1: every agent one more event
    var = base.with_columns(events=pl.col("events") + lift).sample(fraction=1.0, shuffle=True, seed=1)
    out = bootstrap.delta_table(base, var, ("converted", "events"), n_boot=300)
    assert out["overall"]["converted"]["delta"] == 0.0
    assert out["overall"]["events"]["delta"] == pytest.approx(0.5)
    assert out["per_merchant"]["m1"]["events"]["delta"] == pytest.approx(1.0)
    assert out["per_merchant"]["m2"]["events"] == pytest.approx(
        {"base": 3.0, "variant": 3.0, "delta": 0.0, "lo": 0.0, "hi": 0.0, "n": 100, "significant": False})
    with pytest.raises(ValueError, match="agents are not in both runs"):
        bootstrap.delta_table(base, var.head(150), ("converted",), n_boot=10)


def test_ara_bootstrap_intervals():
    merchants = [f"m{i}" for i in range(20)]
    real = {m: (10 + i, 100) for i, m in enumerate(merchants)}
    good = {m: (10 + i, 100) for i, m in enumerate(merchants)}  # the same rates as the real half
    bad = {m: (2, 100) for m in merchants}
    out = bootstrap.ara_bootstrap(good, real, merchants, n_boot=400, others={"bad": bad, "same": good})
    lo, hi = out["ara"]
    assert 0.7 < lo < hi == 1.0  # centred on the estimate (1.0: a perfect match), clipped to [0, 1]
    # the bad run's ARA is mean(0.02 / r_real) ~ 0.11: the delta ~ 0.89
    bad_lo, bad_hi = out["deltas"]["bad"]["ara"]
    assert 0.7 < bad_lo < 0.89 < bad_hi
    same_lo, same_hi = out["deltas"]["same"]["ara"]  # identical counts, resampled independently
    assert same_lo < 0 < same_hi and same_hi == pytest.approx(-same_lo)
    with pytest.raises(ValueError, match="every held-out merchant needs real buyers"):
        bootstrap.ara_bootstrap(good, {}, merchants, n_boot=10)


def test_ceiling_at_sample_size_grows_with_agents_and_matches_the_exact_expectation():
    """Real rate 0.1 in both halves at every merchant: with 8 ideal agents the simulated rate is k/8, so
    the expectation is exactly sum_k Binomial(k; 8, 0.1) * ara(k/8, 0.1); with 800 agents it nears 1."""
    from scipy.stats import binom

    from simpersona.eval import alignment

    merchants = [f"m{i}" for i in range(40)]
    half = {m: (15, 150) for m in merchants}
    exact = sum(binom.pmf(k, 8, 0.1) * alignment.ara(k / 8, 0.1)[0] for k in range(9))
    small = bootstrap.ceiling_at_sample_size(half, half, {m: 8 for m in merchants}, merchants, draws=4000)
    assert small["ara_overall"] == pytest.approx(exact, abs=0.01)  # ~0.28: 0.75 only when 1 of 8 converts
    assert small["ara_overall_range"][0] <= small["ara_overall"] <= small["ara_overall_range"][1]
    big = bootstrap.ceiling_at_sample_size(half, half, {m: 800 for m in merchants}, merchants, draws=500)
    assert big["ara_overall"] > 0.85 > small["ara_overall"] + 0.4
    # a merchant the simulation never reached scores 0, as in alignment.compare
    none = bootstrap.ceiling_at_sample_size(half, half, {m: 0 for m in merchants}, merchants, draws=10)
    assert none["ara_overall"] == 0.0
    with pytest.raises(ValueError, match="without real buyers"):
        bootstrap.ceiling_at_sample_size({}, half, {m: 8 for m in merchants}, merchants)
