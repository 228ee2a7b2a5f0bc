"""Planted persona traces: sessions walked on the storefront model by buyer types with known rules.

Each type has one persona-conditional rule that the page and the recent actions do not reveal: what it
does first on a product page (buy now, add to cart, favourite, open a related product, go back), what
it does next on that page, and how readily it goes through cart and checkout. Listing and home pages
are type-blind (a random product is opened), so before its first product decision a type is invisible
to a model without the persona token. Conversion therefore differs by type, which the persona
sensitivity check (simpersona.persona.evaluate) must recover.

`write_planted_run` writes the contract artifacts the finetune job reads (preprocess/traces,
assign/types.parquet, assign/type_profiles.json, vqvae/codebook.npy, a random codebook), so tests,
benchmarks and smoke runs exercise the job exactly as on real data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simpersona.pages.observation import action_verb, allowed_actions, render
from simpersona.pages.shop import Shop, Visit
from simpersona.persona.evaluate import session_conversion
from simpersona.store.shops import ShopSet


@dataclass(frozen=True)
class PlantedType:
    name: str
    product_action: str  # first action on a product page (the planted rule)
    then: str  # next action on the same product page
    checkout: float  # propensity to go on through cart and checkout (0..1)
    description: str


PLANTED_TYPES = (
    PlantedType("decisive", "buy_now", "view_cart", 0.9,
                "decisive buyer: on a product page buys it right away and completes the checkout"),
    PlantedType("cart_filler", "add_to_cart", "view_cart", 0.6,
                "adds the product to the cart, looks at the cart and often checks out"),
    PlantedType("collector", "favorite", "back", 0.35,
                "favourites products and goes back to browsing; sometimes buys"),
    PlantedType("explorer", "open 1", "back", 0.2,
                "hops to the first related product, browses a lot, rarely buys"),
    PlantedType("abandoner", "add_to_cart", "leave", 0.25,
                "adds to cart and then leaves the shop; abandons carts"),
    PlantedType("window_shopper", "back", "leave", 0.03,
                "looks at a product and goes back to the list; almost never buys"),
)


def planted_types(n_types: int) -> list[PlantedType]:
    """n types; beyond the six archetypes the rules repeat with other checkout propensities."""
    out = []
    for k in range(n_types):
        t = PLANTED_TYPES[k % len(PLANTED_TYPES)]
        if k >= len(PLANTED_TYPES):
            c = float(np.clip(t.checkout * (0.5 + 0.25 * (k // len(PLANTED_TYPES))), 0.01, 0.95))
            t = PlantedType(f"{t.name}_{k}", t.product_action, t.then, c, f"{t.description} (variant {k})")
        out.append(t)
    return out


def action_weights(t: PlantedType, state, history: list[str], allowed: list[str], rule_p: float) -> np.ndarray:
    """Unnormalised probabilities of each allowed action for a buyer of type t."""
    last = history[-1] if history else ""
    w = np.zeros(len(allowed))
    for i, a in enumerate(allowed):
        v = action_verb(a)
        if state.kind in ("home", "listing", "search"):
            w[i] = {"open": 1.0, "next_page": 0.4, "category": 0.15, "search": 0.1, "back": 0.3,
                    "view_cart": 2.0 * t.checkout if state.cart_count else 0.05, "leave": 0.4}.get(v, 0.0)
        elif state.kind == "cart":
            w[i] = {"checkout": 3.0 * t.checkout, "back": 1.0 - t.checkout, "leave": 1.0 - t.checkout,
                    "remove": 0.05}.get(v, 0.0)
        elif state.kind == "checkout":
            w[i] = {"continue": 4.0 * t.checkout, "place_order": 4.0 * t.checkout, "back": 1.0 - t.checkout}.get(v, 0.0)
        elif state.kind == "confirmation":
            w[i] = {"continue_shopping": 0.2, "leave": 1.0}.get(v, 0.0)
        else:  # product page: the planted rule
            w[i] = 0.2
    if state.kind == "product":
        arrived = last.startswith("open")
        rule = t.product_action if arrived else t.then
        if rule in allowed:
            j = allowed.index(rule)
            others = w.sum() - w[j]
            w[j] = rule_p / (1 - rule_p) * others
    return w


def walk_history(shop: Shop, t: PlantedType, n_sessions: int, max_steps: int, rule_p: float,
                 rng: np.random.Generator) -> list[dict]:
    rows = []
    for s in range(n_sessions):
        visit, history = Visit(shop.merchant_id), []
        for step in range(max_steps):
            state = shop.page_of(visit)
            allowed = allowed_actions(state)
            w = action_weights(t, state, history, allowed, rule_p)
            action = allowed[int(rng.choice(len(allowed), p=w / w.sum()))]
            visit, logged = shop.apply(visit, action, allowed)
            rows.append({"session_idx": s, "step": step, "observation": render(state), "allowed": allowed,
                         "action": action, "event": logged[0].event if logged else ""})
            history.append(action)
            if visit.ended:
                break
    return rows


def planted_traces(n_histories: int, n_types: int, store_cfg: dict, seed: int = 0, merchants: int = 4,
                   max_steps: int = 20, rule_p: float = 0.8) -> pd.DataFrame:
    """Trace rows (contracts.md columns) of n_histories planted histories, types drawn uniformly."""
    rng = np.random.default_rng(seed)
    types = planted_types(n_types)
    shop_set = ShopSet(store_cfg, merchants=[f"m{j}" for j in range(merchants)])
    shops = [shop_set.shop(m) for m in shop_set.merchants]
    rows = []
    for h in range(n_histories):
        k = int(rng.integers(n_types))
        shop = shops[int(rng.integers(merchants))]
        hid = f"b{h}|{shop.merchant_id}"
        for r in walk_history(shop, types[k], 1 + int(rng.random() < 0.4), max_steps, rule_p, rng):
            rows.append({"history_id": hid, "buyer_id": f"b{h}", "merchant_id": shop.merchant_id,
                         "session_id": f"{hid}|s{r['session_idx']}", **r, "planted_type": k})
    df = pd.DataFrame(rows)
    df["session_idx"] = df["session_idx"].astype(np.int32)
    df["step"] = df["step"].astype(np.int32)
    df["planted_type"] = df["planted_type"].astype(np.int32)
    return df


def write_planted_run(run_dir: str | Path, n_histories: int = 600, n_types: int = 6, codebook_dim: int = 8,
                      store_cfg: dict | None = None, seed: int = 0, **kw) -> dict:
    """Write the finetune job's inputs for planted data under run_dir; returns their paths."""
    from simpersona.store.config import StoreConfig

    store = dict(store_cfg or asdict(StoreConfig()))
    run = Path(run_dir)
    df = planted_traces(n_histories, n_types, store, seed=seed, **kw)
    paths = {"traces": run / "preprocess" / "traces", "types": run / "assign" / "types.parquet",
             "profiles": run / "assign" / "type_profiles.json", "codebook": run / "vqvae" / "codebook.npy"}
    for p in paths.values():
        (p if p.suffix == "" else p.parent).mkdir(parents=True, exist_ok=True)
    df.to_parquet(paths["traces"] / "part-00000.parquet", index=False)
    hist = df.drop_duplicates("history_id")[["history_id", "buyer_id", "merchant_id", "planted_type"]]
    hist = hist.rename(columns={"planted_type": "type_id"})
    hist["kmeans_type_id"] = hist["type_id"]
    hist.to_parquet(paths["types"], index=False)
    conv = session_conversion(df)
    share = hist["type_id"].value_counts(normalize=True)
    profiles = [{"type_id": k, "name": t.name, "share": float(share.get(k, 0.0)),
                 "conversion": float(conv.get(k, 0.0)), "description": t.description}
                for k, t in enumerate(planted_types(n_types))]
    paths["profiles"].write_text(json.dumps(profiles, indent=1))
    np.save(paths["codebook"], np.random.default_rng(seed + 7).normal(size=(n_types, codebook_dim)).astype(np.float32))
    return {k: str(v) for k, v in paths.items()}
