"""Training the VQ-VAE with Ray Train, with the k-means peer and the stage summary around it.

`train_loop_per_worker(config)` reads only its config and its Ray Data shard. It checkpoints every
`checkpoint_every` steps and at every epoch end (model, optimiser, step, position in the epoch and the
per-epoch metrics so far) to the run's storage; whenever it starts with a checkpoint — a worker-group
restart after a failure, or a new run of the job with the same storage and run name — it resumes from
it, skipping the batches of the current epoch it had already trained on. Each epoch reports the
reconstruction losses, code perplexity, active and dead codes, and the behaviour heads' AUCs.

`run_training(cfg)` (the `vqvae` stage): reads a fixed sample of the features (the first
vq.eval.max_rows histories), fits the k-means peer on its training-merchant part, validates every
feature row in a Ray Data pass that also labels it with its initial code (`init_code`: the k-means
partition refined by the closed-form mixture EM of simpersona.vq.mixture; the first
vq.train.em_init_steps EM steps take it as their E-step), trains on the histories of training
merchants (eval.holdout's held-out merchants are excluded), and writes DIR/vqvae/model/ (+ kmeans.npz),
codebook.npy, metrics.json and summary.json (both models measured on the same sample).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping

import numpy as np
import torch
from omegaconf import OmegaConf

from simpersona import storage
from simpersona.training.checkpoints import (
    Checkpoints,
    UnsafeCheckpoint,
    inject_failure,
    load_tensors,
    local_checkpoints_released,
)
from simpersona.training.engine import STATE_FILE, Engine, deepspeed_config, load_client, warmup_cosine
from simpersona.vq import metrics
from simpersona.vq.features import (
    LABEL_COLUMNS,
    SEQ_COLUMNS,
    FeatureError,
    FeatureSpec,
    arrays_from_arrow,
    features_uri,
    load_spec,
)
from simpersona.vq.model import LOSS_NAMES, BuyerVQVAE, build_model, to_tensors

TRAIN_COLUMNS: tuple[str, ...] = SEQ_COLUMNS + ("agg",) + LABEL_COLUMNS
INIT_COLUMN = "init_code"  # the k-means peer's cluster per history (simpersona.vq.dataset.validated)
REPORTED_LOSSES: tuple[str, ...] = ("total", "code", "commit") + LOSS_NAMES


class CheckpointMismatch(ValueError):
    """A checkpoint written for another model or feature layout than the current config's."""


def lr_at(step: int, total: int, train: Mapping) -> float:
    return warmup_cosine(step, total, float(train["lr"]), int(train["warmup_steps"]), float(train["min_lr_ratio"]))


RESUME_HINT = "delete it or rerun with vq.train.resume=false"


def make_engine(model: BuyerVQVAE, train: Mapping, world_size: int) -> Engine:
    """Plain PyTorch, or DeepSpeed (ZeRO at train.zero_stage, bf16) when asked for and CUDA is present."""
    use_deepspeed = bool(train["deepspeed"]) and bool(train["use_gpu"]) and torch.cuda.is_available()
    ds = deepspeed_config({"zero_optimization": {"stage": int(train["zero_stage"])}},
                          batch_size=int(train["batch_size"]), grad_clip=float(train["grad_clip"]),
                          bf16=True) if use_deepspeed else None
    # the quantizer keeps its buffers in sync itself (all-reduced EMA statistics); broadcasting them from
    # rank 0 before every forward would only add a collective per step
    engine = Engine(model, lr=float(train["lr"]), weight_decay=float(train["weight_decay"]),
                    grad_clip=float(train["grad_clip"]), world_size=world_size, deepspeed=ds,
                    ddp_kwargs={"parallel_strategy_kwargs": {"broadcast_buffers": False}}, resume_hint=RESUME_HINT)
    if engine.is_deepspeed:  # DeepSpeed casts the whole module to bf16; EMA statistics in bf16 lose the
        for buf in engine.module.vq.buffers():  # small per-step updates, so they stay float32
            if buf.is_floating_point():
                buf.data = buf.data.float()
    return engine


def vq_loss(batch: Mapping[str, torch.Tensor]):
    """The engine's loss function for one batch: the total loss, with the model's outputs kept."""
    def loss_fn(net):
        outputs, indices, losses = net(batch)
        return losses["total"], (outputs, indices, losses)
    return loss_fn


class EpochMeter:
    """Per-epoch sums on one worker, combined across workers in `finish`."""

    def __init__(self, k: int, sample_per_batch: int):
        self.k, self.sample_per_batch = k, sample_per_batch
        self.rows = 0
        self.loss_sums = {name: 0.0 for name in REPORTED_LOSSES}
        self.counts = np.zeros(k, dtype=np.int64)
        self.samples: dict[str, list[np.ndarray]] = {c: [] for c in ("p", "yp", "c", "yc", "d", "yd")}
        self.start = time.perf_counter()

    def update(self, batch: Mapping, outputs: Mapping, indices: torch.Tensor, losses: Mapping) -> None:
        n = len(indices)
        self.rows += n
        for name in REPORTED_LOSSES:
            if name in losses:
                self.loss_sums[name] += float(losses[name].detach()) * n
        self.counts += np.bincount(indices.cpu().numpy(), minlength=self.k)[: self.k]
        m = self.sample_per_batch
        with torch.no_grad():
            for key, value in (("p", torch.sigmoid(outputs["purchase_logit"].float())), ("yp", batch["label_purchase"]),
                               ("c", torch.sigmoid(outputs["cart_abandon_logit"].float())),
                               ("yc", batch["label_cart_abandon"]), ("d", outputs["depth"].float()),
                               ("yd", batch["label_depth"])):
                self.samples[key].append(value[:m].detach().float().cpu().numpy())

    def finish(self, world_size: int) -> dict:
        """Metrics over all workers: mean losses, code usage, head AUCs, throughput."""
        sums = np.array([self.rows, *self.loss_sums.values()], dtype=np.float64)
        counts = self.counts.astype(np.float64)
        samples = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.samples.items()}
        elapsed = time.perf_counter() - self.start
        if world_size > 1:
            import torch.distributed as dist

            t = torch.from_numpy(np.concatenate([sums, counts]))
            dist.all_reduce(t)
            sums, counts = t[: len(sums)].numpy(), t[len(sums):].numpy()
            gathered: list = [None] * world_size
            dist.all_gather_object(gathered, samples)
            samples = {k: np.concatenate([g[k] for g in gathered]) for k in samples}
            e = torch.tensor([elapsed], dtype=torch.float64)
            dist.all_reduce(e, op=dist.ReduceOp.MAX)
            elapsed = float(e[0])
        rows = max(sums[0], 1.0)
        out = {f"loss_{name}": float(s / rows) for name, s in zip(self.loss_sums, sums[1:])}
        out.update(metrics.usage_from_counts(counts))
        out["auc_purchase"] = metrics.auc(samples["yp"], samples["p"])
        out["auc_cart_abandon"] = metrics.auc(samples["yc"], samples["c"])
        out["depth_mse"] = float(np.mean((samples["d"] - samples["yd"]) ** 2)) if samples["d"].size else None
        out["histories"] = int(sums[0])
        out["epoch_s"] = round(elapsed, 3)
        out["histories_per_s"] = round(sums[0] / max(elapsed, 1e-9), 1)
        return out


class ShardChunks:
    """The worker's shard as chunks of ~shuffle_rows rows, kept in memory after the first epoch when
    `cache` is set: each pass over a streaming split starts a Ray Data execution, which cost seconds
    per epoch here — more than a whole epoch of training on a small set."""

    def __init__(self, shard, batch_size: int, shuffle_rows: int, cache: bool):
        self.shard, self.cache = shard, cache
        self.chunk = batch_size * max(1, -(-shuffle_rows // batch_size))  # a multiple of batch_size
        self.tables: list = []
        self.complete = False

    def __call__(self, rng: np.random.Generator):
        if self.complete:
            for i in rng.permutation(len(self.tables)):
                yield self.tables[i]
            return
        self.tables = []
        for table in self.shard.iter_batches(batch_size=self.chunk, batch_format="pyarrow"):
            if self.cache:
                self.tables.append(table)
            yield table
        self.complete = self.cache


def shuffled_batches(chunks, batch_size: int, seed: int):
    """Batches of `batch_size` rows, shuffled within each chunk. Every worker of an equal split gets
    the same number of rows, hence of batches, which DDP needs."""
    rng = np.random.default_rng(seed)
    for table in chunks(rng):
        table = table.take(rng.permutation(table.num_rows))
        for lo in range(0, table.num_rows, batch_size):
            yield table.slice(lo, batch_size)


def _fingerprint(config: Mapping) -> dict:
    """What a checkpoint must agree with to be resumed: the architecture and the feature layout."""
    return {"model": dict(config["model"]), "feature_spec": dict(config["feature_spec"])}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: train on this worker's shard of the "train" dataset (see module doc)."""
    import ray.train

    train = config["train"]
    torch.set_num_threads(int(train["torch_threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec = FeatureSpec.from_dict(config["feature_spec"])
    torch.manual_seed(int(config["seed"]))  # identical initial weights on every worker
    model = build_model(spec, config["model"], config["loss"])
    engine = make_engine(model, train, world)
    device = next(engine.module.parameters()).device
    checkpoints = Checkpoints(engine, rank, prefix="vqvae")

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "fingerprint": _fingerprint(config)}
    loaded = checkpoints.resume()
    resumed = loaded is not None
    if resumed:
        if loaded["fingerprint"] != json.loads(json.dumps(state["fingerprint"])):  # as stored: JSON
            raise CheckpointMismatch(
                "the checkpoint to resume from was trained with another vq.model config or feature spec; "
                "rerun with vq.train.resume=false to start over")
        state = {**loaded, "resumed_from": loaded.get("resumed_from", []) + [loaded["step"]]}

    epochs, per_epoch = int(train["epochs"]), int(config["steps_per_epoch"])
    total = epochs * per_epoch
    if int(train["max_steps"]) > 0:
        total = min(total, int(train["max_steps"]))
    every, fail_at = int(train["checkpoint_every"]), int(train["fail_at_step"])
    init_steps = min(int(train["em_init_steps"]), total // 4)  # EM itself gets at least 3/4 of the run
    chunks = ShardChunks(ray.train.get_dataset_shard("train"), int(train["batch_size"]), int(train["shuffle_rows"]),
                         bool(train["cache_shard"]))

    def save(metrics_: dict) -> None:
        checkpoints.report({**metrics_, "step": state["step"], "epoch": state["epoch"]}, state)

    while state["epoch"] < epochs and state["step"] < total:
        epoch, skip = state["epoch"], state["batch_in_epoch"]
        meter = EpochMeter(model.codebook_size, max(1, int(train["metrics_rows"]) // max(per_epoch, 1)))
        batches, stopped = 0, False
        seed = int(config["seed"]) * 100003 + epoch * 101 + rank
        for i, table in enumerate(shuffled_batches(chunks, int(train["batch_size"]), seed)):
            batches += 1
            if i < skip:  # trained on before the checkpoint we resumed from
                continue
            if state["step"] >= total:  # max_steps reached with batches left in this epoch
                stopped = True
                break
            batch = to_tensors(arrays_from_arrow(table, spec), device)
            if state["step"] < init_steps and INIT_COLUMN in table.column_names:
                batch[INIT_COLUMN] = torch.from_numpy(table[INIT_COLUMN].to_numpy().astype(np.int64)).to(device)
            _, (outputs, indices, losses) = engine.step(vq_loss(batch), lr_at(state["step"], total, train))
            meter.update(batch, outputs, indices, losses)
            state["step"] += 1
            state["batch_in_epoch"] = i + 1
            if state["step"] % every == 0 or state["step"] == total or state["step"] == fail_at:
                save({"loss_total": float(losses["total"].detach())})
            inject_failure(state["step"], fail_at, resumed, rank, "vq.train.fail_at_step")
        if batches == 0:
            raise FeatureError(f"worker {rank}: its shard of the training data is empty "
                               f"(epoch {epoch}); give it more histories or fewer workers")
        if stopped:
            return  # mid-epoch; the checkpoint at step == total was saved above
        epoch_metrics = {"epoch": epoch, "step": state["step"], "lr": lr_at(state["step"], total, train),
                         **meter.finish(world)}
        state["history"] = state["history"] + [epoch_metrics]
        state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
        save({k: v for k, v in epoch_metrics.items() if v is not None})


# ---- driver


def loop_config(cfg, spec: FeatureSpec, train_rows: int) -> dict:
    vq = OmegaConf.to_container(cfg.vq, resolve=True)
    train = vq["train"]
    workers = max(1, int(train["workers"]))
    per_epoch = max(1, math.ceil(train_rows // workers / int(train["batch_size"])))
    # small training sets get more epochs: EM needs steps, not passes
    train["epochs"] = max(int(train["epochs"]), math.ceil(int(train["min_steps"]) / per_epoch))
    return {"feature_spec": spec.to_dict(), "model": vq["model"], "loss": vq["loss"], "train": train,
            "seed": int(cfg.seed), "steps_per_epoch": per_epoch}


def checkpoint_storage(cfg) -> str:
    """Ray Train storage: beside, not inside, DIR/vqvae — the stage runner clears the stage folder
    before a run, and a killed run must find its checkpoints when it is started again."""
    return storage.join_uri(cfg.get("checkpoint_root") or cfg.storage_path or cfg.run_dir, "checkpoints", "vqvae")


# Settings that do not change what is trained: a run re-started with other values resumes the same checkpoints.
NOT_TRAINING_KEYS = ("name", "resume", "fail_at_step", "keep_checkpoints", "max_failures", "checkpoint_every")


def run_name(cfg, config: dict) -> str:
    """Ray Train run name: vq.train.name plus a digest of what is trained (model, loss, features, seed,
    training settings), so that a killed run resumes its own checkpoints and a changed config starts
    afresh instead of meeting checkpoints of another model."""
    train = {k: v for k, v in config["train"].items() if k not in NOT_TRAINING_KEYS}
    what = {**{k: v for k, v in config.items() if k != "train"}, "train": train}
    digest = hashlib.blake2b(json.dumps(what, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()
    return f"{cfg.vq.train.name}-{digest}"


def fit(cfg, train_ds, config: dict):
    """Run TorchTrainer; returns (final model state dict, client state) from its last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.vq.train
    storage_fs, storage_path = storage.resolve(checkpoint_storage(cfg), cfg.data.s3)
    name = run_name(cfg, config)
    run_path = f"{storage_path}/{name}"
    if not t.resume and storage_fs.get_file_info(run_path).type.name == "Directory":
        storage_fs.delete_dir(run_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=int(t.workers), use_gpu=bool(t.use_gpu),
                                     resources_per_worker={"CPU": float(t.cpus_per_worker)}),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=int(t.keep_checkpoints)),
                             failure_config=FailureConfig(max_failures=int(t.max_failures))),
        datasets={"train": train_ds},
    )
    with local_checkpoints_released():
        try:
            result = trainer.fit()
        except Exception as exc:  # a worker's one-line error, not Ray Train's wrapper around it
            for cls in (FeatureError, CheckpointMismatch, UnsafeCheckpoint):
                err = _unwrap(exc, cls)
                if err is not None:
                    raise cls(str(err).strip().splitlines()[-1]) from None
            raise
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        with result.checkpoint.as_directory() as d:
            state = load_tensors(os.path.join(d, STATE_FILE))
            return state["model"], load_client(d, state)


def _unwrap(exc: BaseException, cls):
    from simpersona.vq.dataset import unwrap_error

    return unwrap_error(exc, cls)


def run_training(cfg) -> dict:
    """The vqvae stage (see module doc); returns the summary written to DIR/vqvae/summary.json."""
    from simpersona.runtime import Stopwatch, configure_ray_data, init_ray
    from simpersona.storage import write_json
    from simpersona.vq import dataset
    from simpersona.vq.evaluate import evaluate
    from simpersona.vq.kmeans import fit_kmeans
    from simpersona.vq.mixture import fit_mixture, split_merge
    from simpersona.vq.model import save_model

    sw = Stopwatch()
    s3 = cfg.data.s3
    spec = load_spec(cfg.run_dir, s3)
    out = storage.join_uri(cfg.storage_path or cfg.run_dir, "vqvae")
    init_ray(cfg)
    configure_ray_data(cfg.progress)
    workers = int(cfg.vq.train.workers)

    if dataset.count_rows(cfg.run_dir, s3) == 0:
        raise FeatureError(f"no histories in {features_uri(cfg.run_dir)}: nothing to train on")
    with sw.lap("sample"):  # the evaluation rows; the k-means peer is fitted on their training-merchant part
        heldout = dataset.heldout_merchants(cfg) if cfg.vq.train.exclude_heldout else []
        arrays = dataset.head_arrays(cfg.run_dir, spec, int(cfg.vq.eval.max_rows), TRAIN_COLUMNS + ("planted_type",),
                                     s3, extra=("merchant_id",))
    km = None
    k = int(cfg.vq.model.codebook_size)
    if cfg.vq.kmeans.enabled:
        with sw.lap("kmeans"):
            train_mask = ~np.isin(arrays["merchant_id"], np.array(heldout, dtype=object))
            fit_rows = {name: v[train_mask][: int(cfg.vq.kmeans.fit_rows)] for name, v in arrays.items()}
            km = fit_kmeans(fit_rows, spec, k, int(cfg.vq.kmeans.batch_size), int(cfg.vq.kmeans.n_init),
                            int(cfg.vq.kmeans.max_iter), int(cfg.seed))
    arrays.pop("merchant_id")
    init, init_moves = km, None
    if km is not None and int(cfg.vq.train.em_init_mixture_iters) > 0:
        with sw.lap("mixture"):  # the k-means partition refined by a closed-form EM (simpersona.vq.mixture)
            init = fit_mixture(fit_rows, spec, km.assign(fit_rows, spec), k, int(cfg.vq.train.em_init_mixture_iters),
                               float(cfg.vq.train.em_init_mixture_prior), bool(cfg.progress))
        sm = cfg.vq.train.em_init_split_merge
        if int(sm.rounds) > 0:
            with sw.lap("split_merge"):
                init, init_moves = split_merge(fit_rows, spec, init, km.transform(fit_rows, spec), int(sm.rounds),
                                               int(sm.merges), int(sm.splits), int(sm.iters),
                                               float(cfg.vq.train.em_init_mixture_prior), int(cfg.seed),
                                               bool(cfg.progress))

    with sw.lap("validate"):
        ds = dataset.read_features(cfg.run_dir, spec, TRAIN_COLUMNS + ("merchant_id",), s3)
        ds = dataset.without_merchants(ds, heldout).drop_columns(["merchant_id"])
        ds = dataset.validated(ds, spec, init)  # + init_code: the partition that starts EM
        train_rows = ds.count()
    if train_rows < max(workers, 1):
        raise FeatureError(f"{train_rows} training histories for {workers} workers: every worker needs data")

    config = loop_config(cfg, spec, train_rows)
    with sw.lap("train"):
        state_dict, client = fit(cfg, ds, config)
    model = build_model(spec, config["model"], config["loss"])
    model.load_state_dict(state_dict)
    model.eval()
    with sw.lap("evaluate"):
        summary = evaluate(model, km, arrays, spec, int(cfg.vq.eval.batch_size), int(cfg.vq.eval.silhouette_rows),
                           int(cfg.seed))

    model_dir = storage.join_uri(out, "model")
    save_model(model, spec, model_dir, extra={"steps": client["step"], "epochs": client["epoch"]})
    if km is not None:
        with storage.open_output_stream(storage.join_uri(model_dir, "kmeans.npz"), s3) as fh:
            fh.write(km.to_bytes())
    with storage.open_output_stream(storage.join_uri(out, "codebook.npy"), s3) as fh:
        buf = _npy(model.codebook.detach().float().cpu().numpy().astype(np.float32))
        fh.write(buf)
    history = client["history"]
    write_json(storage.join_uri(out, "metrics.json"), {"epochs": history}, s3)
    last = history[-1] if history else {}
    summary.update({
        "training": {
            "histories": train_rows, "heldout_merchants": len(heldout), "workers": workers,
            "steps": client["step"], "epochs": client["epoch"], "final_loss": last.get("loss_total"),
            "histories_per_s_per_epoch": [h["histories_per_s"] for h in history],
            "resumed_from_steps": client.get("resumed_from", []),
            "checkpoints": storage.join_uri(checkpoint_storage(cfg), run_name(cfg, config)),
            "init_split_merge_moves": init_moves,
        },
        "out": out, "wall_s": sw.total(), "phases_s": sw.laps,
    })
    write_json(storage.join_uri(out, "summary.json"), summary, s3)
    return summary


def _npy(array: np.ndarray) -> bytes:
    import io as _io

    buf = _io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
