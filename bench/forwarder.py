"""The floor for a Python proxy: an aiohttp server that passes each request to the upstream and back.

No parsing, no validation, no plugins: the body is read as bytes, POSTed to the upstream with one
pooled client session, and the answer is copied back (streamed chunk by chunk when it is SSE). What
llmgate adds beyond this forwarder is the cost of its own work, not of Python and aiohttp. It runs
on uvloop where installed, as llmgate (and LiteLLM, through uvicorn) do.

    .venv/bin/python bench/forwarder.py --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

try:
    import uvloop
except ImportError:  # asyncio's own loop
    uvloop = None

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
PASSED_HEADERS = ("Content-Type", "Authorization")
# every dialect's endpoint, each passed to the same path upstream (bench/upstream.py answers them all)
PATHS = ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings")


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {name: request.headers[name] for name in PASSED_HEADERS if name in request.headers}
    async with request.app[SESSION].post(request.app[UPSTREAM] + request.path, data=body, headers=headers) as upstream:
        content_type = upstream.headers.get("Content-Type", "application/json")
        if content_type.startswith("text/event-stream"):
            response = web.StreamResponse(status=upstream.status, headers={"Content-Type": content_type})
            await response.prepare(request)
            async for piece in upstream.content.iter_any():
                await response.write(piece)
            await response.write_eof()
            return response
        return web.Response(body=await upstream.read(), status=upstream.status, headers={"Content-Type": content_type})


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=16 * 2**20)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session(app: web.Application):
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=300)
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    for path in PATHS:
        app.router.add_post(path, forward)
    app.router.add_get("/healthz", lambda request: web.json_response({"status": "ok"}))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's origin, e.g. http://127.0.0.1:9000")
    args = parser.parse_args()
    web.run_app(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
        loop=uvloop.new_event_loop() if uvloop else None,
    )


if __name__ == "__main__":
    main()
