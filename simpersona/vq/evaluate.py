"""The VQ stage's summary figures: the VQ-VAE's types and the k-means peer's, on the same histories.

Reconstruction is measured the same way for both: how well the *type alone* reconstructs a history.
For the VQ-VAE that is its decoder's output for the history's code; for k-means, the cluster's mean
aggregate vector and the cluster's maximum-likelihood sequence model (simpersona.vq.sequence).
`recon_loss` is the aggregate-vector MSE per dimension, `seq_nll` the sequence NLL per token.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from simpersona.vq import metrics
from simpersona.vq.features import FLAG_VALUES, FeatureSpec
from simpersona.vq.kmeans import KMeansModel
from simpersona.vq.model import BuyerVQVAE, to_tensors
from simpersona.vq.sequence import log_probs, part_sizes, sequence_stats

SEQ_PRIOR = 0.5  # pseudo-count of the k-means clusters' sequence models


def _batches(arrays: dict[str, np.ndarray], batch_size: int):
    n = len(arrays["agg"])
    for lo in range(0, n, batch_size):
        yield lo, to_tensors({k: v[lo:lo + batch_size] for k, v in arrays.items() if v.dtype != object})


@torch.inference_mode()
def encode(model: BuyerVQVAE, arrays: dict[str, np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(code index per history, its latent in the codebook's space: projected, l2-normalised if cosine)."""
    model.eval()
    idx, points = [], []
    for _, batch in _batches(arrays, batch_size):
        latent = model.encode(batch)
        _, indices, _ = model.vq(latent)
        z = model.vq.project_in(latent)
        idx.append(indices.numpy())
        points.append((F.normalize(z, dim=-1) if model.vq.use_cosine_sim else z).numpy())
    return np.concatenate(idx).astype(np.int32), np.concatenate(points)


@torch.inference_mode()
def vq_reconstruction(model: BuyerVQVAE, arrays: dict[str, np.ndarray], labels: np.ndarray,
                      batch_size: int) -> dict[str, float]:
    model.eval()
    decoded = model.decode_codes()
    sse = nll = tokens = 0.0
    for lo, batch in _batches(arrays, batch_size):
        terms = model.code_nll(batch, decoded)
        lab = torch.from_numpy(labels[lo:lo + batch_size].astype(np.int64))[:, None]
        mu = decoded["agg"][lab[:, 0]]
        sse += ((batch["agg"].float() - mu) ** 2).sum().item()
        nll += terms["seq"].gather(1, lab).sum().item()
        tokens += batch["seq_event"].gt(0).sum().item()
    n, width = arrays["agg"].shape
    return {"recon_loss": sse / (n * width), "seq_nll": nll / max(tokens, 1.0)}


@torch.inference_mode()
def cluster_reconstruction(arrays: dict[str, np.ndarray], labels: np.ndarray, k: int, spec: FeatureSpec,
                           batch_size: int) -> dict[str, float]:
    """Reconstruction of each history by its cluster: mean aggregate vector, ML sequence model."""
    sizes = part_sizes(spec.seq_len, spec.event_tokens, spec.price_buckets + 1, spec.gap_buckets + 1, FLAG_VALUES)
    agg = arrays["agg"].astype(np.float64)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    means = np.zeros((k, agg.shape[1]))
    np.add.at(means, labels, agg)
    means /= np.maximum(counts, 1)[:, None]
    sse = float(((agg - means[labels]) ** 2).sum())
    stats = torch.zeros(k, sum(sizes.values()), dtype=torch.float64)
    for lo, batch in _batches(arrays, batch_size):
        lab = torch.from_numpy(labels[lo:lo + batch_size].astype(np.int64))
        stats.index_add_(0, lab, sequence_stats(batch, sizes).double())
    logp = log_probs(torch.log(stats + SEQ_PRIOR), sizes).double()
    nll = tokens = 0.0
    for lo, batch in _batches(arrays, batch_size):
        lab = torch.from_numpy(labels[lo:lo + batch_size].astype(np.int64))
        nll -= (sequence_stats(batch, sizes).double() * logp[lab]).sum().item()
        tokens += batch["seq_event"].gt(0).sum().item()
    n, width = agg.shape
    return {"recon_loss": sse / (n * width), "seq_nll": nll / max(tokens, 1.0)}


def describe(labels: np.ndarray, k: int, arrays: dict[str, np.ndarray], points: np.ndarray,
             recon: dict[str, float], silhouette_rows: int, seed: int) -> dict:
    out = {"codebook_size": int(k), **metrics.code_usage(labels, k), **recon}
    out.update(metrics.geometry(points, labels, silhouette_rows, seed))
    out.update(metrics.behaviour(labels, arrays, k))
    planted = metrics.planted_recovery(arrays.get("planted_type", np.full(len(labels), -1)), labels)
    if planted is not None:
        out.update({f"{name}_planted": value for name, value in planted.items()})
    return out


def evaluate(model: BuyerVQVAE, km: KMeansModel | None, arrays: dict[str, np.ndarray], spec: FeatureSpec,
             batch_size: int, silhouette_rows: int, seed: int) -> dict:
    """Summary dict: the VQ-VAE's figures at the top level, k-means's under `kmeans`, the VQ latent
    space's geometry under `latent_space`; `kmeans_nmi_planted` etc. beside the VQ's when planted."""
    k = model.codebook_size
    vq_idx, latent_points = encode(model, arrays, batch_size)
    shared = km.transform(arrays, spec) if km is not None else latent_points
    summary = {"histories_evaluated": int(len(vq_idx)),
               **describe(vq_idx, k, arrays, shared, vq_reconstruction(model, arrays, vq_idx, batch_size),
                          silhouette_rows, seed)}
    summary["latent_space"] = metrics.geometry(latent_points, vq_idx, silhouette_rows, seed)
    if km is not None:
        km_idx = km.nearest(shared)
        summary["kmeans"] = describe(km_idx, km.k, arrays, shared,
                                     cluster_reconstruction(arrays, km_idx, km.k, spec, batch_size),
                                     silhouette_rows, seed)
        for name in ("nmi", "ari", "homogeneity"):
            if f"{name}_planted" in summary["kmeans"]:
                summary[f"kmeans_{name}_planted"] = summary["kmeans"][f"{name}_planted"]
    return summary
