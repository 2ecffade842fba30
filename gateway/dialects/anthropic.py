"""POST /v1/messages (and /v1/messages/count_tokens): the Anthropic Messages API, as the `anthropic`
SDK and Claude Code speak it, served by the one request path. The translation, both ways, and the
chat-form conventions it uses (thinking blocks, cache_control, is_error, the sticky user) are in
gateway/dialects/anthropic_messages.py.
"""

from __future__ import annotations

import json
import math

from aiohttp import web

from ..chat import native_slot
from ..context import RequestContext
from ..errors import GatewayError
from ..proxy import read_request
from .anthropic_messages import StreamTranslator, error_body, from_chat_completion, to_chat_request
from .base import Dialect, EventStream, StreamEncoder


class MessagesStream(EventStream):
    """The Messages stream events; a broken stream ends with one `error` event."""

    def __init__(self, model: str, message_id: str):
        super().__init__(StreamTranslator(model, message_id))

    def failed(self, error: GatewayError) -> list:
        return self.translator.fail(error.status, error.body()["error"]["message"])


class AnthropicMessages(Dialect):
    name = "messages"

    async def to_chat(self, ctx: RequestContext, gateway) -> tuple[dict, list[str]]:
        chat, ignored = to_chat_request(ctx.body)
        if beta := ctx.headers.get("anthropic-beta"):  # the features a caller opts into: an Anthropic backend's to use
            slot = native_slot(chat, "anthropic")
            slot["headers"]["anthropic-beta"] = beta
            slot["names"].append("anthropic-beta")  # what the other kinds name as ignored
        return chat, ignored

    def answer(self, completion: dict, ctx: RequestContext) -> dict:
        return from_chat_completion(completion, model=ctx.route_name, message_id=f"msg_{ctx.request_id}")

    def encoder(self, ctx: RequestContext) -> StreamEncoder:
        return MessagesStream(ctx.route_name, f"msg_{ctx.request_id}")

    def error_body(self, error: GatewayError) -> dict:
        return error_body(error.status, error.body()["error"]["message"])


def estimated_tokens(chat: dict) -> int:
    """An estimate of a request's input tokens (about four characters a token), for count_tokens."""
    return max(
        1,
        math.ceil(
            len(
                json.dumps(chat["messages"], ensure_ascii=False)
                + json.dumps(chat.get("tools") or [], ensure_ascii=False)
            )
            / 4
        ),
    )


MESSAGES = AnthropicMessages()


async def count_tokens(request: web.Request) -> web.Response:
    """POST /v1/messages/count_tokens: the request's input tokens, estimated (no backend is called)."""
    _, body, _, _ = await read_request(request, MESSAGES)
    chat, _ = to_chat_request({"max_tokens": 1, **{k: v for k, v in body.items() if k != "max_tokens"}})
    return web.json_response({"input_tokens": estimated_tokens(chat)})
