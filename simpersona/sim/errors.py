"""Errors of the browser environment, one class per kind; `kind` is what trajectories record.

    invalid_action      the action is not offered by the current page (nothing was sent)
    element_missing     the page offered the action but its element was gone when clicked
    navigation_timeout  the page did not finish loading within the step timeout
    off_origin          something tried to take the agent off the configured origins (blocked)
    page_crash          the tab's renderer died (the env reopens the page)
    browser_crash       Chromium itself died or disconnected: the env cannot continue
    stuck               the agent's last actions (adapter stuck_steps of them) changed nothing: stopped

Failures of a foreign shop that do not stop the agent (simpersona.sim.shop_page): unrecognised_page,
form_rejected, action_refused, patch_missed (a what-if's page patch found nothing to change: see
simpersona.sim.page_patch); with the kinds above they are the simulation's `failures`.

`BrowserEnv.step` returns the recoverable kinds in `info["error"]` and raises a `SimError` only
when the agent cannot go on (a browser crash, or a page that stays broken after the retries).
"""

from __future__ import annotations

ERROR_KINDS = (
    "invalid_action", "element_missing", "navigation_timeout", "off_origin", "page_crash", "browser_crash", "stuck",
)
SHOP_FAILURES = ("unrecognised_page", "form_rejected", "action_refused", "patch_missed")
FAILURE_KINDS = ERROR_KINDS + SHOP_FAILURES


class SimError(RuntimeError):
    """Base class: `kind` names the error class, `reason` says what happened (one line)."""

    kind = "sim_error"

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class InvalidAction(SimError):
    kind = "invalid_action"


class ElementMissing(SimError):
    kind = "element_missing"


class NavigationTimeout(SimError):
    kind = "navigation_timeout"


class OffOrigin(SimError):
    kind = "off_origin"


class PageCrash(SimError):
    kind = "page_crash"


class BrowserCrash(SimError):
    kind = "browser_crash"


class Stuck(SimError):
    kind = "stuck"


_BY_KIND = {c.kind: c for c in (InvalidAction, ElementMissing, NavigationTimeout, OffOrigin, PageCrash, BrowserCrash,
                                 Stuck)}


def error_for(kind: str, reason: str) -> SimError:
    """The SimError subclass instance of `kind` (e.g. to re-raise a recorded error)."""
    try:
        return _BY_KIND[kind](reason)
    except KeyError:
        raise ValueError(f"unknown error kind {kind!r}; expected one of {ERROR_KINDS}") from None


def classify(exc: BaseException, during: str = "", browser_alive: bool | None = None) -> SimError:
    """Map a Playwright (or other) exception to one of the kinds, keeping its first line as reason.

    "Target closed" errors mean a browser crash unless `browser_alive` says Chromium still runs
    (then only the page or context went away: a page crash).
    """
    if isinstance(exc, SimError):
        return exc
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    reason = f"{during}: {first}" if during else first
    low = text.lower()
    if "err_blocked_by_client" in low or "err_proxy_connection_failed" in low:  # off-origin: see browser.py
        return OffOrigin(reason)
    if any(s in low for s in ("has been closed", "browser closed", "connection closed", "disconnected",
                              "target closed")):
        return PageCrash(reason) if browser_alive else BrowserCrash(reason)
    if "crash" in low:
        return PageCrash(reason)
    if "timeout" in low or isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        return NavigationTimeout(reason)
    if "net::err_" in low:  # the navigation failed (connection refused, reset, ...)
        return NavigationTimeout(reason)
    if "execution context was destroyed" in low or "frame was detached" in low:
        return ElementMissing(reason)  # the page changed under the action
    return PageCrash(reason)
