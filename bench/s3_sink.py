"""What the S3 log sink costs: the request path's share, the spool's rate, the upload rate, object sizes.

Runs the plugin alone (no gateway) against moto's S3 server (its own process) on loopback, with records shaped like
real traffic-log rows (bodies included). The upload rate is moto's, on this machine: a floor, not
what S3 itself would take.

    .venv/bin/python bench/s3_sink.py --records 20000 --batch-size 1000            # a burst
    .venv/bin/python bench/s3_sink.py --records 10000 --batch-size 1000 --rate 1000  # paced like traffic
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3  # noqa: E402

from plugins.log_sink_s3 import LogSinkS3, Settings  # noqa: E402
from tests.support import free_port, wait_for_http  # noqa: E402


def record(i: int) -> dict:
    question = f"Where is my order {i}? It was due last week and the tracking page says nothing. " * 3
    return {
        "request_id": uuid.uuid4().hex,
        "ts": time.time(),
        "route": f"route-{i % 4}",
        "variant": "ft-v2",
        "served_by": "ft-v2",
        "status": 200,
        "error_type": None,
        "error_message": None,
        "stream": False,
        "latency_ms": 412.5,
        "ttft_ms": None,
        "prompt_tokens": 120,
        "completion_tokens": 80,
        "cost_usd": 0.0012,
        "sticky_hash": "0123456789abcdef",
        "tenant": None,
        "attempts": [{"backend": "ft-v2", "status": 200, "latency_ms": 410.0, "error": None}],
        "annotations": {},
        "request": {
            "model": f"route-{i % 4}",
            "messages": [
                {"role": "system", "content": "You are a helpful support agent for an online shop."},
                {"role": "user", "content": question},
            ],
        },
        "response": {
            "id": f"chatcmpl-{i}",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "I am sorry about the delay. " * 8},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200},
        },
    }


async def loop_lag(samples: list[float]) -> None:
    """How late a 1 ms timer fires: what a request waiting on this loop would feel."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        samples.append((time.perf_counter() - t0 - 0.001) * 1000)


async def measure(url: str, bucket: str, records: int, batch_size: int, rate: float, workdir: str) -> dict:
    settings = Settings(
        bucket=bucket,
        endpoint_url=url,
        region="us-east-1",
        replica="bench",
        spool_path=os.path.join(workdir, "spool.db"),
        batch_size=batch_size,
        max_batch_age=0.5,
        queue_size=records,
        retry_min_seconds=0.1,
        retry_max_seconds=1,
    )
    idle_lag: list[float] = []  # the same probe with the sink idle: the machine's own floor
    probe = asyncio.create_task(loop_lag(idle_lag))
    await asyncio.sleep(2)
    probe.cancel()
    sink = LogSinkS3(settings)
    await sink.startup(None)
    rows = [record(i) for i in range(records)]
    raw_bytes = sum(len(json.dumps(r)) + 1 for r in rows)
    offer_ns, lag_ms = [], []
    probe = asyncio.create_task(loop_lag(lag_ms))
    started = time.perf_counter()
    for i, row in enumerate(rows):
        t0 = time.perf_counter_ns()
        sink.offer(row)
        offer_ns.append(time.perf_counter_ns() - t0)
        if rate:  # paced like traffic: record i is due at started + i / rate
            if (ahead := started + (i + 1) / rate - time.perf_counter()) > 0.002:
                await asyncio.sleep(ahead)
        elif i % 500 == 499:
            await asyncio.sleep(0)  # a burst, yielding now and then as requests would
    while sink.spooled + sink.uploaded < records:
        await asyncio.sleep(0.01)
    spooled_at = time.perf_counter()
    while sink.uploaded < records:
        await asyncio.sleep(0.01)
    uploaded_at = time.perf_counter()
    probe.cancel()
    await sink.shutdown(None)
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    sizes = [
        o["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", ())
    ]
    offer_ns.sort()
    return {
        "records": records,
        "batch_size": batch_size,
        "rate": rate or "burst",
        "dropped": sink.dropped,
        "offer_us_p50": offer_ns[len(offer_ns) // 2] / 1000,
        "offer_us_p99": offer_ns[int(len(offer_ns) * 0.99)] / 1000,
        "idle_loop_lag_ms_p99": round(sorted(idle_lag)[int(len(idle_lag) * 0.99)], 2),
        "loop_lag_ms_p99": round(sorted(lag_ms)[int(len(lag_ms) * 0.99)], 2),
        "loop_lag_ms_max": round(max(lag_ms), 2),
        "spooled_per_second": round(records / (spooled_at - started)),
        "end_to_end_records_per_second": round(records / (uploaded_at - started)),
        "objects": len(sizes),
        "mean_object_kib": round(statistics.mean(sizes) / 1024, 1),
        "raw_bytes_per_record": round(raw_bytes / records),
        "stored_bytes_per_record": round(sum(sizes) / records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0, help="records per second (0: as fast as possible)")
    args = parser.parse_args()
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE"),
        ("AWS_SECRET_ACCESS_KEY", "fake"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ):
        os.environ.setdefault(name, value)
    port = free_port()
    # Its own process: moto's threads in this one would hold the GIL and show up as the sink's loop lag.
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_http(f"http://127.0.0.1:{port}/moto-api/")
    try:
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="bench-logs")
        with tempfile.TemporaryDirectory() as workdir:
            measured = asyncio.run(measure(url, "bench-logs", args.records, args.batch_size, args.rate, workdir))
            print(json.dumps(measured, indent=2))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
