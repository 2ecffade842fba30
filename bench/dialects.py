"""What each inbound dialect adds to a request, beside chat completions, in the same run.

One llmgate (bench/configs/full.yaml: rollout, shadow, traffic log) in front of the fixed-latency
upstream. The same conversation is sent as a chat completion, an Anthropic Messages request and a
Responses request, whole and streamed, one after another in rotating order (so that the machine's
drift falls on every dialect alike), sequentially: latency then measures the path, not a queue.

Two figures per dialect and mode, as medians over `--requests` requests:
- the gateway's own time, `x-llmgate-overhead-ms` (everything before the answer's first byte but
  the upstream: the translation in, the plugins, the translation of a whole answer out);
- the latency the client sees (whole answers), or its time to the first content event (streams).
A dialect's cost is its median minus chat completions' (the budget: at most 0.3 ms a request).

    .venv/bin/python bench/dialects.py --output bench/results/dialects.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from systems import SYSTEMS, start_system, start_upstream  # noqa: E402

BUDGET_MS = 0.3
QUESTION = "Where is my order? It was placed last week."
DIALECTS = {
    "chat": (
        "/v1/chat/completions",
        lambda stream: {"model": "bench", "stream": stream, "messages": [{"role": "user", "content": QUESTION}]},
        b"data: {",
    ),
    "messages": (
        "/v1/messages",
        lambda stream: {
            "model": "bench",
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": QUESTION}],
        },
        b"text_delta",
    ),
    "responses": (
        "/v1/responses",
        lambda stream: {"model": "bench", "stream": stream, "input": QUESTION},
        b"output_text.delta",
    ),
}


async def one(session: aiohttp.ClientSession, base: str, dialect: str, stream: bool) -> tuple[float, float]:
    """(the gateway's overhead header, the client's latency or time to first content), in ms."""
    path, body, marker = DIALECTS[dialect]
    started = time.perf_counter()
    async with session.post(base + path, json=body(stream), headers={"Authorization": "Bearer bench-key"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{dialect}: {resp.status} {await resp.text()}")
        overhead = float(resp.headers["x-llmgate-overhead-ms"])
        if not stream:
            await resp.read()
            return overhead, (time.perf_counter() - started) * 1000
        first = None
        async for line in resp.content:
            if first is None and marker in line:
                first = (time.perf_counter() - started) * 1000
        return overhead, first if first is not None else float("nan")


async def measure(base: str, requests: int, warmup: int) -> dict:
    samples = {(d, s): [] for d in DIALECTS for s in (False, True)}
    order = list(samples)
    async with aiohttp.ClientSession() as session:
        for i in range(warmup + requests):
            for key in order[i % len(order) :] + order[: i % len(order)]:  # rotating order
                figures = await one(session, base, *key)
                if i >= warmup:
                    samples[key].append(figures)
    results = {}
    for (dialect, stream), values in samples.items():
        results.setdefault("stream" if stream else "json", {})[dialect] = {
            "overhead_ms_p50": statistics.median(v[0] for v in values),
            ("ttft_ms_p50" if stream else "latency_ms_p50"): statistics.median(v[1] for v in values),
            "requests": len(values),
        }
    for mode, by_dialect in results.items():
        chat = by_dialect["chat"]
        for name, figures in by_dialect.items():
            figures["added_overhead_ms"] = round(figures["overhead_ms_p50"] - chat["overhead_ms_p50"], 3)
            key = "ttft_ms_p50" if mode == "stream" else "latency_ms_p50"
            figures["added_client_ms"] = round(figures[key] - chat[key], 3)
            figures["within_budget"] = figures["added_overhead_ms"] <= BUDGET_MS
    return results


def translation_costs(rounds: int = 2000) -> dict:
    """Each dialect's own CPU a request, in process (µs): the request into the chat form, and the answer
    out of it, whole and streamed (ten content chunks): what the dialect adds, without the network."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gateway.chat import chunk, completion, usage
    from gateway.context import RequestContext
    from gateway.dialects import anthropic, responses
    from gateway.dialects.chat_completions import ChatCompletions

    words = "Your order shipped yesterday and arrives on Friday .".split()
    chunks = (
        [chunk("c", "m", {"role": "assistant", "content": ""})]
        + [chunk("c", "m", {"content": w}) for w in words]
        + [chunk("c", "m", {}, "stop"), chunk("c", "m", usage=usage(12, 10))]
    )
    whole = completion("c", "m", {"role": "assistant", "content": " ".join(words)}, "stop", usage(12, 10))
    dialects = {"chat": ChatCompletions(), "messages": anthropic.MESSAGES, "responses": responses.RESPONSES}

    async def one(name: str, stream: bool) -> None:
        path, body, _ = DIALECTS[name]
        raw = body(stream)
        ctx = RequestContext(request_id="r", route_name="bench", route=None, body=raw, headers={})
        ctx.inbound = raw
        ctx.body, _ = await dialects[name].to_chat(ctx, None)
        if not stream:
            json.dumps(dialects[name].answer(whole, ctx))
            return
        encoder = dialects[name].encoder(ctx)
        encoder.start()
        for c in chunks:
            encoder.chunk(c)
        encoder.finish(None)

    async def timed() -> dict:
        out = {}
        for mode, stream in (("json", False), ("stream", True)):
            for name in dialects:
                started = time.perf_counter()
                for _ in range(rounds):
                    await one(name, stream)
                out.setdefault(mode, {})[name] = round((time.perf_counter() - started) / rounds * 1e6, 1)
        return out

    return asyncio.run(timed())


def markdown(results: dict) -> str:
    lines = [
        "| mode | dialect | gateway overhead p50 (ms) | added vs chat (ms) | client p50 (ms) | added (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, by_dialect in results["figures"].items():
        for name, f in by_dialect.items():
            client = f.get("latency_ms_p50", f.get("ttft_ms_p50"))
            lines.append(
                f"| {mode} | {name} | {f['overhead_ms_p50']:.3f} | {f['added_overhead_ms']:+.3f} | "
                f"{client:.2f} | {f['added_client_ms']:+.2f} |"
            )
    lines += [
        "",
        "Each dialect's own CPU a request, in process (µs; the request in, the answer out):",
        "",
        "| mode | chat | messages | responses |",
        "|---|---|---|---|",
    ]
    for mode, by_dialect in results["translation_us"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{by_dialect[d]:.1f}" for d in DIALECTS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per dialect and mode")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.02, help="the upstream's seconds to answer")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dialects-"))
    upstream, origin = start_upstream(workdir, args.latency, chunks=8, chunk_interval=0.001)
    gateway = None
    try:
        gateway = start_system(SYSTEMS["llmgate-full"], origin, workdir)
        base = gateway.url.rsplit("/v1/", 1)[0]
        results = {
            "upstream_latency_s": args.latency,
            "budget_ms": BUDGET_MS,
            "system": "llmgate-full",
            "figures": asyncio.run(measure(base, args.requests, args.warmup)),
            "translation_us": translation_costs(),
        }
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()
    print(markdown(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(markdown(results) + "\n")
    return 0 if all(f["within_budget"] for by in results["figures"].values() for f in by.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
