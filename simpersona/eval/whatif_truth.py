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

EVERY_MERCHANT = "*"  # traced_knobs' key when the record names no merchant: one setup for all of them
# simulated outcome (metrics.OUTCOMES) -> the planted world's per-session outcome it estimates
SIM_TO_TRUE = {"converted": "session_conversion", "product_pages": "session_product_views"}


def planted_world(run_dir: str | Path):
    """The SynthConfig of the world the run's traces came from when it drew per-merchant knobs, else None.

    Preprocess records it with the storefront (from the data's merchant_knobs.json), so a what-if on a
    mirror of a remote root finds it too; a run made before that record falls back to the synthetic
    stage's manifest."""
    from simpersona.data.synthetic import as_synth

    record = Path(run_dir) / "preprocess" / STOREFRONT_FILE
    synth = json.loads(record.read_text()).get("planted_world") if record.exists() else None
    if synth is None:
        m = manifest.read(Path(run_dir) / "synthetic")
        synth = ((m or {}).get("config") or {}).get("synth")
    if not synth or not (synth.get("knobs") or {}).get("enabled"):
        return None
    return as_synth(synth)


def merchant_variant_knobs(knobs: Mapping, merchant_id: str) -> dict:
    """The knobs a variant spec sets at one merchant: its top-level knobs, then its merchant_overrides."""
    top = {k: v for k, v in knobs.items() if k != "merchant_overrides"}
    return {**top, **dict((knobs.get("merchant_overrides") or {}).get(str(merchant_id), {}))}


def true_effects(world, knobs: Mapping, agents: Mapping[str, int], logged: Mapping[str, dict] | None = None) -> dict:
    """{simulated outcome: {"effect", "se", "ideal_se", "per_merchant": {m: {"baseline", "effect", "se"}}}}
    of one variant at the merchants of `agents` (merchant -> simulated agents there).

    `se` is the replay's standard error; `ideal_se` the one a perfectly faithful simulator would have with
    these agents (each merchant's paired variance, se^2 x histories, over its agents): the noise floor
    below which no simulation of this size can find an effect. Merchants whose knobs the variant leaves
    alone get an exact 0 without a replay. A knob the logged prices carry (`logged`, {merchant: {knob:
    value}}) is relative in the storefront, so the replay sets the merchant's own level times the variant's."""
    from simpersona.data.synthetic import true_effect

    groups: dict[str, tuple[dict, list[str]]] = {}
    for m in agents:
        carried = (logged or {}).get(m, {})
        k = {n: (_logged(n, carried[n], v) if n in carried else v) for n, v in merchant_variant_knobs(knobs, m).items()}
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
        rows = {m: ({"baseline": None, "effect": 0.0, "se": 0.0, "histories": 0} if r is None else
                    {"baseline": r[true_name]["baseline"], "effect": r[true_name]["effect"], "se": r[true_name]["se"],
                     "histories": r["histories"]})
                for m, r in per_merchant.items()}  # fmt: skip
        n = max(len(rows), 1)
        out[sim_name] = {
            "effect": sum(r["effect"] for r in rows.values()) / n,
            "se": math.sqrt(sum(r["se"] ** 2 for r in rows.values())) / n,
            "ideal_se": math.sqrt(sum(r["se"] ** 2 * r["histories"] / max(agents[m], 1) for m, r in rows.items())) / n,
            "per_merchant": rows,
        }
    return out


def validity(simulated: Mapping, truth: Mapping, noise_se: float, ratio_band: tuple[float, float]) -> dict:
    """Per outcome: the simulated overall delta beside the true effect, and whether they agree.

    `simulated`: a deltas.json variant entry (overall / per_merchant paired deltas). A true effect is
    beyond noise when it exceeds `noise_se` standard errors of an ideal simulator with the same agents
    (true_effects' ideal_se; an effect below that no simulation of this size finds, however faithful) and
    of the replay; for those the simulation passes when its sign is the true sign, its interval excludes
    0 and simulated/true lies in `ratio_band`."""
    out = {}
    for o, t in truth.items():
        sim = simulated["overall"].get(o)
        if sim is None:
            continue
        beyond = abs(t["effect"]) > noise_se * max(t["se"], t["ideal_se"]) and t["effect"] != 0.0
        ratio = sim["delta"] / t["effect"] if t["effect"] else None
        sign = bool(t["effect"] != 0.0 and np.sign(sim["delta"]) == np.sign(t["effect"]))
        ms = [m for m in t["per_merchant"] if m in simulated["per_merchant"]]
        sim_m = [simulated["per_merchant"][m][o]["delta"] for m in ms]
        true_m = [t["per_merchant"][m]["effect"] for m in ms]
        rho = None
        if len(ms) >= 3 and np.ptp(sim_m) > 0 and np.ptp(true_m) > 0:
            rho = float(stats.spearmanr(sim_m, true_m).statistic)
        within = ratio is not None and ratio_band[0] <= ratio <= ratio_band[1]
        out[o] = {
            "simulated": sim["delta"], "lo": sim["lo"], "hi": sim["hi"], "true": t["effect"], "true_se": t["se"],
            "ideal_se": t["ideal_se"],
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


def logged_knobs(run_dir: str | Path) -> dict[str, dict]:
    """{merchant: {knob: value}} that the traced merchants' logged prices carry (storefront.json)."""
    path = Path(run_dir) / "preprocess" / STOREFRONT_FILE
    return (json.loads(path.read_text()).get("logged_knobs") or {}) if path.exists() else {}


def traced_knobs(run_dir: str | Path, store: Mapping) -> dict[str, dict] | None:
    """{merchant: the knobs its traces showed} for every merchant whose traces were replayed
    (DIR/preprocess/storefront.json); `store` gives the knobs a merchant without overrides had. A price
    multiplier its logged prices carry (logged_knobs) is part of the level the policy saw. A record that
    names no merchant gives {EVERY_MERCHANT: the store's knobs}; None when it is missing."""
    path = Path(run_dir) / "preprocess" / STOREFRONT_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    base = {k: record.get("knobs", {}).get(k, store.get(k)) for k in KNOB_NAMES}
    overrides, logged = record.get("merchant_overrides") or {}, record.get("logged_knobs") or {}
    merchants = sorted(set(record.get("catalogs") or {}) | set(overrides))
    if not merchants:  # no per-merchant catalog or knobs (Tmall): every merchant had the store's knobs
        return {EVERY_MERCHANT: base}
    out = {}
    for m in merchants:
        knobs = {**base, **{k: v for k, v in (overrides.get(m) or {}).items() if k in KNOB_NAMES}}
        for k, v in (logged.get(m) or {}).items():
            knobs[k] = _logged(k, v, knobs[k])
        out[m] = knobs
    return out


def _logged(knob: str, logged, value):
    """A knob's level at a merchant whose logged prices already carry `logged` of it."""
    if knob != "price_multiplier":  # simpersona.data.transform.LOGGED_KNOBS holds only this one
        raise ValueError(f"no rule for a logged {knob}")
    return round(float(logged) * float(value), 6)


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    return math.isclose(float(a), float(b))


def training_variation(traced: Mapping[str, dict] | None, knobs: Mapping, merchants: list[str] = (),
                       logged: Mapping[str, dict] | None = None) -> dict:
    """For each knob a variant changes: the values it had across the traced merchants and whether the
    variant's values at `merchants` are supported (the knob varied and they lie within what was seen).
    `logged` ({merchant: {knob: value}}): knobs the merchants' prices carry, which a variant multiplies."""
    changed: dict[str, list] = {}
    for m in merchants or ["", *(knobs.get("merchant_overrides") or {})]:
        for k, v in merchant_variant_knobs(knobs, m).items():
            carried = (logged or {}).get(m, {})
            changed.setdefault(k, []).append(_logged(k, carried[k], v) if k in carried else v)
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
            outside = [w for w in wanted if not any(_same(w, v) for v in seen)]
        else:
            lo, hi = min(map(float, seen)), max(map(float, seen))
            outside = [w for w in wanted if not lo - 1e-9 <= float(w) <= hi + 1e-9]
        inside = not outside
        shown = "values (merchants): " + ", ".join(
            f"{v} ({n})" for v, n in sorted(counts.items(), key=lambda kv: json.loads(kv[0])))
        if not varied:
            only = json.loads(next(iter(counts)))
            note = f"{knob}: no variation in the training traces (every merchant {only}): the effect is extrapolated"
        elif not inside:
            values = ", ".join(str(v) for v in sorted(set(outside)))
            note = (f"{knob}: {values} (at {len(outside)} of {len(wanted)}) outside the training traces' "
                    f"{shown}: the effect is extrapolated")
        else:
            note = f"{knob}: varied in the training traces ({shown})"
        out[knob] = {"merchants": len(seen), "values": counts, "varied": varied, "within_range": inside,
                     "supported": bool(varied and inside), "note": note}
    return out
