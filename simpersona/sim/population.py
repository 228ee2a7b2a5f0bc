"""Agent populations: for each merchant, N agents whose buyer types follow that merchant's distribution.

Every random draw depends only on (seed, merchant, agent index), never on the variant, the persona
mode or N. So the same agent gets the same uniform draw and the same seed in every what-if variant
(common random numbers: variant deltas are not drowned in sampling noise), and growing N keeps the
agents already drawn. The persona modes are the evaluation's baselines:

  vq        the merchant's VQ type distribution (the product)
  none      no persona token (type_id -1): one average buyer
  mismatch  a VQ type shifted by half the codebook: a wrong but equally detailed persona
  prompt    the drawn VQ type, given to the model as its prose description instead of a token
  kmeans    the merchant's k-means type distribution (DIR/assign/types.parquet) instead of VQ's
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simpersona.storage import replace_durably

PERSONA_MODES = ("vq", "none", "mismatch", "prompt", "kmeans")

SPEC_SCHEMA = pa.schema([
    ("agent_id", pa.string()),
    ("merchant_id", pa.string()),
    ("type_id", pa.int32()),
    ("persona_mode", pa.string()),
    ("seed", pa.int64()),
    ("variant", pa.string()),
    ("max_steps", pa.int32()),
])


class PopulationError(ValueError):
    """Inputs from which no population can be built; the message names the file or setting."""


def _merchant_key(merchant_id: str) -> int:
    return int.from_bytes(hashlib.sha256(merchant_id.encode()).digest()[:8], "little")


def agent_draws(seed: int, merchant_id: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(uniform draw in [0,1), agent seed) for agents 0..n-1 of a merchant; prefix-stable in n."""
    key = _merchant_key(merchant_id)
    u = np.empty(n)
    seeds = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, key, i])
        u[i] = rng.random()
        seeds[i] = rng.integers(0, 2**62)
    return u, seeds


def inverse_cdf(type_ids: np.ndarray, probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Types for uniform draws `u` under the distribution (type_ids, probs), in type-id order."""
    order = np.argsort(type_ids, kind="stable")
    cdf = np.cumsum(probs[order] / probs.sum())
    idx = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
    return type_ids[order][idx]


def load_distributions(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """merchant_id -> (type_ids, probs, buyer count) from a merchant_types.parquet."""
    if not path.exists():
        raise PopulationError(f"no merchant type distributions at {path} (run the assign stage first)")
    t = pq.read_table(path, columns=["merchant_id", "type_id", "count", "prob"]).to_pandas()
    if t.empty:
        raise PopulationError(f"{path} holds no merchants")
    out = {}
    for merchant, g in t.groupby("merchant_id", sort=True):
        probs = g["prob"].to_numpy(dtype=np.float64)
        if not np.isfinite(probs).all() or probs.min() < 0 or probs.sum() <= 0:
            raise PopulationError(f"{path}: merchant {merchant!r} has invalid probabilities")
        out[str(merchant)] = (g["type_id"].to_numpy(dtype=np.int64), probs, int(g["count"].sum()))
    return out


def kmeans_distributions(path: Path, smoothing: float) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """merchant_id -> k-means type distribution, additively smoothed over all k-means types."""
    if not path.exists():
        raise PopulationError(f"persona_mode=kmeans needs {path} (run the assign stage first)")
    t = pq.read_table(path, columns=["merchant_id", "kmeans_type_id"])
    k = int(pc.max(t["kmeans_type_id"]).as_py()) + 1
    counts = t.group_by(["merchant_id", "kmeans_type_id"]).aggregate([([], "count_all")]).to_pandas()
    out = {}
    for merchant, g in counts.groupby("merchant_id", sort=True):
        c = np.zeros(k)
        c[g["kmeans_type_id"].to_numpy()] = g["count_all"].to_numpy()
        out[str(merchant)] = (np.arange(k), (c + smoothing) / (c + smoothing).sum(), int(c.sum()))
    return out


def codebook_size(run_dir: Path, dists: dict[str, tuple[np.ndarray, np.ndarray, int]]) -> int:
    codebook = run_dir / "vqvae" / "codebook.npy"
    if codebook.exists():
        return int(np.load(codebook, mmap_mode="r").shape[0])
    return int(max(int(ids.max()) for ids, _, _ in dists.values())) + 1


def select_merchants(dists: dict, merchants) -> list[str]:
    """`merchants`: N (the N with most typed buyers; 0 = all) or an explicit list of ids."""
    if isinstance(merchants, int | np.integer):
        if merchants < 0:
            raise PopulationError(f"sim.merchants must be >= 0 or a list of ids, got {merchants}")
        ranked = sorted(dists, key=lambda m: (-dists[m][2], m))
        return ranked[: merchants or None]
    wanted = [str(m) for m in merchants]
    missing = [m for m in wanted if m not in dists]
    if missing:
        raise PopulationError(f"sim.merchants: unknown merchant(s) {missing[:5]} (not in merchant_types.parquet)")
    return list(dict.fromkeys(wanted))


def build_population(run_dir: str | Path, sim_cfg, seed: int) -> pa.Table:
    """Agent specs (SPEC_SCHEMA) of one variant; the persona mode and variant come from `sim_cfg`."""
    run_dir = Path(run_dir)
    mode = sim_cfg.persona_mode
    if mode not in PERSONA_MODES:
        raise PopulationError(f"sim.persona_mode must be one of {'|'.join(PERSONA_MODES)}, got {mode!r}")
    if sim_cfg.agents_per_merchant < 1 or sim_cfg.max_steps < 1:
        raise PopulationError("sim.agents_per_merchant and sim.max_steps must be >= 1")
    dists = load_distributions(Path(sim_cfg.merchant_types or run_dir / "assign" / "merchant_types.parquet"))
    merchants = select_merchants(dists, sim_cfg.merchants)
    if mode == "kmeans":
        kdists = kmeans_distributions(run_dir / "assign" / "types.parquet", sim_cfg.kmeans_smoothing)
    k = codebook_size(run_dir, dists)
    n = sim_cfg.agents_per_merchant
    cols: dict[str, list] = {name: [] for name in SPEC_SCHEMA.names}
    for merchant in merchants:
        u, seeds = agent_draws(seed, merchant, n)
        if mode == "kmeans":
            if merchant not in kdists:
                raise PopulationError(f"merchant {merchant!r} has no buyers in assign/types.parquet")
            types = inverse_cdf(kdists[merchant][0], kdists[merchant][1], u)
        else:
            types = inverse_cdf(dists[merchant][0], dists[merchant][1], u)
        if mode == "none":
            types = np.full(n, -1)
        elif mode == "mismatch":
            types = (types + max(1, k // 2)) % k
        cols["agent_id"] += [f"{merchant}-{i:05d}" for i in range(n)]
        cols["merchant_id"] += [merchant] * n
        cols["type_id"] += types.tolist()
        cols["persona_mode"] += [mode] * n
        cols["seed"] += seeds.tolist()
        cols["variant"] += [sim_cfg.variant] * n
        cols["max_steps"] += [sim_cfg.max_steps] * n
    return pa.table(cols, schema=SPEC_SCHEMA)


def write_population(specs: pa.Table, path: str | Path) -> None:
    """Write-then-rename so a reader never sees half a spec file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(specs, tmp)
    replace_durably(tmp, path)


class PersonaResolver:
    """What the policy is told about an agent's persona: a type id, nothing, or prose (mode=prompt)."""

    def __init__(self, descriptions: dict[int, str] | None = None):
        self.descriptions = descriptions or {}

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> PersonaResolver:
        path = Path(run_dir) / "assign" / "type_profiles.json"
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "types" in data:
            data = data["types"]
        if isinstance(data, dict):
            items = [(int(k), v) for k, v in data.items()]
        else:
            items = [(int(v["type_id"]), v) for v in data]
        return cls({k: str(v.get("description", "")) for k, v in items})

    def __call__(self, persona_mode: str, type_id: int) -> int | str | None:
        if persona_mode == "none" or type_id < 0:
            return None
        if persona_mode == "prompt":
            if type_id not in self.descriptions:
                raise PopulationError(f"persona_mode=prompt: no description of type {type_id} in type_profiles.json")
            return self.descriptions[type_id]
        return int(type_id)
