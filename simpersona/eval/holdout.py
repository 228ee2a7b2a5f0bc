"""Held-out storefront protocol: which merchants are held out, and how their buyers split in two.

1. Held-out merchants: the `n` merchants with the most distinct buyers. Equal counts are ordered by
   a seeded shuffle of the merchant ids (not by id or input order), so the choice is reproducible
   and does not favour low ids. Every other merchant is a training merchant: the VQ-VAE and the LM
   learn only from histories at training merchants.
2. Each held-out merchant's buyers split into two halves:
     half 0 ("types")  the merchant's type distribution is estimated from these buyers
     half 1 ("rates")  the real rates the simulation is judged against
   `hash` (default): by a salted BLAKE2b hash of the buyer id (stable across runs, machines and
   library versions; a buyer sits in the same half at every merchant). `time`: per merchant, the
   buyers who first visited earlier form half 0 and the later ones half 1 (ties in first-visit time,
   common at day resolution, are ordered by the same hash); this asks the harder question of
   predicting a later period.
3. The noise ceiling: the alignment of half 0's real rates with half 1's real rates, computed with
   the same metric code. A simulator cannot be expected to agree with half 1 better than another
   sample of real buyers of the same shop does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from simpersona.eval import alignment, metrics

HALF_TYPES = 0
HALF_RATES = 1
SPLITS = ("hash", "time")


@dataclass
class HoldoutSplit:
    heldout: list[str]  # held-out merchants, most buyers first
    halves: pl.DataFrame  # merchant_id, buyer_id, half (HALF_TYPES | HALF_RATES), held-out merchants only
    method: str
    seed: int
    salt: str

    @property
    def heldout_set(self) -> set[str]:
        return set(self.heldout)

    def buyers(self, half: int) -> pl.DataFrame:
        """(merchant_id, buyer_id) of one half."""
        return self.halves.filter(pl.col("half") == half).select("merchant_id", "buyer_id")

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.halves.write_parquet(folder / "halves.parquet")
        sizes = self.halves.group_by("merchant_id", "half").agg(pl.len().alias("n"))
        info = {
            "heldout": self.heldout, "method": self.method, "seed": self.seed, "salt": self.salt,
            "buyers_per_half": {
                m: [int(sizes.filter((pl.col("merchant_id") == m) & (pl.col("half") == h))["n"].sum())
                    for h in (HALF_TYPES, HALF_RATES)]
                for m in self.heldout
            },
        }
        (folder / "heldout.json").write_text(json.dumps(info, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> HoldoutSplit:
        folder = Path(folder)
        path = folder / "heldout.json"
        if not path.exists():
            raise FileNotFoundError(f"no held-out split at {path}")
        info = json.loads(path.read_text())
        halves = pl.read_parquet(folder / "halves.parquet")
        return cls(info["heldout"], halves, info["method"], int(info["seed"]), info["salt"])


def _frame(events) -> pl.DataFrame:
    if isinstance(events, pa.Table):
        return pl.from_arrow(events)
    return events.collect() if isinstance(events, pl.LazyFrame) else events


def merchant_buyers(events) -> pl.DataFrame:
    """merchant_id, buyers (distinct buyer ids with at least one event there)."""
    return (_frame(events).lazy().group_by("merchant_id")
            .agg(pl.col("buyer_id").n_unique().cast(pl.Int64).alias("buyers")).collect())


def select_heldout(events, n: int, seed: int) -> list[str]:
    """The `n` merchants with the most buyers, ties ordered by a seeded shuffle; most buyers first."""
    counts = merchant_buyers(events).sort("merchant_id")
    if n < 1:
        raise ValueError(f"eval.heldout_merchants must be >= 1, got {n}")
    if counts.height < n + 1:
        raise ValueError(f"cannot hold out {n} merchants: the events have only {counts.height} "
                         "(at least one must remain for training)")
    tie = np.random.default_rng(seed).permutation(counts.height)
    ranked = counts.with_columns(pl.Series("tie", tie)).sort(["buyers", "tie"], descending=[True, False])
    return ranked["merchant_id"].head(n).to_list()


def buyer_hash(buyer_ids: list[str] | pl.Series, salt: str) -> np.ndarray:
    """A stable 64-bit hash per buyer id (BLAKE2b of "salt:id"), as uint64."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{salt}:{b}".encode(), digest_size=8).digest(), "little")
         for b in buyer_ids),
        dtype=np.uint64, count=len(buyer_ids),
    )


def split_halves(events, heldout: list[str], method: str = "hash", salt: str = "0") -> pl.DataFrame:
    """merchant_id, buyer_id, half for every buyer of every held-out merchant (see module doc)."""
    if method not in SPLITS:
        raise ValueError(f"eval.split must be one of {'|'.join(SPLITS)}, got {method!r}")
    ev = _frame(events).lazy().filter(pl.col("merchant_id").is_in(heldout))
    firsts = (ev.group_by("merchant_id", "buyer_id")
              .agg(pl.col("ts").min().alias("first_ts")).collect())
    buyers = firsts["buyer_id"].unique().sort()
    hashes = pl.DataFrame({"buyer_id": buyers, "h": buyer_hash(buyers.to_list(), salt)})
    rows = firsts.join(hashes, on="buyer_id", how="left")
    if method == "hash":
        rows = rows.with_columns(half=(pl.col("h") % 2).cast(pl.Int8))
    else:
        rows = (rows.sort(["merchant_id", "first_ts", "h"])
                .with_columns(rank=pl.int_range(pl.len()).over("merchant_id"), n=pl.len().over("merchant_id"))
                .with_columns(half=pl.when(pl.col("rank") < (pl.col("n") + 1) // 2)
                              .then(pl.lit(HALF_TYPES)).otherwise(pl.lit(HALF_RATES)).cast(pl.Int8)))
    return rows.select("merchant_id", "buyer_id", "half").sort(["merchant_id", "buyer_id"])


def make_split(events, n: int, seed: int, method: str = "hash", salt: str = "") -> HoldoutSplit:
    """The held-out merchants and their halves; the salt defaults to the seed."""
    salt = salt or str(seed)
    heldout = select_heldout(events, n, seed)
    return HoldoutSplit(heldout, split_halves(events, heldout, method, salt), method, seed, salt)


def half_events(events, split: HoldoutSplit, half: int) -> pl.DataFrame:
    """The events of the held-out merchants' buyers in one half."""
    return _frame(events).join(split.buyers(half), on=["merchant_id", "buyer_id"], how="semi")


def train_events(events, split: HoldoutSplit) -> pl.DataFrame:
    """Events at training merchants only (what the VQ-VAE and the LM may learn from)."""
    return _frame(events).filter(~pl.col("merchant_id").is_in(split.heldout))


def real_half_metrics(events, split: HoldoutSplit) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-merchant metrics of the held-out merchants in half 0 and in half 1."""
    return (metrics.merchant_metrics(half_events(events, split, HALF_TYPES)),
            metrics.merchant_metrics(half_events(events, split, HALF_RATES)))


def ceiling(events, split: HoldoutSplit, rate: str = "buyer_conversion", stratum_unit: str = "buyer",
            halves: tuple[pl.DataFrame, pl.DataFrame] | None = None) -> dict:
    """Real-vs-real alignment: half 0's rates scored against half 1's, as a simulation would be."""
    types_half, rates_half = halves if halves is not None else real_half_metrics(events, split)
    return alignment.compare(types_half, rates_half, split.heldout, rate=rate, stratum_unit=stratum_unit)
