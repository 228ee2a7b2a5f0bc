"""The k-means baseline: the same features, flattened into one vector per history, the same K.

The vector is the aggregate vector plus a bag-of-tokens summary of the sequences (share of each
event type, price bucket, gap bucket and flag among the history's real tokens, and its length),
each column standardised. That is everything the VQ-VAE sees except the order of events, which is
exactly the difference the comparison is meant to measure.
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

from simpersona.vq.features import FeatureSpec


def token_counts(a: np.ndarray, values: int) -> np.ndarray:
    """(n, values) count of each value 0..values-1 in each row of `a` (one bincount for all rows)."""
    n = len(a)
    flat = (np.arange(n, dtype=np.int64)[:, None] * values + a.astype(np.int64)).ravel()
    return np.bincount(flat, minlength=n * values).reshape(n, values)


def summary_vectors(arrays: dict[str, np.ndarray], spec: FeatureSpec) -> np.ndarray:
    """(n, F + tokens) float32: agg, then per-history token shares and log length. Padding is 0 in
    every sequence column, so dropping each column's value 0 drops the padding (and unknown prices)."""
    length = np.maximum((arrays["seq_event"] > 0).sum(1, keepdims=True), 1).astype(np.float32)
    parts = [arrays["agg"]]
    for name, values in (("seq_event", spec.event_tokens), ("seq_price", spec.price_buckets + 1),
                         ("seq_gap", spec.gap_buckets + 1)):
        parts.append(token_counts(arrays[name], values)[:, 1:] / length)
    flags = token_counts(arrays["seq_flags"], 4)  # bit 1: values 1, 3; bit 2: values 2, 3
    parts.append(np.stack([flags[:, 1] + flags[:, 3], flags[:, 2] + flags[:, 3]], axis=1) / length)
    parts.append(np.log1p(length))
    return np.concatenate(parts, axis=1).astype(np.float32)


@dataclass
class KMeansModel:
    centers: np.ndarray  # (K, D) in standardised space
    mean: np.ndarray
    std: np.ndarray

    @property
    def k(self) -> int:
        return len(self.centers)

    def transform(self, arrays: dict[str, np.ndarray], spec: FeatureSpec) -> np.ndarray:
        return (summary_vectors(arrays, spec) - self.mean) / self.std

    def assign(self, arrays: dict[str, np.ndarray], spec: FeatureSpec) -> np.ndarray:
        return self.nearest(self.transform(arrays, spec))

    def nearest(self, x: np.ndarray) -> np.ndarray:
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every center
        d = (self.centers * self.centers).sum(1)[None, :] - 2.0 * (x @ self.centers.T)
        return d.argmin(1).astype(np.int32)

    def to_bytes(self) -> bytes:
        buf = _io.BytesIO()
        np.savez(buf, centers=self.centers, mean=self.mean, std=self.std)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> KMeansModel:
        z = np.load(_io.BytesIO(data))
        return cls(z["centers"].astype(np.float32), z["mean"].astype(np.float32), z["std"].astype(np.float32))


def fit_kmeans(arrays: dict[str, np.ndarray], spec: FeatureSpec, k: int, batch_size: int, n_init: int,
               max_iter: int, seed: int) -> KMeansModel:
    """Standardise the summary vectors, then k-means (MiniBatchKMeans when batch_size > 0, else KMeans)."""
    x = summary_vectors(arrays, spec)
    if len(x) < k:
        raise ValueError(f"k-means baseline: {len(x)} histories for K={k} clusters")
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-6] = 1.0  # constant columns stay 0 instead of dividing by zero
    z = (x - mean) / std
    if batch_size > 0:
        km = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init=n_init, max_iter=max_iter,
                             random_state=seed).fit(z)
    else:  # full Lloyd iterations: steadier than mini-batches at the fit sizes used here
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(z)
    return KMeansModel(km.cluster_centers_.astype(np.float32), mean.astype(np.float32), std.astype(np.float32))
