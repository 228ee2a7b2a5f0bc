"""Sufficient statistics of a history's tokens under a per-type sequence model.

The VQ-VAE's sequence decoder gives each code a small generative model of histories: a first-order
Markov chain over the events (start + transition probabilities), a categorical over price buckets,
gap buckets and flags per token, and a categorical over the history length. The log-likelihood of a
history under a code is then a dot product between the history's counts (computed here once) and
the code's log-probabilities, so scoring every history against every code is one matrix product.
The k-means baseline's reconstruction figure uses the same statistics.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def part_sizes(seq_len: int, event_tokens: int, price_tokens: int, gap_tokens: int,
               flag_tokens: int) -> dict[str, int]:
    ne = event_tokens - 1  # real events (token 0 is padding)
    return {"start": ne, "trans": ne * ne, "price": price_tokens, "gap": gap_tokens, "flags": flag_tokens,
            "length": seq_len}


def sequence_stats(batch: Mapping[str, Tensor], sizes: Mapping[str, int]) -> Tensor:
    """(B, sum(sizes)) counts: first event, event bigrams, price / gap / flag values, length one-hot."""
    ev = batch["seq_event"].long()
    n, L = ev.shape
    real = ev > 0
    lengths = real.sum(1)
    e = (ev - 1).clamp(min=0)
    ne = sizes["start"]
    has = (lengths > 0).float()
    first = e.gather(1, (L - lengths).clamp(max=L - 1)[:, None])[:, 0]  # left padding: first real column
    out = [F.one_hot(first, ne).float() * has[:, None]]
    pair = (real[:, 1:] & real[:, :-1]).float()
    out.append(torch.zeros(n, ne * ne, device=ev.device).scatter_add_(1, e[:, :-1] * ne + e[:, 1:], pair))
    realf = real.float()
    for name, col in (("price", "seq_price"), ("gap", "seq_gap"), ("flags", "seq_flags")):
        out.append(torch.zeros(n, sizes[name], device=ev.device).scatter_add_(1, batch[col].long(), realf))
    out.append(F.one_hot((lengths - 1).clamp(min=0), sizes["length"]).float() * has[:, None])
    return torch.cat(out, dim=1)


def log_probs(logits: Tensor, sizes: Mapping[str, int]) -> Tensor:
    """(K, sum(sizes)) log-probabilities from raw logits: log-softmax within each part (transition
    logits within each from-event row)."""
    parts = dict(zip(sizes, logits.float().split(list(sizes.values()), dim=-1)))
    ne = sizes["start"]
    out = []
    for name, x in parts.items():
        if name == "trans":
            out.append(F.log_softmax(x.view(-1, ne, ne), -1).reshape(-1, ne * ne))
        else:
            out.append(F.log_softmax(x, -1))
    return torch.cat(out, dim=1)
