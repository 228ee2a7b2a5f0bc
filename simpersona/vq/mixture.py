"""A closed-form mixture fit of the codes' model family: the partition the VQ-VAE's EM starts from.

Each VQ code decodes to a generative model of a history (simpersona.vq.model): a sequence model whose
log-likelihood is linear in the history's token counts (simpersona.vq.sequence), Bernoulli purchase and
cart-abandonment outcomes and a Gaussian aggregate vector. Without the aggregate part, maximum
likelihood for a mixture of K such models has closed-form M-steps (normalised expected counts), so a
full-batch EM with mixing proportions runs in seconds on the k-means sample. Started from the k-means
partition, it moves histories to the code whose model explains them — rather than the code nearest in a
standardised feature space, which splits a large type along its spread (k-means cuts the 52% of
one-view histories of the synthetic data into several clusters and merges small types instead).

Measured on the pipeline's synthetic data (8 planted types, 104,619 histories): k-means NMI 0.72; this
EM from k-means stops in a local optimum (mean log-likelihood -13.330, NMI 0.80) that cuts one type in
two codes and merges two others; `split_merge` moves out of it to -13.133 (NMI 0.92), the optimum EM
reaches from the planted partition itself. Adding the unit-variance aggregate Gaussian brought recovery
down to 0.69 (0.81 with per-code variances). The neural EM of the VQ-VAE starts from this partition
(vq.train.em_init_steps) and keeps refining it with its decoders, now including the aggregate vector and
session depth.
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


def _em(counts: torch.Tensor, outcomes: torch.Tensor, init: np.ndarray, k: int, iters: int, prior: float,
        sizes: dict[str, int], progress: bool = False) -> SequenceMixture:
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


def mean_log_likelihood(model: SequenceMixture, counts: torch.Tensor, outcomes: torch.Tensor) -> float:
    return float(torch.logsumexp(model.log_joint(counts, outcomes), dim=1).mean())


def fit_mixture(arrays: dict[str, np.ndarray], spec: FeatureSpec, init: np.ndarray, k: int, iters: int,
                prior: float, progress: bool = False) -> SequenceMixture:
    """EM from the partition `init` (code per history); `prior` is the pseudo-count added to every
    expected count (keeps unseen tokens possible). Returns the model after `iters` E/M rounds."""
    counts, outcomes = _stats(arrays, spec)
    if len(init) != len(counts):
        raise ValueError(f"fit_mixture: {len(init)} initial codes for {len(counts)} histories")
    return _em(counts, outcomes, init, k, iters, prior, _sizes(spec), progress)


def split_merge(arrays: dict[str, np.ndarray], spec: FeatureSpec, model: SequenceMixture, features: np.ndarray,
                rounds: int, merges: int, splits: int, iters: int, prior: float, seed: int,
                progress: bool = False) -> tuple[SequenceMixture, list[dict]]:
    """Split-and-merge EM (SMEM, Ueda et al., Neural Computation 2000): EM stops in local optima where
    one true type is cut in two codes while two others share one. Each round tries the `merges` pairs
    of codes whose responsibilities are most correlated, merged into one, together with one of the
    `splits` codes whose members the model explains worst, cut in two by 2-means on `features` (the
    k-means peer's standardised vectors); `iters` EM rounds then settle the candidate, which is kept
    when the mean log-likelihood rises. Stops after `rounds` rounds or a round without a gain.

    Measured on the pipeline's synthetic data (8 planted types, 104,619 histories): EM from k-means
    stopped at log-likelihood -13.330 (NMI 0.804); two accepted moves reached -13.133 (NMI 0.921), the
    optimum EM finds when started from the planted partition itself. Twelve plain restarts (k-means
    seeds and random partitions) reached at best -13.172 (NMI 0.802)."""
    from sklearn.cluster import KMeans

    counts, outcomes = _stats(arrays, spec)
    sizes, k = _sizes(spec), model.k
    best, history = mean_log_likelihood(model, counts, outcomes), []
    for rnd in tqdm(range(rounds), desc="split-merge EM", disable=not progress):
        joint = model.log_joint(counts, outcomes)
        resp = torch.softmax(joint, dim=1).numpy()
        labels = joint.argmax(1).numpy()
        gram = resp.T @ resp
        norm = np.sqrt(np.clip(np.diag(gram), 1e-12, None))
        corr = gram / np.outer(norm, norm)
        pairs = sorted(((corr[i, j], i, j) for i in range(k) for j in range(i + 1, k)), reverse=True)[:merges]
        member_ll = joint.numpy()[np.arange(len(labels)), labels]
        fit = [member_ll[labels == c].mean() if (labels == c).sum() >= 4 else np.inf for c in range(k)]
        worst = [c for c in np.argsort(fit)[:splits] if np.isfinite(fit[c])]
        accepted = None
        for _, i, j in pairs:
            for c in worst:
                if c in (i, j):
                    continue
                cand = labels.copy()
                cand[cand == j] = i  # j's slot is free for the second half of c
                members = np.flatnonzero(labels == c)
                halves = KMeans(2, n_init=2, random_state=seed).fit_predict(features[members])
                cand[members[halves == 1]] = j
                trial = _em(counts, outcomes, cand, k, iters, prior, sizes)
                ll = mean_log_likelihood(trial, counts, outcomes)
                if ll > best + 1e-6:
                    accepted = {"round": rnd + 1, "merged": [int(i), int(j)], "split": int(c),
                                "log_likelihood": [round(best, 5), round(ll, 5)]}
                    best, model = ll, trial
                    break
            if accepted:
                break
        if accepted is None:
            break
        history.append(accepted)
    return model, history
