"""Shared run-time helpers of the stages: Ray start-up, Ray Data's progress settings, timing.
(Writes, durable and atomic, are simpersona/storage.py's.)"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from simpersona import storage


def init_ray(cfg) -> None:
    """Join the cluster at `ray.address` / RAY_ADDRESS, else start a local Ray (no-op when running).

    `ray.num_cpus` (0 = all cores) applies to a local Ray only; a cluster brings its own resources.
    A local Ray's dashboard (off by default) binds `ray.dashboard_host`, 127.0.0.1 unless configured.
    """
    import ray

    # a bad run_dir/storage_path fails here, in one line, not after Ray started and the stage ran
    storage.check_storage_root(cfg.storage_path or cfg.run_dir, cfg.data.s3)
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": cfg.ray.include_dashboard, "log_to_driver": True}
    if address is None:
        kwargs["num_cpus"] = cfg.ray.num_cpus or None
        if cfg.ray.include_dashboard:
            kwargs["dashboard_host"] = cfg.ray.dashboard_host
    ray.init(address=address, **kwargs)


def configure_ray_data(progress: bool) -> None:
    """Ray Data's progress bars on or off, and its chatty per-run logging kept quiet."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    ctx.print_on_execution_start = False


class Stopwatch:
    """Wall time of a run and of its named phases: `with sw.lap("read"): ...`; `sw.laps`, `sw.total()`."""

    def __init__(self):
        self.start = time.perf_counter()
        self.laps: dict[str, float] = {}

    @contextlib.contextmanager
    def lap(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.laps[name] = round(self.laps.get(name, 0.0) + time.perf_counter() - t0, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)
