"""Prompt text shared by training, scoring and serving: the page, the last actions, one persona token.

    page: product | cart: 0
    product: classic shoe edition | 87.23 | shoes
    history: open 2 > back > open 1
    <|persona_3|>
    action:

The persona line sits right before the decision, not in front of the page: a base model learnt to read
pages that open right after its start token, and a new token there moves every page token away from it.
Measured on the demo's small LM (persona line first): the fine-tuned persona model left checkout pages
with probability 0.9, where every training example continued, and did so under any type's token.

The target appended to a prompt is `" " + action` followed by the tokenizer's end marker; the loss
(and the scorer) covers only those tokens. Prompt and target are tokenized separately and
concatenated, in training and in scoring alike, so a candidate action is always the same token ids;
the prompt's ids open with the tokenizer's start token when it has one (examples.encode_prompts).
"""

from __future__ import annotations

PERSONA_TOKEN = "<|persona_{}|>"
NO_HISTORY = "(start)"


def persona_token(k: int) -> str:
    return PERSONA_TOKEN.format(int(k))


def persona_prefix(persona: int | str | None) -> str:
    """The persona line of a prompt: a persona token, a prose persona (the prompt baseline) or nothing."""
    if persona is None:
        return ""
    if isinstance(persona, bool):  # bool is an int subclass; True is not persona 1
        raise TypeError("persona must be an int type id, a prose string or None, not a bool")
    if isinstance(persona, int):
        if persona < 0:
            raise ValueError(f"persona type id must be >= 0 (use None for no persona), got {persona}")
        return persona_token(persona) + "\n"
    if isinstance(persona, str):
        text = " ".join(persona.split())
        return f"persona: {text}\n" if text else ""
    raise TypeError(f"persona must be an int type id, a prose string or None, not {type(persona).__name__}")


def history_line(history: list[str]) -> str:
    return "history: " + (" > ".join(history) if history else NO_HISTORY)


def build_prompt(persona: int | str | None, observation: str, history: list[str]) -> str:
    """Prompt for the next action; `history` is the session's previous actions, oldest first."""
    return f"{observation}\n{history_line(history)}\n{persona_prefix(persona)}action:"


def target_text(action: str, end: str) -> str:
    """What the model learns to write after the prompt: the action and the end marker."""
    return f" {action}{end}"
