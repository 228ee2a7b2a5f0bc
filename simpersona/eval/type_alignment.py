"""Type-level alignment: per buyer type, simulated against real behaviour, pooled over held-out storefronts.

A storefront-level figure can be right for the wrong reason (one average buyer at the right average
rate). This one asks whether each buyer type behaves like that type's real buyers, which is the whole
point of a persona token.

Real side: the histories of the held-out storefronts' rates half, each under its assigned type. Simulated
side: each agent under the type it was drawn as. Population draws depend only on (seed, merchant, agent
index), never on the persona mode, so every mode's agent `m-00007` is the main run's agent `m-00007`: its
type is the main run's type_id, whether the mode gave it that token (vq), another one (mismatch), prose
(prompt) or nothing (none). The k-means baseline draws k-means types, so it is grouped by k-means type
on both sides. With a planted world, agents also count under the planted type their code stands for
(the planted type most of the code's histories carry).

Per type, through the same metric code as per storefront (simpersona.eval.metrics): buyer conversion,
cart rate, bounce rate, product pages per session, events per session. Across the types that have at
least `min_agents` visiting agents and `min_real` real histories: the Spearman and the mean ARA of each.
Per type and page kind: the JS divergence between the verbs simulated agents chose there (trajectories)
and the verbs that type's real buyers took there (their replayed traces).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from simpersona.eval import alignment, metrics

TYPE_RATES: tuple[str, ...] = (
    "buyer_conversion", "buyer_cart_rate", "bounce_rate", "pages_per_session", "events_per_session",
)
KEY = ("merchant_id", "buyer_id")


def type_metrics(events: pl.DataFrame, typed: pl.DataFrame, column: str = "type_id") -> pl.DataFrame:
    """Every metric of metrics.RATE_NAMES per type: `typed` maps (merchant_id, buyer_id) to `column`.
    Events of untyped buyers are left out."""
    tagged = events.join(typed.select(*KEY, pl.col(column).cast(pl.Int64).alias("type_id")), on=list(KEY),
                         how="inner")
    if tagged.height == 0:
        return pl.DataFrame(schema={"type_id": pl.Int64, "buyers": pl.Int64, **{r: pl.Float64 for r in TYPE_RATES}})
    return metrics.merchant_metrics(tagged, by=("type_id",))


def verb_counts(page_kinds: Iterable[str], actions: Iterable[str], types: Iterable[int]) -> pl.DataFrame:
    """type_id, page, verb, n: how often each action verb was chosen on each page kind, per type."""
    from simpersona.pages.observation import action_verb

    frame = pl.DataFrame({"type_id": pl.Series(list(types), dtype=pl.Int64), "page": list(page_kinds),
                          "verb": [action_verb(a) for a in actions]})
    return frame.group_by("type_id", "page", "verb").agg(n=pl.len().cast(pl.Float64))


def page_kind(observations: pl.Series) -> pl.Series:
    """The page kind of a rendered observation's first line (`page: <kind> | ...`)."""
    return observations.str.extract(r"^page: (\w+)", 1).fill_null("?")


def action_js(sim: pl.DataFrame, real: pl.DataFrame, min_steps: int) -> dict[int, dict]:
    """Per type: JS per page kind between simulated and real verb counts (each side with >= min_steps
    steps on that page), and their mean weighted by the real steps per page kind."""
    out: dict[int, dict] = {}
    joined = sim.join(real, on=["type_id", "page", "verb"], how="full", coalesce=True, suffix="_real").fill_null(0.0)
    for (k,), grp in joined.group_by("type_id"):
        pages, weights = {}, {}
        for (page,), g in grp.group_by("page"):
            s, r = g["n"].to_numpy(), g["n_real"].to_numpy()
            if s.sum() >= min_steps and r.sum() >= min_steps:
                pages[str(page)] = alignment.js_divergence(s, r)
                weights[str(page)] = float(r.sum())
        if pages:
            total = sum(weights.values())
            out[int(k)] = {"js": sum(pages[p] * weights[p] for p in pages) / total,
                           "per_page": dict(sorted(pages.items()))}
    return out


def _finite(x) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def compare_types(sim: pl.DataFrame, real: pl.DataFrame, min_agents: int, min_real: int,
                  js: dict[int, dict] | None = None) -> dict:
    """Spearman and mean ARA across types of each TYPE_RATES metric, and the per-type rows.

    sim / real: `type_metrics` tables. A type counts when it has >= min_agents simulated visiting agents
    and >= min_real real histories; the rows list every type either side has."""
    both = real.select("type_id", pl.col("buyers").alias("real_buyers"), *[pl.col(r).alias(f"real_{r}") for r in TYPE_RATES]).join(
        sim.select("type_id", pl.col("buyers").alias("sim_buyers"), *[pl.col(r).alias(f"sim_{r}") for r in TYPE_RATES]),
        on="type_id", how="full", coalesce=True).sort("type_id")
    both = both.with_columns(pl.col("real_buyers").fill_null(0), pl.col("sim_buyers").fill_null(0))
    used = both.filter((pl.col("sim_buyers") >= min_agents) & (pl.col("real_buyers") >= min_real))
    out: dict = {"types": used["type_id"].to_list(), "n_types": used.height,
                 "min_agents": min_agents, "min_real": min_real}
    for r in TYPE_RATES:
        s, t = used[f"sim_{r}"].to_numpy().astype(float), used[f"real_{r}"].to_numpy().astype(float)
        short = r.replace("buyer_", "").replace("_rate", "")
        out[f"spearman_{short}"] = alignment.spearman(s, t)
        out[f"ara_{short}"] = float(np.mean(alignment.ara(s, t))) if used.height else None
    rows = both.to_dicts()
    if js is not None:
        for row in rows:
            row["action_js"] = js.get(int(row["type_id"]), {}).get("js")
            row["action_js_per_page"] = js.get(int(row["type_id"]), {}).get("per_page")
        vals = [js[k]["js"] for k in out["types"] if k in js]
        out["action_js_mean"] = float(np.mean(vals)) if vals else None
        out["action_js_types"] = len(vals)
    out["rows"] = [{k: _finite(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    return out


def ideal_at_sample_size(types_half: pl.DataFrame, rates_half: pl.DataFrame, sim_agents: dict[int, int],
                         min_agents: int, min_real: int, repeats: int, seed: int) -> dict:
    """The type-level conversion Spearman and ARA that an ideal simulator reaches with the simulation's
    visiting agents per type: agents convert at the type's real rate (estimated from the types half),
    and are scored against the rates half. Mean and 95% range over `repeats` draws."""
    rates = types_half.select("type_id", "buyer_conversion").join(
        rates_half.select("type_id", pl.col("buyers").alias("real_buyers"), pl.col("buyer_conversion").alias("real")),
        on="type_id", how="inner")
    rates = rates.filter(pl.col("real_buyers") >= min_real)
    ks = [k for k in rates["type_id"].to_list() if sim_agents.get(int(k), 0) >= min_agents]
    rates = rates.filter(pl.col("type_id").is_in(ks)).sort("type_id")
    if rates.height < 3 or repeats <= 0:
        return {"spearman_conversion": None, "ara_conversion": None, "n_types": rates.height}
    rng = np.random.default_rng([seed, 17])
    n = np.array([sim_agents[int(k)] for k in rates["type_id"]])
    p, real = rates["buyer_conversion"].to_numpy(), rates["real"].to_numpy()
    rho, ara = [], []
    for _ in range(repeats):
        draw = rng.binomial(n, p) / n
        r = alignment.spearman(draw, real)
        if r is not None:
            rho.append(r)
        ara.append(float(np.mean(alignment.ara(draw, real))))

    def summary(v):
        return {"mean": float(np.mean(v)), "lo": float(np.quantile(v, 0.025)), "hi": float(np.quantile(v, 0.975))} if v else None

    return {"spearman_conversion": summary(rho), "ara_conversion": summary(ara), "n_types": rates.height}


def majority_map(typed: pl.DataFrame, code: str = "type_id", truth: str = "planted_type") -> dict[int, int]:
    """code -> the truth label most of its rows carry (ties: the smaller label)."""
    counts = typed.group_by(code, truth).agg(n=pl.len()).sort([code, "n", truth], descending=[False, True, False])
    first = counts.group_by(code, maintain_order=True).first()
    return dict(zip(first[code].cast(pl.Int64).to_list(), first[truth].cast(pl.Int64).to_list()))


# ---- the evaluation's entry point ---------------------------------------------------------------

def real_typed(types: pl.DataFrame, events: pl.DataFrame, column: str) -> pl.DataFrame:
    """(merchant_id, buyer_id, column) of the buyers in `events`; whole-buyer types (merchant "*")
    count at every merchant the buyer visited."""
    if types.height and (types["merchant_id"] == "*").all():
        pairs = events.select(*KEY).unique()
        return pairs.join(types.select("buyer_id", column), on="buyer_id", how="inner")
    return types.select(*KEY, column)


def real_verbs(traces_dir, buyers: pl.DataFrame, typed: pl.DataFrame, column: str) -> pl.DataFrame | None:
    """Verb counts of the replayed traces of `buyers` (merchant_id, buyer_id), per type of `column`."""
    from pathlib import Path

    if not Path(traces_dir).exists():
        return None
    tr = (pl.scan_parquet(f"{traces_dir}/**/*.parquet").select(*KEY, "observation", "action")
          .join(buyers.lazy(), on=list(KEY), how="semi").collect())
    tr = tr.join(typed.select(*KEY, pl.col(column).cast(pl.Int64).alias("type_id")), on=list(KEY), how="inner")
    return verb_counts(page_kind(tr["observation"]), tr["action"], tr["type_id"])


def sim_verbs(run, agent_types: pl.DataFrame) -> pl.DataFrame | None:
    traj = run.trajectories()
    if traj is None or traj.height == 0:
        return None
    traj = traj.join(agent_types.select("agent_id", "type_id"), on="agent_id", how="inner")
    return verb_counts(page_kind(traj["observation"]), traj["action"], traj["type_id"])


def evaluate_types(runs: dict, main: str, events: pl.DataFrame, split, types: pl.DataFrame | None,
                   traces_dir, tcfg, seed: int) -> dict:
    """metrics.json `type_alignment`: one entry per simulation (main and baselines), each with
    spearman_conversion, ara_conversion, the other rates, action JS, the per-type rows, and the
    real-vs-real and ideal-simulator figures of the same types beside them."""
    from simpersona.eval.holdout import HALF_RATES, HALF_TYPES, half_events

    if types is None or main not in runs:
        return {}
    rates_ev, types_ev = half_events(events, split, HALF_RATES), half_events(events, split, HALF_TYPES)
    rates_buyers = rates_ev.select(*KEY).unique()
    main_agents = runs[main].agents.select("agent_id", "merchant_id", pl.col("type_id").cast(pl.Int64))
    cols = {"type_id": "vq"} | ({"kmeans_type_id": "kmeans"} if "kmeans_type_id" in types.columns else {})
    real: dict[str, dict] = {}
    for col in cols:
        typed = real_typed(types, pl.concat([rates_ev.select(*KEY), types_ev.select(*KEY)]).unique(), col)
        real[col] = {"typed": typed, "rates": type_metrics(rates_ev, typed, col),
                     "types_half": type_metrics(types_ev, typed, col),
                     "verbs": real_verbs(traces_dir, rates_buyers, typed, col)}
    planted = None
    if "planted_type" in types.columns and (types["planted_type"] >= 0).any():
        code_to_planted = majority_map(types.filter(pl.col("planted_type") >= 0))
        typed = real_typed(types.filter(pl.col("planted_type") >= 0), rates_ev, "planted_type")
        planted = {"map": code_to_planted, "typed": typed, "rates": type_metrics(rates_ev, typed, "planted_type")}

    out: dict[str, dict] = {}
    for name, run in runs.items():
        col = "kmeans_type_id" if run.persona_mode == "kmeans" else "type_id"
        if col not in real:
            continue
        agents = (run.agents.select("agent_id", "merchant_id", pl.col("type_id").cast(pl.Int64)) if col != "type_id"
                  else run.agents.select("agent_id", "merchant_id").join(main_agents.drop("merchant_id"), on="agent_id"))
        sim_typed = agents.rename({"agent_id": "buyer_id"})
        sim = type_metrics(run.events, sim_typed)
        r = real[col]
        js = None
        sv = sim_verbs(run, agents)
        if sv is not None and r["verbs"] is not None:
            js = action_js(sv, r["verbs"], tcfg.js_min_steps)
        entry = compare_types(sim, r["rates"], tcfg.min_agents, tcfg.min_real, js)
        entry["typing"] = cols[col]
        entry["persona_mode"] = run.persona_mode
        visiting = dict(zip(sim["type_id"].to_list(), sim["buyers"].to_list()))
        real_vs_real = compare_types(r["types_half"], r["rates"], tcfg.min_real, tcfg.min_real)
        entry["real_vs_real"] = {k: v for k, v in real_vs_real.items() if k != "rows"}
        entry["ideal_at_sim_size"] = ideal_at_sample_size(r["types_half"], r["rates"], visiting, tcfg.min_agents,
                                                          tcfg.min_real, tcfg.ideal_repeats, seed)
        if planted is not None and col == "type_id":
            as_planted = sim_typed.with_columns(
                pl.col("type_id").replace_strict(planted["map"], default=-1, return_dtype=pl.Int64))
            p_sim = type_metrics(run.events, as_planted.filter(pl.col("type_id") >= 0))
            entry["planted"] = compare_types(p_sim, planted["rates"], tcfg.min_agents, tcfg.min_real)
        out[name] = entry
    return out
