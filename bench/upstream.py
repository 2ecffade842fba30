"""A fake OpenAI upstream with a fixed latency, for measuring what a proxy in front of it adds.

Every chat completion waits exactly `--latency` seconds before it answers, so whatever a client
measures beyond that is the client, the loopback and the proxy. A streamed answer sends its first
content chunk after `--latency` (the time to first token) and then `--chunks` more, one every
`--chunk-interval` seconds, in the OpenAI SSE format (with a usage chunk when asked for), so TTFT
overhead can be read the same way.

    .venv/bin/python bench/upstream.py --port 9000 [--latency 0.05] [--chunks 8] [--chunk-interval 0.002]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

from aiohttp import web

WORDS = ("Your", " order", " shipped", " yesterday", " and", " arrives", " on", " Friday", ".")
_ids = itertools.count()
EMBEDDING = [round(0.001 * i, 3) for i in range(384)]  # one vector for every input: a small model's size


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class FixedLatencyUpstream:
    """Answers every chat completion after the same delay; counts what it served."""

    def __init__(self, latency: float, chunks: int, chunk_interval: float):
        self.latency = latency
        self.chunks = chunks
        self.chunk_interval = chunk_interval
        self.served = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        # the other dialects' own APIs, answered whole: what the forwarder passes on when it is measured in them
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "served": self.served})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "bench-model", "object": "model", "created": 0, "owned_by": "bench"}]}
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.served += 1
        given = body.get("input")
        inputs = given if isinstance(given, list) else [given]
        await asyncio.sleep(self.latency)
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": EMBEDDING} for i in range(len(inputs))],
                "model": body.get("model", "bench-model"),
                "usage": {"prompt_tokens": len(inputs) * 8, "total_tokens": len(inputs) * 8},
            }
        )

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.served += 1
        await asyncio.sleep(self.latency)
        return web.json_response(
            {
                "id": f"msg_{next(_ids)}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "bench-model"),
                "content": [{"type": "text", "text": "".join(WORDS)}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 8, "output_tokens": len(WORDS)},
            }
        )

    async def responses(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.served += 1
        await asyncio.sleep(self.latency)
        text = "".join(WORDS)
        return web.json_response(
            {
                "id": f"resp_{next(_ids)}",
                "object": "response",
                "created_at": int(time.time()),
                "status": "completed",
                "model": body.get("model", "bench-model"),
                "output": [
                    {
                        "type": "message",
                        "id": f"msg_{next(_ids)}",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "usage": {"input_tokens": 8, "output_tokens": len(WORDS), "total_tokens": 8 + len(WORDS)},
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.served += 1
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or ())
        await asyncio.sleep(self.latency)
        if body.get("stream"):
            return await self._stream(request, body, prompt_tokens)
        text = "".join(WORDS)
        return web.json_response(
            {
                "id": f"chatcmpl-{next(_ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "bench-model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": _usage(prompt_tokens, len(WORDS)),
            }
        )

    async def _stream(self, request: web.Request, body: dict, prompt_tokens: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunk_id, model, created = f"chatcmpl-{next(_ids)}", body.get("model", "bench-model"), int(time.time())
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def send(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> None:
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if with_usage:
                chunk["usage"] = usage
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await send({"role": "assistant", "content": WORDS[0]})  # the first token, after the fixed latency
        for i in range(self.chunks):
            await asyncio.sleep(self.chunk_interval)
            await send({"content": WORDS[1 + i % (len(WORDS) - 1)]})
        await send({}, "stop")
        if with_usage:
            await send(None, usage=_usage(prompt_tokens, self.chunks + 1))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before every answer (and first token)")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks after the first, when streaming")
    parser.add_argument("--chunk-interval", type=float, default=0.002, help="seconds between streamed chunks")
    args = parser.parse_args()
    upstream = FixedLatencyUpstream(args.latency, args.chunks, args.chunk_interval)
    try:  # uvloop where installed: the upstream's CPU is taken from the machine the proxy is measured on
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(upstream.app(), host=args.host, port=args.port, access_log=None, print=None, backlog=4096, loop=loop)


if __name__ == "__main__":
    main()
