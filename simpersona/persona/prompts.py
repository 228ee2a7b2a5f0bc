"""Prompt text shared by training, scoring and serving: the page, the last actions, one persona token.

    page: product | cart: 0
    product: classic shoe edition | 87.23 | shoes
    history: open 2 > back > open 1
    action:<|persona_3|>

The persona token is the prompt's last token, the position whose hidden state predicts the action: there
its embedding reaches the prediction directly, where anywhere earlier it must be carried forward by
attention, which a small model fine-tuned on few examples per type does not learn. It is also not in front
of the page, where a base model learnt to read pages that open right after its start token and a new token
moves every page token away from it. A prose persona (the prompt baseline) is a line before `action:`.

The target appended to a prompt is `" " + action` followed by the tokenizer's end marker; the loss
(and the scorer) covers only those tokens. Prompt and target are tokenized separately and
concatenated, in training and in scoring alike, so a candidate action is always the same token ids;
the prompt's ids open with the tokenizer's start token when it has one (examples.encode_prompts).
"""

from __future__ import annotations

import numbers

import numpy as np

PERSONA_TOKEN = "<|persona_{}|>"
NO_HISTORY = "(start)"


def persona_token(k: int) -> str:
    return PERSONA_TOKEN.format(int(k))


def _checked_persona(persona) -> int | str | None:
    """`persona` as build_prompt uses it; a numpy integer (a type id read from Parquet) becomes an int."""
    if isinstance(persona, bool | np.bool_):  # bool is an int subclass; True is not persona 1
        raise TypeError("persona must be an int type id, a prose string or None, not a bool")
    if isinstance(persona, numbers.Integral):
        if persona < 0:
            raise ValueError(f"persona type id must be >= 0 (use None for no persona), got {persona}")
        return int(persona)
    if persona is not None and not isinstance(persona, str):
        raise TypeError(f"persona must be an int type id, a prose string or None, not {type(persona).__name__}")
    return persona


def history_line(history: list[str]) -> str:
    return "history: " + (" > ".join(history) if history else NO_HISTORY)


def build_prompt(persona: int | str | None, observation: str, history: list[str]) -> str:
    """Prompt for the next action; `history` is the session's previous actions, oldest first. `persona`: a
    type id (its token ends the prompt), a prose persona (a line before `action:`) or None."""
    persona = _checked_persona(persona)
    prose = " ".join(persona.split()) if isinstance(persona, str) else ""
    persona_line = f"persona: {prose}\n" if prose else ""
    token = persona_token(persona) if isinstance(persona, int) else ""
    return f"{observation}\n{history_line(history)}\n{persona_line}action:{token}"


def target_text(action: str, end: str) -> str:
    """What the model learns to write after the prompt: the action and the end marker."""
    return f" {action}{end}"
