"""Score only the actions a page allows, with one forward pass of the shared prompt per request.

For a batch of requests one forward pass runs: each row holds a request's prompt followed by the
tokens of all its allowed actions, and a 4D attention mask lets each action's tokens see the prompt
and their own earlier tokens only (the prompt is computed once and every candidate attends to its
keys and values in place). A candidate's log-probability is the sum over its tokens (action + end
marker); the results are normalised over the request's allowed actions, so an action outside
`allowed` can never be returned. `score_naive` is the reference: one full forward per (prompt, candidate).
"""

from __future__ import annotations

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
        # the transformer body and the output head apart: only the positions that score a candidate token
        # go through the head (its vocabulary-wide matrix product is most of a small model's work)
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        if self.decoder is None or self.lm_head is None or _scales_logits(model.config):
            raise ValueError(f"{type(model).__name__}: scoring needs a decoder and an output head that "
                             "give the logits as they are (no logit scaling or soft-capping)")
        self.dtype = next(model.parameters()).dtype

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
        """One forward pass for the chunk. Each request is a segment: its prompt followed by all of its
        candidates' tokens, under a mask that lets a candidate token see the prompt and its own earlier
        tokens only; every candidate reads the prompt's keys and values in place, instead of from a copy
        of the prompt's KV cache per candidate (a third of a batch's time on CPU). Segments are packed
        several to a row, each with its own block of the mask and positions from 0, so a batch does not
        compute on padding (one row per request left half of it padding on the benchmark's pages)."""
        prompts = encode_prompts(self.tokenizer, [self.prompt(r) for r in reqs])
        segments, targets = [], []
        for r, p in zip(reqs, prompts, strict=True):
            ids, spans, reads = list(p), [], []
            for a in r.allowed:
                c = self.targets(a)
                start = len(ids)
                ids += c[:-1]  # the last token is only ever predicted, never fed
                spans.append((start, len(ids)))
                # token j of the candidate is read off the prompt's last position, then its own tokens
                reads.append([len(p) - 1] + list(range(start, start + len(c) - 1)))
                targets.append(c)
            segments.append((ids, len(p), spans, reads))
        rows = _pack([len(s[0]) for s in segments])
        width = max(sum(len(segments[k][0]) for k in row) for row in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        where: list[tuple[int, int]] = [(0, 0)] * len(segments)  # segment -> (row, offset)
        for i, row in enumerate(rows):
            o = 0
            for k in row:
                seg, plen, spans, _ = segments[k]
                where[k] = (i, o)
                ids[i, o: o + len(seg)] = torch.tensor(seg)
                pos[i, o: o + plen] = torch.arange(plen)
                allowed[i, o: o + plen, o: o + plen] = causal[:plen, :plen]
                for a, b in spans:
                    pos[i, o + a: o + b] = torch.arange(plen, plen + b - a)
                    allowed[i, o + a: o + b, o: o + plen] = True  # the whole prompt
                    allowed[i, o + a: o + b, o + a: o + b] = causal[: b - a, : b - a]  # its own earlier tokens
                o += len(seg)
            idle = torch.arange(o, width)
            allowed[i, idle, idle] = True  # padding sees itself: no row of the mask is empty
        mask = torch.zeros((len(rows), 1, width, width), dtype=self.dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(self.dtype).min)
        dev = self.device
        hidden = self.decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                              use_cache=False).last_hidden_state
        at = torch.tensor([(where[k][0], where[k][1] + j) for k, seg in enumerate(segments)
                           for rd in seg[3] for j in rd], device=dev)
        logits = self.lm_head(hidden[at[:, 0], at[:, 1]]).float()
        want = torch.tensor([t for c in targets for t in c], device=dev)
        tok_lp = torch.log_softmax(logits, dim=-1).gather(-1, want[:, None])[:, 0]
        owner = torch.tensor([k for k, c in enumerate(targets) for _ in c], device=dev)
        total = torch.zeros(len(targets), dtype=tok_lp.dtype, device=dev).index_add_(0, owner, tok_lp)
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


def _pack(lengths: list[int]) -> list[list[int]]:
    """Segments (by index) into rows no longer than the longest segment: first fit, longest first."""
    cap = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for i, room in enumerate(free):
            if lengths[k] <= room:
                rows[i].append(k)
                free[i] -= lengths[k]
                break
        else:
            rows.append([k])
            free.append(cap - lengths[k])
    return rows


def _normalise(total: torch.Tensor, reqs: list[ScoreRequest]) -> list[list[float]]:
    out, k = [], 0
    for r in reqs:
        x = total[k: k + len(r.allowed)]
        out.append((x - torch.logsumexp(x, 0)).tolist())
        k += len(r.allowed)
    return out


def _scales_logits(config) -> bool:
    """Models whose forward changes the head's output (Gemma's soft-capping, Cohere's logit scale)."""
    return any(getattr(config, k, None) not in (None, 1, 1.0)
               for k in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"))


def _count_personas(tokenizer) -> int:
    vocab = tokenizer.get_vocab()
    n = 0
    while persona_token(n) in vocab:
        n += 1
    return n
