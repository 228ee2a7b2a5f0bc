"""Preprocess benchmark: N synthetic buyers through the Ray Data pipeline, against two peers on the same input.

    python benchmarks/preprocess.py buyers=1000000 [bench.dir=runs/bench] [key=value ...]

Measured in one run, on the same generated input (simpersona.data.synthetic, seed 0):
  ray_full            the preprocess stage as it runs (events, features, traces of every history)
  ray_features        the same pipeline without traces (traces.history_fraction=0): the same work as
                      the peers
  vectorised          single process, polars/numpy: testkit.preprocess_peers.vectorised_features (sessions + features)
  pandas_apply        pandas groupby("history_id").apply of a per-history Python function computing the
                      same features (testkit.preprocess_peers.pandas_features), on the first bench.pandas_buyers buyers,
                      extrapolated linearly in histories (labelled "extrapolated")
Peak memory is the largest sum of PSS over the process and all its descendants (the local Ray's GCS,
raylet and workers included; shared object-store pages counted once), sampled every bench.sample_s.
The peers run in a fresh child process each, measured the same way. Prints one JSON object.

Knobs (bench.*): buyers, dir (inputs and outputs), pandas_buyers, vectorised_max_buyers (above this
the vectorised peer runs on the first shards only and is extrapolated), features_only (run ray_features),
full (run ray_full), sample_s, regenerate.
"""

from __future__ import annotations

import json
import multiprocessing as mp
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
    "buyers": 1_000_000,
    "dir": "runs/bench",
    "pandas_buyers": 20_000,
    "vectorised_max_buyers": 1_000_000,
    "features_only": True,
    "full": True,
    "sample_s": 0.5,
    "regenerate": False,
}
GIB = 1024**3


class TreeMemory:
    """Peak of the summed PSS of a process and its descendants, sampled in a background thread; also
    the CPU seconds they used (the last value seen per process: a contended box stretches wall time,
    not CPU time)."""

    def __init__(self, pid: int | None = None, every_s: float = 0.5):
        self.pid = pid or os.getpid()
        self.every_s = every_s
        self.peak = 0
        self._cpu: dict[int, float] = {}
        self._cpu0 = sum(psutil.Process(self.pid).cpu_times()[:2])  # the root's CPU before the run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_s(self) -> float:
        return round(sum(self._cpu.values()) - self._cpu0, 1)

    def sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_full_info().pss
                self._cpu[p.pid] = sum(p.cpu_times()[:2])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.every_s)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


# ---------------------------------------------------------------------------------------------------
# Peers (each in a child process, so its memory is its own)


def _shards_for(events_dir: Path, buyers: int, shard_buyers: int) -> list[Path]:
    files = sorted(events_dir.glob("*.parquet"))
    return files[: max(1, -(-buyers // shard_buyers))]


def _vectorised_peer(argv: list[str], files: list[str], out: dict) -> None:
    import pyarrow.parquet as pq

    from testkit.preprocess_peers import vectorised_features

    cfg = load("preprocess", argv)
    t0 = time.perf_counter()
    events = pq.ParquetDataset(files).read()
    feats = vectorised_features(events, cfg)
    out.update(wall_s=time.perf_counter() - t0, events=events.num_rows, histories=feats.num_rows)


def _pandas_peer(argv: list[str], file: str, buyers: int, out: dict) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from testkit.preprocess_peers import pandas_features

    cfg = load("preprocess", argv)
    events = pq.read_table(file)
    keep = pc.unique(events["buyer_id"])[:buyers]
    events = events.filter(pc.is_in(events["buyer_id"], value_set=keep))
    t0 = time.perf_counter()
    feats = pandas_features(events, cfg)
    out.update(wall_s=time.perf_counter() - t0, events=events.num_rows, histories=len(feats), buyers=len(keep))


def _in_child(target, *args, every_s: float) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        proc = ctx.Process(target=target, args=(*args, out))
        proc.start()
        with TreeMemory(proc.pid, every_s) as mem:
            proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"{target.__name__} failed with exit code {proc.exitcode}")
        return {**dict(out), "peak_rss_gib": round(mem.peak / GIB, 3), "cpu_s": mem.cpu_s}


# ---------------------------------------------------------------------------------------------------


def _ray_run(argv: list[str], every_s: float) -> dict:
    import ray

    from simpersona.data.pipeline import run_preprocess

    cfg = load("preprocess", argv)
    t0 = time.perf_counter()
    with TreeMemory(every_s=every_s) as mem:
        summary = run_preprocess(cfg)  # starts a local Ray: its processes are this process's descendants
        wall = time.perf_counter() - t0
        ray.shutdown()
    return {"wall_s": round(wall, 2), "peak_rss_gib": round(mem.peak / GIB, 3), "cpu_s": mem.cpu_s,
            "summary": summary}


def _rates(wall: float, events: int, buyers: int) -> dict:
    return {"wall_s": round(wall, 2), "events_per_s": round(events / wall), "buyers_per_s": round(buyers / wall)}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    aliases = {k: f"bench.{k}" for k in DEFAULTS}
    cfg = load("preprocess", argv, aliases=aliases)
    bench = {**DEFAULTS, **dict(cfg.bench)}
    n = int(bench["buyers"])
    base = Path(bench["dir"]).resolve()
    synth_dir = base / f"synthetic-{n}"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from simpersona.data.synthetic import generate

    generated = None
    if bench["regenerate"] or not (synth_dir / "summary.json").exists():
        shutil.rmtree(synth_dir, ignore_errors=True)
        t0 = time.perf_counter()
        generated = generate(load("synthetic", [f"synth.buyers={n}"]).synth, str(synth_dir), progress=cfg.progress)
        generated["wall_s"] = round(time.perf_counter() - t0, 2)
    summary_synth = json.loads((synth_dir / "summary.json").read_text())
    events, histories = summary_synth["events"], summary_synth["histories"]

    passthrough = [a for a in argv if a.split("=", 1)[0] not in aliases and not a.startswith("bench.")]
    common = [f"data.input={synth_dir / 'events'}", "data.adapter=canonical", "sessions.day_resolution=false",
              f"progress={str(cfg.progress).lower()}"] + passthrough  # fmt: skip
    result: dict = {
        "buyers": n, "events": events, "histories": histories,
        "machine": {"cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
                    "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},  # other work on the box skews times
        "generate": generated or "reused " + str(synth_dir),
    }  # fmt: skip
    if bench["full"]:
        run = _ray_run(common + [f"run_dir={base / f'run-{n}'}"], bench["sample_s"])
        s = run["summary"]
        result["ray_full"] = {**_rates(run["wall_s"], events, n), "peak_rss_gib": run["peak_rss_gib"],
                              "cpu_s": run["cpu_s"],
                              "phases_s": s["phases_s"], "partitions": s["partitions"],
                              "trace_steps": s["trace_steps"], "sessions": s["sessions"]}  # fmt: skip
        assert s["rows_read"] == events and s["histories"] == histories, "preprocess lost rows or histories"
    if bench["features_only"]:
        run = _ray_run(common + [f"run_dir={base / f'run-{n}-features'}", "traces.history_fraction=0"],
                       bench["sample_s"])
        result["ray_features"] = {**_rates(run["wall_s"], events, n), "peak_rss_gib": run["peak_rss_gib"],
                                  "cpu_s": run["cpu_s"],
                                  "phases_s": run["summary"]["phases_s"]}  # fmt: skip

    shard_buyers = load("synthetic", [f"synth.buyers={n}"]).synth.shard_buyers
    vec_buyers = min(n, int(bench["vectorised_max_buyers"]))
    files = [str(f) for f in _shards_for(synth_dir / "events", vec_buyers, shard_buyers)]
    vec = _in_child(_vectorised_peer, common, files, every_s=bench["sample_s"])
    scale = events / vec["events"]
    result["vectorised"] = {
        **_rates(vec["wall_s"] * scale, events, n), "peak_rss_gib": vec["peak_rss_gib"],
        "cpu_s": round(vec["cpu_s"] * scale, 1),
        "measured": {"wall_s": round(vec["wall_s"], 2), "events": vec["events"], "files": len(files)},
        "extrapolated": scale != 1.0,
    }  # fmt: skip
    pan = _in_child(_pandas_peer, common, files[0], int(bench["pandas_buyers"]), every_s=bench["sample_s"])
    pan_wall = pan["wall_s"] * histories / pan["histories"]
    result["pandas_apply"] = {
        **_rates(pan_wall, events, n), "peak_rss_gib": pan["peak_rss_gib"],
        "cpu_s": round(pan["cpu_s"] * histories / pan["histories"], 1),
        "measured": {"wall_s": round(pan["wall_s"], 2), "buyers": pan["buyers"], "histories": pan["histories"],
                     "events": pan["events"]},
        "extrapolated": True, "extrapolation": "linear in histories",
    }  # fmt: skip
    ratios = {}
    for name in ("ray_features", "ray_full"):
        if name in result:
            ratios[f"{name}_vs_vectorised"] = round(result["vectorised"]["wall_s"] / result[name]["wall_s"], 3)
            ratios[f"{name}_vs_pandas_apply"] = round(pan_wall / result[name]["wall_s"], 2)
            # CPU seconds do not stretch when other work shares the box (wall times do)
            ratios[f"cpu_{name}_vs_vectorised"] = round(result["vectorised"]["cpu_s"] / result[name]["cpu_s"], 3)
            ratios[f"cpu_{name}_vs_pandas_apply"] = round(result["pandas_apply"]["cpu_s"] / result[name]["cpu_s"], 2)
    result["ratios"] = ratios
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["targets"] = {"throughput_vs_vectorised": ">= 0.5", "throughput_vs_pandas_apply": ">= 20",
                         "8.37M_buyers_wall_s": "<= 900", "peak_rss_gib": "<= 12"}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
