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
