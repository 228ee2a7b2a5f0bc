"""Page patches: a what-if on a shop we cannot redeploy, applied to its pages in the browser.

A patch rewrites the HTML of the shop's documents whose URL matches, before the page sees it:

    browser.page_patches: [{url: "/catalogue/[\\w-]+_\\d+/$", find: "<form[^>]*add_to_basket_form.*?</form>",
                            replace: "<p>Sold out</p>"}]

`url` is a Python regex searched in the full URL, `find` a Python regex (DOTALL) of the HTML,
`replace` its replacement (backreferences allowed). Only documents on the allowed origins are
patched (Playwright routing: the request goes to the shop, the answer is rewritten). A patch whose
`find` matches nothing on a page it applies to leaves that page as it was and is counted (the
step's failure `patch_missed`, in summary.json `failures`), so a stale patch shows up instead of an
arm that silently measured the unchanged shop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


class PatchError(ValueError):
    """A page patch that cannot be used; the message names it."""


@dataclass(frozen=True)
class PagePatch:
    url: re.Pattern
    find: re.Pattern
    replace: str


def parse_patches(raw) -> tuple[PagePatch, ...]:
    out = []
    for i, spec in enumerate(raw or ()):
        where = f"browser.page_patches[{i}]"
        if not isinstance(spec, Mapping) or set(spec) - {"url", "find", "replace"} or "find" not in spec:
            raise PatchError(f"{where}: expected {{url, find, replace}}, got {spec!r}")
        try:
            url = re.compile(str(spec.get("url") or ""))
            find = re.compile(str(spec["find"]), re.DOTALL)
        except re.error as exc:
            raise PatchError(f"{where}: not a valid regex: {exc}") from None
        out.append(PagePatch(url, find, str(spec.get("replace") or "")))
    return tuple(out)


def apply(patches: tuple[PagePatch, ...], url: str, html: str) -> tuple[str, int]:
    """(html with every patch for `url` applied, how many of those patches matched nothing)."""
    misses = 0
    for p in patches:
        if p.url.search(url):
            html, n = p.find.subn(p.replace, html)
            misses += n == 0
    return html, misses


async def install(env, patches: tuple[PagePatch, ...]) -> None:
    """Route the env's context so that matching documents on its origins arrive patched."""
    from simpersona.sim.generic import origin_of

    async def handle(route) -> None:
        request = route.request
        if request.resource_type != "document" or origin_of(request.url) not in env.origins \
                or not any(p.url.search(request.url) for p in patches):
            await route.fallback()
            return
        # Not route.fetch(): it would send the request to the context's sink proxy, whose bypass list
        # Playwright's own client reads as host names only. A client without a proxy, the context's
        # cookies on the request, no redirect followed (Chromium follows the answer itself, fenced).
        headers = {k: v for k, v in (await request.all_headers()).items()
                   if not k.startswith(":") and k not in ("host", "content-length", "cookie")}
        cookies = await env.context.cookies(request.url)
        if cookies:
            headers["cookie"] = "; ".join(f"{c['name']}={c['value']}" for c in cookies)
        client = await env.browser.request_client()
        try:
            response = await client.fetch(request.url, method=request.method, headers=headers,
                                          data=request.post_data_buffer, max_redirects=0, timeout=env.timeout_ms)
            if "html" not in (response.headers.get("content-type") or ""):
                await route.fulfill(response=response)
                return
            html, misses = apply(patches, request.url, await response.text())
            env.patch_misses += misses
            env.patched_url = request.url
            await route.fulfill(response=response, body=html)
        finally:
            await client.dispose()

    await env.context.route(re.compile(r"^https?://"), handle)


def landed_unpatched(env) -> bool:
    """Whether the page is one a patch names that did not come through the route: Chromium follows
    a redirect's hops (a form's POST, say) without routing them, so such a landing is loaded again."""
    url = env.page.url
    return url != env.patched_url and any(p.url.search(url) for p in env.patches)
