"""Base-model loading: names, local folders, GGUF errors."""

from __future__ import annotations

import pytest
import torch

from simpersona.persona.model_loading import SMALL, SMOLLM2, load_pretrained, load_saved, resolve_name, save


def test_resolve_names():
    assert resolve_name("auto") == (SMOLLM2 if torch.cuda.is_available() else SMALL)
    assert resolve_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(ValueError, match="the small model is built from the traces"):
        load_pretrained("small")


def test_local_folder_loads_like_a_hub_id(tiny, tmp_path):
    model, tok = tiny
    save(model, tok, tmp_path / "m")
    loaded, tok2 = load_pretrained(str(tmp_path / "m"))  # a folder never falls back to the hub
    assert type(loaded) is type(model) and len(tok2) == len(tok)
    x = torch.tensor([[tok.bos_token_id, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, model.eval()(input_ids=x).logits)
    again, _ = load_saved(tmp_path / "m")
    assert again.config.vocab_size == model.config.vocab_size
    with pytest.raises(FileNotFoundError, match="no GGUF file missing.gguf in"):
        load_pretrained(str(tmp_path / "m"), gguf_file="missing.gguf")
