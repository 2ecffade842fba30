"""An OpenAI-compatible upstream whose failure a test sets: to drive timeouts, resets, 429/503 and cut streams.

`mode` applies to every request until changed:
- "ok": answer "ok from <name>" (JSON, or SSE in `chunks` pieces);
- "hang": accept the request and never answer;
- "reset": close the socket mid-request with a TCP reset, no answer at all;
- "429": answer 429 with `Retry-After: retry_after`;
- "503": answer 503;
- "cut": stream `cut_after` chunks, then close the socket (no [DONE]);
- "slow": wait `delay` seconds before the first byte, then answer as "ok";
- "truncate": stream `cut_after` chunks, then end the body cleanly (no finish_reason, no [DONE]);
- "truncate_early": stream the role chunk alone, then end the body cleanly;
- "truncated_json": answer a JSON body cut in half (to a stream request too, instead of events);
- "ok_json": answer a stream request whole, as JSON (a server that ignores `stream`);
- "drip": stream as "ok", `delay` seconds before each chunk.

FaultyAnthropic and FaultyBedrock speak the Messages API and ConverseStream with the same modes
("ok", "truncate": end cleanly after `cut_after` text deltas without message_stop / messageStop,
"truncate_early": end after message_start / messageStart, "truncated_json"), so a test drives the
same truncations through each backend kind.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import uuid

from aiohttp import web


class FaultyOpenAI:
    def __init__(self, name: str = "faulty"):
        self.name = name
        self.mode = "ok"
        self.delay = 0.0
        self.retry_after = 1
        self.cut_after = 2
        self.chunks = 4
        self.received = 0  # requests that reached this upstream
        self.url = ""

    PATH = "/v1/chat/completions"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self.PATH, self.respond)
        return app

    async def respond(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received += 1
        mode = self.mode
        if mode == "hang":  # until the caller gives up (so that stopping this server never waits on it)
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)
            return web.Response(status=499)
        if mode == "reset":
            sock = request.transport.get_extra_info("socket")
            if sock is not None:  # linger 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.close()
            return web.Response()
        if mode == "429":
            return self._error(429, "rate limited", {"Retry-After": str(self.retry_after)})
        if mode == "503":
            return self._error(503, "overloaded")
        if mode == "slow":
            await asyncio.sleep(self.delay)
        if mode == "truncated_json":
            return truncated_json(self._completion(body))
        if body.get("stream") and mode != "ok_json":
            return await self._stream(request, body, cut=mode == "cut")
        return web.json_response(self._completion(body))

    def _completion(self, body: dict) -> dict:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"ok from {self.name}"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        }

    def pieces(self) -> tuple[list[str], bool]:
        """The text a stream sends in the current mode, and whether its proper end follows."""
        if self.mode == "truncate_early":
            return [], False
        if self.mode == "truncate":
            return [f"part{i} " for i in range(self.cut_after)], False
        return [f"part{i} " for i in range(self.chunks)], True

    def _error(self, status: int, message: str, headers: dict | None = None) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": "fake_error", "param": None, "code": None}},
            status=status,
            headers=headers,
        )

    async def _stream(self, request: web.Request, body: dict, cut: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"

        async def send(delta: dict, finish: str | None = None) -> None:
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        for i in range(self.chunks):
            if self.mode == "truncate_early" or (self.mode == "truncate" and i == self.cut_after):
                if self.mode == "truncate_early":
                    await send({"role": "assistant"})
                await response.write_eof()  # a clean end of the body: only the missing finish_reason tells
                return response
            if cut and i == self.cut_after:
                await asyncio.sleep(0.05)  # let the chunks already written leave before the socket goes
                request.transport.close()
                return response
            if self.mode == "drip":
                await asyncio.sleep(self.delay)
            await send({"role": "assistant", "content": f"part{i} "} if i == 0 else {"content": f"part{i} "})
        await send({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def truncated_json(answer: dict) -> web.Response:
    """A whole answer's JSON cut in half: a 200 whose body a proxy or a crashed worker left unfinished."""
    text = json.dumps(answer)
    return web.Response(body=text[: len(text) // 2].encode(), content_type="application/json")


class FaultyAnthropic(FaultyOpenAI):
    """The Messages API (JSON, and SSE with `event:` lines), its ends broken on demand."""

    PATH = "/v1/messages"

    async def respond(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received += 1
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": f"ok from {self.name}"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 3},
        }
        if self.mode == "truncated_json":
            return truncated_json(message)
        if not body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: str, data: dict) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode())

        await send("message_start", {"message": {**message, "content": [], "stop_reason": None}})
        pieces, ends = self.pieces()
        if self.mode != "truncate_early":
            await send("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for piece in pieces:
            await send("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
        if ends:
            await send("content_block_stop", {"index": 0})
            await send("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
            await send("message_stop", {})
        await response.write_eof()
        return response


class FaultyBedrock(FaultyOpenAI):
    """Bedrock's Converse and ConverseStream (AWS event-stream frames), their ends broken on demand."""

    PATH = "/model/{tail:.+}"

    async def respond(self, request: web.Request) -> web.StreamResponse:
        from .bedrock_api import event_frame

        await request.json()
        self.received += 1
        usage = {"inputTokens": 3, "outputTokens": 3, "totalTokens": 6}
        answer = {
            "output": {"message": {"role": "assistant", "content": [{"text": f"ok from {self.name}"}]}},
            "stopReason": "end_turn",
            "usage": usage,
            "metrics": {"latencyMs": 1},
        }
        if self.mode == "truncated_json":
            return truncated_json(answer)
        if not request.path.endswith("/converse-stream"):
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        await response.write(event_frame("messageStart", {"role": "assistant"}))
        pieces, ends = self.pieces()
        for piece in pieces:
            await response.write(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}))
        if ends:
            await response.write(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
            await response.write(event_frame("messageStop", {"stopReason": "end_turn"}))
            await response.write(event_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
        await response.write_eof()
        return response
