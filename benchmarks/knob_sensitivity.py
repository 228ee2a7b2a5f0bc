"""How much the fine-tuned policy's buy decision moves with a store knob, beside how much the traced buyers' did.

    python benchmarks/knob_sensitivity.py run_dir=DIR [bench.knob=shipping_fee] [bench.low=0] [bench.high=12]
        [bench.pages=60]

On DIR's product-page trace steps, per VQ code (DIR/assign/types.parquet):
  model   the policy's P(add_to_cart or buy_now) on bench.pages of the code's product pages, each with its
          own session's last persona.history_len actions (as the policy saw it in training: no traced
          product page opens a session, so an empty history is a prompt it never saw), scored once with
          the delivery line's knob set to bench.low and once to bench.high, everything else equal
  data    the share of the code's traced product pages whose action was add_to_cart or buy_now, on the pages
          that showed bench.low and on those that showed bench.high (the peer: what the buyers did, across
          merchants; on a planted world the knob's effect is causal)
and each one's high/low ratio; on a planted world the same per planted type (each page under its own
code's token). A policy that learnt the knob's effect has the data's ratios. Prints one JSON object.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpersona.config import load  # noqa: E402

DEFAULTS = {"knob": "shipping_fee", "low": 0.0, "high": 12.0, "pages": 60}
BUY = ("add_to_cart", "buy_now")
# where each knob sits in a product page's delivery line (simpersona.pages.observation.render)
LINE = {
    "shipping_fee": (r"delivery: shipping ([0-9.]+) \(", lambda v: f"{float(v):.2f}"),
    "checkout_steps": (r"\| checkout ([0-9]+) steps", lambda v: str(int(v))),
}


def with_value(observation: str, pattern: str, value: str) -> str:
    """`observation` with the knob's shown value (the pattern's group) replaced by `value`."""
    def put(m: re.Match) -> str:
        whole, start = m.group(0), m.start(0)
        return whole[: m.start(1) - start] + value + whole[m.end(1) - start:]

    return re.sub(pattern, put, observation)


def main(argv: list[str]) -> dict:
    from simpersona.persona.examples import add_history
    from simpersona.persona.scoring import ActionScorer, ScoreRequest

    cfg = load("finetune", argv)
    b = {**DEFAULTS, **dict(cfg.bench)}
    if b["knob"] not in LINE:
        raise SystemExit(f"bench.knob={b['knob']!r}: the product page shows {', '.join(LINE)}")
    pattern, shown = LINE[b["knob"]]
    run = Path(cfg.run_dir)
    traces = pl.read_parquet(run / "preprocess" / "traces")
    history = add_history(traces.select("history_id", "session_idx", "step", "action").to_pandas(), int(cfg.persona.history_len))
    traces = traces.join(pl.from_pandas(history[["history_id", "session_idx", "step", "history"]]),
                         on=["history_id", "session_idx", "step"], how="left")
    steps = traces.filter(pl.col("observation").str.starts_with("page: product"))
    steps = steps.join(pl.read_parquet(run / "assign" / "types.parquet").select("history_id", "type_id"), on="history_id")
    steps = steps.with_columns(value=pl.col("observation").str.extract(pattern, 1).cast(pl.Float64),
                               buy=pl.col("action").is_in(BUY))
    if steps["value"].is_null().all():
        raise SystemExit(f"no product page in {run}/preprocess/traces shows {b['knob']} (traces made before the "
                         "delivery line: re-run preprocess)")
    scorer = ActionScorer(run / "finetune" / "model")

    def measure(group: pl.DataFrame) -> dict:
        pages = group.head(int(b["pages"]))
        model = {}
        for arm in ("low", "high"):  # each page under its own code's token, only the knob's value changed
            reqs = [ScoreRequest(int(k), with_value(obs, pattern, shown(b[arm])), list(hist), list(allowed))
                    for k, obs, hist, allowed in zip(pages["type_id"], pages["observation"], pages["history"],
                                                     pages["allowed"])]
            mass = []
            for req, lp in zip(reqs, scorer.score(reqs)):
                p = np.exp(np.asarray(lp) - np.max(lp))
                p /= p.sum()
                mass.append(float(sum(p[i] for i, a in enumerate(req.allowed) if a in BUY)))
            model[arm] = float(np.mean(mass))
        data = {arm: group.filter(pl.col("value") == float(b[arm])) for arm in ("low", "high")}
        rate = {arm: (float(d["buy"].mean()) if d.height else None) for arm, d in data.items()}
        return {
            "model_low": model["low"], "model_high": model["high"], "model_ratio": model["high"] / max(model["low"], 1e-12),
            "data_low": rate["low"], "data_high": rate["high"],
            "data_ratio": rate["high"] / rate["low"] if rate["low"] and rate["high"] is not None else None,
            "data_pages_low": data["low"].height, "data_pages_high": data["high"].height,
        }  # fmt: skip

    codes = {int(k): measure(g) for (k,), g in sorted(steps.group_by("type_id"), key=lambda kv: kv[0])}
    # on a planted world the planted types are the clean comparison: VQ codes mix types, and merchants
    # with other knobs have other mixes, so a code's data ratio also carries that composition
    planted = ({int(t): measure(g) for (t,), g in sorted(steps.group_by("planted_type"), key=lambda kv: kv[0])}
               if "planted_type" in steps.columns and steps["planted_type"].null_count() < steps.height else None)
    out = {"run_dir": str(run), "knob": b["knob"], "low": b["low"], "high": b["high"], "pages": int(b["pages"]),
           "codes": codes, "planted_types": planted}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
