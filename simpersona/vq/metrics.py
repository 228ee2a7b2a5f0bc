"""Quality figures of a type assignment, computed the same way for the VQ-VAE and the k-means peer.

Code usage: perplexity exp(H(code histogram)), active codes (used by at least one history), dead
codes. Planted recovery: NMI, ARI and homogeneity against planted types (NMI with K codes and T
types is at most 2 H(T) / (H(T) + H(codes)); homogeneity is not penalised for splitting a type).
Cluster geometry (Calinski–Harabasz, silhouette on a sample, Davies–Bouldin) in one shared space —
the k-means feature space — so both labelings are judged on the same points. Behaviour: AUC of
each history's type-mean label (how much of purchase / cart abandonment the type alone explains)
and the spread of per-type conversion.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    homogeneity_score,
    normalized_mutual_info_score,
    roc_auc_score,
    silhouette_score,
)


def code_usage(indices: np.ndarray, k: int) -> dict[str, float]:
    counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=k)[:k]
    return usage_from_counts(counts)


def usage_from_counts(counts: np.ndarray) -> dict[str, float]:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    p = counts[counts > 0] / max(total, 1.0)
    active = int((counts > 0).sum())
    return {"perplexity": float(math.exp(-(p * np.log(p)).sum())) if total else 0.0,
            "active_codes": active, "dead_codes": int(len(counts) - active)}


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when the labels hold one class only."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def type_means(labels: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.bincount(labels, weights=values.astype(np.float64), minlength=k)
    return np.divide(sums, counts, out=np.full(k, np.nan), where=counts > 0)


def planted_recovery(planted: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
    """NMI / ARI / homogeneity against planted types, or None when the data carry none (-1)."""
    known = planted >= 0
    if not known.any():
        return None
    y, x = planted[known], labels[known]
    return {"nmi": float(normalized_mutual_info_score(y, x)), "ari": float(adjusted_rand_score(y, x)),
            "homogeneity": float(homogeneity_score(y, x))}


def geometry(points: np.ndarray, labels: np.ndarray, silhouette_rows: int, seed: int) -> dict[str, float | None]:
    """Calinski–Harabasz, silhouette (on a sample) and Davies–Bouldin of `labels` on `points`."""
    if len(np.unique(labels)) < 2 or len(labels) < 3:
        return {"calinski_harabasz": None, "silhouette": None, "davies_bouldin": None}
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(labels), size=min(silhouette_rows, len(labels)), replace=False)
    sil = None
    if len(np.unique(labels[sample])) >= 2:
        sil = float(silhouette_score(points[sample], labels[sample]))
    return {"calinski_harabasz": float(calinski_harabasz_score(points, labels)), "silhouette": sil,
            "davies_bouldin": float(davies_bouldin_score(points, labels))}


def behaviour(labels: np.ndarray, arrays: dict[str, np.ndarray], k: int) -> dict:
    """Per-type conversion spread and AUCs of the type-mean purchase / cart-abandon rates."""
    out: dict = {}
    for name, col in (("purchase", "label_purchase"), ("cart_abandon", "label_cart_abandon")):
        y = arrays[col]
        means = type_means(labels, y, k)
        out[f"type_auc_{name}"] = auc(y, means[labels])
        if name == "purchase":
            used = means[~np.isnan(means)]
            out["type_conversion"] = {"min": float(used.min()), "median": float(np.median(used)),
                                      "max": float(used.max())} if used.size else None
    return out
