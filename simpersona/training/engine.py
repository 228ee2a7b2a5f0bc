"""One optimisation step and its checkpoint files, the same interface with plain PyTorch or DeepSpeed.

Plain PyTorch: AdamW over the model's trainable parameters, gradient clipping, bf16 autocast when asked,
and DistributedDataParallel (gloo on CPU, NCCL on GPU) through ray.train.torch.prepare_model when there
is more than one worker. DeepSpeed (given a DeepSpeed config, see `deepspeed_config`): the same AdamW
handed to ZeRO, bf16 from the config; deepspeed is imported only there (it is the `gpu` extra).

The learning rate is set before every step from the loop's own schedule (`warmup_cosine`), so a
checkpoint needs only the weights, the optimizer and the loop's state (a JSON-able dict the loop owns:
step, epoch, position, history).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from simpersona.training.checkpoints import load_tensors

STATE_FILE = "state.pt"  # weights + optimizer state: tensors and numbers only
CLIENT_FILE = "client.json"  # the loop's state
DEEPSPEED_TAG = "deepspeed"  # DeepSpeed's folder beside its file "latest", so never "latest"


def warmup_cosine(step: int, total: int, lr: float, warmup: int, floor: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr * floor at `total` steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def deepspeed_config(overrides: Mapping, *, batch_size: int, grad_clip: float, bf16: bool) -> dict:
    """A DeepSpeed config: the stage's own keys, and what the engine needs where it gives none."""
    config = dict(overrides)
    config.setdefault("train_micro_batch_size_per_gpu", int(batch_size))
    config.setdefault("gradient_accumulation_steps", 1)
    config.setdefault("gradient_clipping", float(grad_clip))
    config.setdefault("bf16", {"enabled": bool(bf16)})
    # the client optimizer is torch's AdamW, which ZeRO runs correctly but calls "untested"; DeepSpeed's
    # own FusedAdam is JIT-compiled with nvcc on first use (a minute per fresh node)
    config.setdefault("zero_allow_untested_optimizer", True)
    return config


def _plain(value):
    """JSON for numpy scalars in the loop's state."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_client(directory: str, client_state: dict) -> None:
    with open(os.path.join(directory, CLIENT_FILE), "w") as fh:
        json.dump(client_state, fh, default=_plain)


def load_client(directory: str, state: dict | None = None) -> dict:
    path = os.path.join(directory, CLIENT_FILE)
    if not os.path.exists(path) and state is not None and "client" in state:
        return state["client"]  # a checkpoint written before client.json: the loop's state was in state.pt
    with open(path) as fh:
        return json.load(fh)


class Engine:
    """`step`, `save` and `load` are all a training loop calls.

    trainable_only: checkpoints hold only the parameters that train (the fine-tune stages freeze most of
    a language model); otherwise the whole state dict, buffers included (the VQ-VAE's EMA codebook).
    ddp_kwargs: passed to ray.train.torch.prepare_model when there is more than one worker.
    resume_hint: what the error for an unsafe checkpoint file tells the user to do.
    """

    def __init__(self, model: torch.nn.Module, *, lr: float, weight_decay: float = 0.0, grad_clip: float = 0.0,
                 world_size: int = 1, deepspeed: Mapping | None = None, autocast_bf16: bool = False,
                 trainable_only: bool = False, ddp_kwargs: Mapping | None = None,
                 resume_hint: str = "delete it or start the run over"):
        self.module = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grad_clip = float(grad_clip)
        self.trainable_only = trainable_only
        self.resume_hint = resume_hint
        self.is_deepspeed = deepspeed is not None
        self.autocast = autocast_bf16 and not self.is_deepspeed
        optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        if self.is_deepspeed:
            import deepspeed as ds  # the `gpu` extra; only imported on this path

            self.net, self.optimizer, _, _ = ds.initialize(model=model, optimizer=optimizer, config=dict(deepspeed))
            self.module = self.net.module
        else:
            self.optimizer = optimizer
            if world_size > 1:
                import ray.train.torch

                self.net = ray.train.torch.prepare_model(model, **dict(ddp_kwargs or {}))
            else:
                self.net = model

    def step(self, loss_fn: Callable[[torch.nn.Module], tuple[Tensor, object]], lr: float) -> tuple[Tensor, object]:
        """One optimisation step at learning rate `lr`. `loss_fn(net)` runs the forward pass and returns
        (loss, anything the loop wants back); the pair is returned."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        device_type = self.params[0].device.type if self.params else "cpu"
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, extra = loss_fn(self.net)
        if self.is_deepspeed:
            self.net.backward(loss)
            self.net.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
        return loss, extra

    def weights(self) -> dict[str, Tensor]:
        if self.trainable_only:
            return {n: p.detach().cpu().clone() for n, p in self.module.named_parameters() if p.requires_grad}
        return self.module.state_dict()

    def save(self, directory: str, client_state: dict, rank: int) -> None:
        """Plain PyTorch: rank 0 writes weights + optimizer + the loop's state (DDP replicas are
        identical). DeepSpeed: every rank writes its ZeRO partition (Ray Train merges the workers'
        folders), and rank 0 adds the weights alone for readers without DeepSpeed."""
        if self.is_deepspeed:
            self.net.save_checkpoint(directory, tag=DEEPSPEED_TAG, client_state={"client": client_state})
            if rank == 0:
                torch.save({"model": self.weights()}, os.path.join(directory, STATE_FILE))
                save_client(directory, client_state)
        elif rank == 0:
            torch.save({"model": self.weights(), "optimizer": self.optimizer.state_dict()},
                       os.path.join(directory, STATE_FILE))
            save_client(directory, client_state)

    def load(self, directory: str) -> dict:
        """Restore weights and optimizer from `directory`; returns the loop's state saved with them."""
        if self.is_deepspeed:
            _, client = self.net.load_checkpoint(directory, tag=DEEPSPEED_TAG)
            return client["client"]
        path = os.path.join(directory, STATE_FILE)
        state = load_tensors(path, hint=self.resume_hint)
        if self.trainable_only:
            unknown = set(state["model"]) - {n for n, _ in self.module.named_parameters()}
            if unknown:
                raise RuntimeError(f"{path} does not fit the model: {sorted(unknown)[:3]}")
        self.module.load_state_dict(state["model"], strict=not self.trainable_only)
        self.optimizer.load_state_dict(state["optimizer"])
        return load_client(directory, state)
