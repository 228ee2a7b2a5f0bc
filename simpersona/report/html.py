"""The HTML report: one self-contained file (plots embedded as PNG data URIs, no external assets).

`build_report(cfg)` reads what the run has produced so far and renders every section it can:
  <run_dir>/evaluate/metrics.json        headline, targets, per merchant, baselines, funnel strata
  <run_dir>/assign/type_profiles.json    per-type behaviour profiles
  <run_dir>/assign/merchant_types.parquet   type mix per merchant
  <run_dir>/whatif/deltas.json           what-if deltas with intervals, the knob sweep
A section whose input is missing says which stage produces it. `render_report(...)` does the same
from in-memory objects.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import jinja2
import polars as pl

from simpersona.report import plots
from simpersona.storage import replace_durably

PROFILE_FIELDS = ("share", "conversion", "events_per_session", "cart_rate", "favorite_rate", "price_level")
HEADLINE_ROWS = (
    ("ara_overall", "ARA 1 - |sim - real| / real (mean over merchants)", "ara_ceiling"),
    ("ara_minmax_overall", "ARA min/max (mean over merchants)", "ara_minmax_ceiling"),
    ("ara_pooled", "ARA of the pooled rate", "ara_pooled_ceiling"),
    ("spearman_cr", "Spearman of per-merchant rate", "spearman_ceiling"),
    ("crash_rate", "crash rate", None),
)

TEMPLATE = jinja2.Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.met { color: #127a12; font-weight: 600; } .missed { color: #b3261e; font-weight: 600; } .na { color: #888; }
.note { color: #555; font-size: 0.85em; } img { max-width: 100%; display: block; margin: 6px 0; }
.missing { color: #888; font-style: italic; }
</style></head><body>
<h1>{{ title }}</h1>
<p class="note">run {{ run_dir }} &middot; generated {{ generated }}</p>

<h2 id="persona-effect">Persona effect: does each agent behave like its buyer type?</h2>
{% if m and m.type_alignment %}
<p class="note">The same agents and seeds in every mode; each agent counts under the buyer type it was drawn
as from its merchant's type mix. <b>vq</b> gives it that type's persona token, <b>no_persona</b> none,
<b>mismatch</b> another type's. Real: the held-out storefronts' rates half, each history under its assigned
type. Types with at least {{ m.type_alignment.vq.min_agents }} visiting agents and {{ m.type_alignment.vq.min_real }}
real histories count.</p>
<table id="persona-effect-table"><tr><th class="l">mode</th><th>types</th><th>type-level conversion Spearman</th>
<th>type-level conversion ARA</th><th>action JS (per page kind)</th><th>merchant-level ara_overall</th>
<th>merchant-level spearman_cr</th></tr>
{% for name, t in m.type_alignment.items() %}<tr><td class="l">{{ name }}</td><td>{{ t.n_types }}</td>
<td>{{ fmt(t.spearman_conversion) }}</td><td>{{ fmt(t.ara_conversion) }}</td><td>{{ fmt(t.action_js_mean) }}</td>
<td>{{ fmt((m.main if name == 'vq' else m.baselines[name]).ara_overall) }}</td>
<td>{{ fmt((m.main if name == 'vq' else m.baselines[name]).spearman_cr) }}</td></tr>{% endfor %}
{% set t = m.type_alignment.vq %}
<tr><td class="l">real half vs real half</td><td>{{ t.real_vs_real.n_types }}</td><td>{{ fmt(t.real_vs_real.spearman_conversion) }}</td>
<td>{{ fmt(t.real_vs_real.ara_conversion) }}</td><td></td><td>{{ fmt(m.ara_ceiling) }}</td><td>{{ fmt(m.spearman_ceiling) }}</td></tr>
{% if t.ideal_at_sim_size.spearman_conversion %}<tr><td class="l">ideal simulator, same agents per type</td>
<td>{{ t.ideal_at_sim_size.n_types }}</td><td>{{ fmt(t.ideal_at_sim_size.spearman_conversion.mean) }}</td>
<td>{{ fmt(t.ideal_at_sim_size.ara_conversion.mean) }}</td><td></td><td>{{ fmt(m.ceiling_at_sim_size.ara_overall) if m.ceiling_at_sim_size else '' }}</td><td></td></tr>{% endif %}
</table>
{% if fig.types %}<img id="plot-types" alt="conversion per buyer type" src="{{ fig.types }}">{% endif %}
{% if m.signal_budget %}<h3>Signal budget: the type signal after each hand-over</h3>
<table id="signal-budget-table"><tr><th class="l">stage</th><th class="l">with the type signal</th><th class="l">peer</th><th class="l">peer's figures</th>
<th>ideal simulator's Spearman, same sample size</th></tr>
{% for r in m.signal_budget %}<tr><td class="l">{{ r.stage }}</td><td class="l">{{ figs(r.persona) }}</td><td class="l">{{ r.peer }}</td>
<td class="l">{{ figs(r.peer_value) }}</td><td>{{ fmt(r.ideal_at_sim_size.mean) if r.ideal_at_sim_size else '' }}</td></tr>{% endfor %}</table>{% endif %}
{% else %}<p class="missing">no type-level alignment yet (the evaluate stage writes it)</p>{% endif %}

<h2 id="headline">Held-out storefronts: headline</h2>
{% if m %}
<p class="note">{{ m.heldout_merchants|length }} held-out merchants; split by {{ m.split.method }}
(seed {{ m.split.seed }}): {{ m.split.buyers_types_half }} buyers give the type mix, {{ m.split.buyers_rates_half }}
give the real rates. Rate: <b>{{ m.rate }}</b>. The ceiling scores one real half against the other.</p>
<table id="headline-table"><tr><th class="l">figure</th><th>simulation</th><th>95% interval</th><th>ceiling (real vs real)</th></tr>
{% for key, label, ceil in headline %}<tr><td class="l">{{ label }}</td><td>{{ fmt(m[key]) }}</td>
<td>{% if key == 'ara_overall' %}{{ ci(m.ara_ci) }}{% elif key == 'ara_minmax_overall' %}{{ ci(m.ara_minmax_ci) }}{% endif %}</td>
<td>{{ fmt(m[ceil]) if ceil else '' }}{% if ceil and m.ceiling_spread and m.ceiling_spread[key] %}
<span class="note">(other splits {{ fmt(m.ceiling_spread[key].mean) }} &plusmn; {{ fmt(m.ceiling_spread[key].sd) }})</span>{% endif %}</td></tr>
{% endfor %}</table>
{% if m.ceiling_at_sim_size %}<p class="note" id="ceiling-at-sim-size">With {{ fmt(m.ceiling_at_sim_size.units_per_merchant_mean) }}
simulated units per merchant, an ideal simulator (agents that convert exactly like the merchant's real
buyers of the types half) would score ara_overall {{ fmt(m.ceiling_at_sim_size.ara_overall) }}
(95% of draws {{ ci(m.ceiling_at_sim_size.ara_overall_range) }}) and ara_minmax_overall
{{ fmt(m.ceiling_at_sim_size.ara_minmax_overall) }}: the ceiling that this sample size leaves.</p>{% endif %}
<h3>Targets</h3>
<table id="targets-table"><tr><th class="l">target</th><th class="l">judged on</th><th>met</th></tr>
{% for name, t in targets %}<tr><td class="l">{{ name }}</td><td class="l">{{ t.text }}</td>
<td class="{{ t.cls }}">{{ t.met }}</td></tr>{% endfor %}</table>

<h2 id="merchants">Simulated vs real conversion per merchant</h2>
<img id="plot-conversion" alt="conversion per merchant" src="{{ fig.conversion }}">
<img id="plot-scatter" alt="simulated vs real scatter" src="{{ fig.scatter }}" style="max-width: 420px">
<details><summary>per-merchant table</summary>
<table id="merchant-table"><tr><th class="l">merchant</th><th>real buyers</th><th>real</th><th>other real half</th>
<th>simulated</th><th>ARA</th><th>ARA ceiling</th>{% for b in baseline_names %}<th>{{ b }}</th>{% endfor %}</tr>
{% for r in m.per_merchant %}<tr><td class="l">{{ r.merchant_id }}</td><td>{{ r.real_buyers }}</td><td>{{ fmt(r.real) }}</td>
<td>{{ fmt(r.real_types_half) }}</td><td>{{ fmt(r.sim) }}</td><td>{{ fmt(r.ara) }}</td><td>{{ fmt(r.ara_ceiling) }}</td>
{% for b in baseline_names %}<td>{{ fmt(r[b]) }}</td>{% endfor %}</tr>{% endfor %}</table></details>

<h2 id="baselines">Baselines</h2>
<img id="plot-baselines" alt="ARA by run" src="{{ fig.baselines }}">
<table id="baselines-table"><tr><th class="l">run</th><th>persona mode</th><th>ARA</th><th>95% interval</th><th>ARA min/max</th>
<th>ARA pooled</th><th>Spearman</th><th>crash rate</th><th>failures (share of agents)</th><th>type-mix JS</th><th>VQ minus this (95%)</th></tr>
{% for name, b in runs %}<tr><td class="l">{{ name }}</td>
{% if b %}<td>{{ b.persona_mode }}</td><td>{{ fmt(b.ara_overall) }}</td><td>{{ ci(b.ara_ci) }}</td><td>{{ fmt(b.ara_minmax_overall) }}</td>
<td>{{ fmt(b.ara_pooled) }}</td><td>{{ fmt(b.spearman_cr) }}</td><td>{{ fmt(b.crash_rate) }}</td>
<td class="l">{% for k, v in (b.failure_rates or {}).items() %}{{ k }} {{ fmt(v) }}{{ '; ' if not loop.last }}{% else %}none{% endfor %}</td><td>{{ fmt(b.type_mix_js) }}</td>
<td>{{ ci(b.ara_delta_vs_main_ci) }}</td>
{% else %}<td class="missing" colspan="10">not simulated</td>{% endif %}</tr>{% endfor %}</table>

<h2 id="funnel">Funnel strata</h2>
<p class="note">Units: {{ m.stratum_unit }}s. {% for s, n in m.strata_defs.items() %}<b>{{ s }}</b> {{ n }}{{ ', ' if not loop.last }}{% endfor %}
(A: one event; B: more, no cart; C: carted, no purchase; D: purchased).</p>
<img id="plot-funnel" alt="funnel strata" src="{{ fig.funnel }}">
<table id="funnel-table"><tr><th class="l">stratum</th><th>real share (pooled)</th><th>simulated share</th><th>ARA</th>
<th>ARA min/max</th><th>ARA ceiling</th></tr>
{% for s, d in m.main.strata.items() %}<tr><td class="l">{{ s }} {{ d.name }}</td><td>{{ fmt(d.real_pooled) }}</td>
<td>{{ fmt(d.sim_pooled) }}</td><td>{{ fmt(d.ara) }}</td><td>{{ fmt(d.ara_minmax) }}</td><td>{{ fmt(m.ceiling.strata[s].ara) }}</td></tr>{% endfor %}
</table>
{% else %}<p class="missing">No evaluation yet: run ray_jobs/evaluate.py.</p>{% endif %}

<h2 id="types">Buyer types</h2>
{% if profiles %}
<img id="plot-profiles" alt="type profiles" src="{{ fig.profiles }}">
<table id="profiles-table"><tr><th class="l">type</th>{% for f in profile_fields %}<th>{{ f }}</th>{% endfor %}<th class="l">description</th></tr>
{% for p in profiles %}<tr><td class="l">{{ p.type_id }}</td>{% for f in profile_fields %}<td>{{ fmt(p[f]) }}</td>{% endfor %}
<td class="l">{{ p.description }}</td></tr>{% endfor %}</table>
{% else %}<p class="missing">No type profiles: run the assign stage.</p>{% endif %}
{% if fig.mix %}<h3>Type mix per merchant</h3><img id="plot-mix" alt="type mix per merchant" src="{{ fig.mix }}">
{% else %}<p class="missing">No merchant type distributions: run the assign stage.</p>{% endif %}

<h2 id="whatif">What-if experiments</h2>
{% if d %}
<p class="note">{{ d.agents }} agents at {{ d.merchants|length }} merchants, the same agents in every variant;
deltas are variant minus {{ d.base_variant }}, with paired bootstrap {{ (d.ci_level * 100)|round|int }}% intervals
(blue: interval excludes 0).</p>
<img id="plot-whatif" alt="what-if deltas" src="{{ fig.whatif }}">
<table id="whatif-table"><tr><th class="l">variant</th><th class="l">knobs</th>{% for o in d.outcomes %}<th>&Delta; {{ o }} [95%]</th>{% endfor %}
<th>crash rate</th></tr>
{% for name, v in d.variants.items() %}<tr><td class="l">{{ name }}</td><td class="l">{{ knobs(v.knobs) }}</td>
{% for o in d.outcomes %}<td class="{{ 'met' if v.overall[o].significant else '' }}">{{ fmt(v.overall[o].delta, 4) }}
[{{ fmt(v.overall[o].lo, 4) }}, {{ fmt(v.overall[o].hi, 4) }}]</td>{% endfor %}<td>{{ fmt(d.crash_rate[name]) }}</td></tr>{% endfor %}
</table>
{% if d.planted %}<h3>Simulated against true effects (planted world)</h3>
<p class="note">The generator replays the same buyers, sessions and draws under each variant's knobs; a simulated
agent's session is compared with the replay's per-session outcome, every merchant weighted alike. Beyond noise:
|true| over {{ d.noise_se }} standard errors of a perfectly faithful simulator with the same {{ d.agents }} agents
(smaller effects no simulation of this size finds); passes: the true sign, an interval excluding 0 and
simulated / true within [{{ d.ratio_band[0] }}, {{ d.ratio_band[1] }}].
{% if d.agreement.cells %}Over the {{ d.agreement.cells }} effects beyond noise: the true direction with an interval
excluding 0 in {{ fmt(d.agreement.direction_accuracy * 100, 0) }}%, the true sign in
{{ fmt(d.agreement.sign_accuracy * 100, 0) }}%, passed {{ fmt(d.agreement.passed * 100, 0) }}%.{% endif %}</p>
{% if fig.truth %}<img id="plot-whatif-truth" alt="simulated against true what-if effects" src="{{ fig.truth }}">{% endif %}
<table id="whatif-truth-table"><tr><th class="l">variant</th><th class="l">outcome</th><th>simulated [95%]</th>
<th>true (s.e.)</th><th>ideal simulator's s.e.</th><th>simulated / true</th><th>per-merchant Spearman</th><th>verdict</th></tr>
{% for name, v in d.variants.items() %}{% for o, c in (v.validity or {}).items() %}<tr><td class="l">{{ name }}</td><td class="l">{{ o }}</td>
<td>{{ fmt(c.simulated, 4) }} [{{ fmt(c.lo, 4) }}, {{ fmt(c.hi, 4) }}]</td><td>{{ fmt(c.true, 4) }} ({{ fmt(c.true_se, 4) }})</td><td>{{ fmt(c.ideal_se, 4) }}</td>
<td>{{ fmt(c.ratio, 2) }}</td><td>{{ fmt(c.merchant_spearman, 2) }}</td>
<td class="{{ 'na' if c.passed is none else ('met' if c.passed else 'missed') }}">{{ 'within noise' if c.passed is none else ('passes' if c.passed else ('not found' if not c.interval_excludes_zero else ('wrong sign' if not c.sign_agrees else 'wrong size'))) }}</td></tr>{% endfor %}{% endfor %}
</table>{% endif %}
<h3>Support in the training traces</h3>
<table id="whatif-support-table"><tr><th class="l">variant</th><th class="l">knob</th><th class="l">training variation</th></tr>
{% for name, v in d.variants.items() %}{% for k, t in (v.training_variation or {}).items() %}<tr><td class="l">{{ name }}</td><td class="l">{{ k }}</td>
<td class="l {{ 'missed' if t.supported is false else '' }}">{{ t.note }}</td></tr>{% endfor %}{% endfor %}
</table>
{% if fig.grid %}<h3>Sweep of {{ d.grid.knob }}</h3><img id="plot-grid" alt="knob sweep" src="{{ fig.grid }}">{% endif %}
<details><summary>per-merchant deltas</summary>
<table id="whatif-merchant-table"><tr><th class="l">variant</th><th class="l">merchant</th>{% for o in d.outcomes %}<th>&Delta; {{ o }} [95%]</th>{% endfor %}</tr>
{% for name, v in d.variants.items() %}{% for mid, row in v.per_merchant.items() %}<tr><td class="l">{{ name }}</td><td class="l">{{ mid }}</td>
{% for o in d.outcomes %}<td>{{ fmt(row[o].delta, 4) }} [{{ fmt(row[o].lo, 4) }}, {{ fmt(row[o].hi, 4) }}]</td>{% endfor %}</tr>{% endfor %}{% endfor %}
</table></details>
{% else %}<p class="missing">No what-if results: run ray_jobs/whatif.py.</p>{% endif %}
</body></html>
""", autoescape=True, undefined=jinja2.ChainableUndefined)


def fmt(x, digits: int = 3) -> str:
    if x is None or isinstance(x, jinja2.Undefined):
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return str(x)


def figures(d: dict | None) -> str:
    """name value pairs of a signal-budget cell, e.g. 'nll 1.437, acc 0.377'."""
    return ", ".join(f"{k} {fmt(v)}" for k, v in (d or {}).items() if v is not None) or "–"


def ci(pair) -> str:
    return "–" if not pair or isinstance(pair, jinja2.Undefined) else f"[{fmt(pair[0])}, {fmt(pair[1])}]"


def _knobs(k: dict) -> str:
    return ", ".join(f"{a}={b}" for a, b in (k or {}).items())


def _targets(m: dict) -> list[tuple[str, dict]]:
    t = m.get("targets") or {}
    out = []

    def row(name, met, text):
        cls = "na" if met is None else ("met" if met else "missed")
        out.append((name, {"met": "n/a" if met is None else ("yes" if met else "no"), "cls": cls, "text": text}))

    if "ara_at_least" in t:
        a = t["ara_at_least"]
        row(f"ara_overall >= {a['target']}", a["met"], f"ara_overall = {fmt(a['value'])}")
    if "ceiling_fraction" in t:
        c = t["ceiling_fraction"]
        row(f"ara_overall >= {c['target']} x ceiling", c["met"], f"ratio {fmt(c['value'])} (ceiling {fmt(c['ceiling'])})")
    for name, b in (t.get("above_baselines") or {}).items():
        text = b.get("reason") or f"delta {fmt(b.get('delta'))}, interval {ci(b.get('ci'))}"
        row(f"above {name} beyond its interval", b.get("met"), text)
    if "crash_ratio" in t:
        c = t["crash_ratio"]
        row(f"crash rate <= {c['target']} x no-persona", c["met"], c.get("reason") or f"ratio {fmt(c['value'])}")
    return out


def normalise_profiles(data) -> list[dict]:
    """type_profiles.json as a list of dicts with type_id (accepts a list, {"types": ...} or {id: profile})."""
    if isinstance(data, dict) and "types" in data:
        data = data["types"]
    if isinstance(data, dict):
        data = [{"type_id": int(k), **v} for k, v in data.items()]
    return sorted((dict(p) for p in data), key=lambda p: int(p["type_id"]))


def render_report(metrics: dict | None, deltas: dict | None = None, profiles: list[dict] | None = None,
                  mix: dict[str, dict[int, float]] | None = None, title: str = "SimPersona evaluation report",
                  run_dir: str = "", dpi: int = 90, max_merchants: int = 42) -> str:
    """The report HTML from in-memory results (any of them may be None)."""
    fig: dict[str, str] = {}
    m = metrics
    baseline_names = list((m or {}).get("baselines", {}) or {})
    if m:
        fig["conversion"] = plots.conversion_per_merchant(m["per_merchant"], baseline_names, m["rate"], dpi,
                                                          max_merchants)
        fig["scatter"] = plots.conversion_scatter(m["per_merchant"], m["rate"], dpi)
        runs = {"vq": m["main"], **m["baselines"]}
        fig["baselines"] = plots.ara_by_run(runs, m.get("ara_ceiling"), dpi)
        series = {"real": {s: d["real_pooled"] for s, d in m["main"]["strata"].items()},
                  "sim": {s: d["sim_pooled"] for s, d in m["main"]["strata"].items()}}
        for name, b in m["baselines"].items():
            if b:
                series[name] = {s: d["sim_pooled"] for s, d in b["strata"].items()}
        fig["funnel"] = plots.funnel_strata(series, m.get("strata_defs", {}), dpi)
        if m.get("type_alignment"):
            fig["types"] = plots.type_conversion(m["type_alignment"], dpi)
    fields = [f for f in PROFILE_FIELDS if profiles and any(isinstance(p.get(f), int | float) for p in profiles)]
    if profiles and fields:
        fig["profiles"] = plots.type_profiles(profiles, fields, dpi)
    if mix:
        fig["mix"] = plots.type_mix(dict(list(mix.items())[:max_merchants]), dpi)
    if deltas and deltas.get("variants"):
        fig["whatif"] = plots.whatif_deltas(deltas["variants"], deltas["outcomes"], dpi)
        if deltas.get("planted"):
            fig["truth"] = plots.whatif_truth(deltas["variants"], dpi)
        if deltas.get("grid") and len(deltas["grid"]["points"]) > 1:
            fig["grid"] = plots.grid_sweep(deltas["grid"], deltas["outcomes"], dpi)
    runs_rows = [("vq (main)", m["main"])] + list(m["baselines"].items()) if m else []
    return TEMPLATE.render(
        title=title, run_dir=run_dir, generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"), m=m, d=deltas,
        fig=fig, headline=HEADLINE_ROWS, targets=_targets(m) if m else [], runs=runs_rows,
        baseline_names=baseline_names, profiles=profiles, profile_fields=fields, fmt=fmt, ci=ci, knobs=_knobs,
        figs=figures)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def read_type_mix(path: Path, merchants: list[str] | None) -> dict[str, dict[int, float]] | None:
    """merchant -> {type: prob} from merchant_types.parquet, for `merchants` (in that order) when given."""
    if not path.exists():
        return None
    t = pl.read_parquet(path, columns=["merchant_id", "type_id", "prob"])
    order = merchants or sorted(set(t["merchant_id"].to_list()))
    out: dict[str, dict[int, float]] = {m: {} for m in order}
    for mid, tid, p in t.filter(pl.col("merchant_id").is_in(order)).iter_rows():
        out[mid][int(tid)] = float(p)
    return {m: d for m, d in out.items() if d} or None


def build_report(cfg) -> Path:
    """Render <run_dir>/report/report.html (or report.path) from the run's artifacts; returns the path."""
    run_dir = Path(cfg.run_dir)
    r = cfg.report
    metrics = _read_json(run_dir / "evaluate" / "metrics.json")
    deltas = _read_json(run_dir / "whatif" / "deltas.json")
    raw_profiles = _read_json(run_dir / "assign" / "type_profiles.json")
    profiles = normalise_profiles(raw_profiles) if raw_profiles else None
    mix = read_type_mix(run_dir / "assign" / "merchant_types.parquet",
                        metrics["heldout_merchants"] if metrics else None)
    html = render_report(metrics, deltas, profiles, mix, r.title, str(run_dir), r.dpi, r.max_merchants)
    path = Path(r.path) if r.path else run_dir / "report" / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    replace_durably(tmp, path)
    return path


def run_report(cfg) -> dict:
    """The report stage: build the report, write <run_dir>/report/summary.json, return the summary."""
    t0 = time.time()
    path = build_report(cfg)
    run_dir = Path(cfg.run_dir)
    summary = {"report": str(path), "bytes": path.stat().st_size, "seconds": round(time.time() - t0, 2),
               "sections": {"evaluate": (run_dir / "evaluate" / "metrics.json").exists(),
                            "whatif": (run_dir / "whatif" / "deltas.json").exists(),
                            "types": (run_dir / "assign" / "type_profiles.json").exists()}}
    out = run_dir / "report" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    return summary
