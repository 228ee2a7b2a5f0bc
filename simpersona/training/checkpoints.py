"""Checkpoints inside a Ray Train loop: reading their files safely, reporting them, resuming from them.

A stage's loop builds one `Checkpoints` for its engine: `resume()` hands back the loop's state from the
checkpoint Ray Train started the worker with (a worker-group restart, or a new run of the job under the
same run name), `report(metrics, state)` writes one and reports it. `inject_failure` is the testing
aid behind each stage's `fail_at_step`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile

import torch


class UnsafeCheckpoint(ValueError):
    """A checkpoint or model file holds more than tensors: loading it would run the code its pickle names."""


def load_tensors(source, where: str | None = None, hint: str = "delete it or start the run over"):
    """torch.load restricted to tensors, containers and numbers (weights_only): checkpoints and models live
    in shared storage, and a full unpickle would run whatever code a file planted there names."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text advises weights_only=False; quote only the line naming what the file asked for
        what = next((line for line in str(exc).splitlines() if "GLOBAL" in line), "not a tensor checkpoint")
        raise UnsafeCheckpoint(f"{where or source}: refused, it holds objects other than tensors and numbers "
                               f"({what.strip().rstrip('.')}); {hint}") from None


# Local mode (workers=0) runs the loop in the driver's process and Ray Train's Result keeps pointing at
# the last checkpoint folder, so the loop cannot remove it; the driver does, once it has read the result.
_local_folders: set[str] = set()


@contextlib.contextmanager
def local_checkpoints_released():
    """Around a driver's `trainer.fit()` and its reading of the result: removes the temporary folders a
    local-mode loop left behind, on success and on failure alike."""
    try:
        yield
    finally:
        while _local_folders:
            shutil.rmtree(_local_folders.pop(), ignore_errors=True)


class Checkpoints:
    """Ray Train's side of an engine's checkpoints, for one worker."""

    def __init__(self, engine, rank: int, prefix: str):
        import ray.train

        self.engine, self.rank, self.prefix = engine, rank, prefix
        # Ray Train copies a reported checkpoint to storage; in local mode (workers=0) it keeps pointing at
        # the folder, so there the latest folder lives until the next one is reported
        self.local_mode = type(ray.train.get_context()).__name__.startswith("Local")
        self.folders: list[str] = []

    def resume(self) -> dict | None:
        """The loop's state saved with the checkpoint this worker started from; None on a fresh start."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return self.engine.load(d)

    def report(self, metrics: dict, state: dict) -> None:
        """Write the engine's checkpoint with the loop's `state` and report it with `metrics`."""
        import ray.train

        d = tempfile.mkdtemp(prefix=f"{self.prefix}-ckpt-")
        self.engine.save(d, state, self.rank)
        written = bool(os.listdir(d))  # with plain PyTorch only rank 0 writes
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if written else None)
        self.folders.append(d)
        if self.local_mode:
            _local_folders.add(d)
        while len(self.folders) > (1 if self.local_mode else 0):
            gone = self.folders.pop(0)
            _local_folders.discard(gone)
            shutil.rmtree(gone, ignore_errors=True)


def inject_failure(step: int, fail_at: int, resumed: bool, rank: int, what: str) -> None:
    """Worker 0 of a run that did not resume raises once at step `fail_at` (0: never)."""
    if fail_at and step == fail_at and not resumed and rank == 0:
        raise RuntimeError(f"injected failure at step {fail_at} ({what})")
