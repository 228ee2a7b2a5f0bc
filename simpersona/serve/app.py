"""The policy as a Ray Serve application: a typed builder for `serve run`, and deploy/attach helpers.

    serve run simpersona.serve.app:build_app run_dir=runs/demo temperature=0.8

(no `from __future__ import annotations` here: Serve reads the builder's annotation as a class to
validate `key=value` arguments against PolicyAppArgs.)
"""

import os
from pathlib import Path

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

from simpersona.config import load
from simpersona.serve.policy import PolicyDeployment

POLICY_KINDS = ("lm", "uniform")


class PolicyAppArgs(BaseModel):
    """Arguments of `serve run ...:build_app`; unset fields come from configs/serve_policy.yaml."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    run_dir: str | None = None
    model_dir: str | None = None
    policy: str = "lm"  # lm | uniform (uniform = a labelled speed baseline, no model)
    temperature: float | None = None
    seed: int | None = None
    history: int | None = None
    max_batch_size: int | None = None
    batch_wait_timeout_s: float | None = None
    num_replicas: int | None = None
    replica_cpus: float | None = None
    torch_threads: int | None = None
    max_ongoing_requests: int | None = None


def model_dir_of(cfg) -> str:
    """serve.model_dir, or the finetune stage's output under the run dir."""
    return cfg.serve.model_dir or os.path.join(cfg.run_dir, "finetune", "model")


def policy_app(cfg, kind: str = "lm") -> Application:
    """The bound deployment for the resolved config `cfg` (replicas, CPUs and batching from cfg.serve)."""
    if kind not in POLICY_KINDS:
        raise ValueError(f"policy kind must be one of {'|'.join(POLICY_KINDS)}, got {kind!r}")
    s = cfg.serve
    model_dir = model_dir_of(cfg)
    if kind == "lm" and not Path(model_dir).exists():
        raise FileNotFoundError(f"no policy model at {model_dir} (run the finetune stage or set serve.model_dir)")
    if s.max_ongoing_requests < s.max_batch_size:
        raise ValueError("serve.max_ongoing_requests must be >= serve.max_batch_size or batches never fill")
    return PolicyDeployment.options(
        num_replicas=s.num_replicas,
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.replica_cpus},
        # one access-log line per decision would flood the driver at hundreds of agents
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    ).bind(OmegaConf.to_object(cfg.serve), str(Path(model_dir).resolve()) if kind == "lm" else model_dir, kind)


def build_app(args: PolicyAppArgs) -> Application:
    """Typed app builder for `serve run simpersona.serve.app:build_app key=value ...`."""
    overrides = [f"serve.{k}={v}" for k, v in args.model_dump().items()
                 if v is not None and k not in ("run_dir", "policy")]
    if args.run_dir is not None:
        overrides.append(f"run_dir={args.run_dir}")
    return policy_app(load("serve_policy", overrides), args.policy)


def deploy(cfg, kind: str = "lm", blocking: bool = False):
    """Start Serve (HTTP proxy on serve.host:serve.port, 127.0.0.1 by default) and run the policy app.

    Returns its DeploymentHandle; `handle.decide.remote(request_dict)` from any actor or driver.
    Serve's HTTP options are cluster-wide and fixed by whoever starts Serve first.
    """
    s = cfg.serve
    if s.http:
        serve.start(http_options={"host": s.host, "port": s.port})
    else:  # handles only (a simulation's actors): no proxy, no port to collide on
        serve.start(proxy_location="Disabled")
    return serve.run(policy_app(cfg, kind), name=s.app_name, route_prefix=s.route_prefix, blocking=blocking)


def running_handle(app_name: str):
    """The handle of an already running policy app, or None (so a simulation can attach to it)."""
    try:
        apps = serve.status().applications
    except Exception:  # Serve not started on this cluster
        return None
    app = apps.get(app_name)
    if app is None or str(app.status) not in ("RUNNING", "ApplicationStatus.RUNNING"):
        return None
    return serve.get_app_handle(app_name)
