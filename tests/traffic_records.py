"""Logged exchanges for tests, written by the traffic_log plugin's own writer from real request contexts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.chat import completion, usage
from gateway.config import RouteSettings
from gateway.context import RequestContext
from gateway.errors import UpstreamError
from plugins.traffic_log.plugin import Settings as TrafficLogSettings
from plugins.traffic_log.plugin import TrafficLog


def exchange(
    request_id: str,
    ts: float,
    messages: list[dict],
    answer: str | None,
    *,
    route: str = "support-bot",
    status: int = 200,
    finish: str = "stop",
    served_by: str = "base",
    tool_calls: list | None = None,
    tools: list | None = None,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    cost_usd: float | None = None,
) -> RequestContext:
    """The context of one finished exchange, as the proxy leaves it for `after_response`."""
    body = {"model": route, "messages": messages}
    if tools:
        body["tools"] = tools
    ctx = RequestContext(
        request_id=request_id,
        route_name=route,
        route=RouteSettings(baseline="base"),
        body=body,
        headers={},
        received_at=ts,
    )
    ctx.variant = ctx.served_by = served_by
    ctx.status = status
    if status == 200:
        message = {"role": "assistant", "content": answer}
        if tool_calls:
            message["tool_calls"] = tool_calls
        ctx.response = completion(
            f"chatcmpl-{request_id}", "gpt-test", message, finish, usage(prompt_tokens, completion_tokens)
        )
        ctx.cost_usd = cost_usd
    else:
        ctx.error = UpstreamError("the upstream failed", upstream_status=status)
    ctx.finished_at = ctx.started + 0.05
    return ctx


async def _write(path: Path, contexts: list[RequestContext], bodies: bool) -> int:
    log = TrafficLog(TrafficLogSettings(path=str(path), bodies=bodies))
    await log.startup(None)
    for ctx in contexts:
        log.after_response(ctx)
    await log.shutdown(None)
    return log.written


def write_exchanges(path: Path, contexts: list[RequestContext], bodies: bool = True) -> None:
    """Log `contexts` through a real TrafficLog (queue, batch writer, schema) into `path`."""
    written = asyncio.run(_write(path, contexts, bodies))
    assert written == len(contexts), f"the traffic log wrote {written} of {len(contexts)} records"
