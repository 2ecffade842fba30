"""A fake Anthropic Messages API server, speaking the real wire format (JSON, and SSE with `event:` lines).

It answers what `behaviour.decide` says, like every fake upstream, and checks the request the way
the real API does where a translation mistake would show (max_tokens required, alternating turns
starting with a user turn, temperature at most 1, tool results answering the previous tool uses).

With `thinking` on, the answer starts with a thinking block (its text streamed as thinking_delta, its
signature as a signature_delta before the block stops), and "[redacted]" in the last user text adds a
redacted_thinking block; like the real API, it refuses the sampling settings and forced tools Claude
refuses beside thinking, and a tool-use turn sent back without its thinking block, or with a
signature that is not the one it gave. A tool_choice that forces a tool is obeyed: a text answer
becomes a call of that tool with `{"answer": <the text>}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

from aiohttp import web

from .behaviour import FakeUpstream, Reply, decide

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]


def _words(content) -> int:
    if isinstance(content, str):
        return len(content.split())
    total = 0
    for block in content or []:
        if block.get("type") == "text":
            total += len(block.get("text", "").split())
        elif block.get("type") == "tool_result":
            total += sum(len(t.split()) for t in _texts(block.get("content")))
    return total


REDACTED_DATA = "RXJyb3I6IHJlZGFjdGVkIHRoaW5raW5n"  # opaque, like the real API's


def sign(thinking: str) -> str:
    """The signature the fake gives a thinking text (the real API's is opaque too)."""
    return "sig-" + hashlib.sha256(thinking.encode()).hexdigest()[:24]


def thinking_on(body: dict) -> bool:
    return (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")


def _thinking_problem(body: dict) -> str | None:
    """What the real API refuses about thinking: bad budgets, the settings it excludes, unsigned blocks."""
    for i, message in enumerate(body["messages"]):
        for block in message["content"] if isinstance(message["content"], list) else ():
            if block.get("type") == "thinking" and block.get("signature") != sign(block.get("thinking", "")):
                return f"messages.{i}.content: Invalid `signature` in `thinking` block"
    if not thinking_on(body):
        return None
    thinking = body["thinking"]
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if budget >= body["max_tokens"]:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
    if body.get("temperature") not in (None, 1, 1.0):
        return "`temperature` may only be set to 1 when thinking is enabled or in interleaved thinking mode"
    if body.get("top_k") is not None:
        return "`top_k` may not be set when thinking is enabled"
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        return "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled"
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    assistants = [m for m in body["messages"] if m["role"] == "assistant"]
    last = assistants[-1]["content"] if assistants else []
    if (
        isinstance(last, list)
        and any(b.get("type") == "tool_use" for b in last)
        and last[0].get("type") not in ("thinking", "redacted_thinking")
    ):
        return (
            "messages: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is "
            "enabled, a final `assistant` message must start with a thinking block."
        )
    return None


def _problem(body: dict) -> str | None:
    """What the real API would refuse with a 400 in this body, if anything."""
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if messages[0].get("role") != "user":
        return 'messages: first message must use the "user" role'
    for i, message in enumerate(messages):
        if i and message.get("role") == messages[i - 1].get("role"):
            return f'messages: roles must alternate between "user" and "assistant" (messages.{i})'
        for block in message["content"] if isinstance(message["content"], list) else ():
            if block.get("type") == "text" and not block.get("text"):
                return f"messages.{i}: text content blocks must be non-empty"
            if block.get("type") == "tool_result":
                previous = messages[i - 1]["content"] if i else []
                ids = {b.get("id") for b in previous if isinstance(b, dict) and b.get("type") == "tool_use"}
                if block.get("tool_use_id") not in ids:
                    return (
                        f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message."
                    )
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    return _thinking_problem(body)


def _forced(body: dict, reply: Reply, last_user: str) -> None:
    """A tool_choice of type tool (or any) makes the answer a call of that tool (or the first)."""
    choice = body.get("tool_choice") or {}
    if reply.tool_name or reply.status or choice.get("type") not in ("tool", "any") or not body.get("tools"):
        return
    reply.tool_name = choice.get("name") or body["tools"][0]["name"]
    reply.tool_args = {"answer": reply.text}
    reply.text = ""


class FakeAnthropic(FakeUpstream):
    """Records every request it receives; `fail_next` makes the next requests fail with those statuses.

    `cache_read_tokens` and `cache_write_tokens` report that many of the prompt's tokens as read from and
    written to the prompt cache (the total stays what `decide` says); `stream_error_next` sends an SSE
    `error` event of that type mid-stream.
    """

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        super().__init__()
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.stream_error_next: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        return app

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response(
            {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}},
            status=status,
            headers={"request-id": f"req_{uuid.uuid4().hex[:24]}"},
        )

    def _too_long(self, tokens: int, limit: int) -> web.Response:
        """The Messages API's answer to a prompt longer than the model's window."""
        return web.json_response(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": f"prompt is too long: {tokens} tokens > {limit} maximum",
                },
                "request_id": f"req_{uuid.uuid4().hex[:24]}",
            },
            status=400,
        )

    def _usage(self, reply: Reply) -> dict:
        cached = min(self.cache_read_tokens, reply.prompt_tokens)
        written = min(self.cache_write_tokens, reply.prompt_tokens - cached)
        return {
            "input_tokens": reply.prompt_tokens - cached - written,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": cached,
            "output_tokens": reply.completion_tokens,
        }

    @staticmethod
    def _thinking(body: dict, last_user: str) -> list[dict]:
        if not thinking_on(body):
            return []
        text = f"The user said: {last_user}"
        blocks = [{"type": "thinking", "thinking": text, "signature": sign(text)}]
        if "[redacted]" in last_user:
            blocks.append({"type": "redacted_thinking", "data": REDACTED_DATA})
        return blocks

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if (failure := self.received(request, body)) is not None:
            return failure
        # The API takes the key as x-api-key; SDK 2.x sends it as a bearer token instead, also accepted.
        key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.api_key and key != self.api_key:
            return self._error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        if problem := _problem(body):
            return self._error(400, problem)
        messages = body["messages"]
        last_user = next(
            (
                " ".join(_texts(m["content"]))
                for m in reversed(messages)
                if m["role"] == "user" and _texts(m["content"])
            ),
            "",
        )
        last = messages[-1]["content"]
        tool_result = None
        if isinstance(last, list) and last and last[-1].get("type") == "tool_result":
            tool_result = " ".join(_texts(last[-1].get("content")))
        tools = [t["name"] for t in body.get("tools") or []]
        words = len(str(body.get("system") or "").split()) + sum(_words(m["content"]) for m in messages)
        reply = decide(last_user, tools, tool_result, words)
        _forced(body, reply, last_user)
        if (refused := self.too_long(reply)) is not None:
            return refused
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status:
            return self._error(reply.status, f"upstream says {reply.status}")
        id = f"msg_{uuid.uuid4().hex[:24]}"
        thinking = self._thinking(body, last_user)
        if body.get("stream"):
            return await self._stream(request, body, reply, id, thinking)
        content: list[dict] = thinking + ([{"type": "text", "text": reply.text}] if reply.text else [])
        if reply.tool_name:
            content.append({"type": "tool_use", "id": "toolu_1", "name": reply.tool_name, "input": reply.tool_args})
        return web.json_response(
            {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": content,
                "stop_reason": "tool_use" if reply.tool_name else "end_turn",
                "stop_sequence": None,
                "usage": self._usage(reply),
            }
        )

    async def _stream(
        self, request: web.Request, body: dict, reply: Reply, id: str, thinking: list[dict]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(event: str, data: dict) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode())

        usage = self._usage(reply)
        await send(
            "message_start",
            {
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": 1},
                }
            },
        )
        await send("ping", {})
        if self.stream_error_next:
            error, self.stream_error_next = self.stream_error_next, None
            await send(
                "error",
                {
                    "error": {
                        "type": error,
                        "message": "Overloaded" if error == "overloaded_error" else "scripted stream error",
                    }
                },
            )
            await response.write_eof()
            return response
        index = 0
        for block in thinking:
            if block["type"] == "redacted_thinking":
                await send("content_block_start", {"index": index, "content_block": block})
            else:
                await send(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
                )
                words = block["thinking"].split(" ")
                for piece in (" ".join(words[:2]), " " + " ".join(words[2:])):
                    await send(
                        "content_block_delta", {"index": index, "delta": {"type": "thinking_delta", "thinking": piece}}
                    )
                await send(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "signature_delta", "signature": block["signature"]}},
                )
            await send("content_block_stop", {"index": index})
            index += 1
        if reply.text:
            await send("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            for i, piece in enumerate(reply.pieces):
                if reply.cut and i == 1:
                    request.transport.close()  # drop the connection mid-stream
                    return response
                await send("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
            await send("content_block_stop", {"index": index})
            index += 1
        if reply.tool_name:
            args = json.dumps(reply.tool_args)
            await send(
                "content_block_start",
                {
                    "index": index,
                    "content_block": {"type": "tool_use", "id": "toolu_1", "name": reply.tool_name, "input": {}},
                },
            )
            for part in ("", args[: len(args) // 2], args[len(args) // 2 :]):  # the real API starts with ""
                await send(
                    "content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": part}}
                )
            await send("content_block_stop", {"index": index})
        await send(
            "message_delta",
            {
                "delta": {"stop_reason": "tool_use" if reply.tool_name else "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": reply.completion_tokens},
            },
        )
        await send("message_stop", {})
        await response.write_eof()
        return response
