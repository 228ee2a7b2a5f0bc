"""Synthetic clickstreams with planted buyer types: ground truth that the VQ-VAE must recover.

World. M merchants ("m0" .. "m{M-1}"), each with a Zipf popularity, a price level (log-normal around
`price_median`), a catalog of products ("m12-p034"; prices log-normal around the merchant's level;
categories "c7" from a merchant-specific subset of a global pool) and its own mixture over buyer types
(Dirichlet around the population shares, then raked so that the popularity-weighted average equals the
shares exactly, whatever the seed: merchants differ, the population marginals stay calibrated).

Buyers. Each buyer visits 1 + Poisson(extra_merchants_mean) distinct merchants (capped); each buyer x
merchant pair is one history, and its planted type is drawn from that merchant's mixture (histories,
not buyers, are the unit of typing). A history is a number of sessions (type-specific min + Poisson),
each session a Markov chain over the canonical events with an absorbing END (type-specific start
distribution, transition matrix, minimum and maximum length). Products: a view picks a product whose
price rank inside the merchant's catalog is Beta(a, b) distributed (the type's price preference), or,
with the type's `repeat_product` probability, the history's anchor product; cart / favorite / purchase
act on the last viewed product (a bargain hunter buys the cheapest product viewed in the session),
remove_cart on the last carted one; a search has a category but no product or price. Time: histories
start on a random day of the period at a time of day drawn from a diurnal profile; inter-event gaps are
log-normal seconds (capped below the 30-minute sessionisation gap), inter-session gaps log-normal hours
to days (floored above it), so sessionisation by inactivity recovers the planted sessions exactly.

Knobs (synth.knobs, off by default). With `synth.knobs.enabled` every merchant draws the store knobs the
what-ifs change (price_multiplier, shipping_fee, checkout_steps, recommendations: the storefront's names,
pages.shop.Knobs) uniformly from the config's lists, on a stream of its own, and each planted type
responds as its `KnobResponse` says: the purchase odds of its chain scale with the price level, the
shipping fee and every checkout step beyond the reference (the storefront defaults, REFERENCE_KNOBS), and
recommendations lengthen the view -> view runs of browsing types; loyal_repeat does not respond at all.
Chains are then per merchant x type (still one vectorised draw per session step), logged prices are the
catalog prices times price_multiplier, and OUT/merchant_knobs.json lists each merchant's knobs (the shape
of store.merchant_overrides, which preprocess uses for the traces). `true_effect` replays a what-if: the
same buyers, histories, types, sessions and chain draws (common random numbers) under other knobs for
some merchants, paired per history; `expected_effect` is the chains' analytic answer (type_expectations
with knobs). Knobs off: the reference knobs everywhere, and output byte-identical to the generator
without knobs. Knobs on, the chain steps of a shard are drawn as one (sessions x width) matrix, so the
events differ from knobs off even at reference knobs (the world and the planted table do not).
Measured (tests/data/test_synthetic.py, 20,000 buyers, 12 merchants, seed 3; true = paired replay (se),
analytic = expected_effect; every merchant moved from its own knobs to the value):

    shipping_fee 12        conversion -0.0106 (0.0006) vs -0.0105; bargain_hunter -0.176 (0.011) vs -0.171
    shipping_fee 0         conversion +0.0126 (0.0006) vs +0.0135
    checkout_steps 4       conversion -0.0043 (0.0004) vs -0.0040
    recommendations off    product views per history -0.234 (0.006) vs -0.226
    price_multiplier 1.25  conversion -0.0089 (0.0006) vs -0.0082

Output (per shard k of `shard_buyers` buyers): canonical events (schema.SCHEMA; session_id null;
`seq` = k * 2**32 + row, increasing across shards in shard order) and the planted table (buyer_id,
merchant_id, planted_type, planted_name; one row per history). Shard k depends only on (config, k):
its random stream is SeedSequence([seed, 1, k]) and the world's is SeedSequence([seed, 0]), so shards
can be generated in parallel, in any order, with byte-identical files for the same seed.

Calibration (data/tmall2014, measured there: 57,655 buyer x brand histories, 3.17 events per history
(median 1, p90 6), 60% single-event histories, 1.38 day-sessions per history, 2.30 events per session,
7.8% of histories with a purchase; events 95.4% view, 3.8% purchase, 0.66% favourite, 0.08% cart).
Type shares and type parameters below were tuned so that the analytic population marginals
(`population_expectations`) resemble these, keeping every type's signature strong enough to be
recovered from its history. Deviations, on purpose: carts (~2.2% of events) and favourites (~3.2%) are
more frequent than on Tmall, because cart_abandoner and favorite_collector are defined by them; searches
(~2.6%) exist (Tmall logs none); long types (deliberate_buyer, loyal_repeat) have 8-10 events per history.
Expected (analytic, default config) vs measured (1,000,000 buyers, seed 0, sessions by a 30-minute gap):

    events per history      3.30      measured 3.31  (median 1, p90 8; 52% single-event histories)
    sessions per history    1.19      measured 1.19
    events per session      2.77      measured 2.77
    histories w/ purchase   0.083     measured 0.084
    event mix               view 0.878, purchase 0.039, favorite 0.032, search 0.027, cart 0.022,
                            remove_cart 0.003; measured equal to 3 decimals
    per-merchant conversion (merchants with >= 30 histories; Tmall: 0 .. 0.41, mean 0.084):
                            measured 0.001 .. 0.46, mean 0.099 (100,000 buyers, 60 merchants)

Separability (a ceiling for unsupervised recovery): a gradient-boosted classifier on 13 per-history
aggregates (event counts, sessions, mean log gap, mean relative log price, repeat share), trained on half
of 60,000 buyers' histories, scores accuracy 0.984 / NMI 0.937 on the other half; the residual confusion
is short window_shopper histories vs favorite_collector / cart_abandoner / bargain_hunter ones that
happen to lack their signature event.

Speed (this 2-core box, process pool of 2, snappy, writing to local disk): 1,000,000 buyers = 1.74 M
histories = 5.76 M events in 2.8-4.1 s (1.4-2.1 M events/s); 8,370,000 buyers (2,000 merchants) = 49.3 M
events in 22 s, peak RSS 334 MB. Through Ray tasks (ray_jobs/synthetic.py) 1 M buyers take 6.8 s.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import yaml
from tqdm.auto import tqdm

from simpersona import storage
from simpersona.data.config import SynthConfig, SynthKnobsConfig
from simpersona.data.schema import EVENTS, SCHEMA
from simpersona.pages.shop import Knobs
from simpersona.storage_config import S3Config

END = len(EVENTS)  # the absorbing "leave" state of the session chain
STATES = EVENTS + ("end",)
EV = {name: i for i, name in enumerate(STATES)}

PLANTED_SCHEMA = pa.schema(
    [
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("planted_type", pa.int32(), nullable=False),
        pa.field("planted_name", pa.string(), nullable=False),
    ]
)

# Random streams: the world, each shard and the merchants' store knobs draw from their own SeedSequence
# children (knobs last, so that turning them on leaves the world's catalogs and mixtures as they were).
_WORLD_STREAM, _SHARD_STREAM, _KNOB_STREAM = 0, 1, 2
MERCHANT_KNOBS_FILE = "merchant_knobs.json"  # beside events/ and planted/

# Store knobs the planted types respond to (names and reference values are the storefront's, pages.shop.Knobs:
# a type's library chain is its behaviour at the reference; SynthKnobsConfig holds the values merchants draw).
KNOB_NAMES = ("price_multiplier", "shipping_fee", "checkout_steps", "recommendations")
REFERENCE_KNOBS = {name: getattr(Knobs(), name) for name in KNOB_NAMES}
_SEQ_SHARD_SHIFT = 32  # seq = shard << 32 | row: increasing across shards without knowing their sizes

# Share of history starts per hour of the day (evening peak, night trough), as in web-shop traffic.
DIURNAL = (
    1.5, 0.9, 0.6, 0.4, 0.4, 0.5, 1.0, 2.0, 3.2, 4.2, 4.8, 5.0,
    5.4, 5.0, 4.8, 4.8, 4.9, 5.0, 5.2, 5.8, 6.6, 7.2, 6.0, 3.5,
)  # fmt: skip

# What the pooled marginals were calibrated to (data/tmall2014, measured).
TMALL_TARGETS = {
    "events_per_history": 3.17,
    "events_per_history_median": 1,
    "events_per_history_p90": 6,
    "single_event_histories": 0.60,
    "sessions_per_history": 1.38,
    "events_per_session": 2.30,
    "purchase_histories": 0.078,
    "event_mix": {"view": 0.954, "purchase": 0.038, "favorite": 0.0066, "cart": 0.0008},
}


@dataclass(frozen=True)
class KnobResponse:
    """How one type's session chain responds to its merchant's store knobs, relative to REFERENCE_KNOBS.

    Responses modulate transition weights, then each row is renormalised: a factor f on the purchase
    weight multiplies the odds of a purchase move against every other move by f (a row with purchase
    probability p then buys with p f / (1 - p + p f)), so the lost would-be purchases continue as views,
    ends etc. in proportion. The purchase factor is the product of

        price       (price_multiplier / reference) ** -price_elasticity
        shipping    exp(-shipping_per_unit * (shipping_fee - reference fee))
        checkout    (1 - checkout_step_loss) ** (checkout_steps - reference steps)   (per extra step)

    and recommendations multiply the view -> view weight by (1 + recommendation_view_lift) when on
    (the library chains are the "on" chains, the reference). All zeros: the type does not respond.
    """

    price_elasticity: float = 0.0
    shipping_per_unit: float = 0.0
    checkout_step_loss: float = 0.0
    recommendation_view_lift: float = 0.0


@dataclass(frozen=True)
class TypeSpec:
    """One planted buyer type: everything that generates a history of that type."""

    name: str
    description: str
    share: float  # population share of histories (before config overrides)
    start: dict[str, float]  # first event of a session
    transitions: dict[str, dict[str, float]]  # event -> {next event or "end": weight}
    min_events: int  # per session: "end" is impossible before this many events
    max_events: int  # per session (also capped by SynthConfig.max_events_per_session)
    min_sessions: int  # sessions per history = min_sessions + Poisson(extra_sessions), capped
    extra_sessions: float
    max_sessions: int
    price_beta: tuple[float, float]  # Beta(a, b) of the viewed product's price rank in its catalog
    event_gap_s: tuple[float, float]  # log-normal (median seconds, log-sd) between events of a session
    session_gap_h: tuple[float, float]  # log-normal (median hours, log-sd) between sessions
    repeat_product: float = 0.0  # probability that a view revisits the history's anchor product
    buys_cheapest: bool = False  # buy the cheapest product viewed in the session, not the last one
    knob_response: KnobResponse = KnobResponse()  # response to the merchant's store knobs (none by default)


TYPE_LIBRARY_FILE = Path(__file__).with_name("type_library.yaml")


def load_type_library(path: str | Path = TYPE_LIBRARY_FILE) -> tuple[TypeSpec, ...]:
    """The planted types of a library file (simpersona/data/type_library.yaml), in its order."""
    raw = yaml.safe_load(Path(path).read_text())
    types = []
    for i, t in enumerate(raw):
        try:
            ev, se = t["events"], t["sessions"]
            types.append(TypeSpec(
                name=str(t["name"]), description=str(t["description"]), share=float(t["share"]),
                start={str(k): float(v) for k, v in t["start"].items()},
                transitions={str(e): {str(k): float(v) for k, v in row.items()} for e, row in t["transitions"].items()},
                min_events=int(ev["min"]), max_events=int(ev["max"]), min_sessions=int(se["min"]),
                extra_sessions=float(se["extra"]), max_sessions=int(se["max"]),
                price_beta=tuple(map(float, t["price_beta"])), event_gap_s=tuple(map(float, t["event_gap_s"])),
                session_gap_h=tuple(map(float, t["session_gap_h"])),
                repeat_product=float(t.get("repeat_product", 0.0)), buys_cheapest=bool(t.get("buys_cheapest", False)),
                knob_response=KnobResponse(**{k: float(v) for k, v in (t.get("knob_response") or {}).items()})))
        except (KeyError, TypeError, ValueError) as exc:
            name = t.get("name", "?") if isinstance(t, dict) else repr(t)
            raise SynthError(f"{path}: type {i} ({name}): {type(exc).__name__} {exc}") from None
    return tuple(types)



# ---------------------------------------------------------------------------------------------------
# Configuration


class SynthError(ValueError):
    """A synthetic-data configuration that cannot be generated; the message says which knob and why."""


TYPE_LIBRARY: tuple[TypeSpec, ...] = load_type_library()


def as_synth(cfg) -> SynthConfig:
    """SynthConfig from a SynthConfig, an OmegaConf node (cfg.synth) or a plain dict."""
    if isinstance(cfg, SynthConfig):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict):
        raise SynthError(f"expected a SynthConfig or a mapping, got {type(cfg).__name__}")
    known = {f.name for f in fields(SynthConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise SynthError(f"unknown synth keys {unknown}")
    knobs = cfg.get("knobs", {})
    if not isinstance(knobs, SynthKnobsConfig):
        unknown = sorted(set(knobs) - {f.name for f in fields(SynthKnobsConfig)})
        if unknown:
            raise SynthError(f"unknown synth.knobs keys {unknown}")
        knobs = SynthKnobsConfig(**knobs)
    return SynthConfig(**{**cfg, "knobs": knobs})


def check(cfg: SynthConfig) -> None:
    """One-line SynthError for a knob that cannot work."""
    positive = ("buyers", "merchants", "shard_buyers", "types", "max_merchants_per_buyer", "products_min",
                "categories", "categories_per_merchant", "span_days", "max_events_per_session")  # fmt: skip
    for name in positive:
        if getattr(cfg, name) < 1:
            raise SynthError(f"synth.{name}={getattr(cfg, name)}: must be at least 1")
    if cfg.types > len(TYPE_LIBRARY):
        raise SynthError(f"synth.types={cfg.types}: the type library has {len(TYPE_LIBRARY)} types")
    if cfg.products_max < cfg.products_min:
        raise SynthError(
            f"synth.products_max={cfg.products_max} is below synth.products_min={cfg.products_min}"
        )
    if cfg.categories_per_merchant > cfg.categories:
        raise SynthError(
            f"synth.categories_per_merchant={cfg.categories_per_merchant} exceeds "
            f"synth.categories={cfg.categories}"
        )
    for name in ("mixture_concentration", "price_median", "max_event_gap_s", "min_session_gap_s"):
        if not getattr(cfg, name) > 0:
            raise SynthError(f"synth.{name}={getattr(cfg, name)}: must be positive")
    if cfg.extra_merchants_mean < 0:
        raise SynthError(f"synth.extra_merchants_mean={cfg.extra_merchants_mean}: must be >= 0")
    if cfg.min_session_gap_s <= cfg.max_event_gap_s:
        raise SynthError(
            f"synth.min_session_gap_s={cfg.min_session_gap_s} must exceed synth.max_event_gap_s="
            f"{cfg.max_event_gap_s}, or sessions cannot be told apart by their gaps"
        )
    if cfg.executor not in ("auto", "process", "ray", "serial"):
        raise SynthError(f"synth.executor={cfg.executor!r}: expected auto, process, ray or serial")
    known = [t.name for t in TYPE_LIBRARY]
    unknown = sorted(set(cfg.type_shares) - set(known))
    if unknown:
        raise SynthError(f"synth.type_shares names unknown types {unknown}; known: {known}")
    if any(v < 0 for v in cfg.type_shares.values()):
        raise SynthError("synth.type_shares: shares must be >= 0")
    _parse_start(cfg.start_date)
    for name in KNOB_NAMES:
        values = getattr(cfg.knobs, name)
        if not values:
            raise SynthError(f"synth.knobs.{name}: give at least one value")
        _check_knob(f"synth.knobs.{name}", name, values)


def _check_knob(where: str, name: str, values) -> None:
    """One-line SynthError for knob values the storefront would refuse (as pages.shop.Knobs.from_config)."""
    values = np.asarray(values)
    if name == "price_multiplier" and not (values > 0).all():
        raise SynthError(f"{where}={values.tolist()}: must be positive")
    if name == "shipping_fee" and not (values >= 0).all():
        raise SynthError(f"{where}={values.tolist()}: must be >= 0")
    if name == "checkout_steps" and not ((values >= 1) & (values == np.round(values))).all():
        raise SynthError(f"{where}={values.tolist()}: must be whole numbers >= 1")


def _parse_start(text: str) -> int:
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise SynthError(f"synth.start_date={text!r}: expected YYYY-MM-DD") from None
    return int(day.timestamp() * 1000)


def num_shards(cfg: SynthConfig) -> int:
    return -(-cfg.buyers // cfg.shard_buyers)


def active_types(cfg: SynthConfig) -> list[TypeSpec]:
    """The first `cfg.types` library types with config share overrides, shares renormalised to 1."""
    specs = TYPE_LIBRARY[: cfg.types]
    raw = [float(cfg.type_shares.get(t.name, t.share)) for t in specs]
    total = sum(raw)
    if total <= 0:
        raise SynthError("synth.type_shares: at least one type needs a positive share")
    return [replace(t, share=s / total) for t, s in zip(specs, raw)]


# ---------------------------------------------------------------------------------------------------
# Type chains as arrays, and what they imply (used by planted_types.json and the tests)


@dataclass(frozen=True)
class Chains:
    """Per-type arrays the generator indexes with the type of each session / event."""

    start_cum: np.ndarray  # (T, E) cumulative start distribution
    # (M, T, 2, E, E+1) cumulative transitions per merchant (its store knobs) and type; [:, :, 1] = "end"
    # not yet allowed
    trans_cum: np.ndarray
    min_events: np.ndarray  # (T,)
    max_events: np.ndarray  # (T,) already capped by cfg.max_events_per_session
    min_sessions: np.ndarray
    extra_sessions: np.ndarray
    max_sessions: np.ndarray
    beta_a: np.ndarray
    beta_b: np.ndarray
    gap_mu: np.ndarray  # log of the median inter-event gap (seconds)
    gap_sigma: np.ndarray
    sgap_mu: np.ndarray  # log of the median inter-session gap (seconds)
    sgap_sigma: np.ndarray
    repeat: np.ndarray
    cheapest: np.ndarray  # bool


def _matrices(spec: TypeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(start (E,), transitions (E, E+1)) as probabilities; rows of unreachable events end at once."""
    n = len(EVENTS)
    start = np.zeros(n)
    for name, w in spec.start.items():
        start[EV[name]] = w
    trans = np.zeros((n, n + 1))
    trans[:, END] = 1.0
    for src, row in spec.transitions.items():
        trans[EV[src]] = 0.0
        for dst, w in row.items():
            trans[EV[src], EV[dst]] = w
    start /= start.sum()
    trans /= trans.sum(axis=1, keepdims=True)
    return start, trans


def _early(trans: np.ndarray) -> np.ndarray:
    """Transitions (..., E, E+1) with "end" removed (before min_events); a row that can only end keeps ending."""
    early = trans.copy()
    can_go_on = early[..., :END].sum(axis=-1) > 0
    early[..., END] = np.where(can_go_on, 0.0, early[..., END])
    return early / early.sum(axis=-1, keepdims=True)


def knob_factors(response: KnobResponse, knobs: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(purchase weight factor, view -> view weight factor) of one type at the given knobs (KnobResponse).

    `knobs` maps knob names to scalars or arrays (one value per merchant); a missing knob is at its
    reference. Every factor is exactly 1.0 at the reference knobs.
    """
    at = {name: np.asarray(knobs.get(name, ref)) for name, ref in REFERENCE_KNOBS.items()}
    ref = REFERENCE_KNOBS
    purchase = (
        (at["price_multiplier"] / ref["price_multiplier"]) ** -response.price_elasticity
        * np.exp(-response.shipping_per_unit * (at["shipping_fee"] - ref["shipping_fee"]))
        * (1.0 - response.checkout_step_loss) ** (at["checkout_steps"] - ref["checkout_steps"])
    )
    view = (1.0 + response.recommendation_view_lift) ** (
        at["recommendations"].astype(np.int64) - int(ref["recommendations"])
    )
    return np.asarray(purchase, dtype=np.float64), np.asarray(view, dtype=np.float64)


def _modulate(trans: np.ndarray, purchase: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Transitions (..., E, E+1) with the purchase column and view -> view weight scaled, rows renormalised.

    Where both factors are 1 the input comes back bit for bit (renormalising would move the last digit),
    so reference knobs generate exactly the library chains.
    """
    shape = np.broadcast_shapes(trans.shape, purchase.shape + trans.shape[-2:], view.shape + trans.shape[-2:])
    trans = np.broadcast_to(trans, shape)
    w = trans.copy()
    w[..., EV["purchase"]] *= purchase[..., None]
    w[..., EV["view"], EV["view"]] *= view
    w /= w.sum(axis=-1, keepdims=True)
    unchanged = (purchase == 1.0) & (view == 1.0)
    return np.where(unchanged[..., None, None], trans, w)


def build_chains(specs: list[TypeSpec], cfg: SynthConfig, knobs: Mapping[str, np.ndarray]) -> Chains:
    """The types' chains as arrays, transitions per merchant: `knobs` holds one value per merchant."""
    starts, trans = zip(*(_matrices(s) for s in specs))
    factors = [knob_factors(s.knob_response, knobs) for s in specs]  # per type: (M,) each
    purchase = np.stack([f[0] for f in factors], axis=1)  # (M, T)
    view = np.stack([f[1] for f in factors], axis=1)
    merchant_trans = _modulate(np.stack(trans)[None], purchase, view)  # (M, T, E, E+1)
    both = np.stack([merchant_trans, _early(merchant_trans)], axis=2)
    cum = np.cumsum(both, axis=-1)
    cum[..., -1] = 1.0  # exact, so that a uniform draw in [0, 1) always lands in a state
    start_cum = np.cumsum(np.stack(starts), axis=-1)
    start_cum[:, -1] = 1.0
    arr = lambda get, dtype=np.float64: np.array([get(s) for s in specs], dtype=dtype)  # noqa: E731
    return Chains(
        start_cum=start_cum,
        trans_cum=cum,
        min_events=arr(lambda s: s.min_events, np.int64),
        max_events=arr(lambda s: min(s.max_events, cfg.max_events_per_session), np.int64),
        min_sessions=arr(lambda s: s.min_sessions, np.int64),
        extra_sessions=arr(lambda s: s.extra_sessions),
        max_sessions=arr(lambda s: s.max_sessions, np.int64),
        beta_a=arr(lambda s: s.price_beta[0]),
        beta_b=arr(lambda s: s.price_beta[1]),
        gap_mu=arr(lambda s: math.log(s.event_gap_s[0])),
        gap_sigma=arr(lambda s: s.event_gap_s[1]),
        sgap_mu=arr(lambda s: math.log(s.session_gap_h[0] * 3600.0)),
        sgap_sigma=arr(lambda s: s.session_gap_h[1]),
        repeat=arr(lambda s: s.repeat_product),
        cheapest=arr(lambda s: s.buys_cheapest, bool),
    )


def _sessions_pmf(spec: TypeSpec) -> np.ndarray:
    """P(sessions = s) for s = 0..max_sessions (min + Poisson, the tail folded onto the cap)."""
    pmf = np.zeros(spec.max_sessions + 1)
    lam, k = spec.extra_sessions, np.arange(spec.max_sessions - spec.min_sessions + 1)
    pois = (
        np.exp(-lam + k * math.log(lam) - np.array([math.lgamma(i + 1) for i in k]))
        if lam > 0
        else (k == 0) * 1.0
    )
    pmf[spec.min_sessions :] = pois
    pmf[-1] += 1.0 - pmf.sum()
    return pmf


def type_expectations(spec: TypeSpec, max_events_per_session: int, knobs: Mapping | None = None) -> dict:
    """Exact expected statistics of one type's histories (dynamic programme over session steps).

    `knobs` (name -> value; missing names and None = REFERENCE_KNOBS): the type's chain at a merchant
    with these store knobs, modulated as the generator does (KnobResponse).
    """
    start, trans = _matrices(spec)
    if knobs:
        trans = _modulate(trans, *knob_factors(spec.knob_response, knobs))
    early = _early(trans)
    cap = min(spec.max_events, max_events_per_session)

    def step(p: np.ndarray, t: int) -> np.ndarray:  # state distribution at position t+1 (alive mass)
        return p @ (early if t + 1 < spec.min_events else trans)[:, :END]

    counts, p = np.zeros(END), start.copy()
    for t in range(cap):
        counts += p
        if t + 1 < cap:
            p = step(p, t)
    # P(a session never shows event e): the same chain with e's mass removed as it arrives
    never = np.zeros(END)
    for e in range(END):
        p, hit = start.copy(), 0.0
        for t in range(cap):
            hit += p[e]
            p[e] = 0.0
            if t + 1 < cap:
                p = step(p, t)
        never[e] = 1.0 - hit
    pmf = _sessions_pmf(spec)
    s = np.arange(pmf.size)
    sessions = float(pmf @ s)
    per_session = float(counts.sum())
    has = {e: float(1.0 - pmf @ (never[i] ** s)) for i, e in enumerate(EVENTS)}
    return {
        "sessions_per_history": sessions,
        "events_per_session": per_session,
        "events_per_history": sessions * per_session,
        "event_mix": {e: float(counts[i] / per_session) for i, e in enumerate(EVENTS)},
        "events_per_history_by_event": {e: float(counts[i] * sessions) for i, e in enumerate(EVENTS)},
        "has_event": has,
        "conversion": has["purchase"],
        # one session of the type: P(it shows each event) and its expected count (a simulated agent's unit)
        "session_has_event": {e: float(1.0 - never[i]) for i, e in enumerate(EVENTS)},
        "events_per_session_by_event": {e: float(counts[i]) for i, e in enumerate(EVENTS)},
        "view_price_rank": spec.price_beta[0] / (spec.price_beta[0] + spec.price_beta[1]),
    }


def population_expectations(cfg: SynthConfig, knobs: Mapping | None = None) -> dict:
    """Share-weighted marginals of the whole population (what the Tmall calibration targets), every
    merchant at the store knobs `knobs` (None = the reference)."""
    specs = active_types(cfg)
    exp = [type_expectations(s, cfg.max_events_per_session, knobs) for s in specs]
    w = np.array([s.share for s in specs])
    per_hist = np.array([x["events_per_history"] for x in exp])
    sess = np.array([x["sessions_per_history"] for x in exp])
    total = float(w @ per_hist)
    return {
        "events_per_history": total,
        "sessions_per_history": float(w @ sess),
        "events_per_session": total / float(w @ sess),
        "purchase_histories": float(w @ np.array([x["conversion"] for x in exp])),
        "product_views_per_history": float(w @ np.array([x["events_per_history_by_event"]["view"] for x in exp])),
        "event_mix": {
            e: float(w @ np.array([x["events_per_history_by_event"][e] for x in exp])) / total for e in EVENTS
        },
    }


# ---------------------------------------------------------------------------------------------------
# The world: merchants, catalogs, mixtures (a pure function of the config, cached per process)


@dataclass(frozen=True)
class World:
    specs: list[TypeSpec]
    chains: Chains
    merchant_ids: pa.Array  # string (M,)
    popularity_cum: np.ndarray  # (M,)
    popularity: np.ndarray  # (M,)
    price_level: np.ndarray  # (M,)
    mixtures: np.ndarray  # (M, T) merchant type mixtures (rows sum to 1)
    mixture_cum: np.ndarray  # (M, T)
    catalog_offset: np.ndarray  # (M,) first global product index of each merchant
    catalog_size: np.ndarray  # (M,)
    product_ids: pa.Array  # string (P,), each merchant's products in increasing price order
    product_price: np.ndarray  # (P,)
    product_category: np.ndarray  # (P,) index into category_names
    category_names: pa.Array  # string
    type_names: pa.Array  # string (T,)
    knobs: dict[str, np.ndarray]  # KNOB_NAMES -> (M,) each merchant's store knobs (the reference when off)


def draw_knobs(cfg: SynthConfig) -> dict[str, np.ndarray]:
    """Each merchant's store knobs: uniform draws from synth.knobs' lists (REFERENCE_KNOBS when disabled)."""
    m = cfg.merchants
    if not cfg.knobs.enabled:
        return {name: np.full(m, ref) for name, ref in REFERENCE_KNOBS.items()}
    rng = np.random.default_rng([cfg.seed, _KNOB_STREAM])
    out = {}
    for name in KNOB_NAMES:  # a fixed order: the same seed gives the same knobs
        values = np.asarray(getattr(cfg.knobs, name), dtype=type(REFERENCE_KNOBS[name]))
        out[name] = values[rng.integers(0, values.size, m)]
    return out


def build_world(cfg: SynthConfig) -> World:
    check(cfg)
    return _build_world(json.dumps(asdict(cfg), sort_keys=True))  # a hashable key, nested knobs included


@functools.lru_cache(maxsize=4)
def _build_world(key: str) -> World:
    cfg = as_synth(json.loads(key))
    specs = active_types(cfg)
    knobs = draw_knobs(cfg)
    rng = np.random.default_rng([cfg.seed, _WORLD_STREAM])
    m = cfg.merchants
    ranks = rng.permutation(m)
    pop = 1.0 / (ranks + 1.0) ** cfg.merchant_popularity_exponent
    pop /= pop.sum()
    level = cfg.price_median * np.exp(cfg.price_level_sigma * rng.standard_normal(m))
    shares = np.array([s.share for s in specs])
    mix = rng.dirichlet(np.maximum(cfg.mixture_concentration * shares, 1e-3), size=m)
    mix = np.maximum(mix, 1e-9)
    # Rake (iterative proportional fitting) so that the popularity-weighted mixture equals the shares:
    # merchants keep their own mixtures, the population marginals keep the calibration for every seed.
    for _ in range(200):
        mix *= shares / np.maximum(pop @ mix, 1e-300)
        mix /= mix.sum(axis=1, keepdims=True)
    mix_cum = np.cumsum(mix, axis=1)
    mix_cum[:, -1] = 1.0
    size = rng.integers(cfg.products_min, cfg.products_max + 1, size=m)
    offset = np.concatenate([[0], np.cumsum(size)[:-1]])
    total = int(size.sum())
    owner = np.repeat(np.arange(m), size)
    price = level[owner] * np.exp(cfg.product_price_sigma * rng.standard_normal(total))
    # sort prices inside each merchant: a product's local index is then its price rank
    price = np.round(np.maximum(price[np.lexsort((price, owner))], 0.01), 2)
    cats = np.stack(
        [rng.choice(cfg.categories, cfg.categories_per_merchant, replace=False) for _ in range(m)]
    )
    category = cats[owner, rng.integers(0, cfg.categories_per_merchant, size=total)]
    # product numbers are a random permutation, so that the id does not give the price rank away
    number = np.concatenate([rng.permutation(int(n)) for n in size])
    width = max(3, len(str(int(size.max()) - 1)))
    merchant_ids = _prefixed("m", np.arange(m))
    product_ids = pc.binary_join_element_wise(
        merchant_ids.take(pa.array(owner)), _prefixed("p", number, width), "-"
    )
    return World(
        specs=specs,
        chains=build_chains(specs, cfg, knobs),
        merchant_ids=merchant_ids,
        popularity_cum=np.cumsum(pop),
        popularity=pop,
        price_level=level,
        mixtures=mix,
        mixture_cum=mix_cum,
        catalog_offset=offset,
        catalog_size=size,
        product_ids=product_ids,
        product_price=price,
        product_category=category,
        category_names=_prefixed("c", np.arange(cfg.categories)),
        type_names=pa.array([s.name for s in specs], pa.string()),
        knobs=knobs,
    )


def _prefixed(prefix: str, numbers: np.ndarray, width: int = 0) -> pa.Array:
    """Strings prefix + number (zero-padded to `width`), built by Arrow kernels rather than Python."""
    text = pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string())
    if width:
        text = pc.utf8_lpad(text, width=width, padding="0")
    return pc.binary_join_element_wise(prefix, text, "")


# ---------------------------------------------------------------------------------------------------
# One shard


def _segment_starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _draw(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draws: row-wise index of the first cumulative probability above u."""
    return (u[:, None] >= cum).sum(axis=1)


def _lognormal(rng: np.random.Generator, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return np.exp(mu + sigma * rng.standard_normal(mu.size))


@dataclass(frozen=True)
class _Population:
    """A shard's buyers, histories and sessions: everything drawn before the session chains run."""

    first: int  # global index of the shard's first buyer
    n_buyers: int
    h_buyer: np.ndarray  # per history: buyer (shard-local), merchant, planted type, number of sessions
    h_merchant: np.ndarray
    h_type: np.ndarray
    n_sess: np.ndarray
    s_hist: np.ndarray  # per session: its history


def _population(cfg: SynthConfig, world: World, rng: np.random.Generator, shard_index: int) -> _Population:
    """The shard's histories and sessions (the first draws of its stream; knobs do not change them)."""
    n_shards = num_shards(cfg)
    if not 0 <= shard_index < n_shards:
        raise SynthError(
            f"shard_index {shard_index} out of range: {cfg.buyers} buyers make {n_shards} shards"
        )
    ch = world.chains
    first = shard_index * cfg.shard_buyers
    n_buyers = min(cfg.shard_buyers, cfg.buyers - first)

    # Histories: distinct merchants per buyer, a planted type per history from the merchant's mixture.
    n_m = cfg.merchants
    visits = 1 + np.minimum(rng.poisson(cfg.extra_merchants_mean, n_buyers), cfg.max_merchants_per_buyer - 1)
    h_buyer = np.repeat(np.arange(n_buyers, dtype=np.int64), visits)
    h_merchant = np.minimum(
        np.searchsorted(world.popularity_cum, rng.random(h_buyer.size), side="right"), n_m - 1
    )
    pair = np.unique(h_buyer * n_m + h_merchant)  # drops repeated picks; sorted by buyer, then merchant
    h_buyer, h_merchant = pair // n_m, pair % n_m
    n_hist = pair.size
    h_type = _draw(world.mixture_cum[h_merchant], rng.random(n_hist))

    # Sessions per history.
    n_sess = np.minimum(
        ch.min_sessions[h_type] + rng.poisson(ch.extra_sessions[h_type]), ch.max_sessions[h_type]
    )
    s_hist = np.repeat(np.arange(n_hist), n_sess)
    return _Population(first, n_buyers, h_buyer, h_merchant, h_type, n_sess, s_hist)


def _walk_sessions(ch: Chains, s_merchant: np.ndarray, s_type: np.ndarray, uniforms) -> np.ndarray:
    """Session chains, all sessions in lock step: one vectorised draw per position, not per event.

    Returns (sessions, width) int8 event codes, -1 after a session's end. `uniforms(t, rows)` gives the
    uniform draws of position t for the sessions `rows` still running: either the next draws of the
    shard's stream (knobs off: today's stream, byte for byte) or column t of a matrix drawn up front,
    so that two knob settings walk the same sessions on the same numbers (common random numbers).
    """
    n_s = s_type.size
    width = int(ch.max_events.max())
    ev = np.full((n_s, width), -1, dtype=np.int8)
    alive = np.arange(n_s)
    ev[:, 0] = _draw(ch.start_cum[s_type], uniforms(0, alive))
    for t in range(width - 1):
        st = s_type[alive]
        early = (t + 1 < ch.min_events[st]).astype(np.int64)
        nxt = _draw(ch.trans_cum[s_merchant[alive], st, early, ev[alive, t]], uniforms(t + 1, alive))
        go_on = (nxt < END) & (t + 1 < ch.max_events[st])
        alive, nxt = alive[go_on], nxt[go_on]
        if alive.size == 0:
            break
        ev[alive, t + 1] = nxt
    return ev


def _chain_uniforms(rng: np.random.Generator, n_sessions: int, width: int, keep: np.ndarray | None = None):
    """The `uniforms` of _walk_sessions with knobs on: one (sessions, width) matrix from the shard stream
    (only the rows `keep` when given: a walk of those sessions alone)."""
    matrix = rng.random((n_sessions, width))
    if keep is not None:
        matrix = matrix[keep]
    return lambda t, rows: matrix[rows, t]


def generate_shard(cfg, shard_index: int) -> tuple[pa.Table, pa.Table]:
    """(events, planted) of buyers [k * shard_buyers, (k + 1) * shard_buyers); a pure function of (cfg, k)."""
    cfg = as_synth(cfg)
    world = build_world(cfg)
    ch = world.chains
    rng = np.random.default_rng([cfg.seed, _SHARD_STREAM, shard_index])
    pop = _population(cfg, world, rng, shard_index)
    first, n_buyers = pop.first, pop.n_buyers
    h_buyer, h_merchant, h_type, n_sess, s_hist = pop.h_buyer, pop.h_merchant, pop.h_type, pop.n_sess, pop.s_hist
    n_hist = h_type.size
    s_type = h_type[s_hist]
    n_s = s_hist.size

    if cfg.knobs.enabled:  # common random numbers, so that true_effect can replay these very sessions
        uniforms = _chain_uniforms(rng, n_s, int(ch.max_events.max()))
    else:
        uniforms = lambda t, rows: rng.random(rows.size)  # noqa: E731
    ev = _walk_sessions(ch, h_merchant[s_hist], s_type, uniforms)
    s_len = (ev >= 0).sum(axis=1)
    code = ev[ev >= 0].astype(np.int64)  # row-major: session by session, in time order
    n_ev = code.size
    e_sess = np.repeat(np.arange(n_s), s_len)
    e_first = _segment_starts(s_len)  # event index of each session's first event
    e_hist = s_hist[e_sess]
    e_type = h_type[e_hist]
    e_merchant = h_merchant[e_hist]

    # Products. Every view / search draws a product at the type's price rank (searches keep only its
    # category); cart, favorite and purchase act on the last viewed product of the session.
    size = world.catalog_size[e_merchant]
    offset = world.catalog_offset[e_merchant]
    rank = rng.beta(ch.beta_a[e_type], ch.beta_b[e_type])
    fresh = offset + np.minimum((rank * size).astype(np.int64), size - 1)
    h_anchor = world.catalog_offset[h_merchant] + np.minimum(
        (rng.beta(ch.beta_a[h_type], ch.beta_b[h_type]) * world.catalog_size[h_merchant]).astype(np.int64),
        world.catalog_size[h_merchant] - 1,
    )
    revisit = rng.random(n_ev) < ch.repeat[e_type]
    drawn = np.where(revisit, h_anchor[e_hist], fresh)
    is_view = code == EV["view"]
    is_search = code == EV["search"]
    idx = np.arange(n_ev)
    last_view = np.maximum.accumulate(np.where(is_view, idx, -1))
    last_cart = np.maximum.accumulate(np.where(code == EV["cart"], idx, -1))
    # cheapest view so far in the session: a running minimum that restarts at each session, by
    # offsetting every session below the previous one (catalogs are price-sorted: low index = cheap)
    big = np.int64(world.product_price.size + 1)
    key = np.where(is_view, drawn, big - 1) - e_sess * big
    cheapest = np.minimum.accumulate(key) + e_sess * big
    product = drawn.copy()
    acts = ~(is_view | is_search)
    product[acts] = drawn[np.maximum(last_view[acts], 0)]
    buys = (code == EV["purchase"]) & ch.cheapest[e_type]
    product[buys] = cheapest[buys]
    removes = code == EV["remove_cart"]
    product[removes] = product[np.maximum(last_cart[removes], 0)]

    # Time: history start (day + diurnal time of day), session starts, event offsets inside sessions.
    gap = np.clip(_lognormal(rng, ch.gap_mu[e_type], ch.gap_sigma[e_type]), 1.0, cfg.max_event_gap_s)
    gap_ms = np.round(gap * 1000.0).astype(np.int64)
    gap_ms[e_first] = 0
    csum = np.cumsum(gap_ms)
    e_offset = csum - csum[e_first][e_sess]
    s_duration = e_offset[e_first + s_len - 1]
    s_gap = np.clip(
        _lognormal(rng, ch.sgap_mu[s_type], ch.sgap_sigma[s_type]),
        cfg.min_session_gap_s,
        cfg.max_session_gap_days * 86400.0,
    )
    s_step = s_duration + np.round(s_gap * 1000.0).astype(np.int64)
    s_csum = np.cumsum(s_step)
    h_first_sess = _segment_starts(n_sess)
    s_start = s_csum - s_step - (s_csum - s_step)[h_first_sess][s_hist]  # exclusive sum within history
    diurnal = np.cumsum(DIURNAL) / sum(DIURNAL)
    hour = np.minimum(np.searchsorted(diurnal, rng.random(n_hist), side="right"), 23)
    h_start = (
        _parse_start(cfg.start_date)
        + rng.integers(0, cfg.span_days, n_hist) * 86_400_000
        + hour * 3_600_000
        + rng.integers(0, 3_600_000, n_hist)
    )
    ts = h_start[e_hist] + s_start[e_sess] + e_offset
    # the price the buyer saw and paid: the catalog price times the merchant's price_multiplier
    price = world.product_price[product]
    if cfg.knobs.enabled:
        price = np.round(price * world.knobs["price_multiplier"][e_merchant], 2)

    # Arrow tables; strings come from Arrow takes on small dictionaries, never from Python loops.
    buyer_ids = _prefixed("b", np.arange(first, first + n_buyers))
    no_product = pa.array(is_search)
    product_arr = pa.array(product)
    events = pa.Table.from_arrays(
        [
            buyer_ids.take(pa.array(h_buyer[e_hist])),
            world.merchant_ids.take(pa.array(e_merchant)),
            pa.array(ts.view("datetime64[ms]")),
            pa.array((np.int64(shard_index) << _SEQ_SHARD_SHIFT) + idx),
            pa.array(EVENTS, pa.string()).take(pa.array(code)),
            pc.if_else(no_product, pa.scalar(None, pa.string()), world.product_ids.take(product_arr)),
            world.category_names.take(pa.array(world.product_category[product])),
            pa.array(price, mask=is_search),
            pa.nulls(n_ev, pa.string()),
        ],
        schema=SCHEMA,
    )
    planted = pa.Table.from_arrays(
        [
            buyer_ids.take(pa.array(h_buyer)),
            world.merchant_ids.take(pa.array(h_merchant)),
            pa.array(h_type.astype(np.int32)),
            world.type_names.take(pa.array(h_type)),
        ],
        schema=PLANTED_SCHEMA,
    )
    return events, planted


# ---------------------------------------------------------------------------------------------------
# Writing shards (in parallel) and describing the types


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def write_shard(cfg, out_uri: str, shard_index: int, s3: S3Config | None = None) -> dict:
    """Generate shard k and write it; returns its counts (the only thing that crosses processes)."""
    cfg = as_synth(cfg)
    events, planted = generate_shard(cfg, shard_index)
    opts = {"compression": cfg.compression}
    storage.write_parquet(events, storage.join_uri(out_uri, "events", shard_name(shard_index)), s3, **opts)
    storage.write_parquet(planted, storage.join_uri(out_uri, "planted", shard_name(shard_index)), s3, **opts)
    return {
        "shard": shard_index,
        "buyers": min(cfg.shard_buyers, cfg.buyers - shard_index * cfg.shard_buyers),
        "histories": planted.num_rows,
        "events": events.num_rows,
    }


def describe_types(cfg) -> dict:
    """Content of planted_types.json: each type's parameters and expected statistics, and the merchants."""
    cfg = as_synth(cfg)
    world = build_world(cfg)
    return {
        "types": [
            {"id": i, **asdict(spec), "expected": type_expectations(spec, cfg.max_events_per_session)}
            for i, spec in enumerate(world.specs)
        ],
        "population_expected": population_expectations(cfg),
        "calibration_targets": TMALL_TARGETS,
        "merchants": [
            {
                "merchant_id": world.merchant_ids[m].as_py(),
                "popularity": float(world.popularity[m]),
                "price_level": float(world.price_level[m]),
                "products": int(world.catalog_size[m]),
                "mixture": {s.name: float(world.mixtures[m, i]) for i, s in enumerate(world.specs)},
                **({"knobs": _knobs_of(world, m)} if cfg.knobs.enabled else {}),
            }
            for m in range(cfg.merchants)
        ],
        "reference_knobs": REFERENCE_KNOBS,
        "config": asdict(cfg),
    }


# ---------------------------------------------------------------------------------------------------
# What-ifs: the same population under other store knobs, its true effect and the chains' expectation

# per history: the share with a purchase, its product views; and the mean over its sessions of the same
# two (a simulated agent shops one session, so these are what its what-if deltas estimate)
WHATIF_OUTCOMES = ("conversion", "product_views", "session_conversion", "session_product_views")


def _knobs_of(world: World, m: int) -> dict:
    return {name: world.knobs[name][m].item() for name in KNOB_NAMES}


def merchant_knobs(cfg) -> dict[str, dict]:
    """Each merchant's store knobs, {merchant_id: {knob: value}}: the shape of store.merchant_overrides."""
    cfg = as_synth(cfg)
    world = build_world(cfg)
    return {world.merchant_ids[m].as_py(): _knobs_of(world, m) for m in range(cfg.merchants)}


def _variant_knobs(cfg: SynthConfig, world: World, variant: Mapping, merchants: Sequence[str] | None):
    """(every merchant's knobs under the what-if, the indices of the merchants it changes).

    `variant` maps knob names to values (a store.variants entry); `merchants` None = all of them.
    """
    unknown = sorted(set(variant) - set(KNOB_NAMES))
    if unknown:
        raise SynthError(
            f"what-if knobs {unknown} have no planted response; the synthetic buyers respond to {list(KNOB_NAMES)}"
        )
    if merchants is None:
        selected = np.arange(cfg.merchants)
    else:
        index = {mid: i for i, mid in enumerate(world.merchant_ids.to_pylist())}
        missing = sorted(set(merchants) - set(index))
        if missing:
            raise SynthError(f"merchants {missing[:5]} are not in the synthetic world (m0 .. m{cfg.merchants - 1})")
        selected = np.array(sorted({index[mid] for mid in merchants}), dtype=np.int64)
    knobs = {name: values.copy() for name, values in world.knobs.items()}
    for name, value in variant.items():
        _check_knob(f"what-if {name}", name, [value])
        knobs[name][selected] = value
    return knobs, selected


def _expected_histories(cfg: SynthConfig, world: World) -> np.ndarray:
    """(M,) expected histories per merchant: buyers x P(the merchant is among a buyer's distinct picks)."""
    lam, picks = cfg.extra_merchants_mean, np.arange(1, cfg.max_merchants_per_buyer + 1)
    extra = picks - 1
    pmf = np.exp(-lam + extra * math.log(lam) - np.array([math.lgamma(k + 1) for k in extra])) if lam > 0 else (
        (extra == 0) * 1.0
    )
    pmf[-1] += 1.0 - pmf.sum()  # 1 + Poisson, capped: the tail is folded onto the cap
    picked = 1.0 - (1.0 - world.popularity[:, None]) ** picks[None, :]
    return cfg.buyers * (picked @ pmf)


def _type_outcomes(cfg: SynthConfig, world: World, knobs: Mapping, selected: np.ndarray) -> dict[str, np.ndarray]:
    """Analytic outcomes {outcome: (S, T)} of each type at each selected merchant's knobs (type_expectations)."""
    out = {o: np.zeros((selected.size, len(world.specs))) for o in WHATIF_OUTCOMES}
    cache: dict[tuple, tuple] = {}  # merchants share knob settings: one dynamic programme per setting
    for row, m in enumerate(selected):
        at = {name: knobs[name][m].item() for name in KNOB_NAMES}
        key = tuple(at.values())
        if key not in cache:
            exp = [type_expectations(spec, cfg.max_events_per_session, at) for spec in world.specs]
            cache[key] = {
                "conversion": [x["conversion"] for x in exp],
                "product_views": [x["events_per_history_by_event"]["view"] for x in exp],
                "session_conversion": [x["session_has_event"]["purchase"] for x in exp],
                "session_product_views": [x["events_per_session_by_event"]["view"] for x in exp],
            }
        for o in WHATIF_OUTCOMES:
            out[o][row] = cache[key][o]
    return out


def _effects(weight: np.ndarray, base: dict, variant: dict, diff_sq: dict | None) -> dict:
    """Per-outcome {baseline, variant, effect[, se]} from sums over the cells of `weight` (any shape).

    `base`/`variant` hold weighted sums per outcome, `diff_sq` sums of squared per-history differences
    (the standard error of the mean paired difference; None for the analytic expectation).
    """
    n = float(weight.sum())
    out: dict = {"histories": n if diff_sq is None else int(n)}
    for o in WHATIF_OUTCOMES:
        b, v = float(base[o].sum()) / max(n, 1e-300), float(variant[o].sum()) / max(n, 1e-300)
        row = {"baseline": b, "variant": v, "effect": v - b}
        if diff_sq is not None:
            var = max(float(diff_sq[o].sum()) / max(n, 1.0) - (v - b) ** 2, 0.0)
            row["se"] = math.sqrt(var / max(n, 1.0))
        out[o] = row
    return out


def _effect_table(world: World, selected: np.ndarray, knobs: dict, weight: np.ndarray, base: dict,
                  variant: dict, diff_sq: dict | None) -> dict:
    """Pooled, per-merchant and per-type effects from (S, T) cell sums."""
    ids = world.merchant_ids.to_pylist()
    pick = lambda sums, idx: {o: sums[o][idx] for o in WHATIF_OUTCOMES}  # noqa: E731
    sq = lambda idx: None if diff_sq is None else pick(diff_sq, idx)  # noqa: E731
    per_merchant = {}
    for row, m in enumerate(selected):
        per_merchant[ids[m]] = {
            "knobs": {"baseline": _knobs_of(world, m), "variant": {n: knobs[n][m].item() for n in KNOB_NAMES}},
            **_effects(weight[row], pick(base, row), pick(variant, row), sq(row)),
        }
    per_type = {
        spec.name: _effects(weight[:, t], pick(base, (slice(None), t)), pick(variant, (slice(None), t)),
                            sq((slice(None), t)))
        for t, spec in enumerate(world.specs)
    }  # fmt: skip
    all_cells = (slice(None), slice(None))
    return {
        "pooled": _effects(weight, pick(base, all_cells), pick(variant, all_cells), sq(all_cells)),
        "per_merchant": per_merchant,
        "per_type": per_type,
    }


def expected_effect(cfg, variant: Mapping, merchants: Sequence[str] | None = None) -> dict:
    """The analytic effect of a what-if: the chains' expectations (type_expectations at each merchant's
    knobs and at the what-if's), weighted by each merchant's type mixture and expected number of histories.

    `variant`: {knob: value} applied to `merchants` (None = all); the others keep their own knobs and
    are left out. Returns {"variant", "merchants", "pooled", "per_merchant", "per_type"}, each effect as
    {histories (expected), conversion: {baseline, variant, effect}, product_views: {...}}.
    """
    cfg = as_synth(cfg)
    world = build_world(cfg)
    variant_knobs, selected = _variant_knobs(cfg, world, variant, merchants)
    weight = _expected_histories(cfg, world)[selected, None] * world.mixtures[selected]  # (S, T) histories
    base = {o: weight * x for o, x in _type_outcomes(cfg, world, world.knobs, selected).items()}
    var = {o: weight * x for o, x in _type_outcomes(cfg, world, variant_knobs, selected).items()}
    return {
        "variant": dict(variant),
        "merchants": [world.merchant_ids[m].as_py() for m in selected],
        **_effect_table(world, selected, variant_knobs, weight, base, var, None),
    }


def true_effect(cfg, variant: Mapping, merchants: Sequence[str] | None = None) -> dict:
    """The true effect of a what-if: the same population replayed under other knobs for some merchants.

    Every shard is drawn again from its own stream: the same buyers, histories, planted types and
    sessions, and the same uniform draws for every session step (common random numbers), walked once on
    the merchants' own knobs and once on the what-if's; each history's outcomes are compared in pairs.
    With synth.knobs.enabled the baseline arm is exactly the generated data (the generator draws its
    chain steps from the same matrix); without, it is the same population at the reference knobs on
    other draws. Only the session chains run (products and times do not move the outcomes), serially.

    Returns expected_effect's layout with measured values: histories (counted), per outcome
    {baseline, variant, effect, se (paired standard error), expected_effect (analytic)}.
    """
    cfg = as_synth(cfg)
    world = build_world(cfg)
    variant_knobs, selected = _variant_knobs(cfg, world, variant, merchants)
    arms = (world.chains, build_chains(world.specs, cfg, variant_knobs))
    n_types = len(world.specs)
    row_of = np.full(cfg.merchants, -1, dtype=np.int64)
    row_of[selected] = np.arange(selected.size)
    cells = selected.size * n_types
    weight = np.zeros(cells)
    sums = {arm: {o: np.zeros(cells) for o in WHATIF_OUTCOMES} for arm in ("baseline", "variant", "diff_sq")}
    width = int(world.chains.max_events.max())
    for k in range(num_shards(cfg)):
        rng = np.random.default_rng([cfg.seed, _SHARD_STREAM, k])
        pop = _population(cfg, world, rng, k)
        s_merchant, s_type = pop.h_merchant[pop.s_hist], pop.h_type[pop.s_hist]
        keep = np.flatnonzero(row_of[s_merchant] >= 0)  # sessions at the merchants the what-if changes
        uniforms = _chain_uniforms(rng, s_type.size, width, keep)  # both arms walk on the same numbers
        n_hist = pop.h_type.size
        outcomes = []
        for chains in arms:
            ev = _walk_sessions(chains, s_merchant[keep], s_type[keep], uniforms)
            h = pop.s_hist[keep]
            bought = np.bincount(h, (ev == EV["purchase"]).any(axis=1), minlength=n_hist)
            views = np.bincount(h, (ev == EV["view"]).sum(axis=1), minlength=n_hist)
            sessions = np.maximum(np.bincount(h, minlength=n_hist), 1)
            outcomes.append({"conversion": (bought > 0).astype(np.float64), "product_views": views,
                             "session_conversion": bought / sessions, "session_product_views": views / sessions})
        hk = np.flatnonzero(row_of[pop.h_merchant] >= 0)
        cell = row_of[pop.h_merchant[hk]] * n_types + pop.h_type[hk]
        weight += np.bincount(cell, minlength=cells)
        for o in WHATIF_OUTCOMES:
            b, v = outcomes[0][o][hk], outcomes[1][o][hk]
            sums["baseline"][o] += np.bincount(cell, b, minlength=cells)
            sums["variant"][o] += np.bincount(cell, v, minlength=cells)
            sums["diff_sq"][o] += np.bincount(cell, (v - b) ** 2, minlength=cells)
    shape = (selected.size, n_types)
    as_cells = lambda d: {o: x.reshape(shape) for o, x in d.items()}  # noqa: E731
    table = _effect_table(world, selected, variant_knobs, weight.reshape(shape), as_cells(sums["baseline"]),
                          as_cells(sums["variant"]), as_cells(sums["diff_sq"]))  # fmt: skip
    expected = expected_effect(cfg, variant, merchants)
    pairs = [(table["pooled"], expected["pooled"])] + [
        (table[part][name], expected[part][name]) for part in ("per_merchant", "per_type") for name in table[part]
    ]
    for got, want in pairs:
        for o in WHATIF_OUTCOMES:
            got[o]["expected_effect"] = want[o]["effect"]
    return {"variant": dict(variant), "merchants": expected["merchants"], **table}


def _executor(cfg: SynthConfig, shards: int) -> str:
    if cfg.executor != "auto":
        return cfg.executor
    try:
        import ray

        if ray.is_initialized():
            return "ray"
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    workers = cfg.workers or os.cpu_count() or 1
    return "serial" if shards == 1 or workers == 1 else "process"


def _run_shards(cfg: SynthConfig, out_uri: str, s3: S3Config | None, how: str) -> Iterator[dict]:
    """Yield each shard's counts as it completes; at most one shard per worker is in memory."""
    shards = range(num_shards(cfg))
    if how == "serial":
        for k in shards:
            yield write_shard(cfg, out_uri, k, s3)
    elif how == "process":
        # spawn, not fork: the caller may hold threads (Ray, Arrow pools) that fork would copy half-way
        workers = min(cfg.workers or os.cpu_count() or 1, len(shards))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(write_shard, cfg, out_uri, k, s3) for k in shards]
            for fut in as_completed(futures):
                yield fut.result()
    elif how == "ray":
        import ray

        task = ray.remote(num_cpus=1)(write_shard)
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 2)))  # bounded in-flight shards
        pending, todo = [], list(shards)
        while todo or pending:
            while todo and len(pending) < limit:
                pending.append(task.remote(cfg, out_uri, todo.pop(0), s3))
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    else:
        raise SynthError(f"synth.executor={how!r}: expected auto, process, ray or serial")


def generate(cfg_synth, out_uri: str, progress: bool = True, s3: S3Config | None = None) -> dict:
    """Write OUT/events/part-*.parquet, OUT/planted/part-*.parquet, OUT/planted_types.json, OUT/summary.json,
    and with synth.knobs.enabled OUT/merchant_knobs.json ({"reference": knobs, "merchants": {id: knobs},
    "world": this SynthConfig}).

    Shards are generated and written one per worker at a time, so memory does not grow with `buyers`.
    Existing part files under OUT/events and OUT/planted are removed first (a smaller run must not leave
    a larger run's shards behind).
    """
    cfg = as_synth(cfg_synth)
    check(cfg)
    t0 = time.perf_counter()
    n = num_shards(cfg)
    how = _executor(cfg, n)
    for sub in ("events", "planted"):
        fs, path = storage.resolve(storage.join_uri(out_uri, sub), s3)
        fs.create_dir(path, recursive=True)
        fs.delete_dir_contents(path, missing_dir_ok=True)
    with storage.open_output_stream(storage.join_uri(out_uri, "planted_types.json"), s3) as f:
        f.write(json.dumps(describe_types(cfg), indent=1).encode())
    # each merchant's knobs beside planted/, for the trace builder (store.merchant_overrides); a run
    # without knobs removes an earlier run's file rather than leave knobs its data does not have
    knobs_uri = storage.join_uri(out_uri, MERCHANT_KNOBS_FILE)
    if cfg.knobs.enabled:
        with storage.open_output_stream(knobs_uri, s3) as f:
            # the world's own config too: what true_effect needs to replay this data under other knobs
            record = {"reference": REFERENCE_KNOBS, "merchants": merchant_knobs(cfg), "world": asdict(cfg)}
            f.write(json.dumps(record, indent=1).encode())
    else:
        fs, path = storage.resolve(knobs_uri, s3)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)
    totals = {"buyers": 0, "histories": 0, "events": 0}
    bar = tqdm(total=n, unit="shard", desc="synthetic", disable=not progress)
    for counts in _run_shards(cfg, out_uri, s3, how):
        for k in totals:
            totals[k] += counts[k]
        bar.update(1)
        bar.set_postfix(events=f"{totals['events']:,}")
    bar.close()
    wall = time.perf_counter() - t0
    summary = {
        **totals,
        "shards": n,
        "wall_s": round(wall, 3),
        "events_per_s": round(totals["events"] / wall, 1),
        "buyers_per_s": round(totals["buyers"] / wall, 1),
        "executor": how,
        "out": out_uri,
        "seed": cfg.seed,
    }
    with storage.open_output_stream(storage.join_uri(out_uri, "summary.json"), s3) as f:
        f.write(json.dumps(summary, indent=1).encode())
    return summary


def run_synthetic(cfg) -> dict:
    """The pipeline's `synthetic` stage (configs/planted.yaml): the planted world into
    <storage_path>/synthetic (or synth.out), which preprocess then reads as canonical events."""
    from omegaconf import OmegaConf

    out = cfg.synth.out or storage.join_uri(cfg.storage_path, "synthetic")
    return generate(cfg.synth, out, progress=bool(cfg.progress), s3=OmegaConf.to_object(cfg.data.s3))


__all__ = [
    "KNOB_NAMES",
    "MERCHANT_KNOBS_FILE",
    "PLANTED_SCHEMA",
    "REFERENCE_KNOBS",
    "TYPE_LIBRARY",
    "WHATIF_OUTCOMES",
    "KnobResponse",
    "TypeSpec",
    "SynthError",
    "World",
    "active_types",
    "build_world",
    "describe_types",
    "draw_knobs",
    "expected_effect",
    "generate",
    "generate_shard",
    "knob_factors",
    "merchant_knobs",
    "num_shards",
    "population_expectations",
    "true_effect",
    "type_expectations",
    "write_shard",
]
