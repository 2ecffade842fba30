"""A fake Amazon Bedrock runtime (Converse and ConverseStream), speaking the REST API boto3 uses.

ConverseStream answers in the AWS event-stream binary framing, encoded here by hand, so a real
boto3 client decodes it exactly as it would the service's. What to answer comes from
`behaviour.decide`, like every fake upstream. Requests are not signature-checked.

With `additionalModelRequestFields.thinking` on (Claude's field), the answer starts with a
`reasoningContent` block (streamed as reasoning text deltas, then a signature delta), and
"[redacted]" in the last user text adds a `redactedContent` one; like Claude on Bedrock, it refuses
a forced tool or a maxTokens not above the budget beside thinking, and a tool-use turn sent back
without its reasoning block or with a signature it did not give. A toolChoice that forces a tool is
obeyed: a text answer becomes a call of that tool with `{"answer": <the text>}`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import struct
import zlib
from urllib.parse import unquote

from aiohttp import web

from .behaviour import FakeUpstream, Reply, decide

ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_PATH = re.compile(r"^/model/(?P<model>.+)/(?P<op>converse|converse-stream|invoke)$")


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC32), headers, payload, CRC32."""
    raw_headers = b""
    for name, value in headers.items():
        name_b, value_b = name.encode(), value.encode()
        raw_headers += struct.pack(">B", len(name_b)) + name_b + b"\x07" + struct.pack(">H", len(value_b)) + value_b
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, body: dict) -> bytes:
    return encode_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(body).encode(),
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    return encode_frame(
        {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"},
        json.dumps({"message": message}).encode(),
    )


REDACTED = b"\x00opaque redacted reasoning\xff"


def sign(text: str) -> str:
    return "br-sig-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _thinking_on(body: dict) -> bool:
    thinking = (body.get("additionalModelRequestFields") or {}).get("thinking") or {}
    return thinking.get("type") in ("enabled", "adaptive")


def _problem(body: dict) -> str | None:
    """What Claude on Bedrock refuses about thinking (a ValidationException)."""
    for i, message in enumerate(body.get("messages") or []):
        for block in message.get("content", []):
            text = (block.get("reasoningContent") or {}).get("reasoningText")
            if text is not None and text.get("signature") != sign(text.get("text", "")):
                return f"messages.{i}.content: Invalid `signature` in `thinking` block"
    if not _thinking_on(body):
        return None
    thinking = body["additionalModelRequestFields"]["thinking"]
    if thinking["type"] == "enabled" and thinking.get("budget_tokens", 0) >= (body.get("inferenceConfig") or {}).get(
        "maxTokens", 0
    ):
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
    if "any" in choice or "tool" in choice:
        return "Thinking may not be enabled when tool_choice forces tool use."
    assistants = [m for m in body["messages"] if m.get("role") == "assistant"]
    last = assistants[-1]["content"] if assistants else []
    if any("toolUse" in b for b in last) and "reasoningContent" not in last[0]:
        return (
            "Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a "
            "final `assistant` message must start with a thinking block."
        )
    return None


def _texts(blocks) -> list[str]:
    return [b["text"] for b in blocks or () if isinstance(b, dict) and "text" in b]


class FakeBedrock(FakeUpstream):
    """Records (model_id, body) for every request; `fail_next` makes the next requests fail with a status."""

    def __init__(self):
        super().__init__()
        self.stream_failures: list[str] = []
        self.stream_pauses: list[float] = []
        self.cache_read_tokens = 0  # reported as read from / written to the prompt cache, besides inputTokens
        self.cache_write_tokens = 0

    def fail_next_stream(self, *exception_types: str) -> None:
        """The next streams break after their first text with an in-stream exception (e.g. throttlingException)."""
        self.stream_failures.extend(exception_types)

    def pause_next_stream(self, *seconds: float) -> None:
        """The next streams stall that long after messageStart (a model that goes quiet mid-answer)."""
        self.stream_pauses.extend(seconds)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/model/{tail:.+}", self.handle)
        return app

    def _error(self, status: int, message: str) -> web.Response:
        kind = ERROR_TYPES.get(status, "InternalServerException")
        return web.json_response({"message": message}, status=status, headers={"x-amzn-ErrorType": kind})

    def _too_long(self, tokens: int, limit: int) -> web.Response:
        """Bedrock's answer to a prompt longer than the model's window: a ValidationException."""
        return web.json_response(
            {"message": "Input is too long for requested model."},
            status=400,
            headers={"x-amzn-ErrorType": "ValidationException"},
        )

    def _decide(self, body: dict) -> Reply:
        messages = body.get("messages") or []
        last_user = next(
            (
                " ".join(_texts(m.get("content")))
                for m in reversed(messages)
                if m.get("role") == "user" and _texts(m.get("content"))
            ),
            "",
        )
        tool_result = None
        if messages and messages[-1].get("role") == "user":
            results = [b["toolResult"] for b in messages[-1].get("content", []) if "toolResult" in b]
            if results:
                tool_result = " ".join(" ".join(_texts(r.get("content"))) for r in results)
        tools = [t["toolSpec"]["name"] for t in (body.get("toolConfig") or {}).get("tools", []) if "toolSpec" in t]
        words = sum(len(t.split()) for t in _texts(body.get("system")))
        for m in messages:
            for block in m.get("content", []):
                if "text" in block:
                    words += len(block["text"].split())
                elif "toolResult" in block:
                    words += len(" ".join(_texts(block["toolResult"].get("content"))).split())
        reply = decide(last_user, tools, tool_result, words)
        choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
        if tools and not reply.tool_name and not reply.status and ("tool" in choice or "any" in choice):
            reply.tool_name = choice["tool"]["name"] if "tool" in choice else tools[0]
            reply.tool_args, reply.text = {"answer": reply.text}, ""
        return reply

    @staticmethod
    def _reasoning(body: dict, last_user: str) -> list[dict]:
        if not _thinking_on(body):
            return []
        text = f"The user said: {last_user}"
        blocks = [{"reasoningContent": {"reasoningText": {"text": text, "signature": sign(text)}}}]
        if "[redacted]" in last_user:
            blocks.append({"reasoningContent": {"redactedContent": base64.b64encode(REDACTED).decode()}})
        return blocks

    @staticmethod
    def _last_user(body: dict) -> str:
        return next(
            (
                " ".join(_texts(m.get("content")))
                for m in reversed(body.get("messages") or [])
                if m.get("role") == "user" and _texts(m.get("content"))
            ),
            "",
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        m = _PATH.match(request.raw_path.split("?")[0])
        if m is None:
            return self._error(404, f"no such operation: {request.raw_path}")
        model_id = unquote(m.group("model"))
        body = await request.json()
        if (failure := self.received(request, (model_id, body))) is not None:
            return failure
        if m.group("op") == "invoke":  # an embedding model: Titan one text a call, Cohere a list
            if "inputText" in body:
                text, size = body["inputText"], body.get("dimensions") or 4
                return web.json_response(
                    {
                        "embedding": ([float(len(text)), float(len(text.split()))] + [0.5] * size)[:size],
                        "inputTextTokenCount": len(text.split()),
                    }
                )
            return web.json_response(
                {
                    "id": "e1",
                    "texts": body["texts"],
                    "embeddings": {"float": [[float(len(t)), float(len(t.split())), 0.5, 0.5] for t in body["texts"]]},
                }
            )
        if problem := _problem(body):
            return self._error(400, problem)
        reply = self._decide(body)
        if (refused := self.too_long(reply)) is not None:
            return refused
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status:
            return self._error(reply.status, f"upstream says {reply.status}")
        reasoning = self._reasoning(body, self._last_user(body))
        if m.group("op") == "converse-stream":
            return await self._stream(request, reply, reasoning)
        if reply.tool_name:
            content = [{"toolUse": {"toolUseId": "tooluse_1", "name": reply.tool_name, "input": reply.tool_args}}]
        else:
            content = [{"text": reply.text}]
        content = reasoning + content
        return web.json_response(
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": "tool_use" if reply.tool_name else "end_turn",
                "usage": self._usage(reply),
                "metrics": {"latencyMs": 1},
            }
        )

    def _usage(self, reply: Reply) -> dict:
        usage = {
            "inputTokens": reply.prompt_tokens,
            "outputTokens": reply.completion_tokens,
            "totalTokens": reply.prompt_tokens + reply.completion_tokens,
        }
        if self.cache_read_tokens or self.cache_write_tokens:
            usage.update(cacheReadInputTokens=self.cache_read_tokens, cacheWriteInputTokens=self.cache_write_tokens)
            usage["totalTokens"] += self.cache_read_tokens + self.cache_write_tokens
        return usage

    async def _stream(self, request: web.Request, reply: Reply, reasoning: list[dict]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        fail = self.stream_failures.pop(0) if self.stream_failures else None

        async def send(event_type: str, body: dict) -> None:
            await response.write(event_frame(event_type, body))

        await send("messageStart", {"role": "assistant"})
        if self.stream_pauses:
            await asyncio.sleep(self.stream_pauses.pop(0))
        index = 0
        for block in reasoning:  # reasoning blocks have no contentBlockStart
            content = block["reasoningContent"]
            if "redactedContent" in content:
                await send("contentBlockDelta", {"contentBlockIndex": index, "delta": {"reasoningContent": content}})
            else:
                text = content["reasoningText"]["text"]
                for part in (text[:8], text[8:]):
                    await send(
                        "contentBlockDelta", {"contentBlockIndex": index, "delta": {"reasoningContent": {"text": part}}}
                    )
                await send(
                    "contentBlockDelta",
                    {
                        "contentBlockIndex": index,
                        "delta": {"reasoningContent": {"signature": content["reasoningText"]["signature"]}},
                    },
                )
            await send("contentBlockStop", {"contentBlockIndex": index})
            index += 1
        if reply.tool_name:
            args = json.dumps(reply.tool_args)
            await send(
                "contentBlockStart",
                {"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": reply.tool_name}}},
            )
            for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                await send("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": part}}})
            stop = "tool_use"
        else:
            for i, piece in enumerate(reply.pieces):
                if i == 1 and reply.cut:
                    request.transport.close()  # drop the connection mid-stream
                    return response
                if i == 1 and fail:
                    await response.write(exception_frame(fail, "scripted stream failure"))
                    await response.write_eof()
                    return response
                await send("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}})
            stop = "end_turn"
        await send("contentBlockStop", {"contentBlockIndex": index})
        await send("messageStop", {"stopReason": stop})
        await send("metadata", {"usage": self._usage(reply), "metrics": {"latencyMs": 1}})
        await response.write_eof()
        return response
