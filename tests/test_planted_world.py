"""A small planted world through the pipeline, from the generator to the fine-tuned policy.

`python ray_jobs/pipeline.py config=planted` made small: planted buyer types, VQ codes learnt from their
clickstreams, persona tokens, the two-stage fine-tune. The codes must recover the planted types better than
k-means, and on held-out histories the persona model must predict actions better than the no-persona model
trained on the same examples and worse under another type's token, and sessions it samples on the storefront
model under each type's token must order the types by how often their real sessions buy: tests that fail
when the policy ignores its persona token. (The browser half of the chain is the smoke pipeline's, tests/test_pipeline_e2e.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PY if VENV_PY.exists() else Path(sys.executable))
SMALL_WORLD = [
    "config=planted", "pipeline.stages=[synthetic,preprocess,vqvae,assign,finetune]", "progress=false",
    "synth.buyers=8000", "synth.merchants=24", "eval.holdout.merchants=6", "vq.model.codebook_size=8",
    # Ray Train's local mode: a worker group's start-up cost more than the 300 steps themselves on 2 cores
    "vq.train.workers=0", "persona.max_train_examples=4000", "persona.model.small.tokenizer_examples=4000",
    "persona.eval.max_steps=600", "persona.eval.rollouts_per_type=24",
]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("planted") / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([PYTHON, "ray_jobs/pipeline.py", f"run_dir={run_dir}", *SMALL_WORLD], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return run_dir


def test_persona_model_beats_no_persona_on_held_out_histories(planted_run):
    s = json.loads((planted_run / "finetune" / "summary.json").read_text())
    assert s["heldout_nll_persona"] < s["heldout_nll_no_persona"] - 0.02, s
    assert s["heldout_nll_mismatch"] > s["heldout_nll_persona"], s


def test_persona_tokens_order_the_types_by_how_often_they_buy(planted_run):
    # 8 types, 24 sampled sessions each: a policy blind to its token orders them by chance (a Spearman of 0.6
    # or more about one time in 16); under another type's token the order must break down
    s = json.loads((planted_run / "finetune" / "summary.json").read_text())
    rollouts = {k: s[k] for k in s if k.startswith("type_conversion")}
    assert s["type_conversion_spearman"] >= 0.6, rollouts
    assert s["type_conversion_spearman"] > s["type_conversion_spearman_mismatch"] + 0.5, rollouts


def test_planted_types_are_recovered_by_the_codes_better_than_kmeans(planted_run):
    vq = json.loads((planted_run / "vqvae" / "summary.json").read_text())
    recovery = {k: v for k, v in vq.items() if "planted" in k}
    assert vq["nmi_planted"] >= 0.6 and vq["nmi_planted"] > vq["kmeans_nmi_planted"], recovery
    assert vq["homogeneity_planted"] >= vq["kmeans_homogeneity_planted"], recovery
