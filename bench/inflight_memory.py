"""How many bytes the gateway holds for each request in flight, beside the forwarder.

The fake upstream answers after --latency seconds (long, so that every request of a wave is in flight
at once). Each system gets waves of concurrent chat requests, each wave larger than the last and sent
after the one before has been answered; the resident memory of its process tree is sampled while the
wave is held upstream. A wave's memory above the last one's, over the requests it adds, is what one
more request in flight costs: memory a smaller wave took and gave back is reused, so a one-time cost
(imports, pools, caches) is not counted.

    .venv/bin/python bench/inflight_memory.py --output bench/results/inflight_memory.json
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


async def _wave(url: str, api_key: str, size: int, prompt_bytes: int, sample_at: float, sample) -> dict:
    """`size` requests at once; the RSS sampled `sample_at` seconds after the last was sent."""
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": "x" * prompt_bytes}],
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one() -> int:
            async with session.post(url, json=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        tasks = [asyncio.create_task(one()) for _ in range(size)]
        await asyncio.sleep(sample_at)
        rss = await asyncio.to_thread(sample)
        statuses = await asyncio.gather(*tasks, return_exceptions=True)
    ok = sum(1 for s in statuses if s == 200)
    return {"size": size, "rss_mb": round(rss, 2), "answered": ok, "failed": size - ok}


def measure(name: str, upstream: str, workdir: Path, args: argparse.Namespace) -> dict:
    running = start_system(SYSTEMS[name], upstream, workdir)
    try:
        url = running.url
        sample = running.process.rss_mb
        waves = []
        for size in [args.waves[0], *args.waves]:  # the first wave twice: the second is the baseline
            waves.append(asyncio.run(_wave(url, running.api_key, size, args.prompt_bytes, args.sample_at, sample)))
            time.sleep(1.0)
        waves = waves[1:]
        steps = []
        for before, after in zip(waves, waves[1:]):
            added = after["size"] - before["size"]
            steps.append(round((after["rss_mb"] - before["rss_mb"]) * 2**20 / added))
        return {
            "system": name,
            "waves": waves,
            "bytes_per_request_steps": steps,
            "bytes_per_request": round(statistics.median(steps)) if steps else None,
        }
    finally:
        running.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="forwarder,llmgate-full")
    parser.add_argument("--waves", default="100,200,300,400", help="concurrent requests in each wave")
    parser.add_argument(
        "--latency",
        type=float,
        default=4.0,
        help="seconds the upstream holds each request (under 5: its readiness check)",
    )
    parser.add_argument("--sample-at", type=float, default=2.5, help="seconds after a wave is sent to sample")
    parser.add_argument("--prompt-bytes", type=int, default=1000, help="size of each request's prompt")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "inflight_memory.json"))
    args = parser.parse_args(argv)
    args.waves = [int(w) for w in args.waves.split(",") if w]
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-inflight-"))
    upstream_process, upstream = start_upstream(workdir, args.latency, 1, 0.0)
    try:
        results = [measure(name, upstream, workdir, args) for name in args.systems.split(",") if name]
    finally:
        upstream_process.stop()
    out = {
        "latency": args.latency,
        "prompt_bytes": args.prompt_bytes,
        "waves": args.waves,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "systems": results,
    }
    Path(args.output).write_text(json.dumps(out, indent=1))
    for r in results:
        print(
            f"{r['system']}: {r['bytes_per_request']} bytes a request in flight (steps {r['bytes_per_request_steps']})"
        )
        for w in r["waves"]:
            print(f"  {w['size']} at once: {w['rss_mb']} MiB, {w['answered']} answered, {w['failed']} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
