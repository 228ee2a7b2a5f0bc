"""Offline evaluation of a persona model on held-out trace steps, and its persona sensitivity.

  accuracy / NLL   argmax over the allowed actions == the action taken; -log p(action | allowed)
  per-type JS      for each type, the model's action distribution over action verbs (its probability
                   mass summed per verb, averaged over the type's held-out steps) against the verbs the
                   type's buyers actually chose there; Jensen-Shannon divergence, base 2, in [0, 1]
  per-page JS      the same per page kind (home, product, checkout, ...): calibration where a funnel
                   is decided; e.g. a model that leaves checkout pages, which real buyers never do,
                   shows it here long before a simulation's conversion does
  sensitivity      sessions rolled out on the storefront model (simpersona.pages.shop.Shop) with
                   actions *sampled* from the model under each persona token; the share of sessions
                   that place an order per type, Spearman-correlated with the types' real share
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from simpersona.pages.observation import action_verb, allowed_actions, render
from simpersona.pages.shop import Visit
from simpersona.persona.examples import persona_of
from simpersona.persona.scoring import ActionScorer, ScoreRequest, sample
from simpersona.store.shops import ShopSet


def session_conversion(df: pd.DataFrame) -> pd.Series:
    """Share of sessions with a placed order, per type (index type_id or planted_type)."""
    key = "type_id" if "type_id" in df else "planted_type"
    per_session = df.assign(bought=df["action"] == "place_order").groupby(
        ["history_id", "session_idx"]).agg(bought=("bought", "any"), t=(key, "first"))
    return per_session.groupby("t")["bought"].mean()



def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p = np.asarray(p, dtype=np.float64) / max(np.sum(p), 1e-300)
    q = np.asarray(q, dtype=np.float64) / max(np.sum(q), 1e-300)
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def score_steps(scorer: ActionScorer, df: pd.DataFrame, variant: str, n_types: int,
                descriptions: list[str] | None, batch: int = 32, progress: bool = False) -> list[list[float]]:
    personas = persona_of(df, variant, n_types, descriptions)
    reqs = [ScoreRequest(p, o, list(h), list(a))
            for p, o, h, a in zip(personas, df["observation"], df["history"], df["allowed"])]
    out: list[list[float]] = []
    for i in tqdm(range(0, len(reqs), batch), desc=f"score {variant}", disable=not progress, leave=False):
        out += scorer.score(reqs[i: i + batch])
    return out


def step_metrics(df: pd.DataFrame, logprobs: list[list[float]], min_type_steps: int = 1) -> dict:
    """Accuracy, NLL and per-type verb-distribution JS of scored held-out steps."""
    correct, nll = [], []
    verbs = sorted({action_verb(a) for allowed in df["allowed"] for a in allowed})
    col = {v: i for i, v in enumerate(verbs)}
    model_mass = np.zeros((len(df), len(verbs)))
    real = np.zeros((len(df), len(verbs)))
    for i, (allowed, action, lp) in enumerate(zip(df["allowed"], df["action"], logprobs)):
        allowed = list(allowed)
        j = allowed.index(action)
        correct.append(int(np.argmax(lp)) == j)
        nll.append(-lp[j])
        for a, x in zip(allowed, lp):
            model_mass[i, col[action_verb(a)]] += np.exp(x)
        real[i, col[action_verb(action)]] = 1.0
    page = df["observation"].str.extract(r"^page: (\w+)", expand=False).fillna("?").to_numpy()
    hits = np.asarray(correct)
    by_page = {str(k): float(hits[page == k].mean()) for k in np.unique(page)}
    js_page = {str(k): js_divergence(model_mass[page == k].mean(0), real[page == k].mean(0)) for k in np.unique(page)}
    types = df["type_id"].to_numpy()
    js = {}
    for k in np.unique(types):
        rows = types == k
        if rows.sum() >= min_type_steps:
            js[int(k)] = js_divergence(model_mass[rows].mean(0), real[rows].mean(0))
    return {"acc": float(np.mean(correct)), "nll": float(np.mean(nll)), "n": len(df), "acc_by_page": by_page,
            "js_per_page": js_page, "js_per_type": js,
            "js_mean": float(np.mean(list(js.values()))) if js else float("nan")}


def rollout_conversion(scorer: ActionScorer, personas: list, merchants: list[list[str]], store_cfg: dict,
                       n_sessions: int, max_steps: int, temperature: float, seed: int,
                       progress: bool = False, shop_factory: Callable | None = None) -> list[float]:
    """Share of sampled sessions that place an order, for each persona (merchants[i] to draw from)."""
    if shop_factory is None:  # the live storefront's shops: same catalogs (store.catalog_path) and knobs
        shop_factory = ShopSet(store_cfg, merchants=sorted({m for pool in merchants for m in pool})).shop
    shops: dict = {}
    sessions = []  # [persona index, shop, visit, history, rng, bought]
    for i, pool in enumerate(merchants):
        rng = np.random.default_rng([seed, i])
        for j in range(n_sessions):
            m = pool[int(rng.integers(len(pool)))]
            shop = shops.setdefault(m, shop_factory(m))
            sessions.append([i, shop, Visit(m), [], np.random.default_rng([seed, i, j]), False])
    for _ in tqdm(range(max_steps), desc="rollouts", disable=not progress, leave=False):
        active = [s for s in sessions if not s[2].ended]
        if not active:
            break
        states = [s[1].page_of(s[2]) for s in active]
        reqs = [ScoreRequest(personas[s[0]], render(st), list(s[3]), allowed_actions(st))
                for s, st in zip(active, states)]
        for s, req, lp in zip(active, reqs, scorer.score(reqs)):
            action = req.allowed[sample(lp, temperature, s[4])]
            s[2], _ = s[1].apply(s[2], action, req.allowed)
            s[3].append(action)
            s[5] = s[5] or action == "place_order"
    bought = np.zeros(len(personas))
    for s in sessions:
        bought[s[0]] += s[5]
    return (bought / n_sessions).tolist()


def type_sensitivity(scorer: ActionScorer, heldout: pd.DataFrame, all_steps: pd.DataFrame, n_types: int,
                     store_cfg: dict, n_sessions: int, max_steps: int, temperature: float, seed: int,
                     progress: bool = False, shift: int = 0) -> dict:
    """Model vs real per-type session conversion and their Spearman correlation. With `shift`, each type's
    sessions carry the token of type (k + shift) mod K instead (the mismatch peer: same merchants, same
    seeds, a wrong persona)."""
    real = session_conversion(all_steps)
    types = [int(k) for k in real.index if 0 <= int(k) < n_types]
    pools = []
    for k in types:
        rows = heldout[heldout["type_id"] == k]
        pool = rows if len(rows) else all_steps[all_steps["type_id"] == k]
        pools.append(sorted(pool["merchant_id"].astype(str).unique()))
    personas = [(k + shift) % n_types for k in types]
    model = rollout_conversion(scorer, personas, pools, store_cfg, n_sessions, max_steps, temperature, seed, progress)
    real_rates = [float(real[k]) for k in types]
    rho = float(spearmanr(model, real_rates).statistic) if len(types) > 1 and len(set(real_rates)) > 1 else float("nan")
    return {"types": types, "model": model, "real": real_rates, "spearman": rho,
            "ideal": ideal_rollout_spearman(real_rates, n_sessions, seed)}


def ideal_rollout_spearman(real_rates: list[float], n_sessions: int, seed: int, repeats: int = 200) -> dict | None:
    """The Spearman that a policy converting exactly at each type's real rate reaches with `n_sessions`
    rollouts per type: what sampling noise alone leaves of a perfect ordering (types of near-equal rates
    are often drawn in the wrong order). Mean and 95% range over `repeats` draws; None when no draw
    can be ranked."""
    p = np.asarray(real_rates, dtype=float)
    if len(p) < 2 or len(set(real_rates)) < 2 or n_sessions <= 0:
        return None
    rng = np.random.default_rng([seed, 23])
    rhos = []
    for _ in range(repeats):
        draw = rng.binomial(n_sessions, p)
        if len(set(draw.tolist())) > 1:  # a draw of equal rates has no ordering
            rhos.append(float(spearmanr(draw, p).statistic))
    if not rhos:
        return None
    return {"mean": float(np.mean(rhos)), "lo": float(np.quantile(rhos, 0.025)), "hi": float(np.quantile(rhos, 0.975)),
            "rollouts_per_type": int(n_sessions)}
