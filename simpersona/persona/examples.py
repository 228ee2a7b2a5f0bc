"""Training examples from agent traces: (prompt, next action) per trace step, in four prompt variants.

One trace row (DIR/preprocess/traces, contracts.md) is one example: the prompt holds the page
observation and the session's last `history_len` actions, the target is the action taken. The
variants differ only in the persona part of the prompt (a token after `action:`, or a prose line before
it; prompts.build_prompt), so every model is trained and evaluated on identical rows:
  persona   the history's type token <|persona_k|>          (the persona model)
  none      no persona line                                 (the "one average buyer" baseline)
  prompt    "persona: <description of type k>"              (the prose-persona baseline)
  mismatch  another type's token                            (evaluation only)

Histories, not rows, are split into train and held-out (by a salted hash of history_id), so no
buyer's sessions leak across the split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import torch

from simpersona.persona.prompts import build_prompt, target_text

VARIANTS = ("persona", "none", "prompt", "mismatch")
TRACE_COLUMNS = ["history_id", "merchant_id", "session_idx", "step", "observation", "allowed", "action"]
IGNORE = -100  # label of tokens without loss (prompt, padding)


@dataclass
class Steps:
    """Trace steps with type ids and histories, split by history."""

    train: pd.DataFrame
    heldout: pd.DataFrame
    n_types: int
    descriptions: list[str] | None
    untyped_rows: int  # trace rows whose history has no type (left out)


def read_traces(folder: str | Path) -> pd.DataFrame:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no traces at {folder} (run the preprocess stage first)")
    dataset = pads.dataset(str(folder), format="parquet")
    missing = [c for c in TRACE_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"traces at {folder} lack columns {missing}")
    df = dataset.to_table(columns=TRACE_COLUMNS).to_pandas()
    if df.empty:
        raise ValueError(f"traces at {folder} have no rows")
    return df


def read_types(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no type assignment at {path} (run the assign stage first)")
    df = pads.dataset(str(path), format="parquet").to_table(columns=["history_id", "type_id"]).to_pandas()
    return df.drop_duplicates("history_id")


def read_descriptions(path: str | Path, n_types: int) -> list[str] | None:
    """Prose description per type id from type_profiles.json (a list, or a dict keyed by type id)."""
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("types"), list):
        data = data["types"]
    if isinstance(data, dict):
        entries = [dict(v, type_id=int(k)) for k, v in data.items() if str(k).lstrip("-").isdigit()]
    else:
        entries = list(data)
    out = [""] * n_types
    for e in entries:
        k = int(e.get("type_id", -1))
        if 0 <= k < n_types:
            out[k] = str(e.get("description", ""))
    return out


def add_history(df: pd.DataFrame, history_len: int) -> pd.DataFrame:
    """Sort by session and step; `history` = the session's previous `history_len` actions."""
    df = df.sort_values(["history_id", "session_idx", "step"], kind="stable").reset_index(drop=True)
    groups = df.groupby(["history_id", "session_idx"], sort=False)["action"]
    shifted = [groups.shift(j).to_numpy() for j in range(history_len, 0, -1)]  # oldest first
    if shifted:
        stacked = np.stack(shifted, axis=1)
        df["history"] = [[a for a in row if isinstance(a, str)] for row in stacked]
    else:
        df["history"] = [[] for _ in range(len(df))]
    return df


def hash_unit(values: pd.Series, seed: int) -> np.ndarray:
    """A stable pseudo-uniform number in [0, 1) per value (salted with the seed)."""
    h = pd.util.hash_array(values.astype(str).to_numpy(dtype=object), hash_key=f"{seed:016d}"[-16:])
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def load_steps(traces_dir, types_path, profiles_path, n_types: int, history_len: int,
               heldout_fraction: float, seed: int, heldout_merchants: list[str] | None = None) -> Steps:
    """Typed trace steps split by history; histories at `heldout_merchants` (the evaluation's held-out
    storefronts) never reach training and are evaluated with the hash-held-out ones."""
    traces = read_traces(traces_dir)
    types = read_types(types_path)
    bad = types[(types.type_id < 0) | (types.type_id >= n_types)]
    if len(bad):
        raise ValueError(f"type ids outside [0, {n_types}) in {types_path}: {sorted(bad.type_id.unique())[:5]}")
    df = traces.merge(types, on="history_id", how="inner")
    untyped = len(traces) - len(df)
    if df.empty:
        raise ValueError(f"no trace history of {traces_dir} has a type in {types_path}")
    df["type_id"] = df["type_id"].astype(np.int64)
    df = add_history(df, history_len)
    held = hash_unit(df["history_id"], seed) < heldout_fraction
    if heldout_merchants:
        held |= df["merchant_id"].astype(str).isin(set(map(str, heldout_merchants))).to_numpy()
    return Steps(df[~held].reset_index(drop=True), df[held].reset_index(drop=True), n_types,
                 read_descriptions(profiles_path, n_types), untyped)


def subsample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most n rows, chosen by a seeded hash (deterministic, order kept); n <= 0 keeps all."""
    if n <= 0 or len(df) <= n:
        return df
    order = np.argsort(hash_unit(step_keys(df), seed + 1), kind="stable")[:n]
    return df.iloc[np.sort(order)].reset_index(drop=True)


def subsample_by_type(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most n rows with the types (`type_id`) as evenly represented as their rows allow: each type gets
    an equal share, a type with fewer rows keeps all of them and the share it leaves goes to the others.
    Within a type the rows are the ones `subsample` would rank first; row order is kept. A uniform sample
    gives a type of 2 % of the steps 2 % of the examples, too few for its persona token to learn from."""
    if n <= 0 or len(df) <= n:
        return df
    rank = pd.Series(hash_unit(step_keys(df), seed + 1), index=df.index)
    counts = df["type_id"].value_counts().sort_values(kind="stable")
    quota, left = {}, n
    for i, (k, c) in enumerate(counts.items()):  # fewest rows first: what a small type cannot use, others get
        quota[k] = min(int(c), left // (len(counts) - i))
        left -= quota[k]
    order = rank.groupby(df["type_id"]).rank(method="first")
    keep = order <= df["type_id"].map(quota)
    return df[keep.to_numpy()].reset_index(drop=True)


def sample_training_steps(df: pd.DataFrame, n: int, by: str, seed: int) -> pd.DataFrame:
    """The persona stages' training examples: `by` = steps (a uniform sample, `subsample`) or types
    (`subsample_by_type`)."""
    if by == "steps":
        return subsample(df, n, seed)
    if by == "types":
        return subsample_by_type(df, n, seed)
    raise ValueError(f"persona.train_sampling must be steps or types, got {by!r}")


def step_keys(df: pd.DataFrame) -> pd.Series:
    return df["history_id"].astype(str) + "|" + df["session_idx"].astype(str) + "|" + df["step"].astype(str)


def dropped_personas(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Rows that a persona-dropout stage shows without their token: a `fraction` chosen by seeded hash."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"persona dropout must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return np.zeros(len(df), dtype=bool)
    return hash_unit(step_keys(df), seed + 2) < fraction


def persona_of(df: pd.DataFrame, variant: str, n_types: int, descriptions: list[str] | None,
               dropout: float = 0.0, seed: int = 0) -> list:
    """The `persona` argument of build_prompt for each row; with `dropout` (persona variant only) a
    seeded share of the rows has no persona token, so a model learns the shared behaviour from those and
    what each token adds from the rest."""
    types = df["type_id"].to_numpy()
    if variant == "persona":
        drop = dropped_personas(df, dropout, seed)
        return [None if d else int(t) for t, d in zip(types, drop)]
    if variant == "none":
        return [None] * len(df)
    if variant == "mismatch":  # the type half-way round the codebook: always a different one when K > 1
        return [int((t + max(1, n_types // 2)) % n_types) for t in types]
    if variant == "prompt":
        if not descriptions or not all(descriptions):
            raise ValueError("the prompt-persona variant needs a description for every type "
                             "(assign/type_profiles.json)")
        return [descriptions[int(t)] for t in types]
    raise ValueError(f"unknown example variant {variant!r}; expected one of {VARIANTS}")


def prompts_for(df: pd.DataFrame, variant: str, n_types: int, descriptions: list[str] | None,
                dropout: float = 0.0, seed: int = 0) -> list[str]:
    personas = persona_of(df, variant, n_types, descriptions, dropout, seed)
    return [build_prompt(p, o, list(h)) for p, o, h in zip(personas, df["observation"], df["history"])]


class TargetCache:
    """Token ids of `" " + action + end marker`; the same ids in training and in scoring."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, action: str) -> list[int]:
        ids = self.cache.get(action)
        if ids is None:
            ids = self.tokenizer(target_text(action, self.tokenizer.eos_token), add_special_tokens=False)["input_ids"]
            self.cache[action] = ids
        return ids


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompt token ids, opened by the tokenizer's start token when it has one.

    The start token gives every prompt the same first position (the one attention rests on), so the page
    always opens at the same distance from it, with or without a persona (which comes later)."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return [[bos] + x for x in ids] if bos is not None else ids


def tokenize(tokenizer, prompts: list[str], actions: list[str], max_tokens: int) -> tuple[pd.DataFrame, int]:
    """Rows of input_ids (prompt + target) and n_prompt; examples over max_tokens are dropped."""
    prompt_ids = encode_prompts(tokenizer, prompts)
    target = TargetCache(tokenizer)
    ids, n_prompt = [], []
    dropped = 0
    for p, a in zip(prompt_ids, actions):
        t = target(a)
        if len(p) + len(t) > max_tokens:
            dropped += 1
            continue
        ids.append(np.asarray(p + t, dtype=np.int32))
        n_prompt.append(len(p))
    return pd.DataFrame({"input_ids": ids, "n_prompt": np.asarray(n_prompt, dtype=np.int32)}), dropped


def bucket_by_length(df: pd.DataFrame, batch_size: int, seed: int, window: int = 64) -> pd.DataFrame:
    """Rows reordered so that consecutive batches hold similar lengths (less padding), batch order shuffled."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    lengths = df["input_ids"].map(len).to_numpy()[order]
    chunk = batch_size * window
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start: start + chunk][np.argsort(lengths[start: start + chunk], kind="stable")]
        batches += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    rng.shuffle(full)  # a short batch goes last: in the middle it would shift every later batch boundary
    batches = full + [b for b in batches if len(b) < batch_size]
    return df.iloc[np.concatenate(batches)].reset_index(drop=True) if batches else df


def collate(input_ids, n_prompt, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels only on the target tokens (action + end marker)."""
    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    labels = torch.full((len(input_ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, (x, n) in enumerate(zip(input_ids, n_prompt)):
        x = torch.as_tensor(np.asarray(x, dtype=np.int64))
        ids[i, : len(x)] = x
        labels[i, int(n): len(x)] = x[int(n):]
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
