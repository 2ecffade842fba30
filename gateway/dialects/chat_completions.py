"""POST /v1/chat/completions: the gateway's own form, so the request goes through as it came."""

from __future__ import annotations

from ..chat import NATIVE
from ..checks import bad
from ..context import RequestContext, dumps_bytes
from ..errors import GatewayError
from .base import Dialect, StreamEncoder


class ChatStream(StreamEncoder):
    """`data: {chunk}` events and `data: [DONE]`; the usage chunk only when the caller asked for it."""

    def __init__(self, ctx: RequestContext):
        self.include_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))

    def chunk(self, chunk: dict) -> bytes:
        if not self.include_usage:
            if not chunk.get("choices"):
                return b""
            if "usage" in chunk:
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
        return b"data: " + dumps_bytes(chunk) + b"\n\n"

    def finish(self, error: GatewayError | None) -> bytes:
        if error is not None:
            return b"data: " + dumps_bytes(error.body()) + b"\n\n"
        return b"data: [DONE]\n\n"


class ChatCompletions(Dialect):
    name = "chat"

    async def to_chat(self, ctx: RequestContext, gateway) -> tuple[dict, list[str]]:
        if isinstance(ctx.body, dict) and NATIVE in ctx.body:  # the other dialects' slot: no way around the policy
            raise bad(f"'{NATIVE}' is not a chat-completions parameter: remove it", NATIVE, "unknown_parameter")
        return ctx.body, []

    def answer(self, completion: dict, ctx: RequestContext) -> dict:
        return completion

    def encoder(self, ctx: RequestContext) -> StreamEncoder:
        return ChatStream(ctx)

    def error_body(self, error: GatewayError) -> dict:
        return error.body()
