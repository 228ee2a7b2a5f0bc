"""What a what-if should have found: the planted world's true effect of each variant, and how much each
knob a variant changes varied in the traces the policy learnt from.

Truth. A run whose synthetic stage drew store knobs per merchant (synth.knobs.enabled) is a planted
world with known responses: its generator replays the same buyers, sessions and random draws under the
variant's knobs (simpersona.data.synthetic.true_effect) at the what-if's merchants. A simulated agent
shops one session, so its outcomes are compared with the replay's per-session outcomes (SIM_TO_TRUE).
The simulated overall delta weights every merchant alike (the same agents at each), so the pooled true
effect here does too: the mean of the per-merchant effects, not the history-weighted pool.

Support. DIR/preprocess/storefront.json records the knobs of every merchant whose traces were replayed;
a knob with one value there gave the policy nothing to learn a response from, and a variant value
outside the values seen is an extrapolation. Both are flagged, not hidden.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import stats

from simpersona import manifest
from simpersona.data.storefront import STOREFRONT_FILE
from simpersona.store.shops import KNOB_NAMES

# simulated outcome (metrics.OUTCOMES) -> the planted world's per-session outcome it estimates
SIM_TO_TRUE = {"converted": "session_conversion", "product_pages": "session_product_views"}


def planted_world(run_dir: str | Path):
    """The SynthConfig of the run's synthetic stage when it drew per-merchant knobs, else None."""
    from simpersona.data.synthetic import as_synth

    m = manifest.read(Path(run_dir) / "synthetic")
    synth = ((m or {}).get("config") or {}).get("synth")
    if not synth or not (synth.get("knobs") or {}).get("enabled"):
        return None
    return as_synth(synth)


def merchant_variant_knobs(knobs: Mapping, merchant_id: str) -> dict:
    """The knobs a variant spec sets at one merchant: its top-level knobs, then its merchant_overrides."""
    top = {k: v for k, v in knobs.items() if k != "merchant_overrides"}
    return {**top, **dict((knobs.get("merchant_overrides") or {}).get(str(merchant_id), {}))}


def true_effects(world, knobs: Mapping, merchants: list[str]) -> dict:
    """{simulated outcome: {"effect", "se", "per_merchant": {m: {"baseline", "effect", "se"}}}} of one variant.

    Merchants whose knobs the variant leaves alone get an exact 0 without a replay."""
    from simpersona.data.synthetic import true_effect

    groups: dict[str, tuple[dict, list[str]]] = {}
    for m in merchants:
        k = merchant_variant_knobs(knobs, m)
        groups.setdefault(json.dumps(k, sort_keys=True), (k, []))[1].append(m)
    per_merchant: dict[str, dict] = {}
    for k, ms in groups.values():
        if not k:
            per_merchant.update({m: None for m in ms})
            continue
        replay = true_effect(world, k, ms)["per_merchant"]
        per_merchant.update({m: replay[m] for m in ms})
    out = {}
    for sim_name, true_name in SIM_TO_TRUE.items():
        rows = {m: ({"baseline": None, "effect": 0.0, "se": 0.0} if r is None else
                    {"baseline": r[true_name]["baseline"], "effect": r[true_name]["effect"], "se": r[true_name]["se"]})
                for m, r in per_merchant.items()}  # fmt: skip
        n = max(len(rows), 1)
        out[sim_name] = {
            "effect": sum(r["effect"] for r in rows.values()) / n,
            "se": math.sqrt(sum(r["se"] ** 2 for r in rows.values())) / n,
            "per_merchant": rows,
        }
    return out


def validity(simulated: Mapping, truth: Mapping, noise_se: float, ratio_band: tuple[float, float]) -> dict:
    """Per outcome: the simulated overall delta beside the true effect, and whether they agree.

    `simulated`: a deltas.json variant entry (overall / per_merchant paired deltas). A true effect is
    beyond noise when it exceeds `noise_se` of the replay's standard errors; for those the simulation
    passes when its sign is the true sign, its interval excludes 0 and simulated/true lies in `ratio_band`."""
    out = {}
    for o, t in truth.items():
        sim = simulated["overall"].get(o)
        if sim is None:
            continue
        beyond = abs(t["effect"]) > noise_se * t["se"] and t["effect"] != 0.0
        ratio = sim["delta"] / t["effect"] if t["effect"] else None
        sign = bool(beyond and np.sign(sim["delta"]) == np.sign(t["effect"]))
        ms = [m for m in t["per_merchant"] if m in simulated["per_merchant"]]
        sim_m = [simulated["per_merchant"][m][o]["delta"] for m in ms]
        true_m = [t["per_merchant"][m]["effect"] for m in ms]
        rho = None
        if len(ms) >= 3 and np.ptp(sim_m) > 0 and np.ptp(true_m) > 0:
            rho = float(stats.spearmanr(sim_m, true_m).statistic)
        within = ratio is not None and ratio_band[0] <= ratio <= ratio_band[1]
        out[o] = {
            "simulated": sim["delta"], "lo": sim["lo"], "hi": sim["hi"], "true": t["effect"], "true_se": t["se"],
            "beyond_noise": bool(beyond), "sign_agrees": sign, "interval_excludes_zero": bool(sim["significant"]),
            "ratio": ratio, "ratio_within_band": bool(within),
            "passed": bool(beyond and sign and sim["significant"] and within) if beyond else None,
            "merchant_spearman": rho, "merchants": len(ms),
        }  # fmt: skip
    return out


def agreement(variants: Mapping[str, Mapping]) -> dict:
    """Across variants and outcomes whose true effect is beyond noise: how often the simulation had the
    true sign with an interval excluding 0 (the peers' "direction accuracy"), and how often it passed."""
    cells = [v for var in variants.values() for v in (var.get("validity") or {}).values() if v["beyond_noise"]]
    if not cells:
        return {"cells": 0, "direction_accuracy": None, "passed": None}
    direction = sum(c["sign_agrees"] and c["interval_excludes_zero"] for c in cells)
    return {"cells": len(cells), "direction_accuracy": direction / len(cells),
            "sign_accuracy": sum(c["sign_agrees"] for c in cells) / len(cells),
            "passed": sum(bool(c["passed"]) for c in cells) / len(cells)}


def traced_knobs(run_dir: str | Path, store: Mapping) -> dict[str, dict] | None:
    """{merchant: its knobs} of every merchant whose traces were replayed (DIR/preprocess/storefront.json);
    `store` gives the knobs a merchant without overrides had. None when the record is missing or empty."""
    path = Path(run_dir) / "preprocess" / STOREFRONT_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    base = {k: record.get("knobs", {}).get(k, store.get(k)) for k in KNOB_NAMES}
    overrides = record.get("merchant_overrides") or {}
    merchants = sorted(set(record.get("catalogs") or {}) | set(overrides))
    if not merchants:
        return None
    return {m: {**base, **{k: v for k, v in (overrides.get(m) or {}).items() if k in KNOB_NAMES}} for m in merchants}


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    return math.isclose(float(a), float(b))


def training_variation(traced: Mapping[str, dict] | None, knobs: Mapping) -> dict:
    """For each knob a variant changes: the values it had across the traced merchants and whether the
    variant's value is supported (the knob varied and the value lies within what was seen)."""
    changed: dict[str, list] = {}
    for k, v in knobs.items():
        if k == "merchant_overrides":
            for per in (v or {}).values():
                for kk, vv in dict(per).items():
                    changed.setdefault(kk, []).append(vv)
        else:
            changed.setdefault(k, []).append(v)
    out = {}
    for knob, wanted in changed.items():
        if traced is None:
            out[knob] = {"merchants": 0, "values": {}, "varied": None, "supported": None,
                         "note": f"{knob}: no record of the training storefront (re-run preprocess)"}
            continue
        seen = [m[knob] for m in traced.values()]
        counts: dict[str, int] = {}
        for v in seen:
            counts[json.dumps(v)] = counts.get(json.dumps(v), 0) + 1
        varied = len(counts) > 1
        if all(isinstance(v, bool) for v in seen + wanted):
            inside = all(any(_same(w, s) for s in seen) for w in wanted)
        else:
            lo, hi = min(map(float, seen)), max(map(float, seen))
            inside = all(lo - 1e-9 <= float(w) <= hi + 1e-9 for w in wanted)
        shown = ", ".join(f"{v} ({n})" for v, n in sorted(counts.items()))
        if not varied:
            only = json.loads(next(iter(counts)))
            note = f"{knob}: no variation in the training traces (every merchant {only}): the effect is extrapolated"
        elif not inside:
            note = f"{knob}: {wanted} lies outside the values in the training traces ({shown}): the effect is extrapolated"
        else:
            note = f"{knob}: varied in the training traces ({shown} merchants)"
        out[knob] = {"merchants": len(seen), "values": counts, "varied": varied, "within_range": inside,
                     "supported": bool(varied and inside), "note": note}
    return out
