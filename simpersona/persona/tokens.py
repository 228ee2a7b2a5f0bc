"""K persona tokens `<|persona_k|>` in a causal LM's vocabulary, initialised from the VQ codebook.

`add_persona_tokens` is idempotent: tokens already in the tokenizer are reused (no second resize, no
re-initialisation). The embedding matrix grows only when the new ids do not fit (some checkpoints
carry spare rows). New rows are initialised by one of:

  codebook        closed-form projection of the codebook into the embedding space: the codebook's r
                  principal coordinates, scaled uniformly so their spread equals the embedding
                  matrix's spread along its own top-r principal directions, laid along those
                  directions and shifted by the mean embedding. Linear and distance-preserving up to
                  one scale, so types that are close in the VQ space start close in the LM, and every
                  row starts in-distribution.
  codebook_lstsq  ridge least-squares linear map codebook -> anchors, where each type's anchor is the
                  mean input embedding of its prose description (type_profiles.json).
  mean            every row the mean input embedding (no information from the codebook).

With tied input/output embeddings the rows are shared; an untied output matrix gets its own mean row
(persona tokens are never predicted, so that row only has to be harmless).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AddedToken

from simpersona.persona.prompts import persona_token

INIT_MODES = ("codebook", "codebook_lstsq", "mean")
# text the self-check tokenizes with and without a persona token in front
SELF_CHECK_TEXT = "page: product | cart: 1\nproduct: classic shoe edition | 87.23 | shoes\nhistory: open 2\naction:"


class PersonaTokenError(ValueError):
    """The persona tokens cannot be added or do not behave as single, isolated tokens."""


def persona_token_strings(n_types: int) -> list[str]:
    return [persona_token(k) for k in range(n_types)]


def persona_token_ids(tokenizer, n_types: int) -> list[int] | None:
    """Ids of the K persona tokens when the tokenizer has all of them, else None."""
    vocab = tokenizer.get_vocab()
    tokens = persona_token_strings(n_types)
    present = [t in vocab for t in tokens]
    if not any(present):
        return None
    if not all(present):
        missing = [t for t, p in zip(tokens, present) if not p]
        raise PersonaTokenError(f"tokenizer has only some persona tokens (missing {missing[:3]}...)")
    return [vocab[t] for t in tokens]


def add_persona_tokens(model, tokenizer, n_types: int, codebook: np.ndarray | None = None,
                       init: str = "codebook", anchors: np.ndarray | None = None) -> list[int]:
    """Add (once) and initialise K persona tokens; returns their ids, which are contiguous."""
    if n_types < 1:
        raise PersonaTokenError(f"need at least one persona type, got {n_types}")
    if init not in INIT_MODES:
        raise PersonaTokenError(f"persona.init must be one of {INIT_MODES}, got {init!r}")
    if init != "mean" and codebook is None:  # checked before anything changes
        raise PersonaTokenError(f"persona.init={init} needs the VQ codebook (vqvae/codebook.npy)")
    if codebook is not None and init != "mean" and len(codebook) != n_types:
        raise PersonaTokenError(f"codebook has {len(codebook)} rows for {n_types} persona tokens")
    if init == "codebook_lstsq" and anchors is None:
        raise PersonaTokenError("persona.init=codebook_lstsq needs type descriptions (assign/type_profiles.json)")
    if persona_token(n_types) in tokenizer.get_vocab():  # a larger K was added before
        raise PersonaTokenError(f"tokenizer already has more than {n_types} persona tokens")
    existing = persona_token_ids(tokenizer, n_types)
    if existing is not None:
        check_persona_tokens(tokenizer, existing)
        return existing
    tokens = [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
              for t in persona_token_strings(n_types)]
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = persona_token_ids(tokenizer, n_types)
    assert ids is not None
    if ids != list(range(ids[0], ids[0] + n_types)):
        raise PersonaTokenError(f"persona token ids are not contiguous: {ids[:4]}...")
    old_rows = model.get_input_embeddings().weight.shape[0]
    if ids[-1] >= old_rows:  # resize only when the ids do not fit the existing matrix
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    base_rows = min(old_rows, ids[0])  # rows of real tokens: the statistics the new rows copy
    _init_rows(model, ids, base_rows, codebook, init, anchors)
    model.config.persona_token_ids = ids
    check_persona_tokens(tokenizer, ids)
    return ids


def _init_rows(model, ids: list[int], base_rows: int, codebook, init: str, anchors) -> None:
    emb = model.get_input_embeddings().weight
    base = emb.detach()[:base_rows].double().cpu().numpy()
    if init == "mean":
        rows = np.repeat(base.mean(0, keepdims=True), len(ids), axis=0)
    elif init == "codebook":
        rows = project_codebook(np.asarray(codebook, dtype=np.float64), base)
    else:
        rows = lstsq_codebook(np.asarray(codebook, dtype=np.float64), np.asarray(anchors, dtype=np.float64))
    with torch.no_grad():
        emb[ids[0]: ids[-1] + 1] = torch.as_tensor(rows, dtype=emb.dtype, device=emb.device)
        out = model.get_output_embeddings()
        if out is not None and out.weight is not emb:  # untied head: a harmless mean row
            w = out.weight
            w[ids[0]: ids[-1] + 1] = w[: min(base_rows, w.shape[0])].mean(0, keepdim=True)


def project_codebook(codebook: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Closed-form, distance-preserving (up to one scale) map of K codes into the embedding space."""
    k = codebook.shape[0]
    mu_e = embeddings.mean(0)
    if k == 1:
        return mu_e[None, :]
    centred_c = codebook - codebook.mean(0)
    _, s_c, vt_c = np.linalg.svd(centred_c, full_matrices=False)
    centred_e = embeddings - mu_e
    # principal directions of the embeddings from their (H x H) covariance: cheap for big vocabularies
    cov_e = centred_e.T @ centred_e / max(1, len(embeddings) - 1)
    eigval, eigvec = np.linalg.eigh(cov_e)
    dirs_e = eigvec[:, ::-1]
    r = int(min((s_c > 1e-9 * max(s_c.max(), 1e-30)).sum(), dirs_e.shape[1]))
    if r == 0:  # all codes identical
        return np.repeat(mu_e[None, :], k, axis=0)
    coords = centred_c @ vt_c[:r].T  # K x r principal coordinates of the codes
    code_var = (coords ** 2).sum() / (k - 1)
    # the codes' spread equals the embeddings' spread over the same r directions (not their total
    # variance, which would put r directions far outside what any real token looks like)
    scale = np.sqrt(max(eigval[::-1][:r].sum(), 1e-30) / code_var)
    return mu_e + scale * coords @ dirs_e[:, :r].T


def lstsq_codebook(codebook: np.ndarray, anchors: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Ridge least-squares affine map codebook -> anchors (K x H), applied to the codebook."""
    if anchors.shape[0] != codebook.shape[0]:
        raise PersonaTokenError(f"{anchors.shape[0]} type descriptions for {codebook.shape[0]} codebook rows")
    x = np.hstack([codebook - codebook.mean(0), np.ones((len(codebook), 1))])
    lam = ridge * max(np.trace(x.T @ x) / x.shape[1], 1e-12)
    w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ anchors)
    return x @ w


def description_anchors(model, tokenizer, descriptions: list[str]) -> np.ndarray:
    """Mean input embedding of each description's tokens (the anchors of codebook_lstsq)."""
    emb = model.get_input_embeddings().weight.detach()
    rows = []
    for text in descriptions:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        rows.append(emb[ids].double().mean(0).cpu().numpy())
    return np.stack(rows)


def check_persona_tokens(tokenizer, ids: list[int], text: str = SELF_CHECK_TEXT) -> None:
    """Each persona token is one id, and a prompt ending in it tokenises as the prompt without it, then the id
    (prompts.build_prompt puts the token last)."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    for k, tid in enumerate(ids):
        tok = persona_token(k)
        alone = tokenizer(tok, add_special_tokens=False)["input_ids"]
        if alone != [tid]:
            raise PersonaTokenError(f"{tok} tokenizes to {alone}, expected the single id {tid}")
        joined = tokenizer(text + tok, add_special_tokens=False)["input_ids"]
        if joined != plain + [tid]:
            raise PersonaTokenError(f"a prompt ending in {tok} tokenizes differently than without it")
