"""A fake Amazon Bedrock runtime (Converse and ConverseStream), speaking the REST API boto3 uses.

ConverseStream answers in the AWS event-stream binary framing, encoded here by hand, so a real
boto3 client decodes it exactly as it would the service's. What to answer comes from
`behaviour.decide`, like every fake upstream. Requests are not signature-checked.
"""
from __future__ import annotations

import asyncio
import json
import re
import struct
import zlib
from urllib.parse import unquote

from aiohttp import web

from .behaviour import FakeUpstream, Reply, decide

ERROR_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
               408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
               500: "InternalServerException", 503: "ServiceUnavailableException"}
_PATH = re.compile(r"^/model/(?P<model>.+)/(?P<op>converse|converse-stream)$")


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
    return encode_frame({":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
                        json.dumps(body).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    return encode_frame({":exception-type": exception_type, ":content-type": "application/json",
                         ":message-type": "exception"}, json.dumps({"message": message}).encode())


def _texts(blocks) -> list[str]:
    return [b["text"] for b in blocks or () if isinstance(b, dict) and "text" in b]


class FakeBedrock(FakeUpstream):
    """Records (model_id, body) for every request; `fail_next` makes the next requests fail with a status."""

    def __init__(self):
        super().__init__()
        self.stream_failures: list[str] = []
        self.stream_pauses: list[float] = []

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

    def _decide(self, body: dict) -> Reply:
        messages = body.get("messages") or []
        last_user = next((" ".join(_texts(m.get("content"))) for m in reversed(messages)
                          if m.get("role") == "user" and _texts(m.get("content"))), "")
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
        return decide(last_user, tools, tool_result, words)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        m = _PATH.match(request.raw_path.split("?")[0])
        if m is None:
            return self._error(404, f"no such operation: {request.raw_path}")
        model_id = unquote(m.group("model"))
        body = await request.json()
        if (failure := self.received(request, (model_id, body))) is not None:
            return failure
        reply = self._decide(body)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status:
            return self._error(reply.status, f"upstream says {reply.status}")
        if m.group("op") == "converse-stream":
            return await self._stream(request, reply)
        if reply.tool_name:
            content = [{"toolUse": {"toolUseId": "tooluse_1", "name": reply.tool_name, "input": reply.tool_args}}]
        else:
            content = [{"text": reply.text}]
        return web.json_response({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "tool_use" if reply.tool_name else "end_turn",
            "usage": self._usage(reply), "metrics": {"latencyMs": 1}})

    @staticmethod
    def _usage(reply: Reply) -> dict:
        return {"inputTokens": reply.prompt_tokens, "outputTokens": reply.completion_tokens,
                "totalTokens": reply.prompt_tokens + reply.completion_tokens}

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        fail = self.stream_failures.pop(0) if self.stream_failures else None

        async def send(event_type: str, body: dict) -> None:
            await response.write(event_frame(event_type, body))

        await send("messageStart", {"role": "assistant"})
        if self.stream_pauses:
            await asyncio.sleep(self.stream_pauses.pop(0))
        if reply.tool_name:
            args = json.dumps(reply.tool_args)
            await send("contentBlockStart", {"contentBlockIndex": 0, "start": {
                "toolUse": {"toolUseId": "tooluse_1", "name": reply.tool_name}}})
            for part in (args[: len(args) // 2], args[len(args) // 2:]):
                await send("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": part}}})
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
                await send("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
            stop = "end_turn"
        await send("contentBlockStop", {"contentBlockIndex": 0})
        await send("messageStop", {"stopReason": stop})
        await send("metadata", {"usage": self._usage(reply), "metrics": {"latencyMs": 1}})
        await response.write_eof()
        return response
