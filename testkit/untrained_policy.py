"""An untrained policy model: the `small` architecture, a tokenizer and persona tokens, no training.

For tests and speed benchmarks of the policy before (or without) a fine-tuned model: it goes through
exactly the code path of DIR/finetune/model (save_pretrained folder -> ActionScorer), so what it
measures is the serving machinery. Its action choices are meaningless; never evaluate with it.

`random_pages` walks the storefront model (simpersona.pages.shop.Shop) with random knobs and
random allowed actions, giving pages of every kind, for the tokenizer corpus and for tests.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from simpersona.pages.catalog import generate_catalog
from simpersona.pages.observation import PageState, allowed_actions, render
from simpersona.pages.shop import Knobs, Shop, Visit


def random_knobs(rng: np.random.Generator) -> Knobs:
    return Knobs(
        price_multiplier=float(rng.choice([0.7, 1.0, 1.3])), shipping_fee=float(rng.choice([0.0, 5.0, 12.0])),
        free_shipping_threshold=float(rng.choice([0.0, 50.0, 150.0])), page_size=int(rng.integers(1, 10)),
        recommendations=bool(rng.random() < 0.7), related_products=int(rng.integers(0, 5)),
        checkout_steps=int(rng.integers(1, 4)), discount_banner=str(rng.choice(["", "10% off today"])),
    )


def random_pages(n: int, seed: int = 0, walk_len: int = 12) -> list[PageState]:
    """`n` pages from random walks over random shops (random merchants, catalogs and knobs)."""
    rng = np.random.default_rng(seed)
    pages: list[PageState] = []
    while len(pages) < n:
        merchant = f"m{int(rng.integers(10**6))}"
        shop = Shop(merchant, generate_catalog(merchant, int(rng.integers(3, 40)), int(rng.integers(100))),
                    random_knobs(rng))
        visit = Visit(merchant)
        for _ in range(walk_len):
            state = shop.page_of(visit)
            pages.append(state)
            acts = [a for a in allowed_actions(state) if a != "leave"]
            visit, _ = shop.apply(visit, acts[int(rng.integers(len(acts)))])
            visit = replace(visit, ended=False)
            if len(pages) >= n:
                break
    return pages


def build_untrained_model(folder: str | Path, n_types: int = 8, seed: int = 0, small_cfg=None,
                          corpus_pages: int = 400) -> Path:
    """Write an untrained small LM + tokenizer with `n_types` persona tokens to `folder`."""
    from omegaconf import OmegaConf

    from simpersona.persona.config import SmallLMConfig
    from simpersona.persona.model_loading import save
    from simpersona.persona.small import build_model, train_tokenizer
    from simpersona.persona.tokens import add_persona_tokens

    cfg = small_cfg if small_cfg is not None else OmegaConf.structured(SmallLMConfig)
    texts = [render(p) + " " + " ".join(allowed_actions(p)) for p in random_pages(corpus_pages, seed)]
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_model(tokenizer, cfg, seed)
    add_persona_tokens(model, tokenizer, n_types, init="mean")
    save(model, tokenizer, folder)
    return Path(folder)
