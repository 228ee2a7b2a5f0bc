"""ActionScorer: one-pass packed scoring equals full-forward scoring, and only allowed actions come back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simpersona.persona.examples import encode_prompts
from simpersona.persona.model_loading import save
from simpersona.persona.scoring import ActionScorer, ScoreRequest, _pack, sample
from simpersona.persona.tokens import add_persona_tokens

from .conftest import K


@pytest.fixture()
def scorer(tiny, codebook):
    model, tok = tiny
    add_persona_tokens(model, tok, K, codebook, "codebook")
    return ActionScorer(model, tok, max_candidates=40)


def requests_from(steps, n=24):
    df = steps.heldout.head(n)
    reqs = []
    for i, (t, o, h, a) in enumerate(zip(df.type_id, df.observation, df.history, df.allowed)):
        persona = [int(t), None, "a prose persona who likes deals"][i % 3]
        reqs.append(ScoreRequest(persona, o, list(h), list(a)))
    return reqs


def test_pack_first_fit_longest_first():
    assert _pack([10, 4, 6, 3]) == [[0], [2, 1], [3]]
    rows = _pack(lens := [7, 1, 9, 2, 2, 5, 8, 3])
    assert sorted(k for r in rows for k in r) == list(range(8)) and all(sum(lens[k] for k in r) <= 9 for r in rows)


def test_one_pass_scoring_equals_naive(scorer, planted_steps):
    reqs = requests_from(planted_steps)
    # candidates of different token lengths, prompts of different lengths, in one batch
    reqs.append(ScoreRequest(1, "page: cart | cart: 2\nitems: [1] x 1.00; [2] y 2.00\nsubtotal: 3.00 | shipping: 8.00",
                             [], ["open 12", "remove 1", "continue_shopping", "search tea"]))
    reqs += [ScoreRequest(None, "page: product", [], ["add_to_cart", "leave"]), ScoreRequest(0, "page: home", [], ["leave"])]
    fast = scorer.score(reqs)
    slow = scorer.score_naive(reqs)
    # several requests share a row of the forward pass (packed segments), so the blocks of the mask matter
    seg_lens = [len(p) + sum(len(scorer.targets(a)) - 1 for a in r.allowed)
                for r, p in zip(reqs, encode_prompts(scorer.tokenizer, [scorer.prompt(r) for r in reqs]))]
    assert len(_pack(seg_lens)) <= len(reqs) - 2
    assert len({len(p) for p in scorer.tokenizer([scorer.prompt(r) for r in reqs]).input_ids}) > 3
    for r, f, s in zip(reqs, fast, slow):
        assert len(f) == len(r.allowed)
        np.testing.assert_allclose(f, s, atol=1e-4)
        assert np.isclose(np.exp(f).sum(), 1.0, atol=1e-6)  # normalised over the allowed actions only


def test_sampling_stays_in_allowed(scorer, planted_steps):
    reqs = requests_from(planted_steps, 12)
    rng = np.random.default_rng(0)
    for r, lp in zip(reqs, scorer.score(reqs)):
        for temperature in (0.0, 0.7, 1.0, 5.0):
            assert r.allowed[sample(lp, temperature, rng)] in r.allowed
    assert sample([-3.0, -0.1, -2.0], 0, rng) == 1
    draws = [sample(np.log([0.2, 0.8]), 1.0, np.random.default_rng(i)) for i in range(2000)]
    assert abs(np.mean(draws) - 0.8) < 0.04


def test_bad_requests(scorer):
    with pytest.raises(ValueError, match=f"persona {K} out of range: the model has {K} persona tokens"):
        scorer.score([ScoreRequest(K, "page: home | cart: 0", [], ["leave"])])
    with pytest.raises(ValueError, match="score request has no allowed actions"):
        scorer.score([ScoreRequest(None, "page: home | cart: 0", [], [])])


def test_loads_folder_and_truncates_history(tiny, codebook, tmp_path):
    model, tok = tiny
    ids = add_persona_tokens(model, tok, K, codebook, "codebook")
    save(model, tok, tmp_path / "model")
    (tmp_path / "persona.json").write_text(json.dumps({"codebook_size": K, "persona_token_ids": ids,
                                                       "history_len": 2}))
    s = ActionScorer(tmp_path / "model")  # persona.json beside the model folder, as in DIR/finetune
    assert s.n_personas == K and s.history_len == 2
    r = ScoreRequest(0, "page: home | cart: 0", ["open 1", "back", "open 2"], ["leave"])
    assert s.prompt(r).endswith("history: back > open 2\naction:<|persona_0|>")
    with pytest.raises(FileNotFoundError, match="expected a save_pretrained folder"):
        ActionScorer(tmp_path / "nothing")
