"""The `small` base model: a byte-level BPE tokenizer and a Llama-style LM, both from the traces.

The tokenizer is trained offline with `tokenizers` on the trace text (observations, histories,
actions) plus the whole action vocabulary, so every action verb is in its merges; text it never saw
(new product names, prose personas) still tokenizes, byte by byte at worst. Pre-tokens are
whitespace-separated words (not GPT-2's letter/punctuation split), so frequent actions such as
" add_to_cart" become single tokens and prompts stay short: CPU training pays per token.

The model is then trained from scratch on the no-persona examples (the `pretrain` stage of
simpersona.persona.finetune); persona tokens and both stages follow exactly as for a pretrained LM.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from simpersona.pages.catalog import CATEGORY_NAMES

PAD, END, START = "<|pad|>", "<|end|>", "<|start|>"
MAX_SLOT = 24  # "open 1" .. "open 24" and "remove 1" .. in the tokenizer corpus


def action_vocabulary() -> list[str]:
    """Every action string shape the storefront model can offer (simpersona.pages.observation)."""
    verbs = ["add_to_cart", "buy_now", "favorite", "next_page", "view_cart", "checkout", "continue",
             "place_order", "back", "continue_shopping", "leave"]
    slots = [f"{v} {i}" for v in ("open", "remove") for i in range(1, MAX_SLOT + 1)]
    named = [f"{v} {c}" for v in ("category", "search") for c in CATEGORY_NAMES]
    return verbs + slots + named


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\S+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, END, START], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    vocab_text = " ".join(" " + a for a in action_vocabulary())

    def corpus():
        yield from texts
        for _ in range(20):  # weight: the action vocabulary must win merges even in a small corpus
            yield vocab_text

    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token=PAD, bos_token=START)


def build_model(tokenizer, cfg, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama-style LM sized by `persona.model.small`."""
    if cfg.hidden_size % cfg.heads:
        raise ValueError(f"persona.model.small.hidden_size {cfg.hidden_size} is not divisible by heads {cfg.heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
