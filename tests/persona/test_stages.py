"""Training stages under Ray Train: what each stage may change, save/load, checkpoint resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray.data
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from simpersona.persona import examples as ex
from simpersona.persona.finetune import (
    TRAIN_METRICS,
    StageSpec,
    data_fingerprint,
    merged,
    run_stage,
    steps_per_epoch,
    wrap_for_stage,
)
from simpersona.persona.model_loading import save
from simpersona.persona.tokens import add_persona_tokens
from simpersona.training.engine import STATE_FILE

from .conftest import K

TRAIN = {"workers": 0, "cpus_per_worker": 2, "grad_clip": 1.0, "checkpoint_every": 0, "keep_checkpoints": 2,
         "max_failures": 0, "use_gpu": False, "min_lr_ratio": 0.1}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"]}


@pytest.fixture()
def persona_base(tiny, codebook, planted_steps, tmp_path):
    model, tok = tiny
    ids = add_persona_tokens(model, tok, K, codebook, "codebook")
    save(model, tok, tmp_path / "persona_base")
    train = planted_steps.train.head(160)
    data, _ = ex.tokenize(tok, ex.prompts_for(train, "persona", K, None), train.action.tolist(), 400)
    return tmp_path, ids, data


def make_spec(tmp_path, name, mode, ids, data, **kw):
    d = dict(name=name, input_dir=str(tmp_path / "persona_base"), output_dir=str(tmp_path / name), mode=mode,
             persona_ids=ids, epochs=1, lr=5e-2, batch_size=8, warmup_steps=0, max_steps=6,
             steps_per_epoch=steps_per_epoch(len(data), 8, 1), lora=LORA, train=dict(TRAIN), seed=0,
             progress=False, data_fingerprint=data_fingerprint(data))
    d.update(kw)
    return StageSpec(**d)


def state(folder):
    return AutoModelForCausalLM.from_pretrained(str(folder)).state_dict()


def test_stage1_changes_only_persona_rows(ray_local, persona_base):
    tmp_path, ids, data = persona_base
    spec = make_spec(tmp_path, "stage1", "persona_rows", ids, data)
    metrics = run_stage(spec, ray.data.from_pandas(data), tmp_path / "ray")
    assert metrics["step"] == 6 and metrics["loss"] > 0
    before, after = state(tmp_path / "persona_base"), state(tmp_path / "stage1")
    assert before.keys() == after.keys()
    persona = torch.zeros(before["model.embed_tokens.weight"].shape[0], dtype=torch.bool)
    persona[ids] = True
    for name in before:
        if name in ("model.embed_tokens.weight", "lm_head.weight"):  # tied: the same matrix
            assert torch.equal(before[name][~persona], after[name][~persona]), name
            assert not torch.equal(before[name][persona], after[name][persona]), name
        else:
            assert torch.equal(before[name], after[name]), f"{name} changed in stage 1"
    again = run_stage(spec, ray.data.from_pandas(data), tmp_path / "ray")  # finished stage: reused
    assert again["reused"] is True


def test_stage2_trains_lora_and_persona_rows(ray_local, persona_base):
    tmp_path, ids, data = persona_base
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "persona_base"))
    spec = make_spec(tmp_path, "stage2", "lora_persona", ids, data)
    trainable = [n for n, p in wrap_for_stage(model, spec).named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    assert any("trainable_tokens_delta" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable if "lora_A" in n} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    run_stage(spec, ray.data.from_pandas(data), tmp_path / "ray")
    before, after = state(tmp_path / "persona_base"), state(tmp_path / "stage2")
    emb = "model.embed_tokens.weight"
    persona = torch.zeros(before[emb].shape[0], dtype=torch.bool)
    persona[ids] = True
    assert torch.equal(before[emb][~persona], after[emb][~persona])
    assert not torch.equal(before[emb][persona], after[emb][persona])
    for name in before:
        if name.endswith("proj.weight"):
            assert not torch.equal(before[name], after[name]), f"LoRA did not reach {name}"
        elif "norm" in name:
            assert torch.equal(before[name], after[name]), f"{name} is not a LoRA target"
    metrics = json.loads((tmp_path / "stage2" / TRAIN_METRICS).read_text())
    assert metrics["tokens_per_s"] > 0 and metrics["peak_memory_mib"] > 0


def test_save_load_round_trip_same_logits(persona_base):
    tmp_path, ids, data = persona_base
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "persona_base"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "persona_base"))
    spec = make_spec(tmp_path, "rt", "lora_persona", ids, data)
    peft_model = wrap_for_stage(model, spec)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-2)
    batch = ex.collate(data.input_ids[:8].tolist(), data.n_prompt[:8].tolist(), tok.pad_token_id)
    for _ in range(3):
        peft_model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.eval()
    x = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        adapted = peft_model(**x).logits
        plain = merged(peft_model).eval()
        merged_logits = plain(**x).logits
    save(plain, tok, tmp_path / "saved")
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved")).eval()
    tok2 = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    with torch.no_grad():
        loaded_logits = loaded(**x).logits
    assert torch.equal(loaded_logits, merged_logits)
    torch.testing.assert_close(merged_logits, adapted, atol=1e-4, rtol=1e-4)
    assert tok2.convert_tokens_to_ids([f"<|persona_{k}|>" for k in range(K)]) == ids
    assert loaded.config.persona_token_ids == ids


@pytest.mark.slow
def test_worker_failure_resumes_from_its_checkpoint_on_s3(ray_local, persona_base):
    """A Ray Train worker dies after the step-4 checkpoint, with Ray Train's storage on S3 (moto on
    loopback): the checkpoints are objects in the bucket, the restarted group continues from step 4, the
    stage's output is saved, and nothing is made on local disk for the checkpoints. (A local storage path
    is the same code with pyarrow's local filesystem; every other stage test uses one.)"""
    import pyarrow.fs as pafs
    from s3_server import MotoS3Server

    from simpersona import storage

    tmp_path, ids, data = persona_base
    train = dict(TRAIN, workers=1, cpus_per_worker=1, checkpoint_every=2, max_failures=1, fail_at_step=4)
    spec = make_spec(tmp_path, "resume_s3", "persona_rows", ids, data, train=train)
    with MotoS3Server() as server:
        server.client().create_bucket(Bucket="ckpt")
        s3 = server.s3_config()
        metrics = run_stage(spec, ray.data.from_pandas(data), "s3://ckpt/finetune/ray", s3=s3)
        fs, root = storage.resolve("s3://ckpt/finetune/ray", s3)
        objects = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                   if i.type == pafs.FileType.File]
    assert metrics["resumed_from_step"] == 4 and metrics["step"] == 6
    assert (tmp_path / "resume_s3" / "config.json").exists()
    assert any("/checkpoint_" in p and p.endswith(STATE_FILE) for p in objects), objects[:5]
    assert not list(tmp_path.glob("s3*"))


@pytest.mark.gpu
def test_stage2_on_gpu_with_bf16(ray_local, persona_base):
    """With CUDA: one worker on the GPU, bf16 autocast (DeepSpeed too when it is installed)."""
    import importlib.util

    tmp_path, ids, data = persona_base
    ds = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}} if importlib.util.find_spec("deepspeed") else {}
    train = dict(TRAIN, workers=1, cpus_per_worker=1, use_gpu=True, bf16=True, deepspeed=ds)
    spec = make_spec(tmp_path, "gpu", "lora_persona", ids, data, train=train)
    metrics = run_stage(spec, ray.data.from_pandas(data), tmp_path / "ray")
    assert metrics["step"] == 6 and np.isfinite(metrics["loss"])
    assert (tmp_path / "gpu" / "config.json").exists()
