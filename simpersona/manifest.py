"""Run and stage manifests: what produced an artifact, so results can be traced, reproduced and skipped.

A stage is finished when `<stage>/manifest.json` exists: it is written last, through a temporary
file and a rename, so a crashed stage never looks finished. The manifest records the stage's
resolved config section(s) with credentials redacted, the hashes of its inputs (the upstream
stages' manifests, or the raw input files' sizes and modification times), the project's git
revision and package versions. `is_current` compares a new manifest with the stored one to decide
whether a pipeline re-run may skip the stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

SECRET_KEYS = ("secret", "password", "token", "access_key", "credential", "api_key")
REDACTED = "***"
PACKAGES = ("simpersona", "ray", "torch", "pyarrow", "polars", "transformers", "peft",
            "vector-quantize-pytorch", "playwright", "omegaconf")


def redact(obj: Any) -> Any:
    """A copy of `obj` with every value under a secret-looking key replaced by ***."""
    if isinstance(obj, dict):
        return {k: (REDACTED if _secret(k) and v not in ("", None) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def _secret(key: str) -> bool:
    k = str(key).lower()
    return any(s in k for s in SECRET_KEYS)


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_revision(root: Path | None = None) -> str:
    if os.environ.get("SIMPERSONA_GIT_REV"):
        return os.environ["SIMPERSONA_GIT_REV"]
    root = root or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_fingerprint(paths: list[str]) -> str:
    """Cheap input identity for raw files: name, size and mtime (hashing GBs of logs is too slow)."""
    items = []
    for p in sorted(paths):
        try:
            st = os.stat(p)
            items.append((p, st.st_size, int(st.st_mtime)))
        except OSError:
            items.append((p, None, None))  # remote URIs: their listing is fingerprinted by the caller
    return stable_hash(items)


def build(stage: str, config_sections: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    config_sections = redact(config_sections)
    return {
        "stage": stage,
        "config": config_sections,
        "config_hash": stable_hash(config_sections),
        "inputs": inputs,
        "inputs_hash": stable_hash(inputs),
        "git_revision": git_revision(),
        "packages": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def path(stage_dir: str | Path) -> Path:
    return Path(stage_dir) / "manifest.json"


def write(stage_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically: the stage counts as finished only once this returns."""
    target = path(stage_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def read(stage_dir: str | Path) -> dict[str, Any] | None:
    p = path(stage_dir)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def is_current(stage_dir: str | Path, manifest: dict[str, Any]) -> bool:
    """True when the stage finished before with the same config and the same inputs."""
    old = read(stage_dir)
    return bool(old) and old["config_hash"] == manifest["config_hash"] and old["inputs_hash"] == manifest["inputs_hash"]


def digest(stage_dir: str | Path) -> str:
    """Identity of a finished stage's output, for the stages downstream of it."""
    m = read(stage_dir)
    if m is None:
        raise FileNotFoundError(f"stage output {stage_dir} is not finished (no manifest.json)")
    return stable_hash([m["config_hash"], m["inputs_hash"], m.get("output_hash", "")])
