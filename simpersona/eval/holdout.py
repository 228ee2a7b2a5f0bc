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

A run keeps each split it used in <run_dir>/holdout/<key>/ (heldout.json, halves.parquet), the key
naming the eval.holdout settings, so stages with different settings never mix splits.
`holdout_for(cfg)` is the entry point for every stage: it loads the run's split or makes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from omegaconf import OmegaConf

from simpersona.eval import alignment, metrics
from simpersona.eval.artifacts import ArtifactError

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

    def save(self, folder: str | Path, source: str = "") -> Path:
        """heldout.json (+ `source`: the identity of the events it was made from) and halves.parquet."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.halves.write_parquet(folder / "halves.parquet")
        sizes = self.halves.group_by("merchant_id", "half").agg(pl.len().alias("n"))
        info = {
            "heldout": self.heldout, "method": self.method, "seed": self.seed, "salt": self.salt, "source": source,
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


def _lazy(events) -> pl.LazyFrame:
    """Any event table as a LazyFrame, so large inputs are filtered before they are materialised."""
    if isinstance(events, pa.Table):
        return pl.from_arrow(events).lazy()
    return events if isinstance(events, pl.LazyFrame) else events.lazy()


def merchant_buyers(events) -> pl.DataFrame:
    """merchant_id, buyers (distinct buyer ids with at least one event there)."""
    return (_lazy(events).group_by("merchant_id")
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
    ev = _lazy(events).filter(pl.col("merchant_id").is_in(heldout))
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


def holdout_key(hcfg) -> str:
    """Folder name of a split: its settings (the salt defaults to the seed)."""
    salt = hcfg.salt or str(hcfg.seed)
    return f"{hcfg.split}-n{hcfg.merchants}-seed{hcfg.seed}-salt{salt}"


def holdout_dir(cfg) -> Path:
    return Path(cfg.run_dir) / "holdout" / holdout_key(cfg.eval.holdout)


REAL_EVENT_COLUMNS = ("buyer_id", "merchant_id", "session_id", "event", "ts")


def scan_real_events(cfg) -> pl.LazyFrame:
    """Real canonical events with session ids, lazily: eval.real_events (Parquet file or folder), else
    <run_dir>/preprocess/events, else the raw input (data.*) read through the adapters and sessionised
    with sessions.* exactly as preprocess does."""
    source = Path(cfg.eval.real_events) if cfg.eval.real_events else Path(cfg.run_dir) / "preprocess" / "events"
    files = sorted(source.glob("*.parquet")) if source.is_dir() else ([source] if source.is_file() else [])
    if files:
        lf = pl.scan_parquet(files)
    elif cfg.eval.real_events:
        raise ArtifactError(f"no real events (eval.real_events) at {source}")
    else:
        lf = read_raw_events(cfg).lazy()
    names = lf.collect_schema().names()
    missing = [c for c in REAL_EVENT_COLUMNS if c not in names]
    if missing:
        raise ArtifactError(f"real events lack columns {missing}; run the preprocess stage or sessionise them")
    return lf.select(REAL_EVENT_COLUMNS)


def load_real_events(cfg, merchants: list[str] | None = None) -> pl.DataFrame:
    """The real events (see scan_real_events), of `merchants` only when given."""
    lf = scan_real_events(cfg)
    if merchants is not None:
        lf = lf.filter(pl.col("merchant_id").is_in(merchants))
    events = lf.collect()
    if events["session_id"].null_count():
        raise ArtifactError("real events lack session ids; run the preprocess stage or sessionise them")
    return events


def read_raw_events(cfg) -> pl.DataFrame:
    """The raw input (data.*) through the adapters and validation, sessionised with sessions.*."""
    from simpersona.data.sessions import sessionize
    from simpersona.data.validate import read_canonical

    tables = list(read_canonical(cfg.data, progress=cfg.progress))
    if not tables:
        raise ArtifactError(f"no events in {cfg.data.input}")
    return sessionize(pa.concat_tables(tables), cfg.sessions)


def events_identity(cfg) -> str:
    """Identity of the real events a split is made from: the files' names, sizes and times (or the
    preprocess stage's manifest), so a split made from other data is never reused."""
    from simpersona import manifest

    if cfg.eval.real_events:
        src = Path(cfg.eval.real_events)
        return manifest.file_fingerprint([str(f) for f in (sorted(src.rglob("*")) if src.is_dir() else [src])])
    pre = Path(cfg.run_dir) / "preprocess"
    if (pre / "events").is_dir():
        if manifest.read(pre) is not None:
            return manifest.digest(pre)
        return manifest.file_fingerprint([str(f) for f in sorted((pre / "events").rglob("*"))])
    d = cfg.data
    return manifest.stable_hash([d.input, d.adapter, d.format, OmegaConf.to_container(cfg.sessions, resolve=True),
                                 manifest.file_fingerprint([d.input])])


def holdout_for(cfg, events=None) -> HoldoutSplit:
    """The run's split for eval.holdout: loaded from holdout_dir(cfg) when it was made from the same
    events, else made from the real events (`events`, or scan_real_events(cfg)) and saved there."""
    folder = holdout_dir(cfg)
    source = events_identity(cfg)
    info = folder / "heldout.json"
    if info.exists() and json.loads(info.read_text()).get("source") == source:
        return HoldoutSplit.load(folder)
    h = cfg.eval.holdout
    split = make_split(scan_real_events(cfg) if events is None else events, h.merchants, h.seed, h.split,
                       h.salt or str(h.seed))
    split.save(folder, source=source)
    return split


def half_events(events, split: HoldoutSplit, half: int) -> pl.DataFrame:
    """The events of the held-out merchants' buyers in one half."""
    return _lazy(events).join(split.buyers(half).lazy(), on=["merchant_id", "buyer_id"], how="semi").collect()


def train_events(events, split: HoldoutSplit) -> pl.DataFrame:
    """Events at training merchants only (what the VQ-VAE and the LM may learn from)."""
    return _lazy(events).filter(~pl.col("merchant_id").is_in(split.heldout)).collect()


def real_half_metrics(events, split: HoldoutSplit) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-merchant metrics of the held-out merchants in half 0 and in half 1."""
    return (metrics.merchant_metrics(half_events(events, split, HALF_TYPES)),
            metrics.merchant_metrics(half_events(events, split, HALF_RATES)))


def ceiling(events, split: HoldoutSplit, rate: str = "buyer_conversion", stratum_unit: str = "buyer",
            halves: tuple[pl.DataFrame, pl.DataFrame] | None = None) -> dict:
    """Real-vs-real alignment: half 0's rates scored against half 1's, as a simulation would be."""
    types_half, rates_half = halves if halves is not None else real_half_metrics(events, split)
    return alignment.compare(types_half, rates_half, split.heldout, rate=rate, stratum_unit=stratum_unit)


def types_half_types(types: pl.DataFrame, split: HoldoutSplit, column: str = "type_id") -> pl.DataFrame:
    """merchant_id, type_id of the typed histories of each held-out merchant's types-half buyers.

    `types` is the assign stage's types table; with whole-buyer histories (merchant "*") a buyer's
    type counts at every held-out merchant where the buyer is in the types half."""
    half = split.buyers(HALF_TYPES)
    whole_buyer = types.height > 0 and (types["merchant_id"] == "*").all()
    if whole_buyer:
        rows = half.join(types.select("buyer_id", column), on="buyer_id", how="inner")
    else:
        rows = types.select("merchant_id", "buyer_id", column).join(half, on=["merchant_id", "buyer_id"], how="inner")
    return rows.select("merchant_id", pl.col(column).cast(pl.Int32).alias("type_id"))


def heldout_distribution(types: pl.DataFrame, split: HoldoutSplit, n_types: int, smoothing: float,
                         column: str = "type_id") -> pl.DataFrame:
    """Each held-out merchant's type distribution from its types half only (never the rates half):
    merchant_id, type_id, count, prob with prob = (count + smoothing) / (n + smoothing x n_types)
    over all `n_types` types, the schema of assign/merchant_types.parquet."""
    if smoothing < 0:
        raise ValueError(f"eval.type_smoothing must be >= 0, got {smoothing}")
    rows = types_half_types(types, split, column)
    lacking = sorted(set(split.heldout) - set(rows["merchant_id"].unique().to_list()))
    if lacking:
        raise ValueError(f"held-out merchants without typed buyers in the types half: {lacking[:5]} "
                         f"(of {len(lacking)}); did the assign stage type every buyer?")
    if rows["type_id"].max() >= n_types or rows["type_id"].min() < 0:
        raise ValueError(f"type ids outside 0..{n_types - 1} in the types table")
    counts = rows.group_by("merchant_id", "type_id").agg(pl.len().cast(pl.Int64).alias("count"))
    grid = pl.DataFrame({"merchant_id": split.heldout}).join(
        pl.DataFrame({"type_id": pl.Series(range(n_types), dtype=pl.Int32)}), how="cross")
    out = grid.join(counts, on=["merchant_id", "type_id"], how="left").with_columns(pl.col("count").fill_null(0))
    total = pl.col("count").sum().over("merchant_id")
    out = out.with_columns(prob=(pl.col("count") + smoothing) / (total + smoothing * n_types))
    if smoothing == 0:  # unsmoothed: keep only observed types (zero-probability rows carry nothing)
        out = out.filter(pl.col("count") > 0)
    return out.sort("merchant_id", "type_id")
