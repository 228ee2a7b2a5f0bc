"""The agent policy: the fine-tuned LM scores the page's allowed actions, and one of them is sampled.

Only the actions the page allows are scored (simpersona.persona.scoring.ActionScorer, one forward
pass of the shared prompt per request, its KV cache reused for every candidate), so the policy
cannot emit an invalid action. The action is *sampled* (population fidelity is a property of
distributions): the RNG is seeded by (serve.seed, agent seed, step), so the same agent at the same
step samples the same action whatever the batch it was scored in, the replica or the retry.

Three ways to use it, one code path:
  ActionPolicy            plain class: decide(list of requests) -> decisions (tests, in-process)
  PolicyDeployment        Ray Serve deployment around it with @serve.batch dynamic batching;
                          actors call handle.decide_many.remote(list of request dicts)
                          through HandlePolicyClient; handle.decide.remote(dict) for one
  HTTP                    POST the request JSON to the deployment's route (see serve/app.py)
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from simpersona.serve.config import ServeConfig


@dataclass
class PolicyRequest:
    persona: int | str | None  # persona type id, None (no persona), or prose (the prompt baseline)
    observation: str
    history: list[str]
    allowed: list[str]
    seed: int = 0  # the agent's seed
    step: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> PolicyRequest:
        """Validated request; ValueError with a one-line reason for bad input (HTTP 400)."""
        if not isinstance(d, dict):
            raise ValueError("policy request must be a JSON object")
        missing = [k for k in ("observation", "allowed") if k not in d]
        if missing:
            raise ValueError(f"policy request lacks {', '.join(missing)}")
        allowed = d["allowed"]
        if not isinstance(allowed, list) or not allowed or not all(isinstance(a, str) for a in allowed):
            raise ValueError("policy request needs `allowed`: a non-empty list of action strings")
        persona = d.get("persona")
        if isinstance(persona, bool) or (persona is not None and not isinstance(persona, int | str)):
            raise ValueError("policy request `persona` must be an int, a string or null")
        history = d.get("history") or []
        if not isinstance(history, list):
            raise ValueError("policy request `history` must be a list of action strings")
        return cls(persona, str(d["observation"]), [str(h) for h in history], list(allowed),
                   int(d.get("seed", 0)), int(d.get("step", 0)))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PolicyDecision:
    action: str
    logprob: float  # the model's log-probability of `action`, normalised over the allowed actions
    index: int  # position of `action` in the request's `allowed`
    logprobs: list[float] = field(default_factory=list)  # of every allowed action

    def to_dict(self) -> dict:
        return asdict(self)


def request_rng(policy_seed: int, agent_seed: int, step: int) -> np.random.Generator:
    """The sampling RNG of one agent step: independent of batching, replica and attempt."""
    return np.random.default_rng([policy_seed, agent_seed & (2**63 - 1), step])


class ActionPolicy:
    """Samples one allowed action per request from an ActionScorer's log-probabilities."""

    kind = "lm"

    def __init__(self, scorer, temperature: float = 1.0, seed: int = 0, history: int = 8):
        self.scorer = scorer
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.history = int(history)

    @classmethod
    def from_config(cls, serve_cfg, model_dir: str | Path) -> ActionPolicy:
        """Load the fine-tuned model (DIR/finetune/model) once; this is what each replica does."""
        from simpersona.persona.scoring import ActionScorer

        path = Path(model_dir)
        if not path.exists():
            raise FileNotFoundError(f"no policy model at {path} (run the finetune stage or set serve.model_dir)")
        return cls(ActionScorer(str(path)), serve_cfg.temperature, serve_cfg.seed, serve_cfg.history)

    def check(self, r: PolicyRequest) -> None:
        """ValueError for a request the model cannot answer (e.g. a persona id it has no token for),
        raised before batching so that one bad request does not fail the batch it would join."""
        from simpersona.persona.scoring import ScoreRequest

        self.scorer.prompt(ScoreRequest(r.persona, r.observation, [], r.allowed))

    def decide(self, requests: list[PolicyRequest]) -> list[PolicyDecision]:
        from simpersona.persona.scoring import ScoreRequest, sample

        if not requests:
            return []
        for r in requests:
            if not r.allowed:
                raise ValueError("policy request has no allowed actions")
        # Agents on the same page with the same persona and history ask the same question (every
        # agent of a type starts on its merchant's home page): score each distinct prompt once.
        keys, unique = [], {}
        for r in requests:
            history = r.history[-self.history:] if self.history else []
            key = (r.persona if not isinstance(r.persona, int) else ("#", r.persona), r.observation,
                   tuple(history), tuple(r.allowed))
            if key not in unique:
                unique[key] = ScoreRequest(r.persona, r.observation, history, r.allowed)
            keys.append(key)
        scored = dict(zip(unique, self.scorer.score(list(unique.values())), strict=True))
        out = []
        for r, key in zip(requests, keys, strict=True):
            lps = scored[key]
            if len(lps) != len(r.allowed):
                raise RuntimeError(f"scorer returned {len(lps)} scores for {len(r.allowed)} actions")
            i = sample(lps, self.temperature, request_rng(self.seed, r.seed, r.step))
            out.append(PolicyDecision(r.allowed[i], float(lps[i]), i, [float(x) for x in lps]))
        return out


class UniformPolicy:
    """Every allowed action equally likely. A SPEED BASELINE ONLY (no model): results are labelled
    policy=uniform, and it must never stand in for the persona model in an evaluation."""

    kind = "uniform"

    def __init__(self, seed: int = 0, **_):
        self.seed = int(seed)

    def check(self, r: PolicyRequest) -> None:
        pass

    def decide(self, requests: list[PolicyRequest]) -> list[PolicyDecision]:
        out = []
        for r in requests:
            n = len(r.allowed)
            if n == 0:
                raise ValueError("policy request has no allowed actions")
            lps = [-math.log(n)] * n
            i = int(request_rng(self.seed, r.seed, r.step).integers(n))
            out.append(PolicyDecision(r.allowed[i], lps[i], i, lps))
        return out


class FunnelPolicy:
    """A buyer who buys the first product it sees: the furthest step towards an order that the page
    offers. An ADAPTER CHECK ONLY (no model, no persona): run a population with policy=funnel against a
    new shop adapter to see every agent reach a confirmation the shop's own records show."""

    kind = "funnel"
    ORDER = ("place_order", "continue", "checkout", "view_cart", "add_to_cart", "open 1", "leave")

    def __init__(self, **_):
        pass

    def check(self, r: PolicyRequest) -> None:
        pass

    def decide(self, requests: list[PolicyRequest]) -> list[PolicyDecision]:
        out = []
        for r in requests:
            if not r.allowed:
                raise ValueError("policy request has no allowed actions")
            carted = not r.observation.startswith(("page: home | cart: 0", "page: product | cart: 0",
                                                   "page: listing | cart: 0", "page: search | cart: 0"))
            done = r.observation.startswith("page: confirmation")
            wanted = ("leave",) if done else tuple(a for a in self.ORDER if carted or a != "view_cart")
            i = next((r.allowed.index(a) for a in wanted if a in r.allowed), 0)
            out.append(PolicyDecision(r.allowed[i], 0.0, i, [0.0 if j == i else -math.inf for j in range(len(r.allowed))]))
        return out


def make_policy(serve_cfg, model_dir: str | Path, kind: str = "lm"):
    if kind == "uniform":
        return UniformPolicy(seed=serve_cfg.seed)
    if kind == "funnel":
        return FunnelPolicy()
    return ActionPolicy.from_config(serve_cfg, model_dir)


class PolicyServer:
    """Body of the Serve deployment: one policy per replica, requests batched by @serve.batch."""

    def __init__(self, serve_cfg: ServeConfig, model_dir: str, kind: str = "lm"):
        import torch

        cfg = serve_cfg

        torch.set_num_threads(cfg.torch_threads or max(1, math.ceil(cfg.replica_cpus)))
        self.policy = make_policy(cfg, model_dir, kind)
        self.batch_sizes: list[int] = []
        self.decide_batch.set_max_batch_size(cfg.max_batch_size)
        self.decide_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def decide_batch(self, requests: list[PolicyRequest]) -> list[dict]:
        self.batch_sizes.append(len(requests))
        # A thread keeps the event loop free, so the next batch fills while this one is scored.
        decisions = await asyncio.to_thread(self.policy.decide, requests)
        return [d.to_dict() for d in decisions]

    def _request(self, body) -> PolicyRequest:
        request = PolicyRequest.from_dict(body)
        self.policy.check(request)
        return request

    async def decide(self, request: dict) -> dict:
        """Handle entry point for actors: a PolicyRequest as a dict -> a PolicyDecision as a dict."""
        return await self.decide_batch(self._request(request))

    async def decide_many(self, bodies: list) -> list[dict]:
        """Handle entry point for a client's gathered list (HandlePolicyClient): one decision per
        request, in order; a bad request gets {"error": reason} and the others are still answered."""
        checked = checked_requests(self.policy, bodies)
        decided = iter(await asyncio.gather(*(self.decide_batch(r) for r in checked if isinstance(r, PolicyRequest))))
        return [{"error": str(r)} if isinstance(r, ValueError) else next(decided) for r in checked]

    def stats(self) -> dict:
        sizes = self.batch_sizes
        return {"batches": len(sizes), "requests": sum(sizes), "mean_batch": sum(sizes) / max(1, len(sizes)),
                "max_batch": max(sizes, default=0), "policy": self.policy.kind}

    def reset_stats(self) -> None:
        self.batch_sizes = []

    async def __call__(self, http_request: Request):
        """HTTP entry point: POST a PolicyRequest JSON, get a PolicyDecision JSON (400 on bad input)."""
        try:
            request = self._request(await http_request.json())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return await self.decide_batch(request)


PolicyDeployment = serve.deployment(PolicyServer, name="PolicyDeployment")


class BatchingClient:
    """Gathers the concurrent `await decide(dict)` calls of one event loop (a BrowserWorker's agents)
    into lists of up to max_batch_size, waiting at most batch_wait_timeout_s for a list to fill, and
    hands each list to `_decide_many` at once. One call per list, not per agent: the per-call cost of
    the request path (a Serve handle's RPC, a thread hop) is paid once per list, so the policy's own
    batches can fill."""

    def __init__(self, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01, lists_in_flight: int = 1):
        if max_batch_size < 1 or lists_in_flight < 1:
            raise ValueError(f"max_batch_size and lists_in_flight must be >= 1, got {max_batch_size}, {lists_in_flight}")
        self.max_batch_size = int(max_batch_size)
        self.wait_s = float(batch_wait_timeout_s)
        self.lists_in_flight = int(lists_in_flight)
        self._queue: asyncio.Queue | None = None
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task | None = None
        self._answering: set[asyncio.Task] = set()  # held here: the event loop keeps only weak references

    async def _decide_many(self, requests: list[dict]) -> list[dict | Exception]:
        raise NotImplementedError

    async def decide(self, request: dict) -> dict:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._slots = asyncio.Semaphore(self.lists_in_flight)
            self._task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((request, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # a list starts forming only when it can be sent: while every slot waits on its answers,
            # requests queue up and the next list leaves fuller
            await self._slots.acquire()
            batch = [await self._queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size:
                try:  # whatever is queued already joins without waiting
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            task = loop.create_task(self._answer(batch))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _answer(self, batch: list) -> None:
        try:
            results = await self._decide_many([r for r, _ in batch])
        except Exception as exc:  # a failed list fails its callers, not the loop
            results = [exc] * len(batch)
        finally:
            self._slots.release()
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def checked_requests(policy, bodies: list) -> list[PolicyRequest | ValueError]:
    """Each body parsed and checked on its own: a bad one becomes its ValueError, not the list's."""
    out: list[PolicyRequest | ValueError] = []
    for body in bodies:
        try:
            request = PolicyRequest.from_dict(body)
            policy.check(request)
            out.append(request)
        except ValueError as exc:
            out.append(exc)
    return out


class LocalPolicyClient(BatchingClient):
    """In-process policy (sim.policy=local): each gathered list is scored in a worker thread, the
    role @serve.batch plays in the deployment; one list at a time, as the scorer's threads are the
    worker's CPUs."""

    def __init__(self, policy, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01):
        super().__init__(max_batch_size, batch_wait_timeout_s, lists_in_flight=1)
        self.policy = policy

    async def _decide_many(self, requests: list[dict]) -> list[dict | Exception]:
        checked = checked_requests(self.policy, requests)
        valid = [r for r in checked if isinstance(r, PolicyRequest)]
        decisions = iter(await asyncio.to_thread(self.policy.decide, valid) if valid else [])
        return [r if isinstance(r, ValueError) else next(decisions).to_dict() for r in checked]


class HandlePolicyClient(BatchingClient):
    """The Serve deployment through a DeploymentHandle: one `decide_many` call per gathered list,
    whose requests join the replica's @serve.batch batches. max_batch_size=1 sends one call per
    request (the unbatched request path, kept as the benchmark's peer)."""

    def __init__(self, handle, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01,
                 lists_in_flight: int = 2):
        super().__init__(max_batch_size, batch_wait_timeout_s, lists_in_flight)
        self.handle = handle

    async def decide(self, request: dict) -> dict:
        if self.max_batch_size == 1:
            return await self.handle.decide.remote(request)
        return await super().decide(request)

    async def _decide_many(self, requests: list[dict]) -> list[dict | Exception]:
        results = await self.handle.decide_many.remote(requests)
        return [ValueError(r["error"]) if "error" in r else r for r in results]
