"""The policy on a real (tiny, untrained) causal LM: only allowed actions, sampled, reproducible."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from omegaconf import OmegaConf

from simpersona.pages.observation import action_verb, allowed_actions, render
from simpersona.persona.scoring import ActionScorer, ScoreRequest
from simpersona.serve.config import ServeConfig
from simpersona.serve.policy import ActionPolicy, PolicyRequest, UniformPolicy
from testkit.untrained_policy import build_untrained_model, random_pages

N_TYPES = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_untrained_model(tmp_path_factory.mktemp("policy") / "model", n_types=N_TYPES, seed=1)


@pytest.fixture(scope="module")
def scorer(model_dir):
    return ActionScorer(str(model_dir))


def requests_for(pages, personas=(None, 0, 3, "a thrifty buyer who compares prices")) -> list[PolicyRequest]:
    out = []
    for i, page in enumerate(pages):
        history = ["open 1", "back", "view_cart"][: i % 4]
        out.append(PolicyRequest(personas[i % len(personas)], render(page), history, allowed_actions(page),
                                 seed=1000 + i, step=i % 7))
    return out


@pytest.mark.slow
def test_policy_never_chooses_an_action_absent_from_the_page(scorer):
    pages = random_pages(240, seed=11)
    assert {p.kind for p in pages} >= {"home", "listing", "search", "product", "cart", "checkout"}
    # a high temperature flattens the untrained model's preferences, so rare actions get sampled too
    policy = ActionPolicy(scorer, temperature=4.0, seed=5)
    decisions = []
    for i in range(0, len(pages), 40):
        decisions += policy.decide(requests_for(pages[i:i + 40]))
    for page, d in zip(pages, decisions, strict=True):
        allowed = allowed_actions(page)
        assert d.action in allowed, (page.kind, d.action, allowed)
        assert allowed[d.index] == d.action
        assert len(d.logprobs) == len(allowed)
        assert math.isclose(math.fsum(math.exp(x) for x in d.logprobs), 1.0, rel_tol=1e-6)
        assert d.logprob == d.logprobs[d.index] <= 0.0
    verbs = Counter(action_verb(d.action) for d in decisions)
    assert len(verbs) >= 8, verbs  # sampled across the action vocabulary, not one argmax


@pytest.mark.slow
def test_logprobs_are_the_scorers_over_allowed_actions_only(scorer):
    pages = random_pages(40, seed=3)
    reqs = requests_for(pages)
    decisions = ActionPolicy(scorer, temperature=1.0, seed=0, history=8).decide(reqs)
    expected = scorer.score([ScoreRequest(r.persona, r.observation, r.history, r.allowed) for r in reqs])
    for d, e in zip(decisions, expected, strict=True):
        np.testing.assert_allclose(d.logprobs, e, atol=1e-9)


def test_sampling_is_seeded_per_agent_step_and_follows_the_distribution(scorer):
    page = next(p for p in random_pages(60, seed=4) if p.kind == "product" and len(allowed_actions(p)) >= 5)
    policy = ActionPolicy(scorer, temperature=1.0, seed=9)
    base = PolicyRequest(2, render(page), [], allowed_actions(page), seed=42, step=0)
    reqs = [PolicyRequest(**{**base.to_dict(), "step": s}) for s in range(3000)]
    first = policy.decide(reqs)
    again = policy.decide(list(reversed(reqs)))[::-1]  # other batch order, same draws
    assert [d.action for d in first] == [d.action for d in again]
    other_seed = policy.decide([PolicyRequest(**{**r.to_dict(), "seed": 43}) for r in reqs[:200]])
    assert [d.action for d in other_seed] != [d.action for d in first[:200]]
    # empirical frequencies match exp(logprobs): sampling, not argmax
    p = np.exp(first[0].logprobs)
    freq = np.bincount([d.index for d in first], minlength=len(p)) / len(first)
    assert np.abs(freq - p).max() < 0.035, (freq, p)
    # temperature sharpens: at T=0.25 the draws follow p^4 (renormalised), so the most likely action wins
    # far more often than at T=1
    sharp = ActionPolicy(scorer, temperature=0.25, seed=9).decide(reqs[:1000])
    sharp_freq = np.bincount([d.index for d in sharp], minlength=len(p)) / len(sharp)
    q = p ** 4 / np.sum(p ** 4)
    top = int(np.argmax(p))
    assert np.abs(sharp_freq - q).max() < 0.05, (sharp_freq, q)
    assert sharp_freq[top] > freq[top] + 0.1, (sharp_freq, freq)


def test_from_config_loads_the_model_folder_once(model_dir):
    cfg = OmegaConf.structured(ServeConfig)
    cfg.temperature, cfg.seed = 0.7, 3
    policy = ActionPolicy.from_config(cfg, model_dir)
    assert (policy.temperature, policy.seed) == (0.7, 3)
    with pytest.raises(FileNotFoundError, match="no policy model at /nonexistent/model"):
        ActionPolicy.from_config(cfg, "/nonexistent/model")


def test_uniform_policy_is_labelled_and_valid():
    pages = random_pages(50, seed=8)
    policy = UniformPolicy(seed=1)
    assert policy.kind == "uniform"
    for page, d in zip(pages, policy.decide(requests_for(pages)), strict=True):
        assert d.action in allowed_actions(page)
        assert math.isclose(d.logprob, -math.log(len(allowed_actions(page))))


@pytest.mark.parametrize("body, message", [
    ([], "policy request must be a JSON object"),
    ({"allowed": ["leave"]}, "policy request lacks observation"),
    ({"observation": "x", "allowed": []}, "policy request needs `allowed`: a non-empty list of action strings"),
    ({"observation": "x", "allowed": ["leave"], "persona": True},
     "policy request `persona` must be an int, a string or null"),
    ({"observation": "x", "allowed": ["leave"], "history": "open 1"},
     "policy request `history` must be a list of action strings"),
])
def test_bad_requests_are_refused_with_one_line(body, message):
    with pytest.raises(ValueError) as err:
        PolicyRequest.from_dict(body)
    assert str(err.value) == message


def test_persona_out_of_range_is_an_error(scorer):
    page = random_pages(1)[0]
    with pytest.raises(ValueError, match=f"persona {N_TYPES} out of range"):
        ActionPolicy(scorer).decide([PolicyRequest(N_TYPES, render(page), [], allowed_actions(page))])
