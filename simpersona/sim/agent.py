"""One agent's session: the environment drives the browser, the policy only chooses actions.

    observation = env.reset(merchant, agent)
    repeat: action = policy(persona, observation, history, allowed) ; observation = env.step(action)
    until the agent leaves, the environment says done, or max_steps

The loop records one trajectory row per step (contracts.md). A browser crash is not the agent's
fault: it propagates, and the worker re-queues the agent for a fresh attempt. Any other error the
environment could not recover from (after its own retries) ends the agent as `crashed`, with the
error kind and reason recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

from simpersona.sim.errors import BrowserCrash, SimError

TRAJECTORY_SCHEMA = pa.schema([
    ("agent_id", pa.string()),
    ("step", pa.int32()),
    ("observation", pa.string()),
    ("allowed", pa.list_(pa.string())),
    ("action", pa.string()),
    ("logprob", pa.float32()),
    ("error", pa.string()),
    ("url", pa.string()),
    ("events", pa.string()),  # a foreign shop's client-side events of the step (JSON list; "" on our storefront)
    ("blocked", pa.int32()),  # requests the origin fence stopped during the step (a page's off-origin fetches too)
])


@dataclass
class AgentOutcome:
    agent_id: str
    status: str  # completed | crashed
    steps: int
    error_kind: str = ""
    error: str = ""
    session_id: str = ""
    rows: list[dict] = field(default_factory=list)


async def run_agent(env, policy, spec: dict, persona, history_len: int = 8, session_id: str = "") -> AgentOutcome:
    """Run one agent to the end of its session. Raises BrowserCrash (the worker re-queues it).

    `session_id` names the storefront session (one per attempt; "" lets the storefront choose).
    """
    agent_id = spec["agent_id"]
    rows: list[dict] = []
    history: list[str] = []
    try:
        obs = await env.reset(spec["merchant_id"], agent_id, session_id=session_id or None)
        for step in range(int(spec["max_steps"])):
            decision = await policy.decide({
                "persona": persona, "observation": obs.text, "history": history[-history_len:],
                "allowed": list(obs.allowed), "seed": int(spec["seed"]), "step": step,
            })
            action = decision["action"]
            row = {"agent_id": agent_id, "step": step, "observation": obs.text, "allowed": list(obs.allowed),
                   "action": action, "logprob": decision["logprob"], "error": "", "url": obs.url, "events": "", "blocked": 0}
            rows.append(row)
            history.append(action)
            obs, done, info = await env.step(action)
            row["blocked"] = len(info.get("blocked") or ())
            if info.get("events"):
                row["events"] = json.dumps(info["events"])
            if info.get("error"):  # the action did not go through (after the env's retries)
                row["error"] = f"{info['error']}: {info.get('reason', '')}".rstrip(": ")
            if done:
                break
    except BrowserCrash:
        raise
    except SimError as exc:
        if rows and not rows[-1]["error"]:
            rows[-1]["error"] = f"{exc.kind}: {exc}"
        return AgentOutcome(agent_id, "crashed", len(rows), exc.kind, str(exc), session_id, rows)
    return AgentOutcome(agent_id, "completed", len(rows), "", "", session_id, rows)
