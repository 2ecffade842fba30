"""The few lines the daemon says when it starts: where it listens, which routes can answer, and what to do next.

A newcomer's first question is whether a request will work. Each route is checked the way a request
would be (its baseline, candidates and fallbacks, each with or without its credentials), so a route
that cannot answer says so here, with the variables to set, before anyone sends it a request.
"""

from __future__ import annotations

import os

from .errors import NO_KEYS_HINT

NO_ROUTE = "no route can answer"


def _admin_on(gateway) -> bool:
    return bool(gateway.config.server.admin_token or os.environ.get("LLMGATE_ADMIN_TOKEN"))


def route_readiness(gateway) -> dict[str, tuple[list[str], list[str]]]:
    """Per route: the backends of its chain that can be called now, and why each other one cannot."""
    missing = gateway.missing_credentials()
    readiness = {}
    for name, route in gateway.config.settings.routes.items():
        chain = route.answering()
        readiness[name] = (
            [b for b in chain if b not in missing],
            [f"{b} needs {', '.join(missing[b])}" for b in chain if b in missing],
        )
    return readiness


def unanswerable(gateway) -> str | None:
    """For /readyz, in the banner's words: each route that cannot answer and why (None when all can)."""
    routes = route_readiness(gateway)
    blocked = [f"route {name}: cannot answer: {'; '.join(why)}" for name, (ready, why) in routes.items() if not ready]
    if not blocked:
        return None
    lead = f"{NO_ROUTE} (set the variables and restart; " if len(blocked) == len(routes) else "("
    return f"{lead}{len(blocked)} of {len(routes)} routes) " + " | ".join(blocked)


def route_line(name: str, ready: list[str], blocked: list[str]) -> str:
    if not ready:
        return f"  route {name}: cannot answer: {'; '.join(blocked)}"
    return f"  route {name}: answers via {', '.join(ready)}" + (f" ({'; '.join(blocked)})" if blocked else "")


def banner(gateway, url: str, loop: str) -> list[str]:
    """The start-up banner, line by line (each is logged on its own, so JSON logs stay one record a line)."""
    config = gateway.config
    routes = route_readiness(gateway)
    lines = [
        f"llmgate serving on {url} (config {config.source}, event loop {loop})",
        *(route_line(name, *state) for name, state in routes.items()),
    ]
    if not routes:
        lines.append("  no routes are configured: add one under routes: in the config")
    console = gateway.enabled("console")
    surfaces = "admin API" + (" and console" if console else "")
    if _admin_on(gateway):
        where = f"{url}/admin/status" + (f", {url}/console" if console else "")
        lines.append(f"  {surfaces}: on ({where}; Authorization: Bearer <admin token>)")
    else:
        lines.append(
            f"  {surfaces}: off (set LLMGATE_ADMIN_TOKEN or server.admin_token and restart to turn "
            f"{'them' if console else 'it'} on)"
        )
    if routes and not any(ready for ready, _ in routes.values()):
        variables = sorted({v for names in gateway.missing_credentials().values() for v in names})
        lines.append(f"  no route can answer yet: set {', '.join(variables)} and restart. {NO_KEYS_HINT}")
    return lines
