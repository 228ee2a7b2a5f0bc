"""Persona tokens: added once, contiguous, resized only when needed, initialised from the codebook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simpersona.persona import small
from simpersona.persona.tokens import (
    PersonaTokenError,
    add_persona_tokens,
    check_persona_tokens,
    lstsq_codebook,
    persona_token_ids,
    project_codebook,
)

from .conftest import K, tiny_config


def test_added_once_contiguous_and_tied(tiny, codebook):
    model, tok = tiny
    n0 = len(tok)
    ids = add_persona_tokens(model, tok, K, codebook, "codebook")
    assert ids == list(range(n0, n0 + K))
    assert model.get_input_embeddings().weight.shape[0] == n0 + K
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.persona_token_ids == ids
    rows = model.get_input_embeddings().weight[ids].clone()
    again = add_persona_tokens(model, tok, K, codebook * 10, "codebook")  # idempotent: no re-init
    assert again == ids and len(tok) == n0 + K
    assert model.get_input_embeddings().weight.shape[0] == n0 + K
    assert torch.equal(model.get_input_embeddings().weight[ids], rows)
    assert persona_token_ids(tok, K) == ids
    with pytest.raises(PersonaTokenError, match=f"more than {K - 1} persona tokens"):
        add_persona_tokens(model, tok, K - 1, codebook[:-1])


def test_no_resize_when_rows_are_spare(planted_steps, codebook):
    from simpersona.persona.examples import prompts_for

    tok = small.train_tokenizer(prompts_for(planted_steps.train, "none", K, None), 600)
    model = small.build_model(tok, tiny_config(), seed=0)
    model.resize_token_embeddings(len(tok) + 16)  # a checkpoint with spare rows
    before = model.get_input_embeddings().weight
    ids = add_persona_tokens(model, tok, K, codebook, "mean")
    assert model.get_input_embeddings().weight is before  # same matrix: not resized
    assert before.shape[0] == len(tok) + 16 - K
    mean = before[: ids[0]].mean(0)
    assert torch.allclose(before[ids], mean.expand(K, -1), atol=1e-6)


def test_untied_head_gets_mean_rows(planted_steps, codebook):
    from simpersona.persona.examples import prompts_for

    tok = small.train_tokenizer(prompts_for(planted_steps.train, "none", K, None), 600)
    model = small.build_model(tok, tiny_config(tie_embeddings=False), seed=0)
    ids = add_persona_tokens(model, tok, K, codebook, "codebook")
    head = model.get_output_embeddings().weight
    assert head is not model.get_input_embeddings().weight
    assert torch.allclose(head[ids], head[: ids[0]].mean(0).expand(K, -1), atol=1e-6)


def test_codebook_projection_preserves_geometry():
    rng = np.random.default_rng(1)
    codes = rng.normal(size=(6, 5))
    emb = rng.normal(size=(500, 32)) * np.linspace(0.1, 2, 32) + 3.0
    rows = project_codebook(codes, emb)
    d_codes = np.linalg.norm(codes[:, None] - codes[None], axis=-1)
    d_rows = np.linalg.norm(rows[:, None] - rows[None], axis=-1)
    iu = np.triu_indices(6, 1)
    ratio = d_rows[iu] / d_codes[iu]
    assert np.allclose(ratio, ratio[0], rtol=1e-8)  # one scale for every pair
    assert np.allclose(rows.mean(0), emb.mean(0))  # centred on the mean embedding
    # spread like the embeddings along the same (top-5) directions
    top = np.sort(np.linalg.eigvalsh(np.cov(emb.T)))[::-1][:5].sum()
    assert np.isclose(((rows - rows.mean(0)) ** 2).sum() / 5, top, rtol=1e-6)


def test_lstsq_fits_anchors():
    rng = np.random.default_rng(2)
    codes, anchors = rng.normal(size=(4, 8)), rng.normal(size=(4, 16))
    assert np.allclose(lstsq_codebook(codes, anchors, ridge=1e-9), anchors, atol=1e-5)


def test_self_check_and_bad_input(tiny, codebook):
    model, tok = tiny
    ids = add_persona_tokens(model, tok, K, codebook, "codebook")
    check_persona_tokens(tok, ids)
    with pytest.raises(PersonaTokenError, match="expected the single id"):
        check_persona_tokens(tok, [i + 1 for i in ids])
    with pytest.raises(PersonaTokenError, match="only some persona tokens"):
        add_persona_tokens(model, tok, K + 3, None, "mean")
    tok2 = small.train_tokenizer(["page: home | cart: 0\naction: open 1"], 300)
    model2 = small.build_model(tok2, tiny_config(), 0)
    with pytest.raises(PersonaTokenError, match="persona.init must be one of"):
        add_persona_tokens(model2, tok2, K, codebook, "random")
    with pytest.raises(PersonaTokenError, match="needs the VQ codebook"):
        add_persona_tokens(model2, tok2, K, None, "codebook")
    with pytest.raises(PersonaTokenError, match=f"codebook has {K} rows for {K + 1} persona tokens"):
        add_persona_tokens(small.build_model(tok2, tiny_config(), 0), tok2, K + 1, codebook, "codebook")
