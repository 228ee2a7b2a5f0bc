"""Per-type behaviour profiles and their short prose descriptions (the prompt-persona baseline).

`TypeStats` accumulates, batch by batch, the sums behind each type's profile from the per-history
statistics the assignment actors emit (`history_stats`). `profiles` turns them into one row per code —
every code of the codebook, used or not, because the persona stage needs one description per row
of the codebook — and `describe` writes each type's description relative to the whole population.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from simpersona.vq.features import FeatureSpec

STAT_COLUMNS: tuple[str, ...] = ("purchase", "cart_abandon", "events_per_session", "events", "has_cart",
                                 "has_favorite", "price_sum", "price_n", "repeat_n")
PROFILE_FIELDS: tuple[str, ...] = ("share", "histories", "conversion", "cart_abandon_rate", "events_per_session",
                                   "events", "cart_rate", "favorite_rate", "price_level", "repeat_share")


def history_stats(arrays: dict[str, np.ndarray], spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Per-history statistics behind the profiles (from the feature arrays of one batch)."""
    ev = arrays["seq_event"]
    real = ev > 0

    def has(event: str) -> np.ndarray:
        if event not in spec.events:
            return np.zeros(len(ev), np.int8)
        return (ev == spec.token(event)).any(1).astype(np.int8)

    price = arrays["seq_price"]
    priced = real & (price > 0)
    return {
        "purchase": arrays["label_purchase"].astype(np.int8),
        "cart_abandon": arrays["label_cart_abandon"].astype(np.int8),
        "events_per_session": np.expm1(arrays["label_depth"]).astype(np.float32),
        "events": real.sum(1).astype(np.int16),
        "has_cart": has("cart"),
        "has_favorite": has("favorite"),
        # price buckets scaled to 0..1 (0 = the merchant's cheapest bucket)
        "price_sum": ((price - 1) * priced).sum(1).astype(np.float32) / max(spec.price_buckets - 1, 1),
        "price_n": priced.sum(1).astype(np.int16),
        "repeat_n": (((arrays["seq_flags"] & 1) > 0) & real).sum(1).astype(np.int16),
    }


class TypeStats:
    """Sums per type over all histories seen, plus planted-type counts when the data carry them."""

    def __init__(self, k: int):
        self.k = k
        self.n = np.zeros(k)
        self.sums = {c: np.zeros(k) for c in STAT_COLUMNS}
        self.planted: dict[int, np.ndarray] = {}

    def update(self, batch: pa.Table) -> None:
        t = batch["type_id"].to_numpy()
        self.n += np.bincount(t, minlength=self.k)[: self.k]
        for c in STAT_COLUMNS:
            self.sums[c] += np.bincount(t, weights=batch[c].to_numpy().astype(np.float64), minlength=self.k)[: self.k]
        if "planted_type" in batch.column_names:
            p = batch["planted_type"].to_numpy()
            for planted in np.unique(p[p >= 0]):
                counts = np.bincount(t[p == planted], minlength=self.k)[: self.k]
                self.planted[int(planted)] = self.planted.get(int(planted), np.zeros(self.k)) + counts

    def population(self) -> dict[str, float]:
        total = {c: float(v.sum()) for c, v in self.sums.items()}
        return _profile(float(self.n.sum()), float(self.n.sum()), total)

    def profiles(self) -> list[dict]:
        total = float(self.n.sum())
        pop = self.population()
        out = []
        for code in range(self.k):
            p = {"type_id": code, **_profile(float(self.n[code]), total, {c: float(v[code]) for c, v in self.sums.items()})}
            if self.planted and self.n[code] > 0:
                best = max(self.planted, key=lambda t: self.planted[t][code])
                p["planted_majority"] = best
                p["planted_purity"] = float(self.planted[best][code] / self.n[code])
            p["description"] = describe(p, pop)
            out.append(p)
        return out


def _profile(n: float, total: float, s: dict[str, float]) -> dict:
    if n <= 0:
        return {"share": 0.0, "histories": 0, **{f: None for f in PROFILE_FIELDS[2:]}}
    return {
        "share": n / max(total, 1.0), "histories": int(n),
        "conversion": s["purchase"] / n, "cart_abandon_rate": s["cart_abandon"] / n,
        "events_per_session": s["events_per_session"] / n, "events": s["events"] / n,
        "cart_rate": s["has_cart"] / n, "favorite_rate": s["has_favorite"] / n,
        "price_level": s["price_sum"] / s["price_n"] if s["price_n"] > 0 else None,
        "repeat_share": s["repeat_n"] / s["events"] if s["events"] > 0 else None,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 or x == 0 else f"{100 * x:.1f}%"


def describe(p: dict, pop: dict) -> str:
    """Two or three sentences on how this type differs from the whole population."""
    if not p["histories"]:
        return "Unused type: no buyer history was assigned to this code."
    conv, base = p["conversion"], max(pop["conversion"] or 0.0, 1e-9)
    rel = conv / base
    if rel >= 2:
        buy = "Converts often"
    elif rel >= 1.25:
        buy = "Converts more than most"
    elif rel <= 0.5:
        buy = "Rarely buys"
    elif rel <= 0.8:
        buy = "Buys less than most"
    else:
        buy = "Buys about as often as most"
    eps, pop_eps = p["events_per_session"], pop["events_per_session"] or 0.0
    depth = "long" if eps >= 1.5 * pop_eps else "short" if eps <= 0.67 * pop_eps else "typical"
    s = [f"{_pct(p['share'])} of buyer histories. {buy}: {_pct(conv)} make a purchase "
         f"(population {_pct(pop['conversion'])}), with {depth} sessions of about {eps:.1f} events "
         f"over {p['events']:.1f} events in all."]
    habits = []
    if p["cart_rate"] >= max(0.05, 1.5 * (pop["cart_rate"] or 0.0)):
        habits.append(f"uses the cart ({_pct(p['cart_rate'])} of histories"
                      + (f", {_pct(p['cart_abandon_rate'])} leave it without buying)" if p["cart_abandon_rate"] else ")"))
    if p["favorite_rate"] >= max(0.05, 1.5 * (pop["favorite_rate"] or 0.0)):
        habits.append(f"saves favourites ({_pct(p['favorite_rate'])})")
    if p["repeat_share"] is not None and pop["repeat_share"] and p["repeat_share"] >= 1.5 * pop["repeat_share"]:
        habits.append(f"returns to products already seen ({_pct(p['repeat_share'])} of events)")
    level, pop_level = p["price_level"], pop["price_level"]
    if level is not None and pop_level is not None and not math.isnan(level):
        if level >= pop_level + 0.1:
            habits.append("prefers the merchant's pricier products")
        elif level <= pop_level - 0.1:
            habits.append("prefers the merchant's cheaper products")
    if habits:
        s.append(habits[0][0].upper() + habits[0][1:] + ("; " + "; ".join(habits[1:]) if habits[1:] else "") + ".")
    return " ".join(s)
