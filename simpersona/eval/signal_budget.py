"""The signal budget: how much of the buyer-type signal survives each hand-over, in one table.

    clickstream -> VQ code -> persona token -> policy's action distribution -> browser session -> server log

One row per stage, each with the persona figure beside the figure without the signal (no persona token,
or k-means where the stage is the typing itself), read from the stage's own artifacts:

  types      VQ codes against planted types (NMI, homogeneity) or, on real data, how well codes predict
             a purchase (type_auc_purchase); k-means beside it         (vqvae/summary.json)
  offline    teacher-forced on held-out traces: NLL, accuracy and mean per-type action JS of the persona
             model, against the no-persona model                   (finetune/summary.json)
  rollout    sessions sampled in the storefront model without a browser: Spearman of per-type conversion
             against the real per-type conversion, beside the same rollouts under mismatched tokens
                                                                    (finetune/summary.json)
  live       agents in Chromium, scored from the storefront's log: type-level conversion Spearman and
             action JS, persona against no persona and mismatch     (evaluate's type_alignment)

The stage where the persona column stops beating its peer is the one to fix.
"""

from __future__ import annotations

import json
from pathlib import Path


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _pick(d: dict, *keys: str):
    return {k: d.get(k) for k in keys if d.get(k) is not None}


def signal_budget(run_dir: str | Path, type_alignment: dict) -> list[dict]:
    run_dir = Path(run_dir)
    vq = _read(run_dir / "vqvae" / "summary.json")
    ft = _read(run_dir / "finetune" / "summary.json")
    rows = []
    km = vq.get("kmeans") or {}
    rows.append({
        "stage": "types", "where": "vqvae/summary.json",
        "persona": _pick(vq, "nmi_planted", "homogeneity_planted", "ari_planted", "type_auc_purchase", "perplexity"),
        "peer": "kmeans",
        "peer_value": _pick(km, "nmi_planted", "homogeneity_planted", "ari_planted", "type_auc_purchase"),
    })
    rows.append({
        "stage": "offline", "where": "finetune/summary.json",
        "persona": {"nll": ft.get("heldout_nll_persona"), "acc": ft.get("heldout_acc_persona"),
                    "mean_type_js": ft.get("mean_js_persona")},
        "peer": "no persona",
        "peer_value": {"nll": ft.get("heldout_nll_no_persona"), "acc": ft.get("heldout_acc_no_persona"),
                       "mean_type_js": ft.get("mean_js_no_persona")},
        "mismatch": {"nll": ft.get("heldout_nll_mismatch"), "acc": ft.get("heldout_acc_mismatch")},
    })
    rows.append({
        "stage": "rollout", "where": "finetune/summary.json",
        "persona": {"type_conversion_spearman": ft.get("type_conversion_spearman")},
        "peer": "mismatched persona", "peer_value": {"type_conversion_spearman": ft.get("type_conversion_spearman_mismatch")},
        "ideal_at_sim_size": ft.get("type_conversion_spearman_ideal"),
    })

    def live(name: str) -> dict:
        t = type_alignment.get(name) or {}
        return {"type_conversion_spearman": t.get("spearman_conversion"), "type_conversion_ara": t.get("ara_conversion"),
                "action_js_mean": t.get("action_js_mean"), "types": t.get("n_types")}

    main = type_alignment.get("vq") or {}
    rows.append({
        "stage": "live", "where": "evaluate/metrics.json type_alignment",
        "persona": live("vq"), "peer": "no persona", "peer_value": live("no_persona"),
        "mismatch": live("mismatch"),
        "ideal_at_sim_size": (main.get("ideal_at_sim_size") or {}).get("spearman_conversion"),
        "real_vs_real": (main.get("real_vs_real") or {}).get("spearman_conversion"),
    })
    return rows
