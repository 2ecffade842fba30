"""Redis operations a request costs, per plugin: a real redis-server, a real `llmgate serve`, N requests.

For each configuration (no plugin that uses Redis, each such plugin alone, all of them together) it
starts a gateway on a fresh redis-server, sends a warm-up, resets `INFO commandstats`, sends N
sequential requests (each a new question, so the semantic cache stores rather than hits), waits for
the background flushes, and reports the calls per command per request. Background work that runs on a
timer (the rollout's resync, auto-rollback's window flush every 250 ms, usage's flush) is counted in
with the requests over the run's duration, so it is per request at this rate; at a higher rate it
weighs less. It also measures what one redis-server answers here (`redis-benchmark`, when installed).

    .venv/bin/python bench/redis_ops.py --requests 300 --output bench/results/redis_ops.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402
import redis  # noqa: E402

from plugins.api_keys.plugin import hash_key  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.support import GatewayProcess, RedisProcess, serving  # noqa: E402

KEY = "sk-lg-bench-redis-ops-0123456789abcdef"
PLUGINS = {
    "api_keys": {"api_keys": {"enabled": True, "teams": {"t": {"keys": [hash_key(KEY)]}}}},
    "quotas": {"quotas": {"enabled": True}},
    "budgets": {"budgets": {"enabled": True, "teams": {"t": {"daily_usd": 1000}}, "gateway_daily_usd": 10_000}},
    "semantic_cache": {"semantic_cache": {"enabled": True, "semantic": False}},
    "usage": {"usage": {"enabled": True}},
    "auto_rollback": {"auto_rollback": {"enabled": True}},
}
# A plugin that needs another (quotas and budgets count a team's, so they need api_keys).
NEEDS = {"quotas": ["api_keys"], "budgets": ["api_keys"]}


def config(fake, workdir: Path, redis_url: str, plugins: list[str]) -> dict:
    enabled: dict = {"traffic_log": {"path": str(workdir / "traffic.db")}}
    for name in plugins:
        for needed in [*NEEDS.get(name, []), name]:
            enabled.update(PLUGINS[needed])
    backend = {"kind": "openai", "base_url": fake.url + "/v1", "model": "gpt-test", "api_key": "sk-up"}
    return {
        "state": {"redis_url": redis_url, "sqlite_path": str(workdir / "state.db")},
        "backends": {"base": backend, "cand": backend},
        "routes": {"bot": {"baseline": "base", "candidates": {"cand": 10}}},
        "prices": {"gpt-test": {"input": 1.0, "output": 1.0}},
        "plugins": enabled,
    }


def measure(fake, plugins: list[str], requests: int, workdir: Path) -> dict:
    server = RedisProcess(workdir).start()
    direct = redis.Redis.from_url(server.url, decode_responses=True)
    gw = GatewayProcess(config(fake, workdir, server.url, plugins), workdir).start()
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
        ask = lambda text: client.chat.completions.create(  # noqa: E731
            model="bot", max_tokens=8, messages=[{"role": "user", "content": text}], user=text
        )
        for i in range(20):
            ask(f"warm-up {i}")
        time.sleep(1.0)
        direct.config_resetstat()
        start = time.monotonic()
        for i in range(requests):
            ask(f"question {i} {time.time()}")
        time.sleep(0.6)  # the timed flushes (windows every 250 ms, usage) reach Redis
        seconds = time.monotonic() - start
        stats = direct.info("commandstats")
    finally:
        gw.stop()
        server.stop()
    per_command = {
        name.removeprefix("cmdstat_").upper(): round(value["calls"] / requests, 3)
        for name, value in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    }
    per_command = {k: v for k, v in sorted(per_command.items(), key=lambda kv: -kv[1]) if v >= 0.005}
    return {
        "plugins": plugins or ["none"],
        "requests": requests,
        "seconds": round(seconds, 2),
        "ops_per_request": round(sum(per_command.values()), 2),
        "per_command": per_command,
    }


def redis_capacity(workdir: Path) -> dict | None:
    """What one redis-server answers here: GET/SET/INCR/EVALSHA-like load, 50 clients, pipelined 1."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return None
    server = RedisProcess(workdir).start()
    try:
        out = subprocess.run(
            [tool, "-p", str(server.port), "-q", "-n", "100000", "-c", "50", "-t", "get,set,incr,hset,xadd"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    finally:
        server.stop()
    rates = {}
    for line in out.replace("\r", "\n").splitlines():
        if "requests per second" in line:
            name, _, rest = line.partition(":")
            rates[name.strip()] = float(rest.split()[0])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/redis_ops.json")
    args = parser.parse_args()
    runs = [[]] + [[name] for name in PLUGINS if name != "api_keys"] + [["api_keys"], list(PLUGINS)]
    results = []
    with serving(FakeOpenAI()) as fake:
        for plugins in runs:
            with tempfile.TemporaryDirectory() as tmp:
                result = measure(fake, plugins, args.requests, Path(tmp))
            results.append(result)
            print(
                f"{'+'.join(result['plugins']):<70} {result['ops_per_request']:>6} ops/request  {result['per_command']}"
            )
    with tempfile.TemporaryDirectory() as tmp:
        capacity = redis_capacity(Path(tmp))
    print("one redis-server here:", capacity)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"runs": results, "redis_server_ops_per_second": capacity}, indent=2))


if __name__ == "__main__":
    main()
