"""The VQ-VAE in plain torch: shapes, the index round trip, saving, the E-step math, no collapse."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from simpersona.vq.config import VQLossConfig, VQModelConfig
from simpersona.vq.features import take_rows
from simpersona.vq.metrics import code_usage
from simpersona.vq.model import build_model, load_model, save_model, to_tensors
from simpersona.vq.sequence import log_probs, part_sizes, sequence_stats


def make_model(spec, k=16, **overrides):
    torch.manual_seed(0)
    hp = {**asdict(VQModelConfig()), "codebook_size": k, **overrides}
    return build_model(spec, hp, asdict(VQLossConfig()))


def batch_of(arrays, n, start=0):
    return to_tensors(take_rows(arrays, slice(start, start + n)))


def test_forward_shapes(planted_arrays):
    spec, arrays = planted_arrays
    model = make_model(spec, k=16)
    batch = batch_of(arrays, 64)
    outputs, indices, losses = model(batch)
    assert indices.shape == (64,) and indices.dtype == torch.long
    assert int(indices.min()) >= 0 and int(indices.max()) < 16
    assert outputs["latent"].shape == outputs["quantized"].shape == (64, 32)
    assert outputs["agg"].shape == (64, spec.agg_width)
    assert outputs["purchase_logit"].shape == outputs["depth"].shape == (64,)
    assert model.codebook.shape == (16, 8)
    for name in ("total", "agg", "seq", "purchase", "cart_abandon", "depth", "code"):
        assert torch.isfinite(losses[name]), name
    losses["total"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_index_round_trip(planted_arrays):
    """encode_indices, then the codebook lookup, equals the quantized output of forward."""
    spec, arrays = planted_arrays
    model = make_model(spec, k=16)
    model(batch_of(arrays, 256))  # k-means initialisation of the codebook on a first batch
    model.eval()
    batch = batch_of(arrays, 300, start=256)
    outputs, indices, _ = model(batch)
    assert torch.equal(model.encode_indices(batch), indices)
    assert torch.allclose(model.quantize_indices(indices), outputs["quantized"], atol=1e-6)
    nearest = (torch.nn.functional.normalize(model.vq.project_in(outputs["latent"]), dim=-1) @ model.codebook.t())
    assert torch.equal(nearest.argmax(1), indices)


def test_save_load_same_indices(planted_arrays, tmp_path):
    spec, arrays = planted_arrays
    model = make_model(spec, k=16)
    model(batch_of(arrays, 256))
    save_model(model.eval(), spec, str(tmp_path / "model"))
    loaded, loaded_spec, meta = load_model(str(tmp_path / "model"))
    batch = batch_of(arrays, 500)
    assert loaded_spec == spec and meta["hparams"]["codebook_size"] == 16
    assert torch.equal(loaded.encode_indices(batch), model.encode_indices(batch))


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained VQ-VAE in .*; run the vqvae stage first"):
        load_model(str(tmp_path / "nothing"))


def test_sequence_likelihood_by_hand():
    """A code's sequence NLL is the Markov chain + per-token categorical + length likelihood."""
    sizes = part_sizes(seq_len=4, event_tokens=7, price_tokens=3, gap_tokens=3, flag_tokens=4)
    # one history, left-padded: view, cart, purchase (tokens 1, 2, 5)
    batch = {"seq_event": torch.tensor([[0, 1, 2, 5]]), "seq_price": torch.tensor([[0, 1, 1, 2]]),
             "seq_gap": torch.tensor([[0, 1, 2, 2]]), "seq_flags": torch.tensor([[0, 0, 1, 3]])}
    stats = sequence_stats(batch, sizes)
    torch.manual_seed(1)
    logits = torch.randn(1, sum(sizes.values()))
    logp = log_probs(logits, sizes)
    parts = dict(zip(sizes, logits.split(list(sizes.values()), dim=-1)))
    lsm = {k: torch.log_softmax(v, -1)[0] for k, v in parts.items()}
    trans = torch.log_softmax(parts["trans"].view(6, 6), -1)
    expected = (lsm["start"][0] + trans[0, 1] + trans[1, 4]  # view -> cart -> purchase
                + lsm["price"][1] * 2 + lsm["price"][2] + lsm["gap"][1] + lsm["gap"][2] * 2
                + lsm["flags"][0] + lsm["flags"][1] + lsm["flags"][3] + lsm["length"][2])
    assert torch.allclose((stats @ logp.t())[0, 0], expected, atol=1e-5)


@pytest.mark.slow
def test_no_collapse_k64(planted_arrays):
    """EM training in-process on planted data keeps most of a 64-code codebook in use."""
    spec, arrays = planted_arrays
    torch.set_num_threads(1)
    model = make_model(spec, k=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    n = len(arrays["agg"])
    tensors = to_tensors(arrays)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(n, generator=gen)
        for lo in range(0, n - 511, 512):
            _, _, losses = model({k: v[perm[lo:lo + 512]] for k, v in tensors.items()})
            opt.zero_grad()
            losses["total"].backward()
            opt.step()
    idx = model.encode_indices(tensors).numpy()
    usage = code_usage(idx, 64)
    assert usage["active_codes"] >= int(0.8 * 64), usage  # measured: 63 of 64
    assert usage["perplexity"] >= 16, usage  # measured: 29 (data made of 8 planted types)
    assert np.bincount(idx, minlength=64).max() < 0.2 * n  # no code swallows the data


def test_mixing_proportions(planted_arrays):
    """With mix_decay > 0 the E-step's proportions follow the responsibilities and stay a distribution
    whose every entry is at least mix_floor / K."""
    spec, arrays = planted_arrays
    model = make_model(spec, k=16, mix_decay=0.5, mix_floor=0.1)
    model.train()
    for start in (0, 512, 1024):
        model(batch_of(arrays, 512, start))
    mix = model.log_mix.exp()
    assert torch.allclose(mix.sum(), torch.tensor(1.0), atol=1e-5)
    assert float(mix.min()) >= 0.1 / 16 - 1e-6
    assert not torch.allclose(mix, torch.full((16,), 1 / 16))  # moved from uniform
