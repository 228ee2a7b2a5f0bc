"""The closed-form mixture EM that refines the k-means partition into EM's starting partition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from simpersona.vq.kmeans import fit_kmeans
from simpersona.vq.mixture import SequenceMixture, fit_mixture


def test_mixture_refines_kmeans(planted_arrays):
    spec, arrays = planted_arrays
    planted = arrays["planted_type"]
    km = fit_kmeans(arrays, spec, 8, 0, 2, 100, 0).assign(arrays, spec)
    mix = fit_mixture(arrays, spec, km, 8, 30, 0.1)
    codes = mix.assign(arrays, spec)
    assert codes.dtype == np.int32 and codes.shape == planted.shape
    assert np.allclose(np.exp(mix.log_mix).sum(), 1.0)
    # the model family of the codes explains planted types better than distances between summaries do
    assert normalized_mutual_info_score(planted, codes) > normalized_mutual_info_score(planted, km)
    again = SequenceMixture.from_bytes(mix.to_bytes())
    assert np.array_equal(again.assign(arrays, spec), codes)


def test_mixture_init_length_mismatch(planted_arrays):
    spec, arrays = planted_arrays
    with pytest.raises(ValueError, match=r"fit_mixture: 3 initial codes for 16000 histories"):
        fit_mixture(arrays, spec, np.zeros(3, dtype=np.int32), 8, 1, 0.1)


def _markov_types(spec, n_per_type: int, seed: int) -> dict[str, np.ndarray]:
    """Histories of 4 types, each its own Markov chain over the events and its own price buckets;
    everything else (gaps, flags, aggregate vector, outcomes) is noise shared by all types."""
    rng = np.random.default_rng(seed)
    ne, L, types = spec.event_tokens - 1, spec.seq_len, 4
    trans = rng.dirichlet(np.full(ne, 0.3), size=(types, ne))
    price = rng.dirichlet(np.full(spec.price_buckets, 0.5), size=types)
    rows = {c: np.zeros((types * n_per_type, L), dtype=np.int8) for c in ("seq_event", "seq_price", "seq_gap",
                                                                         "seq_flags")}
    planted = np.repeat(np.arange(types), n_per_type)
    for r, t in enumerate(planted):
        length = int(rng.integers(6, L + 1))
        e = int(rng.integers(ne))
        for col in range(L - length, L):
            rows["seq_event"][r, col] = e + 1
            e = int(rng.choice(ne, p=trans[t, e]))
        rows["seq_price"][r, L - length:] = 1 + rng.choice(spec.price_buckets, size=length, p=price[t])
        rows["seq_gap"][r, L - length:] = rng.integers(1, spec.gap_buckets + 1, size=length)
        rows["seq_flags"][r, L - length:] = rng.integers(0, 4, size=length)
    n = len(planted)
    rows.update(agg=rng.normal(size=(n, spec.agg_width)).astype(np.float32),
                label_purchase=(rng.random(n) < 0.1).astype(np.int8),
                label_cart_abandon=(rng.random(n) < 0.2).astype(np.int8),
                label_depth=rng.random(n).astype(np.float32), planted_type=planted.astype(np.int32))
    return rows


def test_split_merge_escapes_cut_and_merged_types(planted_arrays):
    """EM started from a partition that merges types 0 and 1 and cuts type 2 in two stays there;
    split-and-merge moves reach the planted partition, and every accepted move raises the likelihood."""
    from sklearn.cluster import KMeans

    from simpersona.vq.mixture import _stats, mean_log_likelihood, split_merge

    spec, _ = planted_arrays
    arrays = _markov_types(spec, 500, seed=0)
    planted = arrays["planted_type"]
    features = fit_kmeans(arrays, spec, 4, 0, 2, 100, 0).transform(arrays, spec)
    stuck = planted.copy()
    stuck[planted == 1] = 0
    type2 = np.flatnonzero(planted == 2)
    stuck[type2[KMeans(2, n_init=2, random_state=0).fit_predict(features[type2]) == 1]] = 1
    em = fit_mixture(arrays, spec, stuck, 4, 50, 0.1)
    assert normalized_mutual_info_score(planted, em.assign(arrays, spec)) < 0.9  # EM alone stays stuck

    best, moves = split_merge(arrays, spec, em, features, rounds=5, merges=3, splits=2, iters=30, prior=0.1, seed=0)
    assert normalized_mutual_info_score(planted, best.assign(arrays, spec)) > 0.95
    assert moves and all(m["log_likelihood"][1] > m["log_likelihood"][0] for m in moves)
    counts, outcomes = _stats(arrays, spec)
    assert mean_log_likelihood(best, counts, outcomes) > mean_log_likelihood(em, counts, outcomes)
    assert np.isclose(mean_log_likelihood(best, counts, outcomes), moves[-1]["log_likelihood"][1], atol=1e-4)
