"""Training stages under Ray Train: one TorchTrainer run per stage, model folder in, model folder out.

Stage modes (what trains; everything else is frozen and stays bit-identical):
  full          every weight (the small model's from-scratch pre-training; stage 2 with stage2_mode=full)
  persona_rows  only the persona-token embedding rows (stage 1): PEFT trainable tokens, which keep the
                rest of the embedding matrix, and a tied output head, untouched
  lora_persona  LoRA adapters + the persona rows (stage 2)
  lora          LoRA adapters only (the no-persona and prose-persona baselines)

A stage reads `input_dir` (a save_pretrained folder), trains on the "train" Ray Dataset (rows of
token ids, see simpersona.persona.examples), and rank 0 writes the merged weights + tokenizer to
`output_dir` with save_pretrained, then a `stage.json` marker. Resuming: a stage whose marker carries
the same fingerprint (spec + data) is skipped; an interrupted stage is re-run under the same Ray Train
run name, and Ray Train hands the loop its latest checkpoint (trainable weights, optimizer, scheduler,
position), from which it continues. With GPUs and a `deepspeed` config the step goes through a
DeepSpeed engine (bf16, ZeRO from the config); DeepSpeed is imported only on that path.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch

from simpersona import storage
from simpersona.persona.config import PersonaLoraConfig, PersonaTrainConfig
from simpersona.persona.examples import collate
from simpersona.training.checkpoints import Checkpoints, inject_failure, local_checkpoints_released
from simpersona.training.engine import Engine, deepspeed_config, warmup_cosine

STAGE_MODES = ("full", "persona_rows", "lora_persona", "lora")
MARKER = "stage.json"
TRAIN_METRICS = "train_metrics.json"  # the loop's final metrics (Result.metrics holds the last checkpoint's)


@dataclass
class StageSpec:
    name: str
    input_dir: str
    output_dir: str
    mode: str
    persona_ids: list[int] = field(default_factory=list)
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 16
    warmup_steps: int = 0
    max_steps: int = 0
    steps_per_epoch: int = 1  # per worker; the driver computes it from the dataset size
    lora: PersonaLoraConfig = field(default_factory=PersonaLoraConfig)
    train: PersonaTrainConfig = field(default_factory=PersonaTrainConfig)
    seed: int = 0
    progress: bool = True
    data_fingerprint: str = ""
    input_fingerprint: str = ""  # of the input model folder: a changed upstream stage invalidates this one

    def __post_init__(self):
        # a spec handed to the Ray Train workers travels as asdict(spec): its sections come back as dicts
        if isinstance(self.lora, dict):
            self.lora = PersonaLoraConfig(**self.lora)
        if isinstance(self.train, dict):
            self.train = PersonaTrainConfig(**self.train)
        if self.mode not in STAGE_MODES:
            raise ValueError(f"stage {self.name}: mode must be one of {STAGE_MODES}, got {self.mode!r}")
        if self.mode in ("persona_rows", "lora_persona") and not self.persona_ids:
            raise ValueError(f"stage {self.name}: mode {self.mode} needs the persona token ids")

    def fingerprint(self) -> str:
        d = asdict(self)
        d.pop("progress")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def total_steps(self) -> int:
        total = self.epochs * self.steps_per_epoch
        return min(total, self.max_steps) if self.max_steps > 0 else total


def folder_fingerprint(folder: str | Path) -> str:
    """Content hash of a save_pretrained folder (weights, config, tokenizer); markers and metrics excluded."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.name not in (MARKER, TRAIN_METRICS):
            h.update(path.name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def data_fingerprint(df) -> str:
    h = hashlib.sha256()
    for ids in df["input_ids"]:
        h.update(np.asarray(ids, dtype=np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


# ---- model preparation --------------------------------------------------------------------------
def embedding_module_name(model) -> str:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.rsplit(".", 1)[-1]
    raise ValueError("the model's input embedding is not one of its modules")


def lora_target_modules(lora: PersonaLoraConfig):
    targets = list(lora.target_modules)
    return "all-linear" if targets == ["all-linear"] else targets


def wrap_for_stage(model, spec: StageSpec):
    """The model with exactly the stage's parameters trainable (a peft model except for `full`)."""
    from peft import LoraConfig, TrainableTokensConfig, get_peft_model

    if spec.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    emb = embedding_module_name(model)
    if spec.mode == "persona_rows":
        return get_peft_model(model, TrainableTokensConfig(target_modules=[emb], token_indices=list(spec.persona_ids)))
    lora = spec.lora
    cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora_target_modules(lora), task_type="CAUSAL_LM",
        trainable_token_indices={emb: list(spec.persona_ids)} if spec.mode == "lora_persona" else None,
    )
    return get_peft_model(model, cfg)


def merged(model):
    """A plain transformers model with the stage's trained weights folded in."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- the loop -----------------------------------------------------------------------------------
RESUME_HINT = "delete it or rerun with finetune.train.resume=false"


def make_engine(model, spec: StageSpec, use_gpu: bool, world_size: int) -> Engine:
    """Plain PyTorch (bf16 autocast on GPU), or DeepSpeed when train.deepspeed is set and CUDA is used."""
    tcfg = spec.train
    ds = deepspeed_config(tcfg.deepspeed, batch_size=spec.batch_size, grad_clip=tcfg.grad_clip, bf16=tcfg.bf16) \
        if use_gpu and tcfg.deepspeed else None
    return Engine(model, lr=spec.lr, weight_decay=tcfg.weight_decay, grad_clip=tcfg.grad_clip,
                  world_size=world_size, deepspeed=ds, autocast_bf16=use_gpu and tcfg.bf16, trainable_only=True,
                  ddp_kwargs={"move_to_device": False}, resume_hint=RESUME_HINT)


def lm_loss(batch: dict[str, torch.Tensor]):
    """The engine's loss function for one batch of prompt + target token ids."""
    def loss_fn(net):
        return net(**batch).loss, None
    return loss_fn


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; reads only `config` ({"spec": StageSpec as a dict})."""
    import ray.train
    import ray.train.torch
    from tqdm.auto import tqdm

    from simpersona.persona.model_loading import load_saved, save

    spec = StageSpec(**config["spec"])
    tcfg = spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = tcfg.use_gpu and torch.cuda.is_available()
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    if not use_gpu:
        torch.set_num_threads(worker_threads(tcfg))
    torch.manual_seed(spec.seed + rank)

    model, tokenizer = load_saved(spec.input_dir)
    model = wrap_for_stage(model, spec).to(device)
    engine = make_engine(model, spec, use_gpu, world)
    checkpoints = Checkpoints(engine, rank, prefix=spec.name)
    total = max(1, spec.total_steps())
    min_lr_ratio = tcfg.min_lr_ratio
    progress = checkpoints.resume() or {"epoch": 0, "batch": 0, "step": 0, "history": []}
    epoch0, skip, step, history = progress["epoch"], progress["batch"], progress["step"], progress["history"]
    resumed_from = step  # > 0 when Ray Train handed this run a checkpoint

    def report(metrics: dict, epoch: int, batch: int) -> None:
        checkpoints.report(metrics, {"epoch": epoch, "batch": batch, "step": step, "history": history})

    shard = ray.train.get_dataset_shard("train")
    every = tcfg.checkpoint_every
    fail_at = tcfg.fail_at_step
    pad_id = tokenizer.pad_token_id
    done = spec.max_steps > 0 and step >= spec.max_steps
    t_start = time.perf_counter()
    tokens_seen = 0
    for epoch in range(epoch0, spec.epochs):
        if done:
            break
        loss_sum, loss_tokens, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(total=spec.steps_per_epoch, desc=f"{spec.name} epoch {epoch + 1}/{spec.epochs}",
                   disable=not (spec.progress and rank == 0), leave=False)
        batch_idx = -1
        for batch_idx, rows in enumerate(shard.iter_batches(batch_size=spec.batch_size, batch_format="numpy")):
            if epoch == epoch0 and batch_idx < skip:
                continue
            batch = {k: v.to(device) for k, v in collate(rows["input_ids"], rows["n_prompt"], pad_id).items()}
            n_target = int((batch["labels"] != -100).sum())
            lr = warmup_cosine(step, total, spec.lr, spec.warmup_steps, min_lr_ratio)
            loss, _ = engine.step(lm_loss(batch), lr)
            step += 1
            loss_sum += float(loss.detach()) * n_target
            loss_tokens += n_target
            tokens_seen += int(batch["attention_mask"].sum())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / max(1, loss_tokens):.3f}")
            if spec.max_steps > 0 and step >= spec.max_steps:
                done = True
                break
            if (every and step % every == 0) or step == fail_at:
                report({"stage": spec.name, "step": step, "epoch": epoch}, epoch, batch_idx + 1)
            inject_failure(step, fail_at, resumed_from > 0, rank, f"stage {spec.name}, finetune.train.fail_at_step")
        bar.close()
        history.append({"epoch": epoch, "loss": loss_sum / max(1, loss_tokens), "wall_s": time.perf_counter() - t0})
        report({"stage": spec.name, "step": step, "epoch": epoch, "loss": history[-1]["loss"]}, epoch + 1, 0)

    wall = time.perf_counter() - t_start
    final = {
        "stage": spec.name, "step": step, "epochs": history,
        "loss": history[-1]["loss"] if history else float("nan"),
        "tokens_per_s": tokens_seen * max(1, world) / wall if wall > 0 and tokens_seen else 0.0,
        "train_wall_s": wall, "peak_memory_mib": peak_memory_mib(device), "world_size": max(1, world),
        "resumed_from_step": resumed_from,
    }
    if rank == 0:
        out = merged(engine.module).eval()
        save(out, tokenizer, spec.output_dir)
        Path(spec.output_dir, TRAIN_METRICS).write_text(json.dumps(final, indent=1))
    ray.train.report(final)


# ---- the driver ---------------------------------------------------------------------------------
def steps_per_epoch(n_rows: int, batch_size: int, workers: int) -> int:
    return max(1, math.ceil((n_rows // max(1, workers)) / batch_size))


def run_stage(spec: StageSpec, dataset, storage_path: str | Path, resume: bool = True, s3=None) -> dict:
    """Run one stage with a Ray Train TorchTrainer (or reuse its finished output); returns its metrics.
    `storage_path` (Ray Train's checkpoints) is a local folder or an s3:// URI, reached with `s3` (S3Config)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fp = spec.fingerprint()
    marker = Path(spec.output_dir) / MARKER
    if resume and marker.exists():
        done = json.loads(marker.read_text())
        if done.get("fingerprint") == fp:
            return dict(done["metrics"], reused=True)
    tcfg = spec.train
    workers = tcfg.workers
    name = f"{spec.name}-{fp}"
    if storage.is_s3(str(storage_path)):  # the filesystem carries the endpoint and keys; nothing goes in env vars
        filesystem, train_root = storage.resolve(str(storage_path), s3)
    else:
        filesystem, train_root = None, str(Path(storage_path).resolve())
    if not resume:
        if filesystem is None:
            shutil.rmtree(Path(train_root) / name, ignore_errors=True)
        elif filesystem.get_file_info(f"{train_root}/{name}").type == pafs.FileType.Directory:
            filesystem.delete_dir(f"{train_root}/{name}")
    for stale in (marker, Path(spec.output_dir) / TRAIN_METRICS):
        stale.unlink(missing_ok=True)
    if workers == 0:
        scaling = ScalingConfig(num_workers=0)  # Ray Train local mode: the loop runs in this process
    else:
        use_gpu = tcfg.use_gpu and _cluster_has_gpus()
        resources = {"CPU": float(tcfg.cpus_per_worker)}
        if use_gpu:
            resources["GPU"] = 1.0
        scaling = ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources)
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": asdict(spec)},
        scaling_config=scaling,
        run_config=RunConfig(
            name=name, storage_path=train_root, storage_filesystem=filesystem,
            worker_runtime_env={"env_vars": worker_env(tcfg)},
            checkpoint_config=CheckpointConfig(num_to_keep=tcfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=tcfg.max_failures),
        ),
        datasets={"train": dataset},
    )
    with local_checkpoints_released():
        trainer.fit()
    out = Path(spec.output_dir)
    if not (out / "config.json").exists() or not (out / TRAIN_METRICS).exists():
        raise RuntimeError(f"stage {spec.name} finished without writing {spec.output_dir}")
    metrics = json.loads((out / TRAIN_METRICS).read_text())
    metrics["wall_s"] = time.perf_counter() - t0
    marker.write_text(json.dumps({"fingerprint": fp, "metrics": metrics}, indent=1, default=str))
    return metrics


def worker_threads(tcfg: PersonaTrainConfig) -> int:
    """Torch threads of a CPU training worker: train.torch_threads, else its CPUs."""
    return tcfg.torch_threads or max(1, int(tcfg.cpus_per_worker))


def worker_env(tcfg: PersonaTrainConfig) -> dict[str, str]:
    """Thread settings of the training workers. OpenMP's default busy-waiting turns a short step into
    seconds as soon as the cores are shared with anything else; passive waiting costs nothing when the
    cores are free."""
    return {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(worker_threads(tcfg)),
            "TOKENIZERS_PARALLELISM": "false"}


def _cluster_has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
