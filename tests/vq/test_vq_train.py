"""Ray Train end to end on the planted set: recovery vs k-means, artifacts, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FAIL_AT, TRAIN_ARGS

from simpersona.config import load
from simpersona.vq.features import FeatureError
from simpersona.vq.model import load_model

pytestmark = pytest.mark.slow


def _read_json(path):
    with open(path) as fh:
        return json.load(fh)


def test_planted_run_figures(trained):
    _, s = trained
    assert s["codebook_size"] == 8 and s["kmeans"]["codebook_size"] == 8
    assert s["active_codes"] == 8 and s["dead_codes"] == 0  # no collapse
    assert s["perplexity"] >= 6.0  # 8 planted types of unequal shares
    # seen 0.713-0.794 across runs (2 DDP workers are not bit-deterministic); k-means 0.759 on this set
    assert s["nmi_planted"] >= 0.70, s["nmi_planted"]
    assert s["kmeans_nmi_planted"] == s["kmeans"]["nmi_planted"]
    for key in ("recon_loss", "seq_nll", "ari_planted", "calinski_harabasz", "silhouette", "davies_bouldin"):
        assert isinstance(s[key], float) and isinstance(s["kmeans"][key], float), key
    assert s["type_conversion"]["min"] < s["type_conversion"]["median"] < s["type_conversion"]["max"]


@pytest.fixture(scope="module")
def stage_budget_run(planted_dir, ray_local, tmp_path_factory):
    """(config, summary) of the planted set trained with the stage's own step budget: the shared run's
    arguments without its vq.train.min_steps=0, so the vqvae stage's default min_steps gives this small
    set more epochs (608 steps instead of 256), in Ray Train local mode (one process, deterministic, no
    worker-group start-up: 15-25 s on 2 cores) with the shared run's global batch of 512."""
    from simpersona.vq.train import run_training

    run_dir = tmp_path_factory.mktemp("stage_budget")
    shutil.copytree(os.path.join(planted_dir, "preprocess"), run_dir / "preprocess")
    args = [a for a in TRAIN_ARGS if not a.startswith("vq.train.min_steps=")]
    cfg = load("vqvae", [f"run_dir={run_dir}", *args, "vq.train.workers=0", "vq.train.batch_size=512"])
    # the loop's temporary checkpoint folders go to a scratch of this run's own, to see what is left there
    scratch, saved = tmp_path_factory.mktemp("scratch"), tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        summary = run_training(cfg)
    finally:
        tempfile.tempdir = saved
    return cfg, summary, scratch


def test_a_local_mode_run_leaves_no_checkpoint_folder_behind(stage_budget_run):
    """Each of the run's checkpoints was written to a temporary folder first; in local mode Ray Train's
    result points at the last one until the driver has read it, and then nothing may be left (each run
    left 13 MiB behind per stage before)."""
    _, summary, scratch = stage_budget_run
    assert summary["training"]["steps"] > 0
    assert sorted(p.name for p in scratch.glob("*-ckpt-*")) == []


def test_planted_recovery_beats_kmeans(stage_budget_run):
    """The VQ-VAE recovers the planted types better than the k-means peer fitted and measured in the
    same run (same histories, same K). Measured: NMI 0.814 vs 0.759, ARI 0.827 vs 0.755; on planted
    sets of seeds 1, 2, 4 NMI 0.825/0.790, 0.840/0.796, 0.838/0.718. With the shared run's 256 steps it
    does not hold every time (VQ 0.71-0.79 over runs; in local mode on seeds 1 and 2 0.778 and 0.773,
    below k-means): the neural EM needs the stage's step budget to improve on its k-means start."""
    cfg, s, _ = stage_budget_run
    assert int(cfg.vq.train.min_steps) > 256 and s["training"]["steps"] >= int(cfg.vq.train.min_steps)
    assert s["codebook_size"] == s["kmeans"]["codebook_size"] == 8
    assert s["kmeans_nmi_planted"] == s["kmeans"]["nmi_planted"]
    figures = {k: (round(s[f"{k}_planted"], 3), round(s["kmeans"][f"{k}_planted"], 3)) for k in ("nmi", "ari")}
    assert s["nmi_planted"] > s["kmeans"]["nmi_planted"], figures
    assert s["ari_planted"] > s["kmeans"]["ari_planted"], figures


def test_artifacts(trained):
    run_dir, s = trained
    out = os.path.join(run_dir, "vqvae")
    model, spec, meta = load_model(os.path.join(out, "model"))
    codebook = np.load(os.path.join(out, "codebook.npy"))
    assert codebook.dtype == np.float32 and codebook.shape == (8, 8)
    assert np.allclose(codebook, model.codebook.numpy())
    assert os.path.exists(os.path.join(out, "model", "kmeans.npz"))
    epochs = _read_json(os.path.join(out, "metrics.json"))["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(8))
    for e in epochs:
        for key in ("loss_total", "loss_agg", "loss_seq", "perplexity", "active_codes", "dead_codes",
                    "auc_purchase", "auc_cart_abandon", "histories_per_s"):
            assert key in e, key
    assert epochs[-1]["loss_total"] < epochs[0]["loss_total"]
    assert epochs[-1]["auc_purchase"] > 0.6  # the heads read only the code (measured 0.68-0.79)
    assert s["training"]["steps"] == 8 * 32 and meta["steps"] == 8 * 32
    assert _read_json(os.path.join(out, "summary.json"))["nmi_planted"] == s["nmi_planted"]


def test_resume_after_worker_failure(trained, tmp_path):
    """The shared run lost worker 0 at step FAIL_AT; the restarted workers resumed from that step's
    checkpoint and reach the step count and final loss of an uninterrupted run with the same global
    batch (Ray Train local mode, one process with 2 x 256 rows per step)."""
    from simpersona.vq.train import run_training

    planted_dir, s = trained
    assert s["training"]["resumed_from_steps"] == [FAIL_AT]
    run_dir = tmp_path / "reference"
    shutil.copytree(os.path.join(planted_dir, "preprocess"), run_dir / "preprocess")
    cfg = load("vqvae", [f"run_dir={run_dir}", *TRAIN_ARGS, "vq.train.workers=0", "vq.train.batch_size=512",
                               "vq.eval.max_rows=2000"])
    ref = run_training(cfg)
    assert ref["training"]["resumed_from_steps"] == []
    assert s["training"]["steps"] == ref["training"]["steps"] == 8 * 32
    assert s["training"]["epochs"] == ref["training"]["epochs"] == 8
    assert abs(s["training"]["final_loss"] - ref["training"]["final_loss"]) < 0.05 * ref["training"]["final_loss"]


def _variant(src: str, dst, transform) -> str:
    """A copy of src's preprocess/ with every feature table passed through transform(table, index)."""
    shutil.copytree(os.path.join(src, "preprocess"), dst / "preprocess")
    files = sorted((dst / "preprocess" / "features").glob("*.parquet"))
    for i, f in enumerate(files):
        pq.write_table(transform(pq.read_table(f), i), f)
    return str(dst)


def _set_agg(table: pa.Table, agg: np.ndarray) -> pa.Table:
    col = pa.FixedSizeListArray.from_arrays(pa.array(agg.ravel(), pa.float32()), agg.shape[1])
    return table.set_column(table.schema.get_field_index("agg"), "agg", col)


def _agg(table: pa.Table) -> np.ndarray:
    arr = table["agg"].combine_chunks()
    return arr.values.to_numpy().reshape(len(arr), -1).copy()


def test_wrong_feature_width(planted_dir, tmp_path, ray_local):
    from simpersona.vq.train import run_training

    run_dir = _variant(planted_dir, tmp_path, lambda t, i: _set_agg(t, _agg(t)[:, :-1]))
    cfg = load("vqvae", [f"run_dir={run_dir}", *TRAIN_ARGS])
    with pytest.raises(FeatureError, match=r"column 'agg' has width 14, feature_spec.json says 15 \(agg_names\)"):
        run_training(cfg)


def test_nan_features(planted_dir, tmp_path, ray_local):
    """NaNs beyond the evaluation sample are found by the validation pass on the Ray Data workers."""
    from simpersona.vq.train import run_training

    def poison(t, i):
        if i != 2:
            return t
        agg = _agg(t)
        agg[10:13, 0] = np.nan
        return _set_agg(t, agg)

    run_dir = _variant(planted_dir, tmp_path, poison)
    cfg = load("vqvae", [f"run_dir={run_dir}", *TRAIN_ARGS, "vq.eval.max_rows=100"])
    with pytest.raises(FeatureError) as err:
        run_training(cfg)
    assert str(err.value) == "column 'agg' has 3 NaN/inf values in 3 rows (features ['log_view'])"


def test_empty_features(planted_dir, tmp_path, ray_local):
    from simpersona.vq.train import run_training

    run_dir = _variant(planted_dir, tmp_path, lambda t, i: t.slice(0, 0))
    cfg = load("vqvae", [f"run_dir={run_dir}", *TRAIN_ARGS])
    with pytest.raises(FeatureError, match=r"no histories in .*/preprocess/features: nothing to train on"):
        run_training(cfg)


def test_empty_shard(planted_arrays, tmp_path, ray_local):
    """The training loop itself refuses an empty shard (Ray Train local mode: no worker start-up)."""
    import ray.data

    from simpersona.vq.train import TRAIN_COLUMNS, fit, loop_config

    spec, _ = planted_arrays
    cfg = load("vqvae", [f"run_dir={tmp_path}", *TRAIN_ARGS, "vq.train.workers=0"])
    empty = ray.data.from_arrow(_empty_features(spec))
    with pytest.raises(FeatureError, match=r"worker 0: its shard of the training data is empty \(epoch 0\)"):
        fit(cfg, empty.select_columns(list(TRAIN_COLUMNS)), loop_config(cfg, spec, 1))


def _empty_features(spec) -> pa.Table:
    L, F = spec.seq_len, spec.agg_width
    seq = {c: pa.FixedSizeListArray.from_arrays(pa.array([], pa.int8()), L)
           for c in ("seq_event", "seq_price", "seq_gap", "seq_flags")}
    return pa.table({**seq, "agg": pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), F),
                     "label_purchase": pa.array([], pa.int8()), "label_cart_abandon": pa.array([], pa.int8()),
                     "label_depth": pa.array([], pa.float32())})
