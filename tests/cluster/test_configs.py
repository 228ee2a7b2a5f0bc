"""Cluster files are checked with Ray's own validation code, since no cloud is reachable here."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "cluster" / "aws.yaml"
KUBERAY = ROOT / "cluster" / "kuberay"


def _prepared(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_aws_config_passes_ray_autoscaler_validation():
    prepared = _prepared(yaml.safe_load(AWS.read_text()))
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert types["cpu_browser"]["min_workers"] == 0, "browser workers must autoscale from zero"
    assert types["gpu"]["min_workers"] == 0
    assert types["cpu_browser"]["resources"].get("browser") == 1
    assert "g5" in types["gpu"]["node_config"]["InstanceType"]
    setup = " ".join(prepared["setup_commands"])
    assert "chromium" in setup and "pip install -e" in setup
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "dashboard must bind to loopback by default"


def test_aws_validation_rejects_a_broken_config():
    config = yaml.safe_load(AWS.read_text())
    config["available_node_types"]["cpu_browser"]["min_wrokers"] = 0  # typo: unknown key
    with pytest.raises(jsonschema.ValidationError):
        _prepared(config)
    config = yaml.safe_load(AWS.read_text())
    config["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        _prepared(config)


def test_every_aws_key_has_a_comment():
    lines = AWS.read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not re.match(r"^-?\s*[A-Za-z_~][\w.~/-]*:", stripped) or stripped.startswith("#"):
            continue
        above = lines[i - 1].strip() if i else ""
        if "#" not in line and not above.startswith("#"):
            uncommented.append(f"{i + 1}: {stripped}")
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)


def test_kuberay_raycluster_fields():
    rc = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-browser", "gpu"}
    for g in groups.values():
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
        assert g["template"]["spec"]["containers"], "every group needs a container"
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"


def test_kuberay_rayjob_runs_simulate():
    job = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python ray_jobs/simulate.py")
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "working_dir" in runtime_env


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    parsed = RuntimeEnv(**env)
    assert parsed["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert ".venv/" in env["excludes"]
