"""`ray job submit --working-dir .` against a local `ray start --head`: the job runs the uploaded copy
of the project and writes the same output as a driver run beside the cluster."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from cluster.conftest import BIN, ROOT
from cluster.outputs import assert_same_output, summary_output

pytestmark = pytest.mark.slow

RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"


def runtime_env_file() -> Path:
    """cluster/runtime_env.yaml with every folder git ignores here added to its excludes: Ray reads the
    checkout's .gitignore files but not .git/info/exclude, and a developer's ignored scratch folder (wheels,
    caches) would push the upload past Ray's 100 MiB request limit."""
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    ignored = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--directory"],
                             cwd=ROOT, capture_output=True, text=True).stdout.split()
    env["excludes"] = sorted(set(env.get("excludes", [])) | {p for p in ignored if p.endswith("/")})
    path = Path(tempfile.gettempdir()) / f"simpersona-runtime-env-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(env))
    return path


def submit(head, entrypoint: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The README's command: `ray job submit --address <dashboard> --working-dir . --runtime-env ... -- python ...`."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head.dashboard, "--working-dir", ".",
           "--runtime-env", str(runtime_env_file()), "--", "python", *entrypoint]
    return subprocess.run(cmd, cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=timeout)


def test_preprocess_job_equals_a_driver_run(ray_head, clean_preprocess, tmp_path):
    run_dir = tmp_path / "job"
    t0 = time.perf_counter()
    done = submit(ray_head, ["ray_jobs/preprocess.py", f"run_dir={run_dir}", "config=smoke", "progress=false"])
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout, done.stdout[-2000:]
    assert f"artifacts: {run_dir}/preprocess" in done.stdout
    out = run_dir / "preprocess"
    assert (out / "manifest.json").exists()
    counts = assert_same_output(str(clean_preprocess), str(out))
    assert counts == {"features": 57655, "traces": 52907, "events": 182880}
    assert summary_output((out / "summary.json").read_text()) == summary_output(
        (clean_preprocess / "summary.json").read_text())
    print(f"job wall {wall:.1f} s; rows {counts}")


def test_job_runs_the_uploaded_copy_with_the_venv_python(ray_head):
    """The working dir is uploaded and comes first on the job's sys.path, ahead of the editable install."""
    code = "import sys, simpersona; print('where', simpersona.__file__, sys.executable)"
    done = submit(ray_head, ["-c", code])  # the CLI shell-quotes each argument
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("where ")]
    assert lines, done.stdout[-3000:]
    _, module, python = lines[0].split()
    assert "working_dir_files" in module and not module.startswith(str(ROOT)), module
    assert python.startswith(str(BIN.parent)), python
