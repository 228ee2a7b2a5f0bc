"""The report's figures: each function draws one matplotlib figure and returns it as a PNG data URI,
so the HTML stays one self-contained file. Inputs are the plain dicts/lists of metrics.json,
deltas.json and the assign stage's type tables."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display: figures are rendered straight to PNG bytes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

COLORS = {"real": "#222222", "sim": "#1f77b4", "ceiling": "#9a9a9a", "no_persona": "#ff7f0e",
          "mismatch": "#d62728", "prompt_persona": "#9467bd", "kmeans": "#2ca02c"}
STRATA_ORDER = ("A", "B", "C", "D")


def to_data_uri(fig, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# beside the axes, not over them: inside, a legend hides the points at the top of the range (rates of 0.5-1.0)
OUTSIDE_LEGEND = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}


def _color(name: str, i: int) -> str:
    return COLORS.get(name, plt.get_cmap("tab10")(i % 10))


def conversion_per_merchant(rows: list[dict], baselines: list[str], rate: str, dpi: int = 90,
                            max_merchants: int = 42) -> str:
    """Per held-out merchant: the real rate (rates half), the simulation, the other real half (the
    ceiling), and each baseline; merchants sorted by their real rate."""
    rows = sorted([r for r in rows if r.get("real") is not None], key=lambda r: r["real"])[-max_merchants:]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(rows) + 2), 3.8))
    ax.plot(x, [r["real"] for r in rows], "o", color=COLORS["real"], label="real (rates half)")
    ax.plot(x, [r.get("real_types_half") for r in rows], "s", mfc="none", color=COLORS["ceiling"],
            label="real (other half) = ceiling")
    for i, b in enumerate(baselines):
        vals = [r.get(b) for r in rows]
        if any(v is not None for v in vals):
            ax.plot(x, [np.nan if v is None else v for v in vals], "x", ms=4, color=_color(b, i), label=b)
    ax.plot(x, [np.nan if r.get("sim") is None else r["sim"] for r in rows], "D", ms=5, color=COLORS["sim"],
            label="simulated (VQ personas)")
    ax.set_xticks(x, [r["merchant_id"] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel(rate)
    ax.set_xlabel("held-out merchant (sorted by real rate)")
    ax.legend(**OUTSIDE_LEGEND)
    ax.grid(alpha=0.3)
    return to_data_uri(fig, dpi)


def conversion_scatter(rows: list[dict], rate: str, dpi: int = 90) -> str:
    """Simulated against real rate per merchant, beside the two real halves against each other."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    real = np.array([r["real"] for r in rows], dtype=float)
    sim = np.array([np.nan if r.get("sim") is None else r["sim"] for r in rows], dtype=float)
    other = np.array([np.nan if r.get("real_types_half") is None else r["real_types_half"] for r in rows])
    ax.scatter(real, other, marker="s", facecolors="none", edgecolors=COLORS["ceiling"], label="real vs real")
    ax.scatter(real, sim, marker="D", s=18, color=COLORS["sim"], label="simulated vs real")
    hi = float(np.nanmax(np.concatenate([real, sim, other, [0.01]]))) * 1.05
    ax.plot([0, hi], [0, hi], "--", color="#555555", lw=1)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel(f"real {rate} (rates half)")
    ax.set_ylabel(f"{rate}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return to_data_uri(fig, dpi)


def ara_by_run(runs: dict[str, dict], ceiling: float | None, dpi: int = 90) -> str:
    """ARA of the main run and each baseline, with bootstrap intervals, against the ceiling."""
    names = [n for n, r in runs.items() if r is not None and r.get("ara_overall") is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1.5), 3.2))
    vals = [runs[n]["ara_overall"] for n in names]
    lo = [max(0.0, runs[n]["ara_overall"] - runs[n]["ara_ci"][0]) if runs[n].get("ara_ci") else 0 for n in names]
    hi = [max(0.0, runs[n]["ara_ci"][1] - runs[n]["ara_overall"]) if runs[n].get("ara_ci") else 0 for n in names]
    ax.bar(names, vals, yerr=[lo, hi], capsize=4, color=[_color(n, i) for i, n in enumerate(names)])
    if ceiling is not None:
        ax.axhline(ceiling, ls="--", color=COLORS["ceiling"], label=f"ceiling {ceiling:.3f}")
        ax.legend(fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("ARA (mean over merchants)")
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(fig, dpi)


def funnel_strata(series: dict[str, dict[str, float | None]], names: dict[str, str], dpi: int = 90) -> str:
    """Share of units in each funnel stratum A-D: real against simulated (and baselines)."""
    labels = [f"{s} {names.get(s, '')}" for s in STRATA_ORDER]
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    width = 0.8 / max(1, len(series))
    for i, (name, shares) in enumerate(series.items()):
        vals = [shares.get(s) or 0.0 for s in STRATA_ORDER]
        ax.bar(np.arange(4) + (i - (len(series) - 1) / 2) * width, vals, width, label=name, color=_color(name, i))
    ax.set_xticks(np.arange(4), labels)
    ax.set_ylabel("share of units")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(fig, dpi)


def type_profiles(profiles: list[dict], fields: list[str], dpi: int = 90) -> str:
    """One small panel per behaviour field, one bar per buyer type."""
    fig, axes = plt.subplots(1, len(fields), figsize=(2.3 * len(fields), 2.6), squeeze=False)
    types = [str(p["type_id"]) for p in profiles]
    for ax, f in zip(axes[0], fields):
        ax.bar(types, [float(p.get(f) or 0.0) for p in profiles], color="#4c72b0")
        ax.set_title(f, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("type", fontsize=7)
    fig.tight_layout()
    return to_data_uri(fig, dpi)


def type_mix(mix: dict[str, dict[int, float]], dpi: int = 90) -> str:
    """Stacked bars: each merchant's type distribution."""
    merchants = list(mix)
    types = sorted({t for d in mix.values() for t in d})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(merchants) + 2), 3.4))
    bottom = np.zeros(len(merchants))
    cmap = plt.get_cmap("tab20")
    for i, t in enumerate(types):
        vals = np.array([mix[m].get(t, 0.0) for m in merchants])
        ax.bar(merchants, vals, bottom=bottom, color=cmap(i % 20), label=f"type {t}")
        bottom += vals
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of buyers")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    ax.legend(fontsize=6, ncol=min(8, len(types)), loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return to_data_uri(fig, dpi)


def whatif_deltas(variants: dict[str, dict], outcomes: list[str], dpi: int = 90) -> str:
    """Overall delta of each outcome per variant, with its paired bootstrap interval."""
    names = list(variants)
    fig, axes = plt.subplots(1, len(outcomes), figsize=(2.9 * len(outcomes), 0.35 * len(names) + 1.6),
                             squeeze=False)
    y = np.arange(len(names))
    for ax, o in zip(axes[0], outcomes):
        d = [variants[n]["overall"][o] for n in names]
        delta = np.array([x["delta"] for x in d])
        err = np.clip(np.array([[x["delta"] - x["lo"] for x in d], [x["hi"] - x["delta"] for x in d]]), 0, None)
        colors = ["#1f77b4" if x["significant"] else "#9a9a9a" for x in d]
        for k in range(len(names)):  # errorbar takes one colour per call
            ax.errorbar(delta[k], y[k], xerr=err[:, k:k + 1], fmt="none", ecolor=colors[k], capsize=3)
        ax.scatter(delta, y, c=colors, zorder=3, s=16)
        ax.axvline(0, color="#555555", lw=1)
        ax.set_title(f"delta {o}", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_yticks(y, names if ax is axes[0][0] else [""] * len(names), fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return to_data_uri(fig, dpi)


def whatif_truth(variants: dict[str, dict], dpi: int = 90) -> str:
    """Per outcome with a planted truth: each variant's simulated delta (with its interval) against its
    true effect; a simulator that finds the effects puts the points on the diagonal."""
    outcomes = sorted({o for v in variants.values() for o in (v.get("validity") or {})})
    fig, axes = plt.subplots(1, max(1, len(outcomes)), figsize=(3.6 * max(1, len(outcomes)), 3.2), squeeze=False)
    for ax, o in zip(axes[0], outcomes):
        rows = [(n, v["validity"][o]) for n, v in variants.items() if o in (v.get("validity") or {})]
        for name, c in rows:
            color = "#127a12" if c["passed"] else ("#9a9a9a" if c["passed"] is None else "#b3261e")
            ax.errorbar(c["true"], c["simulated"], yerr=[[max(c["simulated"] - c["lo"], 0)], [max(c["hi"] - c["simulated"], 0)]],
                        xerr=[[2 * c["true_se"]], [2 * c["true_se"]]], fmt="o", ms=4, color=color, capsize=2)
            ax.annotate(name, (c["true"], c["simulated"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        span = [x for _, c in rows for x in (c["true"], c["lo"], c["hi"])] or [0.0]
        lo, hi = min(span + [0.0]), max(span + [0.0])
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="#555555", lw=1)
        ax.axhline(0, color="#bbbbbb", lw=0.8)
        ax.axvline(0, color="#bbbbbb", lw=0.8)
        ax.set_xlabel(f"true effect on {o}", fontsize=7)
        ax.set_ylabel(f"simulated delta {o}", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_data_uri(fig, dpi)


def grid_sweep(grid: dict, outcomes: list[str], dpi: int = 90) -> str:
    """Delta of each outcome against the swept knob's value (the base value has delta 0), and on a
    planted world the true curve beside it."""
    pts = grid["points"]
    fig, axes = plt.subplots(1, len(outcomes), figsize=(2.9 * len(outcomes), 2.6), squeeze=False)
    xs = np.array([p["value"] for p in pts], dtype=float)
    for ax, o in zip(axes[0], outcomes):
        mid = np.array([0.0 if p["overall"] is None else p["overall"][o]["delta"] for p in pts])
        lo = np.array([0.0 if p["overall"] is None else p["overall"][o]["lo"] for p in pts])
        hi = np.array([0.0 if p["overall"] is None else p["overall"][o]["hi"] for p in pts])
        ax.fill_between(xs, lo, hi, alpha=0.25, color="#1f77b4")
        ax.plot(xs, mid, "o-", color="#1f77b4", ms=4, label="simulated")
        if any(p.get("true") and o in p["true"] for p in pts):
            ax.plot(xs, [0.0 if not p.get("true") else p["true"][o] for p in pts], "s--", color="#d62728", ms=3,
                    label="true")
            ax.legend(fontsize=6)
        ax.axhline(0, color="#555555", lw=1)
        ax.axvline(grid["base_value"], color="#9a9a9a", ls="--", lw=1)
        ax.set_title(f"delta {o}", fontsize=8)
        ax.set_xlabel(grid["knob"], fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return to_data_uri(fig, dpi)


def type_conversion(alignment: dict[str, dict], dpi: int = 90) -> str:
    """Per buyer type: real conversion (rates half) against each mode's simulated conversion, types sorted
    by their real rate; a persona chain that works puts the persona mode on the real curve and leaves the
    no-persona mode flat."""
    main = alignment.get("vq") or next(iter(alignment.values()))
    rows = sorted([r for r in main["rows"] if r.get("real_buyer_conversion") is not None
                   and (r.get("real_buyers") or 0) >= main.get("min_real", 1)],
                  key=lambda r: (r["real_buyer_conversion"], r["type_id"]))
    types = [r["type_id"] for r in rows]
    x = np.arange(len(types))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(types) + 2), 3.6))
    ax.plot(x, [r["real_buyer_conversion"] for r in rows], "o-", color=COLORS["real"], label="real (rates half)")
    for i, (name, a) in enumerate(alignment.items()):
        if a.get("typing") != "vq":
            continue
        by_type = {r["type_id"]: r for r in a["rows"]}
        vals = [by_type.get(k, {}).get("sim_buyer_conversion") for k in types]
        style = "D" if name == "vq" else "x"
        ax.plot(x, [np.nan if v is None else v for v in vals], style, ms=5 if name == "vq" else 4,
                color=COLORS["sim"] if name == "vq" else _color(name, i), label=f"simulated: {name}")
    ax.set_xticks(x, [str(k) for k in types], fontsize=7)
    ax.set_xlabel("buyer type (VQ code), sorted by real conversion")
    ax.set_ylabel("buyer conversion")
    ax.legend(**OUTSIDE_LEGEND)
    ax.grid(alpha=0.3)
    return to_data_uri(fig, dpi)
