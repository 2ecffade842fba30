"""An open-loop load generator for OpenAI chat completions, and a sequential one.

Open loop: request i is due at start + i / rate whatever happened to the requests before it, so a
slow answer cannot slow the sending down and hide itself (the "coordinated omission" of closed-loop
tools). Latency is counted from the moment a request was *due*, so a generator that falls behind
shows up in the figures instead of vanishing; how late each send actually was is reported too
(`send_lag`), which is the generator's own floor. One process sends a share of the schedule
(request i goes to worker i % workers) when a single event loop cannot keep up with the rate.

Each request is counted as ok (a 200 whose body, or stream, is complete), an HTTP error, a
timeout, a connection error, or `overload` (not sent because `max_in_flight` requests were
already waiting: the system had stopped answering).

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8080/v1/chat/completions --rate 300 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rawhttp import ConnectionFailed, RawHttpPool

OK = "ok"


@dataclass
class LoadSpec:
    """What to send, how fast and for how long."""

    url: str
    rate: float = 100.0
    duration: float = 10.0
    model: str = "bench"
    stream: bool = False
    prompt: str = "Where is my order? It was placed last week."
    unique_prompts: bool = False  # a distinct question per request (a cache miss every time)
    timeout: float = 15.0
    max_in_flight: int = 4000
    headers: dict = field(default_factory=lambda: {"Authorization": "Bearer bench-key"})
    workers: int = 1
    dialect: str = "chat"  # which API the requests speak (DIALECTS); `url` is the chat completions one


CHAT_PATH = "/v1/chat/completions"


def agent_conversation(prompt: str, turns: int = 20) -> dict:
    """A coding agent's turn as chat completions carries it (what Claude Code or Codex sends each step,
    through a translating client): a system prompt, `turns` rounds of a request, a tool call and its
    result, ten tools, then `prompt`. About 36 KB and 62 messages: the size of body where reading and
    checking it, not the hop, is what a gateway spends."""
    messages = [{"role": "system", "content": "You are a coding agent working in a repository. " * 20}]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Step {i}: read the module, find the bug and fix it. " * 5},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": json.dumps({"path": f"src/module_{i}.py"})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "def handler(request):\n    return 1\n" * 30},
        ]
    messages.append({"role": "user", "content": prompt})
    tool = {"type": "object", "properties": {"path": {"type": "string"}, "text": {"type": "string"}}}
    tools = [
        {
            "type": "function",
            "function": {"name": f"tool_{i}", "description": "Acts on the repository.", "parameters": tool},
        }
        for i in range(10)
    ]
    return {"messages": messages, "tools": tools, "temperature": 0, "max_tokens": 1000}


# Each inbound dialect: its path, the request for a prompt (streamed or not), the bytes a complete whole
# answer carries, and, for a stream, the line of its first content and the line of its end.
DIALECTS = {
    "chat": (CHAT_PATH, lambda p: {"messages": [{"role": "user", "content": p}], "temperature": 0}, b'"choices"'),
    "messages": (
        "/v1/messages",
        lambda p: {"max_tokens": 64, "messages": [{"role": "user", "content": p}], "temperature": 0},
        b'"content"',
    ),
    "responses": ("/v1/responses", lambda p: {"input": p, "temperature": 0}, b'"output"'),
    "embeddings": ("/v1/embeddings", lambda p: {"input": p}, b'"embedding"'),
    "agent": (CHAT_PATH, agent_conversation, b'"choices"'),  # chat completions with an agent's whole turn
}
STREAM_MARKERS = {  # dialect: (first content, the stream's end); chat's first content is read from its JSON
    "chat": (None, b"data: [DONE]"),
    "messages": (b"text_delta", b"message_stop"),
    "responses": (b"output_text.delta", b"response.completed"),
}


def dialect_url(url: str, dialect: str) -> str:
    """The endpoint of `dialect` on the server whose chat completions endpoint is `url`."""
    return url.removesuffix(CHAT_PATH) + DIALECTS[dialect][0] if url.endswith(CHAT_PATH) else url


@dataclass
class Sample:
    due: float  # seconds after the run's start when the request was due
    lag: float  # how late it was sent (seconds)
    latency: float  # due -> last byte (seconds); NaN when it failed
    ttft: float  # due -> first content token, for streams (seconds); NaN otherwise
    outcome: str  # "ok", "http_<status>", "timeout", "connection", "incomplete", "overload"


def _body(spec: LoadSpec, i: int) -> bytes:
    prompt = (
        f"{spec.prompt} (question {i} of a unique series, {time.time_ns()})" if spec.unique_prompts else spec.prompt
    )
    body = {"model": spec.model, **DIALECTS[spec.dialect][1](prompt)}
    if spec.stream:
        body["stream"] = True
    return json.dumps(body).encode()


def _has_content(line: bytes) -> bool:
    """True for an SSE data line whose chunk carries non-empty content (the first token)."""
    if not line.startswith(b"data: {"):
        return False
    try:
        chunk = json.loads(line[6:])
    except ValueError:
        return False
    return any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or ())


# What every latency is measured by: uvloop's loop.time() counts whole milliseconds (libuv's loop clock),
# which put each figure on a 1 ms grid and made a one-at-a-time run's medians whole milliseconds.
CLOCK = time.perf_counter


async def _one(pool: RawHttpPool, spec: LoadSpec, body: bytes, due_at: float, t0: float, clock) -> Sample:
    sent = clock()
    ttft = math.nan
    done = False

    first, end = STREAM_MARKERS.get(spec.dialect, (None, b"data: [DONE]"))

    def on_line(line: bytes) -> None:
        nonlocal ttft, done
        if math.isnan(ttft) and (_has_content(line) if first is None else first in line):
            ttft = clock() - due_at
        if end in line:
            done = True

    try:
        async with asyncio.timeout(spec.timeout):
            status, payload = await pool.post(body, on_line if spec.stream else None)
    except TimeoutError:
        return Sample(due_at - t0, sent - due_at, math.nan, ttft, "timeout")
    except (ConnectionFailed, OSError):
        return Sample(due_at - t0, sent - due_at, math.nan, ttft, "connection")
    if status != 200:
        return Sample(due_at - t0, sent - due_at, math.nan, math.nan, f"http_{status}")
    if (spec.stream and not done) or (not spec.stream and DIALECTS[spec.dialect][2] not in payload):
        return Sample(due_at - t0, sent - due_at, math.nan, ttft, "incomplete")
    return Sample(due_at - t0, sent - due_at, clock() - due_at, ttft, OK)


@contextlib.contextmanager
def _session(spec: LoadSpec):
    pool = RawHttpPool(dialect_url(spec.url, spec.dialect), spec.headers)
    try:
        yield pool
    finally:
        pool.close()


async def _open_loop(spec: LoadSpec, worker: int, start_wall: float) -> list[Sample]:
    """Send this worker's share of the schedule on time, without waiting on answers."""
    clock = CLOCK
    t0 = clock() + (start_wall - time.time())  # the shared start, on the measuring clock
    total = int(spec.rate * spec.duration)
    samples: list[Sample] = []
    tasks: set[asyncio.Task] = set()

    def finished(task: asyncio.Task) -> None:
        tasks.discard(task)
        samples.append(task.result())

    with _session(spec) as session:
        for i in range(worker, total, spec.workers):
            due_at = t0 + i / spec.rate
            delay = due_at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= spec.max_in_flight:
                samples.append(Sample(due_at - t0, clock() - due_at, math.nan, math.nan, "overload"))
                continue
            task = asyncio.create_task(_one(session, spec, _body(spec, i), due_at, t0, clock))
            tasks.add(task)
            task.add_done_callback(finished)
        while tasks:
            await asyncio.wait(set(tasks))
    return samples


def _run(coroutine):
    """On uvloop where installed: the generator's own CPU is taken from the machine it measures on."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _worker_main(spec: LoadSpec, worker: int, start_wall: float, conn) -> None:
    samples = _run(_open_loop(spec, worker, start_wall))
    conn.send([tuple(asdict(s).values()) for s in samples])
    conn.close()


def open_loop(spec: LoadSpec) -> list[Sample]:
    """Run the schedule in `spec.workers` processes of their own; every request's Sample."""
    ctx = multiprocessing.get_context("spawn")
    start_wall = time.time() + 1.0 + 0.3 * spec.workers  # time for the workers to start before the first send
    pipes, processes = [], []
    for worker in range(spec.workers):
        parent, child = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_worker_main, args=(spec, worker, start_wall, child), daemon=True)
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    samples: list[Sample] = []
    for pipe in pipes:
        samples.extend(Sample(*row) for row in pipe.recv())
    for process in processes:
        process.join()
    return samples


async def _sequential(spec: LoadSpec, count: int) -> list[Sample]:
    clock = CLOCK
    samples = []
    with _session(spec) as session:
        t0 = clock()
        for i in range(count):
            now = clock()
            samples.append(await _one(session, spec, _body(spec, i), now, t0, clock))
    return samples


def sequential(spec: LoadSpec, count: int) -> list[Sample]:
    """One request at a time, `count` of them: the latency a lone caller sees."""
    return _run(_sequential(spec, count))


def _percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float] | None:
    values = sorted(v * scale for v in values if not math.isnan(v))
    if not values:
        return None

    def at(q: float) -> float:
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

    return {
        "p50": round(at(0.50), 3),
        "p90": round(at(0.90), 3),
        "p95": round(at(0.95), 3),
        "p99": round(at(0.99), 3),
        "p999": round(at(0.999), 3),
        "max": round(values[-1], 3),
        "mean": round(sum(values) / len(values), 3),
        "n": len(values),
    }


def summarize(samples: list[Sample], offered_rate: float | None, duration: float | None) -> dict:
    """Counts, achieved rate, and latency / TTFT / send-lag percentiles in milliseconds."""
    outcomes: dict[str, int] = {}
    for s in samples:
        outcomes[s.outcome] = outcomes.get(s.outcome, 0) + 1
    ok = [s for s in samples if s.outcome == OK]
    total = len(samples)
    errors = total - len(ok)
    summary = {
        "requests": total,
        "ok": len(ok),
        "errors": errors,
        "error_rate": round(errors / total, 6) if total else None,
        "outcomes": outcomes,
        "latency_ms": _percentiles([s.latency for s in ok]),
        "ttft_ms": _percentiles([s.ttft for s in ok]),
        "send_lag_ms": _percentiles([s.lag for s in samples]),
    }
    if offered_rate is not None and duration:
        # The run lasts until its last answer (less the fastest answer's time, which no system can
        # avoid): a system that queues up stretches it and loses rate.
        floor = min((s.latency for s in ok), default=0.0)
        finished = max((s.due + s.latency for s in ok), default=duration) - floor
        summary["offered_rps"] = offered_rate
        summary["achieved_rps"] = round(len(ok) / max(duration, finished), 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--dialect", choices=sorted(DIALECTS), default="chat", help="the API the requests speak")
    parser.add_argument("--unique-prompts", action="store_true")
    parser.add_argument("--sequential", type=int, default=0, help="send N requests one at a time instead")
    args = parser.parse_args()
    spec = LoadSpec(
        url=args.url,
        rate=args.rate,
        duration=args.duration,
        model=args.model,
        stream=args.stream,
        unique_prompts=args.unique_prompts,
        workers=args.workers,
        dialect=args.dialect,
    )
    if args.sequential:
        print(json.dumps(summarize(sequential(spec, args.sequential), None, None), indent=2))
    else:
        print(json.dumps(summarize(open_loop(spec), spec.rate, spec.duration), indent=2))


if __name__ == "__main__":
    main()
