"""Planted-type feature fixtures (contract format) and one trained VQ-VAE run shared by the vq tests."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from simpersona.vq.features import arrays_from_arrow, load_spec
from testkit.planted_vq import write_planted_features

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


# the Ray Train run of the planted set: K = 8 planted types, 2 DDP workers (gloo), 8 epochs of 32 steps
TRAIN_ARGS = ["config=vq_planted", "vq.train.exclude_heldout=false", "vq.train.epochs=8", "vq.train.min_steps=0",
              "vq.train.batch_size=256",
              "vq.train.em_init_steps=60", "vq.train.checkpoint_every=50", "vq.eval.silhouette_rows=2000",
              "progress=false"]
FAIL_AT = 100  # worker 0 of the shared run dies at this step, after its checkpoint


@pytest.fixture(scope="session")
def trained(planted_dir, ray_local):
    """(run_dir, summary) of the one Ray Train run of the planted set, shared by the train and assign
    tests. Ray Train start-up dominates a short run on 2 cores, so this run also carries the failure
    that the resume test checks: worker 0 raises at step FAIL_AT, the worker group restarts and
    resumes from the checkpoint written at that step."""
    from simpersona.config import load
    from simpersona.vq.train import run_training

    cfg = load("vqvae", [f"run_dir={planted_dir}", *TRAIN_ARGS, f"vq.train.fail_at_step={FAIL_AT}"])
    return planted_dir, run_training(cfg)
