"""Run and stage manifests: what produced an artifact, so results can be traced, reproduced and skipped.

A stage is finished when `<stage>/manifest.json` exists: it is written last (locally through a
temporary file and a rename; on S3 an object appears whole or not at all), so a crashed stage never
looks finished. The manifest records the stage's resolved config section(s) with credentials
redacted (the config hash is taken over the real values), the hashes of its inputs (the upstream stages' manifests, or the raw input files' contents),
the project's git revision and package versions. `is_current` compares a new manifest with the stored
one to decide whether a pipeline re-run may skip the stage.

Input identity is content-based and independent of where the bytes live (local path, uploaded job
copy, S3 object), so a run on another machine, via `ray job submit --working-dir .`, or on a copy in S3
keys on the same inputs; the manifest still lists the inputs' URIs under `sources`, for tracing only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from simpersona import storage
from simpersona.storage import replace_durably

FILENAME = "manifest.json"  # in every finished stage folder, written last
SECRET_KEYS = ("secret", "password", "token", "access_key", "credential", "api_key")
REDACTED = "***"
# Files up to this size are hashed whole (the bundled data: milliseconds); a bigger file is identified by
# its size and a hash of its first and last SAMPLE_BYTES (reading GBs of logs to skip a stage would cost
# more than the stage), which catches appends, truncation and rewrites of the header or the tail.
FULL_HASH_MAX_BYTES = 64 << 20
SAMPLE_BYTES = 1 << 20
PACKAGES = ("simpersona", "ray", "torch", "pyarrow", "polars", "transformers", "peft",
            "vector-quantize-pytorch", "playwright", "omegaconf")


# credentials a value may carry whatever its key: the user:password of a URL, and query parameters with
# a secret-looking name (a presigned URL's signature, ?token=...)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SECRET_PARAM = re.compile(r"(?P<name>[?&;][^=&#\s]*(?:" + "|".join(SECRET_KEYS + ("signature", "sig"))
                           + r")[^=&#\s]*=)[^&#\s]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """`text` with the credentials inside URLs replaced by ***."""
    return _SECRET_PARAM.sub(r"\g<name>" + REDACTED, _URL_USERINFO.sub(r"\g<scheme>" + REDACTED + "@", text))


def redact(obj: Any) -> Any:
    """A copy of `obj` with every value under a secret-looking key replaced by ***, numbers excepted:
    under such names they are counts (max_prompt_tokens, tokenizer_examples), never credentials; and
    with the credentials inside URLs (redact_text) replaced in every string."""
    if isinstance(obj, dict):
        return {k: (REDACTED if _secret(k) and v not in ("", None) and not _number(v) else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def _number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bool included


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


def content_hash(uri: str, s3cfg=None) -> tuple[int, str] | None:
    """(size, sha256 prefix) of one file, local or s3://: the whole file up to FULL_HASH_MAX_BYTES, else
    the size with its first and last SAMPLE_BYTES. None when the file does not exist."""
    fs, path = storage.resolve(uri, s3cfg)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    h = hashlib.sha256()
    size = int(info.size)
    with fs.open_input_file(path) as fh:
        if size <= FULL_HASH_MAX_BYTES:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
        else:
            h.update(f"size={size};head,tail={SAMPLE_BYTES}".encode())
            h.update(fh.read_at(SAMPLE_BYTES, 0))
            h.update(fh.read_at(SAMPLE_BYTES, size - SAMPLE_BYTES))
    return size, h.hexdigest()[:32]


def file_fingerprint(uris: list[str], s3cfg=None) -> str:
    """Identity of a set of input files from their contents (see content_hash), in the order of their
    URIs; the URIs themselves are left out, so a copy elsewhere (another machine, a job's uploaded
    working dir, an S3 bucket) has the same fingerprint."""
    return stable_hash([content_hash(u, s3cfg) for u in sorted(uris)])


def build(stage: str, config_sections: dict[str, Any], inputs: dict[str, str],
          sources: list[str] | None = None) -> dict[str, Any]:
    """A stage's manifest. `inputs` (identities) decide whether it is current; `sources` (the inputs'
    absolute paths or URIs) are recorded for tracing only.

    The config hash sees the real values: redaction is by key name, so hashing the redacted copy would make
    a change of e.g. `persona.max_prompt_tokens` ("token") invisible and leave a stale stage "up to date".
    Only the redacted copy is written; a credential's value reaches the manifest only inside that hash."""
    return {
        "stage": stage,
        "config": redact(config_sections),
        "config_hash": stable_hash(config_sections),
        "inputs": inputs,
        "inputs_hash": stable_hash(inputs),
        "sources": [redact_text(str(u)) for u in sources or []],
        "git_revision": git_revision(),
        "packages": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def path(stage_dir: str | Path) -> str:
    """The manifest's path or URI in a stage folder (local or s3://)."""
    return storage.join_uri(str(stage_dir), FILENAME)


def dumps(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, default=str)


def write(stage_dir: str | Path, manifest: dict[str, Any], s3cfg=None) -> None:
    """Write the manifest atomically: the stage counts as finished only once this returns."""
    target = path(stage_dir)
    if storage.is_s3(target):  # an S3 PUT is atomic: the object appears whole on close, or not at all
        with storage.open_output_stream(target, s3cfg) as fh:
            fh.write(dumps(manifest).encode())
        return
    local = Path(target)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".manifest.json.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(dumps(manifest))
    replace_durably(tmp, local)  # synced, renamed, folder synced: "finished" survives a power loss


def read_text(stage_dir: str | Path, s3cfg=None) -> str | None:
    """The stored manifest's text, None when there is none."""
    fs, p = storage.resolve(path(stage_dir), s3cfg)
    try:
        with fs.open_input_stream(p) as fh:
            return fh.read().decode()
    except FileNotFoundError:
        return None


def read(stage_dir: str | Path, s3cfg=None) -> dict[str, Any] | None:
    text = read_text(stage_dir, s3cfg)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def remove(stage_dir: str | Path, s3cfg=None) -> None:
    """Mark a stage unfinished (before it is run again in place)."""
    fs, p = storage.resolve(path(stage_dir), s3cfg)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def is_current(stage_dir: str | Path, manifest: dict[str, Any], s3cfg=None) -> bool:
    """True when the stage finished before with the same config and the same inputs."""
    old = read(stage_dir, s3cfg)
    return bool(old) and old["config_hash"] == manifest["config_hash"] and old["inputs_hash"] == manifest["inputs_hash"]


def digest(stage_dir: str | Path, s3cfg=None) -> str:
    """Identity of a finished stage's output, for the stages downstream of it."""
    m = read(stage_dir, s3cfg)
    if m is None:
        raise FileNotFoundError(f"stage output {stage_dir} is not finished (no manifest.json)")
    return stable_hash([m["config_hash"], m["inputs_hash"], m.get("output_hash", "")])
