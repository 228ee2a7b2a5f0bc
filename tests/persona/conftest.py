"""Fixtures of the persona tests: planted traces on disk and a tiny from-scratch LM with its tokenizer."""

from __future__ import annotations

import os

# before torch loads OpenMP (see simpersona.persona.finetune.worker_env)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

K = 4  # persona types of the planted fixtures


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory):
    """A run dir with the finetune job's inputs for planted synthetic data (K types)."""
    from testkit.planted_persona import write_planted_run

    run = tmp_path_factory.mktemp("planted")
    write_planted_run(run, n_histories=160, n_types=K, seed=3)
    return run


@pytest.fixture(scope="session")
def planted_steps(planted_run):
    from simpersona.persona.examples import load_steps

    return load_steps(planted_run / "preprocess" / "traces", planted_run / "assign" / "types.parquet",
                      planted_run / "assign" / "type_profiles.json", K, 4, 0.2, 0)


def tiny_config(**kw):
    d = dict(hidden_size=32, heads=2, layers=2, intermediate_size=64, max_positions=256, tie_embeddings=True)
    d.update(kw)
    return SimpleNamespace(**d)


@pytest.fixture()
def tiny(planted_steps):
    """A fresh (model, tokenizer) pair: byte-level BPE on planted trace text + a 2-layer Llama."""
    from simpersona.persona import small
    from simpersona.persona.examples import prompts_for

    texts = prompts_for(planted_steps.train, "none", K, None)
    tokenizer = small.train_tokenizer(texts, 600)
    return small.build_model(tokenizer, tiny_config(), seed=0), tokenizer


@pytest.fixture(scope="session")
def codebook():
    return np.random.default_rng(0).normal(size=(K, 6)).astype(np.float32)
