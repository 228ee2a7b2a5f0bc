"""The finetune job end to end on planted traces: the small model learns a persona-conditional rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from simpersona.config import load
from simpersona.persona.evaluate import score_steps
from simpersona.persona.examples import load_steps
from simpersona.persona.scoring import ActionScorer
from testkit.planted_persona import write_planted_run

K4 = 4
OVERRIDES = [
    "progress=false", "persona.model.name_or_path=small", "persona.train.workers=0",
    "persona.model.small.vocab_size=600", "persona.model.small.hidden_size=64", "persona.model.small.layers=2",
    "persona.model.small.intermediate_size=128", "persona.model.small.pretrain.epochs=2",
    "persona.model.small.pretrain.lr=5e-3", "persona.stage1.epochs=1", "persona.stage2.epochs=2",
    "persona.baselines=[none]", "persona.eval.rollouts_per_type=24", "traces.max_steps_per_session=20",
]


def first_product_decisions(df):
    """Steps on the first product page of a session: nothing in the history reveals the type yet."""
    verbs = {"add_to_cart", "buy_now", "favorite"}
    keep = [o.startswith("page: product") and sum(a.startswith("open") for a in h) == 1
            and h[-1].startswith("open") and not verbs & set(h) for o, h in zip(df.observation, df.history)]
    return df[np.asarray(keep)]


@pytest.mark.slow
def test_small_model_learns_planted_persona_rule(ray_local, tmp_path):
    run = tmp_path / "run"
    write_planted_run(run, n_histories=300, n_types=K4, seed=5, rule_p=0.9)
    from simpersona.persona.job import run as finetune

    cfg = load("finetune", [f"run_dir={run}"] + OVERRIDES)
    summary = finetune(cfg)

    out = run / "finetune"
    saved = json.loads((out / "summary.json").read_text())
    for key in ("base_model", "persona_tokens", "stage1_loss", "stage2_loss", "heldout_acc_persona",
                "heldout_acc_no_persona", "type_conversion_spearman", "wall_s"):
        assert key in saved, key
    assert saved["base_model"] == "small"
    assert set(saved["wall_s"]) >= {"base", "stage1", "stage2", "baseline_none", "evaluate", "total"}

    # persona ids: contiguous, the same in persona.json, the tokenizer and the model config
    info = json.loads((out / "persona.json").read_text())
    ids = info["persona_token_ids"]
    assert info["persona_tokens"] == [f"<|persona_{k}|>" for k in range(K4)] and info["codebook_size"] == K4
    assert ids == list(range(ids[0], ids[0] + K4))
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert tok.convert_tokens_to_ids(info["persona_tokens"]) == ids
    assert model.config.persona_token_ids == ids
    assert json.loads((out / "model" / "persona.json").read_text()) == info

    # the planted rule: the first product-page decision depends on the type alone
    steps = load_steps(run / "preprocess" / "traces", run / "assign" / "types.parquet",
                       run / "assign" / "type_profiles.json", K4, 4, 0.1, 0)
    first = first_product_decisions(steps.heldout)
    assert len(first) >= 20

    def accuracy(folder, variant):
        lp = score_steps(ActionScorer(folder), first, variant, K4, None)
        return np.mean([list(al).index(a) == int(np.argmax(x)) for al, a, x in zip(first.allowed, first.action, lp)])

    with_persona, without = accuracy(out / "model", "persona"), accuracy(out / "baselines" / "none", "none")
    assert with_persona >= 0.5 and with_persona - without >= 0.3, (with_persona, without)
    assert summary["heldout_acc_persona"] > summary["heldout_acc_no_persona"] + 0.03
    assert summary["heldout_acc_mismatch"] < summary["heldout_acc_persona"]
    assert summary["type_conversion_spearman"] >= 0.6, summary["type_conversion_model"]

    again = finetune(cfg)  # finished stages are reused, not retrained
    assert all(s["reused"] for s in again["stages"].values())
    assert again["heldout_acc_persona"] == summary["heldout_acc_persona"]
