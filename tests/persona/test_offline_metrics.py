"""step_metrics: accuracy, NLL and the per-page / per-type action calibration of scored held-out steps."""

import math

import numpy as np
import pandas as pd
import pytest

from simpersona.persona.evaluate import ideal_rollout_spearman, step_metrics


def _steps(rows):
    return pd.DataFrame(rows, columns=["observation", "allowed", "action", "type_id"])


def test_per_page_js_flags_a_model_that_leaves_checkout():
    """Real buyers continue at checkout; a model that puts 0.9 on leave there is badly calibrated on
    checkout pages (JS near its maximum) while its product pages, matched exactly, score 0."""
    checkout = ["continue", "back", "leave"]
    product = ["open 1", "buy_now", "leave"]
    rows, lps = [], []
    for _ in range(10):
        rows.append(("page: checkout | cart: 1", checkout, "continue", 0))
        lps.append(np.log([0.05, 0.05, 0.9]).tolist())
    for i in range(10):  # real verbs on product pages: half open, half leave; the model says 0.5/0/0.5
        rows.append(("page: product | cart: 0", product, "open 1" if i % 2 else "leave", 1))
        lps.append(np.log([0.5, 1e-12, 0.5]).tolist())
    m = step_metrics(_steps(rows), lps)
    assert m["acc_by_page"]["checkout"] == 0.0
    assert m["js_per_page"]["checkout"] > 0.6
    assert m["js_per_page"]["product"] == pytest.approx(0.0, abs=1e-6)
    assert set(m["js_per_type"]) == {0, 1}
    assert m["js_per_type"][1] == pytest.approx(0.0, abs=1e-6)
    assert m["nll"] == pytest.approx((10 * -math.log(0.05) + 10 * -math.log(0.5)) / 20)


def test_calibrated_model_scores_low_js_on_every_page():
    rng = np.random.default_rng(0)
    allowed = ["continue", "back", "leave"]
    p = np.array([0.7, 0.1, 0.2])
    rows = [("page: checkout | cart: 1", allowed, str(rng.choice(allowed, p=p)), 0) for _ in range(4000)]
    m = step_metrics(_steps(rows), [np.log(p).tolist()] * len(rows))
    assert m["js_per_page"]["checkout"] < 0.005


def test_ideal_rollout_spearman_is_the_ordering_sampling_noise_leaves():
    """Well separated rates keep their order at any sample size; rates closer than a rollout's noise are
    often drawn out of order, the more so with fewer rollouts; nothing to rank gives None."""
    apart = ideal_rollout_spearman([0.05, 0.3, 0.6, 0.9], n_sessions=50, seed=0)
    assert apart["mean"] == apart["lo"] == 1.0 and apart["rollouts_per_type"] == 50
    close = [0.0, 0.006, 0.015, 0.022, 0.075, 0.16, 0.79]
    few, many = (ideal_rollout_spearman(close, n, seed=0) for n in (24, 2000))
    assert few["lo"] < few["mean"] < 0.95 < many["mean"]
    assert ideal_rollout_spearman(close, 24, seed=0) == few  # seeded
    assert ideal_rollout_spearman([0.2, 0.2, 0.2], 24, seed=0) is None
    assert ideal_rollout_spearman([0.0, 0.0001], 5, seed=0) is None  # every draw converts no session
