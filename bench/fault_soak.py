"""Memory under faults: does a gateway that keeps failing keep its memory flat?

One `llmgate serve` process takes --rate requests a second, open loop, for --minutes (a third of them
streamed) on a route whose upstream fails --error-share of them (503s, reset connections, streams cut
midway or ended without a finish: the gateway's error paths, its breaker and the traffic log's error
records) and whose shadow backend answers only after --shadow-delay seconds (the shadow queue full, its
calls dropped). The daemon's resident memory is sampled every --sample seconds; after --warmup, the
figure is the least-squares growth in MiB per 10 minutes, and the first and last samples.

    .venv/bin/python bench/fault_soak.py --output bench/results/fault_soak.json      # 30 minutes
    .venv/bin/python bench/fault_soak.py --minutes 5 --warmup 1                        # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream_app(error_share: float, delay: float, seed: int) -> web.Application:
    """An OpenAI-compatible upstream that answers after `delay` and fails `error_share` of its requests."""
    rng = random.Random(seed)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fault = rng.choice(("503", "reset", "cut", "truncate")) if rng.random() < error_share else None
        await asyncio.sleep(delay)
        if fault == "503":
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)
        if fault == "reset" or (fault in ("cut", "truncate") and not body.get("stream")):
            request.transport.close()
            return web.Response()
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-soak",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "ok " * 20}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(5):
            if fault and i == 2:
                if fault == "cut":
                    request.transport.close()
                else:
                    await response.write_eof()  # ended cleanly, without a finish_reason
                return response
            delta = {"content": "ok " * 4} if i < 4 else {}
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
            chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": "stop" if i == 4 else None}]
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def serve_in_thread(app: web.Application, port: int) -> None:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def growth_per_10min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per 10 minutes."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return cov / var * 600 if var else 0.0


async def load(url: str, rate: float, seconds: float, outcomes: Counter) -> None:
    """Open loop: a request every 1/rate seconds whatever the answers take, a third of them streamed."""
    async with ClientSession(connector=TCPConnector(limit=0), timeout=ClientTimeout(total=60)) as session:

        async def one(i: int) -> None:
            stream = i % 3 == 0
            body = {
                "model": "soak",
                "stream": stream,
                "user": f"u{i % 50}",
                "messages": [{"role": "user", "content": f"q {i}"}],
            }
            try:
                async with session.post(url + "/v1/chat/completions", json=body) as resp:
                    text = await resp.read()
                    if stream and resp.status == 200:  # a stream's status went out before any fault
                        ending = "[DONE]" if text.rstrip().endswith(b"[DONE]") else "error event"
                        outcomes[f"200 stream, {ending}"] += 1
                    else:
                        outcomes[str(resp.status)] += 1
            except (ClientError, asyncio.TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1

        started, tasks, i = time.perf_counter(), set(), 0
        while (now := time.perf_counter() - started) < seconds:
            due = i / rate
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=100, help="requests a second")
    parser.add_argument("--error-share", type=float, default=0.3)
    parser.add_argument("--shadow-delay", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=3, help="minutes not counted in the growth")
    parser.add_argument("--sample", type=float, default=10, help="seconds between memory samples")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    upstream, shadow = free_port(), free_port()
    serve_in_thread(upstream_app(args.error_share, 0.01, seed=1), upstream)
    serve_in_thread(upstream_app(0.0, args.shadow_delay, seed=2), shadow)
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-fault-soak-"))
    timeout = {"connect": 2, "first_byte": 10, "total": 30}
    config = {
        "state": {"sqlite_path": str(workdir / "state.db")},
        "backends": {
            "base": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{upstream}/v1",
                "model": "m",
                "api_key": "none",
                "timeout": timeout,
                "max_concurrency": 1000,
                "breaker": {"failures": 50, "open_seconds": 1},
            },
            "slow-shadow": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{shadow}/v1",
                "model": "s",
                "api_key": "none",
                "timeout": timeout,
            },
        },
        "routes": {"soak": {"baseline": "base", "retries": 0, "shadow": ["slow-shadow"]}},
        "plugins": {
            "traffic_log": {"path": str(workdir / "traffic.db")},
            "shadow": {
                "path": str(workdir / "shadow.db"),
                "sample_rate": 0.25,
                "max_concurrent": 32,
                "queue_size": 1000,
            },
        },
    }
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(workdir / "gateway.log", "wb")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(workdir / "gateway.yaml"), "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    samples: list[tuple[float, float]] = []
    outcomes: Counter = Counter()
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(args.sample):
            samples.append((time.monotonic() - started, rss_mib(gateway.pid)))

    samples.append((0.0, rss_mib(gateway.pid)))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        asyncio.run(load(url, args.rate, args.minutes * 60, outcomes))
    finally:
        stop.set()
        sampler.join()
        samples.append((time.monotonic() - started, rss_mib(gateway.pid)))
        gateway.terminate()
        gateway.wait(60)
        log.close()
    counted = [s for s in samples if s[0] >= args.warmup * 60]
    half = [s for s in counted if s[0] >= (args.warmup * 60 + samples[-1][0]) / 2]
    result = {
        "minutes": args.minutes,
        "rate": args.rate,
        "error_share": args.error_share,
        "shadow_delay_s": args.shadow_delay,
        "requests": sum(outcomes.values()),
        "outcomes": dict(outcomes.most_common()),
        "rss_mib": {
            "start": samples[0][1],
            "after_warmup": counted[0][1] if counted else None,
            "end": samples[-1][1],
            "max": max(m for _, m in samples),
        },
        "growth_mib_per_10min": round(growth_per_10min(counted), 3),
        "growth_mib_per_10min_second_half": round(growth_per_10min(half), 3),
        "samples": [[round(t, 1), round(m, 2)] for t, m in samples],
    }
    print(
        f"fault soak: {result['requests']} requests in {args.minutes:g} min at {args.rate:g}/s, "
        f"{args.error_share:.0%} upstream faults, shadow {args.shadow_delay:g}s: RSS {samples[0][1]:.1f} MiB at start, "
        f"{result['rss_mib']['after_warmup']} after {args.warmup:g} min, {samples[-1][1]:.1f} at the end; growth "
        f"{result['growth_mib_per_10min']} MiB/10 min after the warm-up ({result['growth_mib_per_10min_second_half']} "
        f"over the second half)"
    )
    print("outcomes:", dict(outcomes.most_common()))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
