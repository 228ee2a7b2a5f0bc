"""The policy behind Ray Serve: batched through a handle, over HTTP on 127.0.0.1, and the typed builder."""

from __future__ import annotations

import asyncio
import socket

import httpx
import numpy as np
import pydantic
import pytest
from ray import serve
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

from simpersona.config import load
from simpersona.pages.observation import allowed_actions, render
from simpersona.serve.app import build_app, deploy
from simpersona.serve.policy import ActionPolicy, HandlePolicyClient, PolicyRequest
from testkit.untrained_policy import build_untrained_model, random_pages

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("serve")
    build_untrained_model(run_dir / "finetune" / "model", n_types=4, seed=2)
    port = free_port()
    cfg = load("serve_policy", [f"run_dir={run_dir}", f"serve.port={port}", "serve.replica_cpus=0.5",
                                "serve.max_batch_size=16", "serve.batch_wait_timeout_s=0.05",
                                "serve.temperature=1.5", "serve.seed=7", "serve.app_name=policy_test"])
    serve.shutdown()  # HTTP options are fixed by whoever starts Serve: start it here, with ours
    handle = deploy(cfg)
    yield cfg, handle
    serve.shutdown()


def requests(n: int) -> list[PolicyRequest]:
    return [PolicyRequest([None, 1, 3][i % 3], render(p), ["open 1"][: i % 2], allowed_actions(p), seed=i, step=i % 5)
            for i, p in enumerate(random_pages(n, seed=21))]


async def through_the_agents_client(handle, bodies: list[dict], max_batch: int) -> list:
    """What a BrowserWorker's agents do: concurrent decide() calls on one HandlePolicyClient."""
    client = HandlePolicyClient(handle, max_batch, batch_wait_timeout_s=0.05)
    try:
        return await asyncio.gather(*(client.decide(b) for b in bodies), return_exceptions=True)
    finally:
        client.close()


def test_handle_requests_are_batched_and_match_the_in_process_policy(served):
    cfg, handle = served
    reqs = requests(48)
    local = ActionPolicy.from_config(cfg.serve, f"{cfg.run_dir}/finetune/model").decide(reqs)

    handle.reset_stats.remote().result()
    responses = [handle.decide.remote(r.to_dict()) for r in reqs]  # one call each, all in flight at once
    per_call = [r.result(timeout_s=120) for r in responses]
    stats = handle.stats.remote().result()
    assert stats["requests"] == 48 and stats["max_batch"] > 1 and stats["policy"] == "lm"

    handle.reset_stats.remote().result()
    listed = asyncio.run(through_the_agents_client(handle, [r.to_dict() for r in reqs], max_batch=16))
    stats = handle.stats.remote().result()
    # three lists of 16: the replica's batches are the lists, not what the RPCs happened to overlap
    assert stats["requests"] == 48 and stats["batches"] <= 4
    for r, a, b, ref in zip(reqs, per_call, listed, local, strict=True):
        assert a["action"] == b["action"] == ref.action and ref.action in r.allowed  # same draw whatever the batch
        np.testing.assert_allclose(a["logprobs"], ref.logprobs, atol=1e-4)
        np.testing.assert_allclose(b["logprobs"], ref.logprobs, atol=1e-4)


def test_a_bad_request_in_a_list_fails_only_its_caller(served):
    _, handle = served
    good = [r.to_dict() for r in requests(3)]
    bodies = [good[0], {**good[1], "persona": 99}, good[2], {"observation": "page: home", "allowed": []}]
    got = asyncio.run(through_the_agents_client(handle, bodies, max_batch=8))
    assert got[0]["action"] in good[0]["allowed"] and got[2]["action"] in good[2]["allowed"]
    assert isinstance(got[1], ValueError) and str(got[1]) == "persona 99 out of range: the model has 4 persona tokens"
    assert isinstance(got[3], ValueError)
    assert str(got[3]) == "policy request needs `allowed`: a non-empty list of action strings"


def test_http_on_localhost(served):
    cfg, _ = served
    url = f"http://127.0.0.1:{cfg.serve.port}{cfg.serve.route_prefix}"
    r = requests(1)[0]
    resp = httpx.post(url, json=r.to_dict(), timeout=60)
    assert resp.status_code == 200 and resp.json()["action"] in r.allowed
    bad = httpx.post(url, json={"observation": "page: home", "allowed": []}, timeout=60)
    assert bad.status_code == 400
    assert bad.json() == {"error": "policy request needs `allowed`: a non-empty list of action strings"}
    unknown = httpx.post(url, json={**r.to_dict(), "persona": 99}, timeout=60)  # refused before batching
    assert unknown.status_code == 400
    assert unknown.json() == {"error": "persona 99 out of range: the model has 4 persona tokens"}
    from ray.serve.context import _get_global_client

    assert _get_global_client().http_config.host == "127.0.0.1"  # not exposed beyond this machine


def test_typed_app_builder(served, tmp_path):
    cfg, _ = served
    app = call_user_app_builder_with_args_if_necessary(build_app, {"run_dir": cfg.run_dir, "temperature": "0.5"})
    assert isinstance(app, serve.Application)
    with pytest.raises(pydantic.ValidationError, match="temprature"):
        call_user_app_builder_with_args_if_necessary(build_app, {"run_dir": cfg.run_dir, "temprature": 1})
    with pytest.raises(FileNotFoundError, match=f"no policy model at {tmp_path}/finetune/model"):
        call_user_app_builder_with_args_if_necessary(build_app, {"run_dir": str(tmp_path)})
    assert isinstance(call_user_app_builder_with_args_if_necessary(
        build_app, {"run_dir": str(tmp_path), "policy": "uniform"}), serve.Application)
