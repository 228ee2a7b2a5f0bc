"""The browser environment: agents act on a storefront through real Chromium (async Playwright).

    async with Browser(cfg.browser) as browser:            # one Chromium, launched once
        env = BrowserEnv(browser, server.base_url, cfg.browser)   # one agent = one BrowserContext
        obs = await env.reset(merchant_id, agent_id)       # Observation(text, allowed, info)
        obs, done, info = await env.step("open 2")         # info: allowed, url, error, reason, ...
        await env.close()

API under construction: signatures are final, bodies land next.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Observation(NamedTuple):
    """What the agent sees: unpacks as (text, allowed, info)."""

    text: str
    allowed: list[str]
    info: dict

    @property
    def url(self) -> str:
        return self.info.get("url", "")

    @property
    def error(self) -> str:
        return self.info.get("error", "")


class Browser:
    """One Chromium shared by many BrowserEnv contexts (a context costs ~56 MiB PSS, a browser far more)."""

    def __init__(self, cfg: Any = None):
        raise NotImplementedError

    async def start(self) -> Browser:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Browser:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()


class BrowserEnv:
    """One agent's browser context on one storefront: reset(merchant, agent) then step(action)."""

    def __init__(self, browser: Browser, base_url: str, cfg: Any = None, adapter: Any = None):
        raise NotImplementedError

    async def reset(self, merchant_id: str, agent_id: str, session_id: str | None = None) -> Observation:
        raise NotImplementedError

    async def step(self, action: str) -> tuple[Observation, bool, dict]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError
