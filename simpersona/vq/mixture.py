"""A closed-form mixture fit of the codes' model family: the partition the VQ-VAE's EM starts from.

Each VQ code decodes to a generative model of a history (simpersona.vq.model): a sequence model whose
log-likelihood is linear in the history's token counts (simpersona.vq.sequence), Bernoulli purchase and
cart-abandonment outcomes and a Gaussian aggregate vector. Without the aggregate part, maximum
likelihood for a mixture of K such models has closed-form M-steps (normalised expected counts), so a
full-batch EM with mixing proportions runs in seconds on the k-means sample. Started from the k-means
partition, it moves histories to the code whose model explains them — rather than the code nearest in a
standardised feature space, which splits a large type along its spread (k-means cuts the 52% of
one-view histories of the synthetic data into several clusters and merges small types instead).

Measured on the pipeline's synthetic data (8 planted types, 104,619 histories): k-means NMI 0.67, this
EM from k-means 0.91 (the best log-likelihood of four starts; from random starts 0.72-0.82); adding the
unit-variance aggregate Gaussian brought it down to 0.69 (0.81 with per-code variances). The neural EM
of the VQ-VAE starts from this partition (vq.train.em_init_steps) and keeps refining it with its
decoders, now including the aggregate vector and session depth.
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from simpersona.vq.features import FLAG_VALUES, FeatureSpec
from simpersona.vq.sequence import log_probs, part_sizes, sequence_stats

OUTCOMES: tuple[str, ...] = ("label_purchase", "label_cart_abandon")


def _sizes(spec: FeatureSpec) -> dict[str, int]:
    return part_sizes(spec.seq_len, spec.event_tokens, spec.price_buckets + 1, spec.gap_buckets + 1, FLAG_VALUES)


def _stats(arrays: dict[str, np.ndarray], spec: FeatureSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, S) token counts and (n, 2) outcomes, float64."""
    seq = {c: torch.from_numpy(np.asarray(arrays[c], dtype=np.int64)) for c in
           ("seq_event", "seq_price", "seq_gap", "seq_flags")}
    counts = sequence_stats(seq, _sizes(spec)).double()
    outcomes = torch.from_numpy(np.stack([np.asarray(arrays[c], dtype=np.float64) for c in OUTCOMES], axis=1))
    return counts, outcomes


@dataclass
class SequenceMixture:
    log_mix: np.ndarray  # (K,) log mixing proportions
    log_seq: np.ndarray  # (K, S) log-probabilities of the sequence model's parts
    log_q: np.ndarray  # (K, 2) log P(outcome = 1)
    log_1q: np.ndarray  # (K, 2) log P(outcome = 0)

    @property
    def k(self) -> int:
        return len(self.log_mix)

    def log_joint(self, counts: torch.Tensor, outcomes: torch.Tensor) -> torch.Tensor:
        """(n, K) log p(history, code)."""
        return (counts @ torch.tensor(self.log_seq).t() + outcomes @ torch.tensor(self.log_q).t()
                + (1 - outcomes) @ torch.tensor(self.log_1q).t() + torch.tensor(self.log_mix)[None, :])

    def assign(self, arrays: dict[str, np.ndarray], spec: FeatureSpec) -> np.ndarray:
        """Most probable code per history (int32)."""
        return self.log_joint(*_stats(arrays, spec)).argmax(1).numpy().astype(np.int32)

    def to_bytes(self) -> bytes:
        buf = _io.BytesIO()
        np.savez(buf, log_mix=self.log_mix, log_seq=self.log_seq, log_q=self.log_q, log_1q=self.log_1q)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SequenceMixture:
        z = np.load(_io.BytesIO(data))
        return cls(z["log_mix"], z["log_seq"], z["log_q"], z["log_1q"])


def fit_mixture(arrays: dict[str, np.ndarray], spec: FeatureSpec, init: np.ndarray, k: int, iters: int,
                prior: float, progress: bool = False) -> SequenceMixture:
    """EM from the partition `init` (code per history); `prior` is the pseudo-count added to every
    expected count (keeps unseen tokens possible). Returns the model after `iters` E/M rounds."""
    counts, outcomes = _stats(arrays, spec)
    if len(init) != len(counts):
        raise ValueError(f"fit_mixture: {len(init)} initial codes for {len(counts)} histories")
    sizes = _sizes(spec)
    resp = torch.nn.functional.one_hot(torch.from_numpy(np.asarray(init, dtype=np.int64)), k).double()
    model = None
    for _ in tqdm(range(max(iters, 1)), desc="mixture EM", disable=not progress):
        mass = resp.sum(0)
        log_seq = log_probs(torch.log(resp.t() @ counts + prior), sizes).double()
        q = (resp.t() @ outcomes + prior) / (mass[:, None] + 2 * prior)
        mix = (mass + prior) / (mass.sum() + k * prior)
        model = SequenceMixture(mix.log().numpy(), log_seq.numpy(), q.log().numpy(), (1 - q).log().numpy())
        resp = torch.softmax(model.log_joint(counts, outcomes), dim=1)
    return model
