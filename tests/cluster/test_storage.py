"""One storage root for the stages: s3://bucket/prefix against a real S3 API on loopback.

preprocess on S3 equals the local run row for row. The VQ stage functions, called directly with an s3://
run dir, read and write S3 themselves (Ray Train checkpoints included). The whole pipeline on S3 through
the stage runner, compared with a local run and a submitted job, is tests/cluster/test_pipeline_storage.py."""

from __future__ import annotations

import io as pyio
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cluster.conftest import run_job
from cluster.outputs import assert_same_output, summary_output
from simpersona import storage
from simpersona.data import io

DRIVER = "tests/cluster/stage_driver.py"


@pytest.mark.slow
def test_preprocess_on_s3_equals_the_local_run(s3, s3_preprocess, clean_preprocess):
    fs, root = storage.resolve(s3_preprocess.uri, s3.s3_config())
    counts = assert_same_output(str(clean_preprocess), f"{root}/preprocess", fs)
    assert counts == {"features": 57655, "traces": 52907, "events": 182880}
    with fs.open_input_stream(f"{root}/preprocess/summary.json") as fh:
        remote = summary_output(fh.read())
    assert remote == summary_output((clean_preprocess / "summary.json").read_text())
    assert f"{s3_preprocess.uri}/preprocess" in s3_preprocess.done.stdout  # where the job said it wrote


@pytest.mark.slow
def test_vqvae_and_assign_on_an_s3_run_dir(ray_head, s3, s3_preprocess):
    """run_dir=s3://runs/pre: Ray Train checkpoints, the model, codebook and type tables all land in S3.
    Endpoint and keys come from the standard AWS variables, passed to the workers in the runtime env."""
    cfg = s3.s3_config()
    aws = {"AWS_ENDPOINT_URL": cfg.endpoint_url, "AWS_REGION": cfg.region, "AWS_ACCESS_KEY_ID": cfg.access_key,
           "AWS_SECRET_ACCESS_KEY": cfg.secret_key}
    # one Ray Train worker (smoke trains in local mode, which keeps no checkpoints)
    done = run_job([DRIVER, "vqvae,assign", f"run_dir={s3_preprocess.uri}", "config=smoke", "vq.train.workers=1",
                    "progress=false"],
                   {**ray_head.job_env(), **aws}, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[7:])

    fs, root = storage.resolve(s3_preprocess.uri, cfg)

    def read(key: str) -> bytes:
        with fs.open_input_stream(f"{root}/{key}") as fh:
            return fh.read()

    vq = json.loads(read("vqvae/summary.json"))
    assert vq["training"]["steps"] == result["vqvae"]["training"]["steps"] > 0
    checkpoints = vq["training"]["checkpoints"]
    assert checkpoints.startswith(f"{s3_preprocess.uri}/checkpoints/vqvae/"), checkpoints
    assert any(i.base_name.startswith("checkpoint_") for i in fs.get_file_info(
        io.pafs.FileSelector(storage.resolve(checkpoints, cfg)[1])))
    codebook = np.load(pyio.BytesIO(read("vqvae/codebook.npy")))
    assert codebook.shape == (16, 8) and np.isfinite(codebook).all()  # smoke: K=16, codebook_dim 8
    assert {"model.pt", "model.json", "kmeans.npz"} <= {i.base_name for i in fs.get_file_info(
        io.pafs.FileSelector(f"{root}/vqvae/model"))}

    types = pq.read_table(pyio.BytesIO(read("assign/types.parquet")))
    assert types.num_rows == 57655 and len(types["history_id"].unique()) == 57655  # every history once
    assert pc.min(types["type_id"]).as_py() >= 0 and pc.max(types["type_id"]).as_py() < 16
    mt = pq.read_table(pyio.BytesIO(read("assign/merchant_types.parquet"))).to_pandas()
    assert np.allclose(mt.groupby("merchant_id")["prob"].sum(), 1.0)
    assert json.loads(read("assign/summary.json")) and "types" in json.loads(read("assign/type_profiles.json"))
