"""ARA in both forms (clipping, r_real = 0), Spearman, JS divergence, and the per-merchant comparison."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy.spatial.distance import jensenshannon

from simpersona.eval import alignment


def test_ara_formula_and_clipping():
    got = alignment.ara([0.10, 0.15, 0.05, 0.25, 0.30], [0.10, 0.10, 0.10, 0.10, 0.20])
    assert got.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0, 0.5])  # 0.25 vs 0.1: 1 - 1.5 -> clipped to 0


def test_ara_real_zero():
    assert alignment.ara([0.0, 0.01, 0.5], [0.0, 0.0, 0.0]).tolist() == [1.0, 0.0, 0.0]
    assert alignment.ara_minmax([0.0, 0.01], [0.0, 0.0]).tolist() == [1.0, 0.0]
    # and a simulated rate of 0 against a real positive rate is fully wrong in both forms
    assert alignment.ara(0.0, 0.2).tolist() == [0.0]
    assert alignment.ara_minmax(0.0, 0.2).tolist() == [0.0]


def test_ara_minmax_formula():
    got = alignment.ara_minmax([0.15, 0.05, 0.10, 0.40], [0.10, 0.10, 0.10, 0.10])
    assert got.tolist() == pytest.approx([2 / 3, 0.5, 1.0, 0.25])


def test_missing_sim_scores_zero_and_negative_rates_fail():
    assert alignment.ara([math.nan], [0.1]).tolist() == [0.0]
    assert alignment.ara_minmax([math.nan], [0.0]).tolist() == [0.0]
    with pytest.raises(ValueError, match="rates must be non-negative"):
        alignment.ara([-0.1], [0.1])


def test_spearman():
    assert alignment.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert alignment.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks of y are 1, 2, 3.5, 5, 3.5 -> rho = 8 / sqrt(10 * 9.5)
    assert alignment.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert alignment.spearman([1, 2, 3], [5, 5, 5]) is None
    assert alignment.spearman([1, 2], [1, 2]) is None
    assert alignment.spearman([1, 2, 3, math.nan], [1, 2, 3, 9]) == pytest.approx(1.0)


def test_js_divergence():
    assert alignment.js_divergence([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0)
    assert alignment.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    # by hand: m = (.75, .25); KL(p|m) = log2(4/3); KL(q|m) = .5 log2(2/3) + .5
    by_hand = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert alignment.js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(jensenshannon([1, 0], [0.5, 0.5], base=2) ** 2)
    with pytest.raises(ValueError, match="differ in length"):
        alignment.js_divergence([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="positive sum"):
        alignment.js_divergence([0, 0], [1, 0])


def test_type_mix_js_per_merchant():
    sampled = pl.DataFrame({"merchant_id": ["m1"] * 4 + ["m2"] * 2 + ["m3"], "type_id": [0, 0, 1, 1, 2, 2, 0]})
    empirical = pl.DataFrame({"merchant_id": ["m1", "m1", "m2"], "type_id": [0, 1, 3], "prob": [0.5, 0.5, 1.0]})
    js = alignment.type_mix_js(sampled, empirical)
    assert js.to_dicts() == [{"merchant_id": "m1", "js": pytest.approx(0.0)},
                             {"merchant_id": "m2", "js": pytest.approx(1.0)}]  # m3: no empirical mix


def _table(rows: dict[str, tuple[float, int]]) -> pl.DataFrame:
    """merchant -> (conversion, buyers), with buyer strata shares A = 1 - conversion, D = conversion."""
    return pl.DataFrame([
        {"merchant_id": m, "buyers": n, "buyer_conversion": r, "buyer_share_A": 1 - r, "buyer_share_B": 0.0,
         "buyer_share_C": 0.0, "buyer_share_D": r} for m, (r, n) in rows.items()])


def test_compare_per_merchant_pooled_and_strata():
    real = _table({"a": (0.10, 100), "b": (0.20, 100), "c": (0.0, 50), "d": (0.40, 50)})
    sim = _table({"a": (0.15, 40), "b": (0.20, 40), "c": (0.0, 40)})  # d: no simulated buyer
    out = alignment.compare(sim, real, ["a", "b", "c", "d"])
    assert [r["ara"] for r in out["per_merchant"]] == pytest.approx([0.5, 1.0, 1.0, 0.0])
    assert out["ara_overall"] == pytest.approx(2.5 / 4)
    assert out["ara_minmax_overall"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    assert out["missing_sim"] == ["d"]
    # pooled: real (10 + 20 + 0 + 20) / 300; sim (6 + 8 + 0) / 120
    assert out["real_pooled"] == pytest.approx(50 / 300)
    assert out["sim_pooled"] == pytest.approx(14 / 120)
    assert out["ara_pooled"] == pytest.approx(1 - abs(14 / 120 - 50 / 300) / (50 / 300))
    assert out["spearman_cr"] == pytest.approx(1.0)  # a < b, c lowest; d left out (no sim rate)
    assert out["strata"]["D"]["ara"] == pytest.approx(out["ara_overall"])
    assert out["strata"]["B"]["ara"] == pytest.approx(3 / 4)  # 0 vs 0 scores 1; the missing merchant 0
    with pytest.raises(ValueError, match=r"no real buyers for merchants \['zz'\]"):
        alignment.compare(sim, real, ["a", "zz"])
    with pytest.raises(ValueError, match="stratum_unit must be 'buyer' or 'session'"):
        alignment.compare(sim, real, ["a"], stratum_unit="history")


def test_ara_vectorised_shapes():
    r = np.array([[0.1, 0.2], [0.0, 0.3]])
    assert alignment.ara(r.ravel(), r.ravel()).tolist() == [1.0, 1.0, 1.0, 1.0]
