"""Feature fixtures with planted buyer types, written in the exact preprocess -> vq contract format.

For tests, development and the assignment benchmark while (or where) the real pipeline's features
are not at hand: `write_planted_features(run_dir, ...)` writes DIR/preprocess/features/*.parquet and
DIR/preprocess/feature_spec.json as the preprocess stage would. The real end-to-end check uses
simpersona.data.synthetic + the preprocess stage instead.

Each history is a Markov chain over the canonical events drawn from its planted type (eight
archetypes below; more types are perturbed copies). The types overlap on purpose: every history
mixes its type's transitions with a population background (weight U(0, mix)), its length mean,
price and gap preferences are jittered, and most histories are short. Several pairs of types differ
mainly in the *order* of events (cart then purchase vs cart then remove; long browsing that ends in a
purchase vs browsing alone), which an aggregate vector blurs and a sequence encoder can see.
Conventions of this fixture: the top gap bucket is a new session; search events have no price.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from simpersona import manifest, storage
from simpersona.data.features import as_fixed_binary
from simpersona.data.schema import EVENTS
from simpersona.vq.features import FeatureSpec, features_uri, spec_uri

V, C, R, F, P, S = (EVENTS.index(e) for e in ("view", "cart", "remove_cart", "favorite", "purchase", "search"))
N_EV = len(EVENTS)
AGG_NAMES: tuple[str, ...] = tuple(f"log_{e}" for e in EVENTS) + (
    "log_events", "log_sessions", "log_events_per_session", "price_level", "repeat_share",
    "category_change_share", "gap_level", "purchase_per_view", "cart_per_view",
)


@dataclass(frozen=True)
class Archetype:
    name: str
    mean_events: float
    min_events: int
    start: dict[int, float]
    trans: dict[int, dict[int, float]]  # from-event -> {to-event: weight}; unlisted rows = background
    price: tuple[float, ...]  # weights over 5 price buckets, low -> high
    gap: tuple[float, ...]  # weights over 5 gap buckets after the first event (last = new session)
    repeat: float
    category_change: float


BACKGROUND = {V: {V: 0.8, C: 0.04, F: 0.03, P: 0.04, S: 0.09}, C: {V: 0.5, P: 0.3, R: 0.1, C: 0.1},
              R: {V: 0.8, C: 0.2}, F: {V: 0.8, F: 0.1, P: 0.1}, P: {V: 0.8, P: 0.2}, S: {V: 0.8, S: 0.2}}

ARCHETYPES: tuple[Archetype, ...] = (
    Archetype("window_shopper", 9.0, 4, {V: 0.6, S: 0.4},
              {V: {V: 0.78, S: 0.15, F: 0.04, C: 0.02, P: 0.01}, S: {V: 0.85, S: 0.15}},
              (0.5, 2, 4, 2, 0.5), (0.5, 6, 2, 0.5, 0.2), 0.10, 0.35),
    Archetype("decisive_buyer", 4.0, 3, {V: 0.9, S: 0.1},
              {V: {V: 0.25, C: 0.5, P: 0.25}, C: {P: 0.85, V: 0.15}, P: {V: 0.6, P: 0.4}},
              (0.5, 1, 3, 4, 1), (3, 5, 1, 0.3, 0.2), 0.10, 0.05),
    Archetype("cart_abandoner", 6.0, 3, {V: 1.0},
              {V: {V: 0.45, C: 0.55}, C: {R: 0.5, V: 0.35, C: 0.15}, R: {V: 0.6, C: 0.4}},
              (0.3, 0.5, 1, 4, 4), (1, 3, 4, 2, 1), 0.40, 0.10),
    Archetype("wishlister", 7.0, 3, {V: 0.9, F: 0.1},
              {V: {V: 0.5, F: 0.5}, F: {V: 0.6, F: 0.3, P: 0.1}},
              (0.3, 0.5, 1, 3, 4), (0.5, 1, 1, 2, 6), 0.50, 0.20),
    Archetype("deal_hunter", 8.0, 3, {S: 0.8, V: 0.2},
              {S: {V: 0.7, S: 0.3}, V: {V: 0.4, S: 0.4, C: 0.1, P: 0.1}, C: {P: 0.7, V: 0.3}},
              (8, 2, 0.5, 0.2, 0.1), (1, 6, 2, 0.5, 0.2), 0.02, 0.60),
    Archetype("loyal_repeat_buyer", 5.0, 2, {V: 0.5, P: 0.5},
              {V: {P: 0.45, C: 0.15, V: 0.4}, C: {P: 0.85, V: 0.15}, P: {V: 0.5, P: 0.5}},
              (2, 4, 2, 0.5, 0.2), (0.5, 0.5, 0.5, 1, 8), 0.85, 0.02),
    Archetype("researcher", 16.0, 8, {V: 0.8, S: 0.2},
              {V: {V: 0.86, F: 0.04, C: 0.04, S: 0.03, P: 0.03}, S: {V: 0.9, S: 0.1}},
              (0.2, 0.5, 1, 3, 6), (0.5, 2, 5, 3, 1), 0.30, 0.70),
    Archetype("bouncer", 1.5, 1, {V: 0.95, S: 0.05},
              {V: {V: 0.97, P: 0.01, F: 0.01, C: 0.01}},
              (2, 2, 2, 2, 2), (0.5, 4, 2, 1, 0.5), 0.0, 0.30),
)


def _rows(trans: dict[int, dict[int, float]]) -> np.ndarray:
    m = np.zeros((N_EV, N_EV))
    for a in range(N_EV):
        row = trans.get(a, BACKGROUND[a])
        for b, w in row.items():
            m[a, b] = w
    return m / m.sum(axis=1, keepdims=True)


def _resample(weights, n: int) -> np.ndarray:
    """Stretch a weight vector over n buckets (linear interpolation), normalised."""
    w = np.asarray(weights, dtype=np.float64)
    out = np.interp(np.linspace(0, len(w) - 1, n), np.arange(len(w)), w) + 1e-3
    return out / out.sum()


@dataclass(frozen=True)
class TypeTables:
    names: tuple[str, ...]
    start: np.ndarray  # (T, 6)
    trans: np.ndarray  # (T, 6, 6)
    mean_events: np.ndarray  # (T,)
    min_events: np.ndarray  # (T,)
    price: np.ndarray  # (T, P)
    gap: np.ndarray  # (T, G)
    repeat: np.ndarray
    category_change: np.ndarray


def type_tables(n_types: int, price_buckets: int, gap_buckets: int, seed: int) -> TypeTables:
    """The archetypes, then perturbed copies of them for n_types > 8 (seeded)."""
    rng = np.random.default_rng([seed, 7])
    names, start, trans, mean, minimum, price, gap, rep, cat = ([] for _ in range(9))
    for t in range(n_types):
        a = ARCHETYPES[t % len(ARCHETYPES)]
        s = np.zeros(N_EV)
        for e, w in a.start.items():
            s[e] = w
        s, m = s / s.sum(), _rows(a.trans)
        pr, gp = _resample(a.price, price_buckets), _resample(a.gap, gap_buckets)
        length, r, c = a.mean_events, a.repeat, a.category_change
        if t >= len(ARCHETYPES):  # a variant: same support, different weights
            m = np.stack([rng.dirichlet(row * 30 + 1e-3) for row in m])
            pr, gp = rng.dirichlet(pr * 20), rng.dirichlet(gp * 20)
            length *= float(rng.uniform(0.6, 1.6))
            r, c = float(np.clip(r + rng.normal(0, 0.15), 0, 0.9)), float(np.clip(c + rng.normal(0, 0.15), 0, 0.9))
        names.append(a.name if t < len(ARCHETYPES) else f"{a.name}_{t // len(ARCHETYPES)}")
        start.append(s), trans.append(m), mean.append(length), minimum.append(a.min_events), price.append(pr), gap.append(gp)
        rep.append(r), cat.append(c)
    return TypeTables(tuple(names), np.array(start), np.array(trans), np.array(mean), np.array(minimum), np.array(price),
                      np.array(gap), np.array(rep), np.array(cat))


def _sample_rows(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index of the first cumulative weight above u, row-wise: cum (n, k), u (n,)."""
    return np.minimum((u[:, None] > cum).sum(axis=1), cum.shape[1] - 1)


def simulate(types: np.ndarray, tables: TypeTables, seq_len: int, max_events: int, mix: float,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Event histories of planted `types` -> contract columns (as numpy) + labels + agg raw values."""
    n = len(types)
    n_price, n_gap = tables.price.shape[1], tables.gap.shape[1]
    bg = np.mean(tables.trans, axis=0)
    # per-history jitter: background mixing weight, length mean, price and gap preferences
    w = rng.uniform(0, mix, n)[:, None]
    jitter = mix
    # at least min_events, then geometric around the (jittered) type mean
    extra = np.maximum(tables.mean_events[types] * rng.lognormal(0, jitter, n) - tables.min_events[types], 0)
    lengths = np.minimum(tables.min_events[types] - 1 + rng.geometric(1.0 / (1.0 + extra)), max_events)
    price_p = tables.price[types] * rng.gamma(1.0 / max(mix, 1e-3), 1.0, (n, n_price))
    gap_p = tables.gap[types] * rng.gamma(1.0 / max(mix, 1e-3), 1.0, (n, n_gap))
    price_cum = np.cumsum(price_p / price_p.sum(1, keepdims=True), axis=1)
    gap_cum = np.cumsum(gap_p / gap_p.sum(1, keepdims=True), axis=1)
    rep = np.clip(tables.repeat[types] + rng.normal(0, 0.05, n), 0, 1)
    cat = np.clip(tables.category_change[types] + rng.normal(0, 0.05, n), 0, 1)

    T = int(lengths.max())
    ev = np.zeros((n, T), np.int8)
    start = (1 - w) * tables.start[types] + w * np.mean(tables.start, axis=0)
    ev[:, 0] = _sample_rows(np.cumsum(start, axis=1), rng.random(n))
    for t in range(1, T):
        prev = ev[:, t - 1]
        row = (1 - w) * tables.trans[types, prev] + w * bg[prev]
        ev[:, t] = _sample_rows(np.cumsum(row, axis=1), rng.random(n))
    valid = np.arange(T)[None, :] < lengths[:, None]
    price = np.stack([_sample_rows(price_cum, rng.random(n)) + 1 for _ in range(T)], axis=1).astype(np.int8)
    price[ev == S] = 0
    gap = np.stack([_sample_rows(gap_cum, rng.random(n)) + 1 for _ in range(T)], axis=1).astype(np.int8)
    gap[:, 0] = 1
    repeat = (rng.random((n, T)) < rep[:, None]) & (ev != S)
    repeat[:, 0] = False
    catch = rng.random((n, T)) < cat[:, None]
    catch[:, 0] = False
    flags = (repeat.astype(np.int8) + 2 * catch.astype(np.int8))

    # labels and aggregates over the whole history
    counts = np.stack([((ev == e) & valid).sum(1) for e in range(N_EV)], axis=1)
    sessions = 1 + ((gap == n_gap) & valid).sum(1)
    pos = np.arange(T)[None, :]
    last_cart = np.where((ev == C) & valid, pos, -1).max(1)
    last_buy = np.where((ev == P) & valid, pos, -1).max(1)
    priced = valid & (price > 0)
    agg = np.column_stack([
        np.log1p(counts), np.log1p(lengths), np.log1p(sessions), np.log1p(lengths / sessions),
        np.where(priced.any(1), (price * priced).sum(1) / np.maximum(priced.sum(1), 1) / n_price, 0.5),
        (repeat & valid).sum(1) / lengths, (catch & valid).sum(1) / lengths,
        ((gap * valid).sum(1) - 1) / np.maximum(lengths - 1, 1) / n_gap,
        counts[:, P] / (counts[:, V] + 1), counts[:, C] / (counts[:, V] + 1),
    ]).astype(np.float32)

    # last L events, left-padded (pad = 0; event tokens are EVENTS index + 1)
    src = lengths[:, None] - seq_len + np.arange(seq_len)[None, :]
    keep = src >= 0
    src = np.clip(src, 0, T - 1)

    def window(a: np.ndarray, offset: int = 0) -> np.ndarray:
        return np.where(keep, np.take_along_axis(a, src, axis=1) + offset, 0).astype(np.int8)

    return {
        "seq_event": window(ev, 1), "seq_price": window(price), "seq_gap": window(gap),
        "seq_flags": window(flags), "agg_raw": agg,
        "label_purchase": (counts[:, P] > 0).astype(np.int8),
        "label_cart_abandon": (last_cart > last_buy).astype(np.int8),
        "label_depth": np.log1p(lengths / sessions).astype(np.float32),
    }


def _fixed(a: np.ndarray, typ: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), type=typ), a.shape[1])


def _ids(prefix: str, values: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(values).cast(pa.string()), "")


def write_planted_features(run_dir: str, histories: int, n_types: int = 8, merchants: int = 50,
                           seq_len: int = 32, price_buckets: int = 5, gap_buckets: int = 5,
                           mix: float = 0.25, rows_per_file: int = 250_000, seed: int = 0,
                           progress: bool = False) -> FeatureSpec:
    """Write DIR/preprocess/features/part-*.parquet + feature_spec.json; returns the spec.

    Histories are (buyer, merchant) pairs: buyer i//2 visits two distinct merchants drawn from a
    Zipf popularity, and each history's type is drawn from its merchant's own type mixture.
    """
    if histories < 1 or n_types < 2:
        raise ValueError("write_planted_features: need histories >= 1 and n_types >= 2")
    tables = type_tables(n_types, price_buckets, gap_buckets, seed)
    rows_per_file += rows_per_file % 2  # a buyer's two histories share a file (distinct merchants)
    rng = np.random.default_rng([seed, 1])
    shares = rng.dirichlet(np.full(n_types, 12.0))
    mixtures = rng.dirichlet(shares * 3.0, size=merchants) + 1e-6
    mixtures /= mixtures.sum(1, keepdims=True)
    popularity = 1.0 / np.arange(1, merchants + 1) ** 0.8
    popularity /= popularity.sum()

    # first pass: raw aggregates of every chunk, for the z-score statistics (as preprocess does)
    chunks = []
    n_files = -(-histories // rows_per_file)
    bar = tqdm(total=histories, desc="planted features", unit="hist", disable=not progress)
    for k in range(n_files):
        lo, hi = k * rows_per_file, min(histories, (k + 1) * rows_per_file)
        crng = np.random.default_rng([seed, 2, k])
        idx = np.arange(lo, hi)
        merchant = crng.choice(merchants, size=hi - lo, p=popularity)
        second = (idx % 2 == 1) & (idx > lo)
        clash = second & (merchant == np.roll(merchant, 1))
        merchant[clash] = (merchant[clash] + 1) % merchants
        cum = np.cumsum(mixtures[merchant], axis=1)
        types = _sample_rows(cum, crng.random(hi - lo))
        cols = simulate(types, tables, seq_len, 2 * seq_len, mix, crng)
        chunks.append((idx, merchant, types, cols))
        bar.update(hi - lo)
    bar.close()
    raw = np.concatenate([c[3]["agg_raw"] for c in chunks])
    mean, std = raw.mean(0), raw.std(0) + 1e-6

    out = features_uri(run_dir)
    for k, (idx, merchant, types, cols) in enumerate(chunks):
        buyer = _ids("u", idx // 2)
        merch = _ids("m", merchant)
        table = pa.table({
            "history_id": pc.binary_join_element_wise(buyer, merch, "|"),
            "buyer_id": buyer, "merchant_id": merch,
            **{c: as_fixed_binary(cols[c].astype(np.int8)) for c in ("seq_event", "seq_price", "seq_gap", "seq_flags")},
            "agg": _fixed(((cols["agg_raw"] - mean) / std).astype(np.float32), pa.float32()),
            "label_purchase": pa.array(cols["label_purchase"], pa.int8()),
            "label_cart_abandon": pa.array(cols["label_cart_abandon"], pa.int8()),
            "label_depth": pa.array(cols["label_depth"], pa.float32()),
            "planted_type": pa.array(types.astype(np.int32), pa.int32()),
        })
        fs, path = storage.resolve(storage.join_uri(out, f"part-{k:05d}.parquet"))
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=fs)
    spec = FeatureSpec(seq_len, price_buckets, gap_buckets, AGG_NAMES, tuple(map(float, mean)),
                       tuple(map(float, std)), EVENTS, "buyer_merchant")
    with storage.open_output_stream(spec_uri(run_dir)) as fh:
        fh.write(json.dumps({**spec.to_dict(), "planted_type_names": list(tables.names)}, indent=2).encode())
    if not storage.is_s3(run_dir):  # a finished preprocess stage, as far as the stage runner can tell
        params = {"histories": histories, "n_types": n_types, "merchants": merchants, "seq_len": seq_len,
                  "price_buckets": price_buckets, "gap_buckets": gap_buckets, "mix": mix, "seed": seed}
        manifest.write(storage.join_uri(run_dir, "preprocess"), manifest.build("preprocess", {"planted_fixture": params}, {}))
    return spec
