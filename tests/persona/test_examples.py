"""Prompts and training examples: format, histories, the held-out split, loss masking."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from simpersona.persona import examples as ex
from simpersona.persona.prompts import build_prompt, persona_token, target_text

from .conftest import K


def test_prompt_variants():
    obs = "page: home | cart: 0\nproducts p1: [1] soft shoe set 12.00"
    assert persona_token(3) == "<|persona_3|>"
    assert build_prompt(3, obs, ["open 1", "back"]) == f"{obs}\nhistory: open 1 > back\naction:<|persona_3|>"
    assert build_prompt(None, obs, []) == f"{obs}\nhistory: (start)\naction:"
    assert build_prompt("  likes\n deals ", obs, []) == f"{obs}\nhistory: (start)\npersona: likes deals\naction:"
    assert target_text("add_to_cart", "<|end|>") == " add_to_cart<|end|>"
    with pytest.raises(ValueError, match="persona type id must be >= 0"):
        build_prompt(-1, obs, [])
    with pytest.raises(TypeError, match="not a bool"):
        build_prompt(True, obs, [])
    with pytest.raises(TypeError, match="not a bool"):
        build_prompt(np.bool_(True), obs, [])
    with pytest.raises(TypeError, match="not float"):
        build_prompt(3.0, obs, [])
    # a type id as read from Parquet or a numpy array is the same persona as the int
    assert build_prompt(np.int32(3), obs, []) == build_prompt(3, obs, []) == build_prompt(np.int64(3), obs, [])


def test_history_is_per_session_and_oldest_first():
    df = pd.DataFrame({
        "history_id": ["h"] * 5, "session_idx": [0, 0, 0, 1, 1], "step": [0, 1, 2, 0, 1],
        "action": ["a", "b", "c", "d", "e"]}).sample(frac=1, random_state=1)
    out = ex.add_history(df, 2)
    assert out["history"].tolist() == [[], ["a"], ["a", "b"], [], ["d"]]


def test_split_by_history_and_types(planted_steps, planted_run):
    s = planted_steps
    assert set(s.train.history_id).isdisjoint(set(s.heldout.history_id))
    assert 0.1 < len(s.heldout) / (len(s.train) + len(s.heldout)) < 0.35
    assert s.untyped_rows == 0 and s.n_types == K
    assert all(s.descriptions)
    # every action was allowed on its page, and the history never crosses a session
    assert all(a in list(al) for a, al in zip(s.train.action, s.train.allowed))
    first = s.train[s.train.step == 0]
    assert all(len(h) == 0 for h in first.history)


def test_type_ids_out_of_range_fail(planted_run):
    with pytest.raises(ValueError, match=r"type ids outside \[0, 2\)"):
        ex.load_steps(planted_run / "preprocess" / "traces", planted_run / "assign" / "types.parquet",
                      planted_run / "assign" / "type_profiles.json", 2, 4, 0.1, 0)
    with pytest.raises(FileNotFoundError, match="run the preprocess stage first"):
        ex.read_traces(planted_run / "nowhere")


def test_descriptions_list_or_dict(tmp_path):
    p = tmp_path / "profiles.json"
    p.write_text(json.dumps({"0": {"description": "zero"}, "2": {"description": "two"}}))
    assert ex.read_descriptions(p, 3) == ["zero", "", "two"]
    p.write_text(json.dumps([{"type_id": 1, "description": "one"}]))
    assert ex.read_descriptions(p, 2) == ["", "one"]
    assert ex.read_descriptions(tmp_path / "missing.json", 2) is None


def test_variants_share_rows(planted_steps):
    df = planted_steps.train.head(50)
    d = planted_steps.descriptions
    persona = ex.prompts_for(df, "persona", K, d)
    none = ex.prompts_for(df, "none", K, d)
    prose = ex.prompts_for(df, "prompt", K, d)
    mismatch = ex.persona_of(df, "mismatch", K, d)
    for p, n, q, t, m in zip(persona, none, prose, df.type_id, mismatch):
        body = n.removesuffix("action:")
        assert p == f"{n}<|persona_{t}|>"
        assert q == f"{body}persona: {d[t]}\naction:"
        assert m != t
    with pytest.raises(ValueError, match="needs a description for every type"):
        ex.prompts_for(df, "prompt", K, ["x"] * (K - 1) + [""])


def test_persona_dropout_drops_a_seeded_share_of_tokens(planted_steps):
    df = planted_steps.train
    kept = ex.persona_of(df, "persona", K, None)
    dropped = ex.persona_of(df, "persona", K, None, dropout=0.3, seed=0)
    share = np.mean([d is None for d in dropped])
    assert abs(share - 0.3) < 0.05 and all(d in (None, k) for d, k in zip(dropped, kept))
    assert dropped == ex.persona_of(df, "persona", K, None, dropout=0.3, seed=0)  # the same rows every time
    assert dropped != ex.persona_of(df, "persona", K, None, dropout=0.3, seed=1)
    with pytest.raises(ValueError, match="persona dropout"):
        ex.persona_of(df, "persona", K, None, dropout=1.0)


def test_loss_only_on_action_tokens(tiny):
    _, tok = tiny
    df, dropped = ex.tokenize(tok, ["page: home\naction:", "page: cart\naction:" * 50],
                              ["open 1", "checkout"], max_tokens=60)
    assert dropped == 1 and len(df) == 1
    batch = ex.collate(df.input_ids.tolist(), df.n_prompt.tolist(), tok.pad_token_id)
    n_prompt = int(df.n_prompt[0])
    labels = batch["labels"][0]
    assert (labels[:n_prompt] == ex.IGNORE).all()
    target = tok.decode(labels[n_prompt:].tolist())
    assert target == " open 1" + tok.eos_token
    assert batch["input_ids"][0, 0].item() == tok.bos_token_id  # prompts open with the start token


def test_bucketing_keeps_rows():
    df = pd.DataFrame({"input_ids": [np.arange(n) for n in range(1, 40)], "n_prompt": 1})
    out = ex.bucket_by_length(df, 4, seed=0)
    assert sorted(map(len, out.input_ids)) == list(range(1, 40))
    widths = [max(map(len, out.input_ids[i:i + 4])) - min(map(len, out.input_ids[i:i + 4]))
              for i in range(0, 36, 4)]
    assert max(widths) <= 4  # neighbours in length share a batch


def test_sampling_by_type_gives_rare_types_their_share():
    """Each type an equal share of n; a type with fewer rows keeps all of them and the rest goes to the
    others; within a type the rows a uniform sample ranks first; bad names are refused."""
    df = pd.DataFrame({"history_id": [f"h{i}" for i in range(1000)], "session_idx": 0, "step": 0,
                       "type_id": [0] * 700 + [1] * 250 + [2] * 40 + [3] * 10})
    out = ex.sample_training_steps(df, 200, "types", seed=0)
    assert out["type_id"].value_counts().to_dict() == {0: 75, 1: 75, 2: 40, 3: 10}
    uniform = ex.sample_training_steps(df, 200, "steps", seed=0)
    assert uniform.equals(ex.subsample(df, 200, 0)) and (uniform["type_id"] == 3).sum() < 10
    # the rows kept of a type are the ones the uniform hash order puts first among that type's rows
    first_of_0 = ex.subsample(df[df.type_id == 0], 75, 0)["history_id"].tolist()
    assert out[out.type_id == 0]["history_id"].tolist() == first_of_0
    assert ex.sample_training_steps(df, 0, "types", seed=0).equals(df)  # 0 keeps all
    with pytest.raises(ValueError, match="train_sampling must be steps or types"):
        ex.sample_training_steps(df, 200, "balanced", seed=0)
