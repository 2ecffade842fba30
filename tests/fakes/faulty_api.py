"""An OpenAI-compatible upstream whose failure a test sets: to drive timeouts, resets, 429/503 and cut streams.

`mode` applies to every request until changed:
- "ok": answer "ok from <name>" (JSON, or SSE in `chunks` pieces);
- "hang": accept the request and never answer;
- "reset": close the socket mid-request with a TCP reset, no answer at all;
- "429": answer 429 with `Retry-After: retry_after`;
- "503": answer 503;
- "cut": stream `cut_after` chunks, then close the socket (no [DONE]);
- "slow": wait `delay` seconds before the first byte, then answer as "ok".
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

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
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
        if body.get("stream"):
            return await self._stream(request, body, cut=mode == "cut")
        return web.json_response(
            {
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
        )

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
            if cut and i == self.cut_after:
                await asyncio.sleep(0.05)  # let the chunks already written leave before the socket goes
                request.transport.close()
                return response
            await send({"role": "assistant", "content": f"part{i} "} if i == 0 else {"content": f"part{i} "})
        await send({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
