"""Training checkpoints (simpersona.training, as the vqvae stage builds its engine): a round trip, and a
planted pickle refused unrun."""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np
import pytest
import torch

from simpersona.training.checkpoints import UnsafeCheckpoint
from simpersona.training.engine import STATE_FILE
from simpersona.vq.config import VQLossConfig, VQModelConfig, VQTrainConfig
from simpersona.vq.model import MODEL_FILE, build_model, load_model, save_model
from simpersona.vq.train import make_engine

MARKER = "simpersona-pickle-payload-ran"


class Payload:
    """What an attacker plants: unpickling it calls os.system (here: touch a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def engine_for(spec):
    torch.manual_seed(0)
    model = build_model(spec, {**asdict(VQModelConfig()), "codebook_size": 8}, asdict(VQLossConfig()))
    return make_engine(model, asdict(VQTrainConfig()), world_size=1)


def test_checkpoint_round_trip_keeps_weights_optimizer_and_loop_state(planted_arrays, tmp_path):
    spec, _ = planted_arrays
    engine = engine_for(spec)
    client = {"step": 7, "epoch": 1, "history": [{"loss_total": np.float64(0.5), "histories": np.int64(3)}],
              "fingerprint": {"model": {"codebook_size": 8}}}
    engine.save(str(tmp_path), client, rank=0)
    other = engine_for(spec)
    with torch.no_grad():
        for p in other.module.parameters():
            p.add_(1.0)
    assert other.load(str(tmp_path)) == {**client, "history": [{"loss_total": 0.5, "histories": 3}]}
    for a, b in zip(engine.module.state_dict().values(), other.module.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_holding_a_pickle_payload_is_refused_and_not_run(planted_arrays, tmp_path):
    spec, _ = planted_arrays
    marker = tmp_path / MARKER
    engine = engine_for(spec)
    engine.save(str(tmp_path), {"step": 1}, rank=0)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    torch.save({**state, "extra": Payload(str(marker))}, tmp_path / STATE_FILE)
    with pytest.raises(UnsafeCheckpoint) as err:
        engine.load(str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path / STATE_FILE}: refused, it holds objects other than tensors and numbers (Trying to load "
        "unsupported GLOBAL posix.system whose module posix is blocked); delete it or rerun with "
        "vq.train.resume=false")
    assert not marker.exists()


def test_a_model_file_holding_a_pickle_payload_is_refused_and_not_run(planted_arrays, tmp_path):
    spec, _ = planted_arrays
    marker = tmp_path / MARKER
    model_dir = tmp_path / "model"
    save_model(engine_for(spec).module, spec, str(model_dir))
    torch.save({"payload": Payload(str(marker))}, model_dir / MODEL_FILE)
    with pytest.raises(UnsafeCheckpoint, match=f"{MODEL_FILE}: refused"):
        load_model(str(model_dir))
    assert not marker.exists()


def test_a_resumed_loop_state_still_matches_the_fingerprint_of_its_config(planted_dir, planted_arrays, tmp_path):
    """What train_loop_per_worker compares on resume: the stored (JSON) fingerprint against the config's."""
    import json

    from simpersona.config import load
    from simpersona.vq.train import _fingerprint, loop_config

    spec, _ = planted_arrays
    cfg = load("vqvae", [f"run_dir={planted_dir}", "config=vq_planted"])
    config = loop_config(cfg, spec, 16000)
    state = {"step": 50, "epoch": 1, "batch_in_epoch": 3, "fingerprint": _fingerprint(config),
             "history": [{"epoch": 0, "loss_total": np.float64(1.5), "active_codes": np.int64(8), "auc_cart_abandon": None}]}
    engine = engine_for(spec)
    engine.save(str(tmp_path), state, rank=0)
    loaded = engine.load(str(tmp_path))
    assert loaded["fingerprint"] == json.loads(json.dumps(_fingerprint(config)))
    assert {k: loaded[k] for k in ("step", "epoch", "batch_in_epoch")} == {"step": 50, "epoch": 1, "batch_in_epoch": 3}
    assert loaded["history"][0]["active_codes"] == 8
