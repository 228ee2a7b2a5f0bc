"""Per-merchant type distributions: counts of assigned histories and smoothed probabilities.

prob(type | merchant) = (count + prior x share(type)) / (n + prior), where share is the type's share of
all histories: a merchant with few buyers is pulled towards the population mix, one with many keeps
its own, and each merchant's probabilities sum to 1 exactly. prior = 0 gives the raw frequencies.
Rows are written for every type in use (share > 0), so every merchant lists the same types.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA = pa.schema([pa.field("merchant_id", pa.string()), pa.field("type_id", pa.int32()),
                    pa.field("count", pa.int64()), pa.field("prob", pa.float64())])


class MerchantCounts:
    """(merchant, type) counts accumulated batch by batch (partial group-bys, merged at the end)."""

    def __init__(self, column: str = "type_id"):
        self.column = column
        self.parts: list[pa.Table] = []

    def update(self, batch: pa.Table) -> None:
        t = batch.select(["merchant_id", self.column]).group_by(["merchant_id", self.column]).aggregate(
            [([], "count_all")])
        self.parts.append(t)
        if len(self.parts) >= 64:  # keep memory flat on long runs
            self.parts = [self._merged()]

    def _merged(self) -> pa.Table:
        t = pa.concat_tables(self.parts)
        return t.group_by(["merchant_id", self.column]).aggregate([("count_all", "sum")]).rename_columns(
            ["merchant_id", self.column, "count_all"])

    def table(self) -> pa.Table:
        """merchant_id, type_id, count (only pairs that occur)."""
        if not self.parts:
            return pa.table({"merchant_id": pa.array([], pa.string()), "type_id": pa.array([], pa.int32()),
                             "count": pa.array([], pa.int64())})
        t = self._merged()
        return pa.table({"merchant_id": t["merchant_id"], "type_id": t[self.column].cast(pa.int32()),
                         "count": t["count_all"].cast(pa.int64())})


def distributions(counts: pa.Table, k: int, prior: float) -> pa.Table:
    """Dense merchant x (types in use) table with counts and smoothed probabilities (see module doc)."""
    if prior < 0:
        raise ValueError(f"vq.assign.merchant_prior must be >= 0, got {prior}")
    merchants, m_idx = np.unique(counts["merchant_id"].to_numpy(zero_copy_only=False), return_inverse=True)
    types = counts["type_id"].to_numpy().astype(np.int64)
    dense = np.zeros((len(merchants), k), dtype=np.int64)
    np.add.at(dense, (m_idx, types), counts["count"].to_numpy())
    share = dense.sum(0) / max(dense.sum(), 1)
    used = np.flatnonzero(share > 0)
    n = dense.sum(1, keepdims=True)
    prob = (dense[:, used] + prior * share[used][None, :]) / (n + prior)
    return pa.table({
        "merchant_id": pa.array(np.repeat(merchants, len(used)), pa.string()),
        "type_id": pa.array(np.tile(used, len(merchants)), pa.int32()),
        "count": pa.array(dense[:, used].ravel(), pa.int64()),
        "prob": pa.array(prob.ravel(), pa.float64()),
    }, schema=SCHEMA)


def check(table: pa.Table, tol: float = 1e-9) -> None:
    """Each merchant's probabilities sum to 1 (raises ValueError naming the first that does not)."""
    sums = table.group_by("merchant_id").aggregate([("prob", "sum")])
    bad = pc.greater(pc.abs(pc.subtract(sums["prob_sum"], 1.0)), tol)
    if pc.any(bad).as_py():
        m = sums.filter(bad)["merchant_id"][0].as_py()
        raise ValueError(f"merchant {m!r}: type probabilities do not sum to 1")
