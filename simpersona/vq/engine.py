"""One optimisation step and its checkpoint, the same interface with plain PyTorch or DeepSpeed.

`TorchEngine`: AdamW, gradient clipping, DistributedDataParallel (gloo on CPU, NCCL on GPU) through
ray.train.torch.prepare_model when there is more than one worker. `DeepSpeedEngine`: ZeRO (stage from
config) with bf16, used when the config asks for it and CUDA is present; deepspeed is imported only
there (it is the `gpu` extra). The training loop calls only `step`, `save` and `load`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from torch import Tensor

from simpersona.vq.model import BuyerVQVAE, load_tensors

STATE_FILE = "state.pt"  # model + optimizer state: tensors and numbers only
CLIENT_FILE = "client.json"  # the loop's state (step, epoch, history, fingerprint)


def _plain(value):
    """JSON for numpy scalars in the loop's metrics."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class TorchEngine:
    def __init__(self, model: BuyerVQVAE, train: Mapping, world_size: int):
        self.module = model
        if world_size > 1:
            import ray.train.torch

            # the quantizer keeps its buffers in sync itself (all-reduced EMA statistics); broadcasting
            # them from rank 0 before every forward would only add a collective per step
            self.model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
        else:
            self.model = model
        self.clip = float(train["grad_clip"])
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=float(train["lr"]),
                                           weight_decay=float(train["weight_decay"]))

    def step(self, batch: Mapping[str, Tensor], lr: float) -> tuple[dict, Tensor, dict]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        outputs, indices, losses = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        return outputs, indices, losses

    def save(self, directory: str, client_state: dict, rank: int) -> None:
        """Rank 0 writes model + optimizer + the loop's state (DDP replicas are identical)."""
        if rank == 0:
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                       os.path.join(directory, STATE_FILE))
            save_client(directory, client_state)

    def load(self, directory: str) -> dict:
        state = load_tensors(os.path.join(directory, STATE_FILE))
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        return load_client(directory, state)


def save_client(directory: str, client_state: dict) -> None:
    with open(os.path.join(directory, CLIENT_FILE), "w") as fh:
        json.dump(client_state, fh, default=_plain)


def load_client(directory: str, state: dict | None = None) -> dict:
    path = os.path.join(directory, CLIENT_FILE)
    if not os.path.exists(path) and state is not None and "client" in state:
        return state["client"]  # a checkpoint written before client.json: the loop's state was in state.pt
    with open(path) as fh:
        return json.load(fh)


class DeepSpeedEngine:
    """ZeRO + bf16. The quantizer's EMA buffers stay float32: DeepSpeed casts the whole module to bf16,
    and EMA statistics in bf16 lose the small per-step updates."""

    TAG = "deepspeed"

    def __init__(self, model: BuyerVQVAE, train: Mapping, world_size: int):
        import deepspeed  # the `gpu` extra; only imported on this path

        config = {
            "train_micro_batch_size_per_gpu": int(train["batch_size"]),
            "gradient_accumulation_steps": 1,
            "gradient_clipping": float(train["grad_clip"]),
            "bf16": {"enabled": True},
            "zero_optimization": {"stage": int(train["zero_stage"])},
            # torch_adam: torch's AdamW, not DeepSpeed's FusedAdam, which is JIT-compiled with nvcc on
            # first use (a minute per fresh node) and gains nothing on a model this small
            "optimizer": {"type": "AdamW", "params": {"lr": float(train["lr"]), "torch_adam": True,
                                                      "weight_decay": float(train["weight_decay"])}},
        }
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config)
        self.module = self.model.module
        for buf in self.module.vq.buffers():
            if buf.is_floating_point():
                buf.data = buf.data.float()

    def step(self, batch: Mapping[str, Tensor], lr: float) -> tuple[dict, Tensor, dict]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        outputs, indices, losses = self.model(batch)
        self.model.backward(losses["total"])
        self.model.step()
        return outputs, indices, losses

    def save(self, directory: str, client_state: dict, rank: int) -> None:
        """Every rank writes its ZeRO partition; Ray Train merges the workers' directories."""
        self.model.save_checkpoint(directory, tag=self.TAG, client_state={"client": client_state})

    def load(self, directory: str) -> dict:
        _, client = self.model.load_checkpoint(directory, tag=self.TAG)
        return client["client"]


def make_engine(model: BuyerVQVAE, train: Mapping, world_size: int) -> TorchEngine | DeepSpeedEngine:
    if bool(train["deepspeed"]) and bool(train["use_gpu"]) and torch.cuda.is_available():
        return DeepSpeedEngine(model, train, world_size)
    return TorchEngine(model, train, world_size)
