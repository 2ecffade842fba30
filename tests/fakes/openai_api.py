"""A fake OpenAI chat-completions server, speaking the real wire format (JSON and SSE)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid

from aiohttp import web

from .behaviour import FakeUpstream, Reply, decide


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


class FakeOpenAI(FakeUpstream):
    """Records every request it receives; `fail_next` makes the next N requests fail with a status."""

    def __init__(self, api_key: str | None = None, delay: float = 0.0):
        self.api_key = api_key
        super().__init__()
        self.delay = delay  # seconds every answer waits: a slower deployment

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)  # OpenAI's own limit is far above aiohttp's 1 MB
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": "fake_error", "code": None, "param": None}}, status=status
        )

    def _too_long(self, tokens: int, limit: int) -> web.Response:
        """OpenAI's answer to a prompt longer than the model's window (a 400 whose code says so)."""
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
            f"{tokens} tokens. Please reduce the length of the messages."
        )
        error = {"message": message, "type": "invalid_request_error", "param": "messages"}
        return web.json_response({"error": {**error, "code": "context_length_exceeded"}}, status=400)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if (failure := self.received(request, body)) is not None:
            return failure
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, f"Incorrect API key provided: {request.headers.get('Authorization', '')[7:]}")
        messages = body["messages"]
        last_user = next((_text(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
        tool_result = _text(messages[-1]["content"]) if messages[-1]["role"] == "tool" else None
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        words = sum(len(_text(m.get("content")).split()) for m in messages)
        reply = decide(last_user, tools, tool_result, words)
        if (refused := self.too_long(reply)) is not None:
            return refused
        if reply.delay or self.delay:
            await asyncio.sleep(reply.delay + self.delay)
        if reply.status:
            return self._error(reply.status, f"upstream says {reply.status}")
        if body.get("stream"):
            return await self._stream(request, body, reply)
        message = {"role": "assistant", "content": reply.text or None}
        finish = "stop"
        if reply.tool_name:
            message["tool_calls"] = [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": reply.tool_name, "arguments": json.dumps(reply.tool_args)},
                }
            ]
            finish = "tool_calls"
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
                    for i in range(body.get("n") or 1)
                ],
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                },
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        """Vectors a test can check: each input's length, its word count, then `dimensions` (default 4) in all."""
        body = await request.json()
        if (failure := self.received(request, body)) is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        size = body.get("dimensions") or 4
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            words = len(item.split()) if isinstance(item, str) else len(item)
            tokens += words
            vector = ([float(len(item)), float(words)] + [0.5] * size)[:size]
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        id, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", body["model"]

        async def send(delta, finish=None, usage=None, choices=True):
            chunk = {
                "id": id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
            }
            if (body.get("stream_options") or {}).get("include_usage"):
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        if reply.tool_name:
            args = json.dumps(reply.tool_args)
            await send(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": reply.tool_name, "arguments": ""},
                        }
                    ]
                }
            )
            for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                await send({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            finish = "tool_calls"
        else:
            for i, piece in enumerate(reply.pieces):
                if reply.cut and i == 1:
                    request.transport.close()  # drop the connection mid-stream
                    return response
                await send({"content": piece})
            finish = "stop"
        await send({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(
                None,
                usage={
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                },
                choices=False,
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
