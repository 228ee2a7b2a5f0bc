"""Shared fixtures: a local Ray with 2 CPUs in this process, one `ray start --head` cluster for the tests
that submit jobs, the one clean smoke pipeline run, paths to the bundled data, GPU skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TMALL_CSV = ROOT / "data" / "tmall2014" / "t_alibaba_data.csv"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _skip_gpu_tests_without_a_gpu(items) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# --- the session's `ray start --head`: its tests run together, and it stops after the last of them --------
# (an idle head costs ~20% of a core: GCS, raylet, dashboard and its agents, idle workers)
_HEAD: dict = {"last_user": None, "head": None}
RUN_BEFORE_RAY_LOCAL = ("test_pipeline_e2e.py",)


@pytest.hookimpl(trylast=True)  # after -k/-m/--lf have chosen the items
def pytest_collection_modifyitems(config, items):
    """The modules with a test on `ray_head` run one after another where the first of them is (the cluster
    tests, then tests/sim/test_simulate_job.py), followed by RUN_BEFORE_RAY_LOCAL; every other module keeps
    its place and order."""
    _skip_gpu_tests_without_a_gpu(items)
    users = {item.path for item in items if "ray_head" in item.fixturenames}
    if not users:
        return
    first = next(i for i, item in enumerate(items) if item.path in users)
    # then the pipeline runs of test_pipeline_e2e (subprocesses with a local Ray of their own), before any
    # test starts the in-process Ray (ray_local), which would idle through them
    early = {item.path for item in items if item.path.name in RUN_BEFORE_RAY_LOCAL} - users
    block = [item for item in items if item.path in users] + [item for item in items if item.path in early]
    items[:] = items[:first] + block + [item for item in items[first:] if item.path not in users | early]
    _HEAD["last_user"] = next(item.nodeid for item in reversed(items) if "ray_head" in item.fixturenames)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if item.nodeid == _HEAD["last_user"] and _HEAD["head"] is not None:
        from local_cluster import stop_cluster

        stop_cluster(_HEAD["head"].temp_dir)  # no test needs it any more
        _HEAD["head"] = None


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (starting Ray costs seconds; tests share it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    # left running for other tests; shut down at interpreter exit


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """One local `ray start --head` (2 CPUs, dashboard on 127.0.0.1) for the whole session: the cluster
    tests and the simulate job test submit to it (tests/local_cluster.py); stopped by its own pids."""
    from local_cluster import start_head, stop_cluster

    head = _HEAD["head"] = start_head(tmp_path_factory)
    try:
        yield head
    finally:
        stop_cluster(head.temp_dir)  # when pytest_runtest_teardown has not already
        _HEAD["head"] = None


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> dict:
    """The session's one clean `pipeline.py config=smoke` run on a local run_dir: {run_dir, out, wall}."""
    from smoke_pipeline import run_pipeline

    run_dir = tmp_path_factory.mktemp("pipeline") / "smoke"
    out, wall = run_pipeline(run_dir)
    return {"run_dir": run_dir, "out": out, "wall": wall}


@pytest.fixture(scope="session")
def tmall_csv() -> Path:
    assert TMALL_CSV.exists(), f"bundled data missing: {TMALL_CSV}"
    return TMALL_CSV
