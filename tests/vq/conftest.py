"""Planted-type feature fixtures (contract format) and one trained VQ-VAE run shared by the vq tests."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from simpersona.vq.features import arrays_from_arrow, load_spec
from simpersona.vq.planted import write_planted_features

# the small planted set: 8 types, trains to a clear recovery in well under a minute on 2 workers
PLANTED = dict(histories=16000, n_types=8, merchants=30, mix=0.1, rows_per_file=4000, seed=3)


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("planted"))
    write_planted_features(d, **PLANTED)
    return d


@pytest.fixture(scope="session")
def planted_arrays(planted_dir):
    spec = load_spec(planted_dir)
    table = pq.read_table(f"{planted_dir}/preprocess/features")
    return spec, arrays_from_arrow(table, spec)
