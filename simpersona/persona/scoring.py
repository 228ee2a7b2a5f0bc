"""Score only the actions a page allows, with one forward pass of the shared prompt per request.

For a batch of requests the prompts run once (left-padded, so every prompt ends at the same
position and only the last position's logits are kept); their KV cache is then gathered so that each
candidate row points at its request's cache, and all candidates' tokens run as one padded batch on
top of it. A candidate's log-probability is the sum over its tokens (action + end marker); the
results are normalised over the request's allowed actions, so an action outside `allowed` can never
be returned. `score_naive` is the reference: one full forward per (prompt, candidate).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simpersona.persona.examples import TargetCache, encode_prompts
from simpersona.persona.prompts import build_prompt, persona_token

PERSONA_FILE = "persona.json"


@dataclass
class ScoreRequest:
    persona: int | str | None
    observation: str
    history: list[str]
    allowed: list[str]


def sample(logprobs, temperature: float, rng: np.random.Generator) -> int:
    """Index drawn from softmax(logprobs / temperature); temperature <= 0 is argmax."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("cannot sample from an empty list of log-probabilities")
    if temperature <= 0:
        return int(np.argmax(lp))
    z = lp / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(lp.size, p=p / p.sum()))


def read_persona_info(folder: Path) -> dict:
    for path in (folder / PERSONA_FILE, folder.parent / PERSONA_FILE):
        if path.exists():
            return json.loads(path.read_text())
    return {}


class ActionScorer:
    """Log-probabilities of each allowed action under a causal LM (a model folder or a loaded model)."""

    def __init__(self, model, tokenizer=None, *, history_len: int | None = None, device: str = "cpu",
                 max_candidates: int = 512, torch_threads: int = 0):
        info: dict = {}
        if isinstance(model, str | Path):
            from simpersona.persona.model_loading import load_saved

            folder = Path(model)
            if not (folder / "config.json").exists():
                raise FileNotFoundError(f"no model at {folder} (expected a save_pretrained folder)")
            info = read_persona_info(folder)
            model, tokenizer = load_saved(folder)
        elif tokenizer is None:
            raise ValueError("ActionScorer needs the tokenizer when given a model object")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.history_len = history_len if history_len is not None else info.get("history_len")
        self.n_personas = int(info.get("codebook_size") or _count_personas(tokenizer))
        self.max_candidates = max_candidates
        self.targets = TargetCache(tokenizer)
        # transformers 5 renamed past_key_values to cache; older releases only know the old name
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # ---- prompts ------------------------------------------------------------------------------
    def prompt(self, r: ScoreRequest) -> str:
        if isinstance(r.persona, int) and not isinstance(r.persona, bool):
            if self.n_personas == 0:
                raise ValueError(f"persona {r.persona} given, but the model has no persona tokens")
            if not 0 <= r.persona < self.n_personas:
                raise ValueError(f"persona {r.persona} out of range: the model has {self.n_personas} persona tokens")
        history = list(r.history)
        if self.history_len is not None:
            history = history[-self.history_len:] if self.history_len > 0 else []
        return build_prompt(r.persona, r.observation, history)

    def _chunks(self, requests: list[ScoreRequest]):
        chunk, n = [], 0
        for r in requests:
            if not r.allowed:
                raise ValueError("score request has no allowed actions")
            if chunk and n + len(r.allowed) > self.max_candidates:
                yield chunk
                chunk, n = [], 0
            chunk.append(r)
            n += len(r.allowed)
        if chunk:
            yield chunk

    # ---- scoring ------------------------------------------------------------------------------
    def score(self, requests: list[ScoreRequest]) -> list[list[float]]:
        """Normalised log-probabilities of each request's allowed actions, in `allowed` order."""
        out: list[list[float]] = []
        for chunk in self._chunks(requests):
            out += self._score_chunk(chunk)
        return out

    @torch.no_grad()
    def _score_chunk(self, reqs: list[ScoreRequest]) -> list[list[float]]:
        pad = self.tokenizer.pad_token_id
        prompts = encode_prompts(self.tokenizer, [self.prompt(r) for r in reqs])
        lens = torch.tensor([len(p) for p in prompts])
        width = int(lens.max())
        ids = torch.full((len(reqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at position width - 1
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        dev = self.device
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         use_cache=True, logits_to_keep=1)
        first_lp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)

        owner = [i for i, r in enumerate(reqs) for _ in r.allowed]
        cand = [self.targets(a) for r in reqs for a in r.allowed]
        owner_t = torch.tensor(owner, device=dev)
        total = first_lp[owner_t, torch.tensor([c[0] for c in cand], device=dev)]
        rest = max(len(c) for c in cand) - 1
        if rest > 0:  # feed tokens 0..n-2 of each candidate; their logits score tokens 1..n-1
            cids = torch.full((len(cand), rest), pad, dtype=torch.long)
            cmask = torch.zeros((len(cand), rest), dtype=torch.long)
            nxt = torch.zeros((len(cand), rest), dtype=torch.long)
            for j, c in enumerate(cand):
                n = len(c) - 1
                if n:
                    cids[j, :n] = torch.tensor(c[:-1])
                    nxt[j, :n] = torch.tensor(c[1:])
                    cmask[j, :n] = 1
            cache = getattr(out, "cache", None) or out.past_key_values
            cache.batch_select_indices(owner_t)
            attn = torch.cat([mask.to(dev)[owner_t], cmask.to(dev)], dim=1)
            cpos = lens.to(dev)[owner_t, None] + torch.arange(rest, device=dev)[None, :]
            out2 = self.model(input_ids=cids.to(dev), attention_mask=attn, position_ids=cpos,
                              use_cache=True, **{self.cache_arg: cache})
            lp = torch.log_softmax(out2.logits.float(), dim=-1).gather(-1, nxt.to(dev)[..., None])[..., 0]
            total = total + (lp * cmask.to(dev)).sum(1)
        return _normalise(total.cpu().double(), reqs)

    @torch.no_grad()
    def score_naive(self, requests: list[ScoreRequest]) -> list[list[float]]:
        """Reference: one full forward pass per (prompt, candidate); slow, for tests and benchmarks."""
        totals, flat = [], []
        for r in requests:
            p = encode_prompts(self.tokenizer, [self.prompt(r)])[0]
            for a in r.allowed:
                t = self.targets(a)
                x = torch.tensor([p + t], device=self.device)
                lp = torch.log_softmax(self.model(input_ids=x).logits[0].float(), dim=-1)
                totals.append(float(sum(lp[len(p) - 1 + j, t[j]] for j in range(len(t)))))
            flat.append(r)
        return _normalise(torch.tensor(totals, dtype=torch.float64), flat)


def _normalise(total: torch.Tensor, reqs: list[ScoreRequest]) -> list[list[float]]:
    out, k = [], 0
    for r in reqs:
        x = total[k: k + len(r.allowed)]
        out.append((x - torch.logsumexp(x, 0)).tolist())
        k += len(r.allowed)
    return out


def _count_personas(tokenizer) -> int:
    vocab = tokenizer.get_vocab()
    n = 0
    while persona_token(n) in vocab:
        n += 1
    return n
