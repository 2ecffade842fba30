"""What the traffic log's `durability: acknowledged` adds to a request's latency, against the default `batched`.

One llmgate process with the deployed config (bench/configs/full.yaml: rollout, shadow, the traffic log
with bodies) and a second route, `bench-ack`, identical to `bench` but for its traffic-log option
`durability: acknowledged`: its answers' last bytes wait for the fsynced commit of their record. Both
routes reach the same fixed-latency upstream (bench/upstream.py). Open-loop runs (bench/loadgen.py) at
--rate alternate between the two routes, JSON answers and streams, in --pairs pairs whose order rotates;
a figure is the median over the pairs of the difference within each pair (acknowledged minus batched)
at p50 and p99 of the caller's latency to the last byte. /metrics confirms that each acknowledged
run's answers were kept before they ended (`llmgate_traffic_log_acknowledged_total`).

    .venv/bin/python bench/durability.py --output bench/results/durability.json
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import report  # noqa: E402
from overhead import machine  # noqa: E402
from systems import BENCH, System, start_system, start_upstream, wait_quiet  # noqa: E402

MODES = {"batched": "bench", "acknowledged": "bench-ack"}  # mode -> the route that runs in it
KINDS = ("json", "stream")
KEPT = re.compile(r'^llmgate_traffic_log_(un)?acknowledged_total\{(?:outcome|reason)="(\w+)"\} (\S+)$', re.M)


def config(workdir: Path) -> Path:
    """The deployed config with `bench-ack`, a copy of its route whose records are acknowledged."""
    raw = yaml.safe_load((BENCH / "configs" / "full.yaml").read_text())
    raw["routes"][MODES["acknowledged"]] = copy.deepcopy(raw["routes"][MODES["batched"]])
    raw["plugins"]["traffic_log"]["routes"] = {MODES["acknowledged"]: {"durability": "acknowledged"}}
    path = workdir / "durability.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def kept(url: str) -> dict[str, float]:
    """{outcome or reason: count} of acknowledged answers, from /metrics."""
    with urllib.request.urlopen(url.replace("/v1/chat/completions", "/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    return {("unkept:" if un else "") + key: float(value) for un, key, value in KEPT.findall(text)}


def run(url: str, mode: str, kind: str, args: argparse.Namespace) -> dict:
    before = kept(url)
    spec = loadgen.LoadSpec(
        url=url, rate=args.rate, duration=args.duration, model=MODES[mode], stream=kind == "stream", timeout=15
    )
    summary = loadgen.summarize(loadgen.open_loop(spec), spec.rate, spec.duration)
    after = kept(url)
    summary["kept"] = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    return summary


def added(acknowledged: dict, batched: dict) -> dict:
    a, b = acknowledged["latency_ms"], batched["latency_ms"]
    return {q: round(a[q] - b[q], 3) for q in ("p50", "p99")}


def measure(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-durability-"))
    upstream, origin = start_upstream(workdir, args.latency, 8, 0.002)
    path = config(workdir)
    # an absolute config path: start_system joins it under bench/configs, which leaves it as it is
    system = System("llmgate-durability", "llmgate, traffic log batched and acknowledged", "llmgate", str(path))
    gateway = start_system(system, origin, workdir)
    runs: dict[str, dict[str, list[dict]]] = {kind: {mode: [] for mode in MODES} for kind in KINDS}
    try:
        for mode in MODES:  # warm-up: connections, caches, the first batches
            loadgen.open_loop(loadgen.LoadSpec(url=gateway.url, rate=args.rate, duration=2, model=MODES[mode]))
        for pair in range(args.pairs):
            for kind in KINDS:
                order = list(MODES) if pair % 2 == 0 else list(MODES)[::-1]
                for mode in order:
                    wait_quiet(gateway.process, timeout=10)
                    summary = run(gateway.url, mode, kind, args)
                    runs[kind][mode].append(summary)
                    lat = summary["latency_ms"] or {}
                    print(
                        f"pair {pair + 1}/{args.pairs} {kind} {mode}: p50 {lat.get('p50')} ms, "
                        f"p99 {lat.get('p99')} ms, {summary['errors']} errors, kept {summary['kept']}",
                        file=sys.stderr,
                    )
    finally:
        gateway.stop()
        upstream.stop()
    results = {}
    for kind in KINDS:
        pairs = [added(a, b) for a, b in zip(runs[kind]["acknowledged"], runs[kind]["batched"])]
        results[kind] = {
            "added_ms": {q: round(statistics.median(p[q] for p in pairs), 3) for q in ("p50", "p99")},
            "pairs": pairs,
            **{
                mode: {
                    q: round(statistics.median(r["latency_ms"][q] for r in runs[kind][mode]), 3) for q in ("p50", "p99")
                }
                for mode in MODES
            },
            "errors": {mode: sum(r["errors"] for r in runs[kind][mode]) for mode in MODES},
            "kept": {mode: [r["kept"] for r in runs[kind][mode]] for mode in MODES},
        }
    return results


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Traffic-log durability: what `acknowledged` adds",
        "",
        f"{report.machine_line(meta)}; {meta['finished']}",
        "",
        f"{meta['rate']:g} requests a second for {meta['duration']:g} s a run, {meta['pairs']} pairs a kind, upstream "
        f"latency {meta['latency'] * 1000:g} ms; the deployed config (bench/configs/full.yaml). Latency is the "
        "caller's, to the last byte; added is the median over pairs of acknowledged minus batched.",
        "",
        "| answer | batched p50 | batched p99 | acknowledged p50 | acknowledged p99 | added p50 | added p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        r = results[kind]
        lines.append(
            f"| {kind} | {r['batched']['p50']:.2f} | {r['batched']['p99']:.2f} | {r['acknowledged']['p50']:.2f} | "
            f"{r['acknowledged']['p99']:.2f} | {r['added_ms']['p50']:+.2f} | {r['added_ms']['p99']:+.2f} |"
        )
    lines += ["", "Milliseconds. Each pair's difference (p50, p99):", ""]
    for kind in KINDS:
        pairs = ", ".join(f"({p['p50']:+.2f}, {p['p99']:+.2f})" for p in results[kind]["pairs"])
        lines.append(f"- {kind}: {pairs}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100, help="requests a second (default 100)")
    parser.add_argument("--duration", type=float, default=8, help="seconds of each run (default 8)")
    parser.add_argument("--pairs", type=int, default=3, help="pairs of runs per answer kind (default 3)")
    parser.add_argument("--latency", type=float, default=0.05, help="the upstream's fixed latency in seconds")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "durability.json", help="the JSON to write")
    args = parser.parse_args(argv)
    meta = {**machine(), "rate": args.rate, "duration": args.duration, "pairs": args.pairs, "latency": args.latency}
    results = {"meta": meta, **measure(args)}
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(results))
    for kind in KINDS:
        figures = results[kind]["added_ms"]
        print(
            f"{kind}: acknowledged adds {figures['p50']:+.2f} ms at p50, {figures['p99']:+.2f} ms at p99",
            file=sys.stderr,
        )
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
