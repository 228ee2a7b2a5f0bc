"""Assignment benchmark: histories typed per second by the assign stage, with its peers, in one run.

    python benchmarks/assign.py [bench.histories=8370000] [bench.dir=runs/bench_assign] [key=value ...]

Input: planted-type features in the contract format (testkit.planted_vq; generated once under
bench.dir and reused). Measured in one run:
  training            Ray Train (2 CPU workers) on the first bench.train_histories histories:
                      histories/s of each epoch; the model it produces is the one assigned with
  encoder             the VQ-VAE's encode_indices on bench.encoder_histories in-memory histories,
                      batches of vq.assign.batch_size, 1 and 2 torch threads (the pure model cost)
  kmeans_assign       the k-means peer's assignment of the same in-memory histories (numpy, 1 process)
  assign_stage        the assign stage end to end on all histories: Parquet read, Ray Data actor pool
                      (vq.assign.actors), types.parquet written, merchant distributions and profiles
Peak memory is the largest sum of RSS over this process and its descendants (the local Ray's raylet
and workers included), sampled every bench.sample_s; CPU seconds are summed over the same processes
(a contended box stretches wall time, not CPU time). Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpersona.config import load  # noqa: E402

DEFAULTS = {
    "histories": 8_370_000,
    "dir": "runs/bench_assign",
    "train_histories": 200_000,
    "train_epochs": 2,
    "encoder_histories": 500_000,
    "rows_per_file": 500_000,
    "sample_s": 0.25,
    "regenerate": False,
}
GIB = 1024**3


class TreeSampler:
    """Peak summed RSS and CPU seconds of this process and its descendants (background thread)."""

    def __init__(self, every_s: float):
        self.every_s, self.peak, self.cpu = every_s, 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        total = 0
        root = psutil.Process(os.getpid())
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                self.cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.every_s)

    def __enter__(self):
        self.sample()
        self._cpu0 = sum(self.cpu.values())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())
        self.cpu_s = round(sum(self.cpu.values()) - self._cpu0, 1)


def features(run_dir: Path, n: int, rows_per_file: int, regenerate: bool) -> None:
    from testkit.planted_vq import write_planted_features

    marker = run_dir / "preprocess" / "feature_spec.json"
    if regenerate and (run_dir / "preprocess").exists():
        shutil.rmtree(run_dir / "preprocess")
    if not marker.exists():
        write_planted_features(str(run_dir), n, n_types=8, merchants=2000, rows_per_file=rows_per_file,
                               progress=True)


def subset(src: Path, dst: Path, n_files: int) -> None:
    """dst/preprocess = the first n_files feature files of src (symlinks) + its spec and manifest."""
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "preprocess" / "features").mkdir(parents=True)
    for name in ("feature_spec.json", "manifest.json"):
        shutil.copy(src / "preprocess" / name, dst / "preprocess" / name)
    for f in sorted((src / "preprocess" / "features").glob("*.parquet"))[:n_files]:
        (dst / "preprocess" / "features" / f.name).symlink_to(f.resolve())


def encoder_throughput(run_dir: Path, n: int, batch_size: int) -> dict:
    import pyarrow.parquet as pq
    import torch

    from simpersona.vq.features import SEQ_COLUMNS, arrays_from_arrow, concat_arrays
    from simpersona.vq.kmeans import KMeansModel
    from simpersona.vq.model import load_model, to_tensors

    model, spec, _ = load_model(str(run_dir / "vqvae" / "model"))
    km = KMeansModel.from_bytes((run_dir / "vqvae" / "model" / "kmeans.npz").read_bytes())
    parts, rows = [], 0
    for f in sorted((run_dir / "preprocess" / "features").glob("*.parquet")):
        if rows >= n:
            break
        parts.append(arrays_from_arrow(pq.read_table(f).slice(0, n - rows), spec))
        rows += len(parts[-1]["agg"])
    arrays = concat_arrays(parts)
    tensors = to_tensors({k: arrays[k] for k in SEQ_COLUMNS + ("agg",)})
    out = {"histories": rows, "batch_size": batch_size,
           "mean_events": float((arrays["seq_event"] > 0).sum(1).mean())}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model.encode_indices({k: v[:batch_size] for k, v in tensors.items()})  # warm-up
        t0 = time.perf_counter()
        for lo in range(0, rows, batch_size):
            model.encode_indices({k: v[lo:lo + batch_size] for k, v in tensors.items()})
        out[f"histories_per_s_{threads}_threads"] = round(rows / (time.perf_counter() - t0), 1)
    t0 = time.perf_counter()
    for lo in range(0, rows, batch_size):
        km.assign({k: v[lo:lo + batch_size] for k, v in arrays.items()}, spec)
    kmeans = {"histories": rows, "histories_per_s": round(rows / (time.perf_counter() - t0), 1)}
    return {"encoder": out, "kmeans_assign": kmeans}


def main(argv: list[str]) -> dict:
    bench_args = [a for a in argv if a.startswith("bench.")]
    cfg = load("assign", [a for a in argv if not a.startswith("bench.")])
    b = {**DEFAULTS}
    for a in bench_args:
        key, value = a[len("bench."):].split("=", 1)
        b[key] = type(DEFAULTS[key])(value) if not isinstance(DEFAULTS[key], bool) else value.lower() == "true"
    root = Path(b["dir"]).resolve()
    full, train = root / "full", root / "train"
    features(full, int(b["histories"]), int(b["rows_per_file"]), bool(b["regenerate"]))

    from simpersona.runtime import init_ray
    from simpersona.vq.assign import run_assign
    from simpersona.vq.train import run_training

    init_ray(cfg)
    result: dict = {"histories": int(b["histories"]), "cpus": os.cpu_count()}

    n_files = max(1, int(b["train_histories"]) // int(b["rows_per_file"]))
    subset(full, train, n_files)
    tcfg = load("vqvae", [f"run_dir={train}", "vq.train.exclude_heldout=false", "vq.train.resume=false",
                                "vq.train.min_steps=0",
                                f"vq.train.epochs={b['train_epochs']}", "progress=false",
                                *[a for a in argv if a.startswith("vq.") or a.startswith("ray.")]])
    with TreeSampler(float(b["sample_s"])) as mem:
        t0 = time.perf_counter()
        s = run_training(tcfg)
        wall = time.perf_counter() - t0
    result["training"] = {"histories": s["training"]["histories"], "workers": s["training"]["workers"],
                          "histories_per_s_per_epoch": s["training"]["histories_per_s_per_epoch"],
                          "wall_s": round(wall, 1), "peak_rss_gib": round(mem.peak / GIB, 3), "cpu_s": mem.cpu_s,
                          "perplexity": s["perplexity"], "active_codes": s["active_codes"],
                          "nmi_planted": s.get("nmi_planted"), "kmeans_nmi_planted": s.get("kmeans_nmi_planted")}
    if (full / "vqvae").exists():
        shutil.rmtree(full / "vqvae")
    shutil.copytree(train / "vqvae", full / "vqvae")

    result.update(encoder_throughput(full, int(b["encoder_histories"]), int(cfg.vq.assign.batch_size)))

    acfg = load("assign", [f"run_dir={full}", "progress=false",
                                 *[a for a in argv if a.startswith("vq.") or a.startswith("ray.")]])
    with TreeSampler(float(b["sample_s"])) as mem:
        t0 = time.perf_counter()
        s = run_assign(acfg)
        wall = time.perf_counter() - t0
    result["assign_stage"] = {"histories": s["histories_assigned"], "merchants": s["merchants"],
                              "actors": s["actors"], "wall_s": round(wall, 2),
                              "histories_per_s": round(s["histories_assigned"] / wall, 1),
                              "peak_rss_gib": round(mem.peak / GIB, 3), "cpu_s": mem.cpu_s}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main(sys.argv[1:])
