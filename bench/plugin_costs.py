"""What each plugin of the deployed configuration costs a request, measured one plugin at a time.

`llmgate-full`'s config (bench/configs/full.yaml) is taken apart. With every plugin off it is the
core: the same routes, backends and prices, nothing acting on them. Each plugin that config runs
on the request path is then switched on alone over the core, and last the whole config. Every one
of these is its own gateway process, all started up front, so a run is a switch of target, not a
start. Each is measured at one pinned open-loop rate right after a run of the core, and its cost
is the difference within that pair: over a few minutes the shared machine drifts by more than most
plugins cost (the core's CPU a request rose by a fifth in eleven minutes of this script's first
trial), and a pair's two runs are seconds apart. --repeats pairs per plugin, in rotating order; a
figure is the median.

The main figure is CPU per request of the gateway's process (every thread), added over the core's.
On a shared machine it is steadier than latency, and it is what a plugin takes from the event
loop's headroom: at a given rate, latency under load grows with how busy that loop is.

The minimal aiohttp forwarder (bench/forwarder.py) is measured the same way, paired with the core:
the floor for a Python proxy. All of it is done for each inbound dialect (--dialects: chat
completions, Anthropic messages, responses, embeddings), the same processes answering each; the
forwarder passes each dialect's request to the same path of the fake upstream, which answers them
all, so its figure is what forwarding that dialect's bytes costs, with no translation. Last comes
`agent`: chat completions carrying a coding agent's 36 KB turn (loadgen.agent_conversation), where
reading, checking and logging the body is the larger part of a request's cost.

    .venv/bin/python bench/plugin_costs.py --output-dir bench/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead  # noqa: E402
import report  # noqa: E402
from systems import BENCH, ROOT, SYSTEMS, Running, System, start_system, start_upstream  # noqa: E402

CONFIG = "full.yaml"
CORE = "core"
WHOLE = "whole config"
FORWARDER = "forwarder"
BASELINE = "whole config, baseline tree"
DIALECTS = ("chat", "messages", "responses", "embeddings")
# Not a dialect: chat completions carrying a coding agent's whole turn (loadgen.agent_conversation), the
# body size where reading and checking a request costs more than the hop. Judged by no dialect's target.
AGENT = "agent"
FLOOR_RATIO = 2.0  # the target: the whole config's CPU a request at most this many times the forwarder's
DIALECT_BUDGET_MS = 0.3  # the target: each dialect within this of chat completions


def request_path_plugins(config: str = CONFIG) -> list[str]:
    """The plugins `config` enables that implement a hook a caller waits on, in load order."""
    sys.path.insert(0, str(ROOT))
    from gateway.hookspecs import TIMED
    from gateway.plugins import _import, discover, is_enabled

    configured = yaml.safe_load((BENCH / "configs" / config).read_text()).get("plugins") or {}
    hooks, found = TIMED | {"authenticate"}, []
    for name, target in discover().items():
        if name == "backends":
            continue
        plugin = _import(target)
        waited_on = any(hasattr(getattr(plugin, hook, None), "llmgate_impl") for hook in hooks)
        if waited_on and is_enabled(plugin, (configured.get(name) or {}).get("enabled")):
            found.append(name)
    return found


def systems_to_measure(plugins: list[str], forwarder: bool = False, baseline: str | None = None) -> dict[str, System]:
    measured = {CORE: System("plugins-none", "core: every plugin off", "llmgate", CONFIG, only_plugins=frozenset())}
    for name in plugins:
        measured[name] = System(f"plugin-{name}", f"core + {name}", "llmgate", CONFIG, only_plugins=frozenset({name}))
    measured[WHOLE] = SYSTEMS["llmgate-full"]
    if forwarder:
        measured[FORWARDER] = SYSTEMS["forwarder"]
    if baseline:  # the same config served by another checkout: a before-and-after in one run
        measured[BASELINE] = dataclasses.replace(
            SYSTEMS["llmgate-full"], name="llmgate-full-baseline", label=f"llmgate full from {baseline}", tree=baseline
        )
    return measured


def _run_figures(summary: dict) -> dict:
    """A run's digest as the overhead report keeps it, with the CPU a request."""
    return {
        **overhead.run_digest(summary),
        "cpu_ms_per_request": (summary.get("resources") or {}).get("cpu_ms_per_request"),
    }


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _difference(pair: dict, key: str) -> float | None:
    core, measured = pair["core"][key], pair["measured"][key]
    return None if core is None or measured is None else measured - core


def costs(runs: dict[str, list[dict]], pairs: dict[str, list[dict]], rate: float) -> list[dict]:
    """Each config's median figures, and the median of what it added over the core run beside it."""
    rows = []
    for name, measured in runs.items():
        row = {
            "name": name,
            "cpu_ms_per_request": _median([r["cpu_ms_per_request"] for r in measured]),
            "p50": _median([r["p50"] for r in measured]),
            "p99": _median([r["p99"] for r in measured]),
            "errors": sum(r["errors"] for r in measured),
            "runs": [r["cpu_ms_per_request"] for r in measured],
            "added_cpu_ms": None,
            "added_core_share": None,
            "added_p50": None,
            "added_runs": [],
        }
        if name in pairs:
            row["added_runs"] = [
                None if d is None else round(d, 3) for d in (_difference(p, "cpu_ms_per_request") for p in pairs[name])
            ]
            row["added_cpu_ms"] = _median(row["added_runs"])
            row["added_p50"] = _median([_difference(p, "p50") for p in pairs[name]])
            if row["added_cpu_ms"] is not None:
                row["added_core_share"] = round(row["added_cpu_ms"] * rate / 1000, 3)
        rows.append(row)
    return rows


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| config | CPU ms/req | added over the core | share of a core added | p50 ms | +p50 over the core "
        "| p99 ms | errors | added in each pair |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = report._fmt
    for row in rows:
        share = None if row["added_core_share"] is None else f"{100 * row['added_core_share']:.1f}%"
        lines.append(
            f"| {row['name']} | {fmt(row['cpu_ms_per_request'], 3)} | {fmt(row['added_cpu_ms'], 3)} | "
            f"{fmt(share)} | {fmt(row['p50'])} | {fmt(row['added_p50'])} | {fmt(row['p99'])} | "
            f"{row['errors']} | {', '.join(fmt(c, 3) for c in row['added_runs'])} |"
        )
    alone = [r["added_cpu_ms"] for r in rows if r["name"] not in (CORE, WHOLE, FORWARDER, BASELINE)]
    whole = next((r for r in rows if r["name"] == WHOLE), {}).get("added_cpu_ms")
    if alone and None not in alone and whole is not None:
        lines += [
            "",
            f"The plugins alone add {sum(alone):.3f} ms of CPU a request between them; the whole config adds "
            f"{whole:.3f} ms. The spread of a config's pairs is the noise floor of its figure.",
        ]
    return lines


def floor_figures(by_dialect: dict[str, list[dict]]) -> dict[str, dict]:
    """Per dialect: the forwarder's, the core's and the whole config's CPU a request (medians of their runs),
    the whole config's as a multiple of the forwarder's (the target: FLOOR_RATIO), and its difference from
    chat completions' whole config (the target: DIALECT_BUDGET_MS)."""
    figures = {}
    for dialect, rows in by_dialect.items():
        cpu = {row["name"]: row["cpu_ms_per_request"] for row in rows}
        runs = {row["name"]: row["runs"] for row in rows}
        whole, forwarder, baseline = cpu.get(WHOLE), cpu.get(FORWARDER), cpu.get(BASELINE)
        ratio = None if not whole or not forwarder else round(whole / forwarder, 2)
        figures[dialect] = {
            "baseline": baseline,
            "baseline_ratio": None if not baseline or not forwarder else round(baseline / forwarder, 2),
            "forwarder": forwarder,
            "core": cpu.get(CORE),
            "whole": whole,
            "whole_runs": runs.get(WHOLE, []),
            "forwarder_runs": runs.get(FORWARDER, []),
            "ratio": ratio,
            "ratio_met": None if ratio is None or dialect == AGENT else ratio <= FLOOR_RATIO,
        }
    chat = (figures.get("chat") or {}).get("whole")
    for dialect, f in figures.items():
        if dialect == AGENT:  # a larger body, not another dialect: no distance from chat's to judge
            f["whole_minus_chat"] = None
            continue
        f["whole_minus_chat"] = None if chat is None or f["whole"] is None else round(f["whole"] - chat, 3)
    return figures


def markdown(results: dict) -> str:
    meta, rate = results["meta"], results["meta"]["rate"]
    by_dialect = results.get("by_dialect") or {"chat": results["costs"]}
    lines = [
        f"# What each plugin costs a request ({meta['started']})",
        "",
        f"{report.machine_line(meta)}. The config of `llmgate-full` (bench/configs/{CONFIG}) with every "
        f"plugin off (the core), then with each plugin it runs on the request path alone, then whole. Each at "
        f"{rate:g} RPS open loop for {meta['duration']:g} s right after a run of the core, {meta['repeats']} such "
        "pairs in rotating order; what a config adds is the median of its pairs' differences, the other figures "
        "the medians of its runs. CPU is the gateway process's, all threads, per request answered.",
    ]
    fmt = report._fmt
    floors = floor_figures(by_dialect)
    if any(f["forwarder"] is not None for f in floors.values()):
        lines += [
            "",
            "## Against the floor",
            "",
            "The minimal aiohttp forwarder (bench/forwarder.py) beside the core and the whole config, in each "
            f"dialect. Targets: the whole config at most {FLOOR_RATIO:g}x the forwarder's CPU a request; each "
            f"dialect's whole config within {DIALECT_BUDGET_MS} ms of chat completions'.",
            "",
            "| dialect | forwarder CPU ms/req | core | whole config | whole / forwarder | "
            f"<= {FLOOR_RATIO:g}x | whole config's runs | whole minus chat (ms) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for dialect, f in floors.items():
            met = "–" if f["ratio_met"] is None else "met" if f["ratio_met"] else "**not met**"
            lines.append(
                f"| {dialect} | {fmt(f['forwarder'], 3)} | {fmt(f['core'], 3)} | {fmt(f['whole'], 3)} | "
                f"{fmt(f['ratio'])}x | {met} | {', '.join(fmt(c, 3) for c in f['whole_runs'])} | "
                f"{fmt(f['whole_minus_chat'], 3)} |"
            )
    if any(f.get("baseline") is not None for f in floors.values()):
        lines += [
            "",
            "## Before and after",
            "",
            f"The whole config served by the baseline tree (`{meta.get('baseline_tree')}`) and by this one, in "
            "the same run, each paired with the same core: what the change saved is the baseline's CPU a "
            "request less this tree's, and the ratio to the forwarder before and after.",
            "",
            "| dialect | baseline CPU ms/req | this tree | saved (ms) | baseline / forwarder | this / forwarder |",
            "|---|---|---|---|---|---|",
        ]
        for dialect, f in floors.items():
            saved = None if f["baseline"] is None or f["whole"] is None else round(f["baseline"] - f["whole"], 3)
            lines.append(
                f"| {dialect} | {fmt(f['baseline'], 3)} | {fmt(f['whole'], 3)} | {fmt(saved, 3)} | "
                f"{fmt(f['baseline_ratio'])}x | {fmt(f['ratio'])}x |"
            )
    for dialect, rows in by_dialect.items():
        lines += ["", f"## {dialect}", "", *_table(rows)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300, help="the pinned open-loop rate (RPS)")
    parser.add_argument("--duration", type=float, default=15, help="seconds of each measured run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring a config")
    parser.add_argument(
        "--plugins",
        default=None,
        help=f"comma-separated plugins to measure (default: every request-path plugin {CONFIG} enables)",
    )
    parser.add_argument(
        "--dialects",
        default=",".join((*DIALECTS, AGENT)),
        help=f"comma-separated inbound dialects ({', '.join(DIALECTS)}), and {AGENT}: chat completions with a "
        "coding agent's 36 KB turn",
    )
    parser.add_argument("--no-forwarder", action="store_true", help="leave out the forwarder's pairs")
    parser.add_argument(
        "--baseline-tree",
        default=None,
        help="another checkout (a git worktree of an earlier commit) whose whole config is measured beside "
        "this one's, paired with the same core: the before-and-after of a change in one run",
    )
    parser.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--name", default="plugin_costs", help="file name stem of the results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plugins = [p for p in args.plugins.split(",") if p] if args.plugins is not None else request_path_plugins()
    dialects = [d for d in args.dialects.split(",") if d]
    measured = systems_to_measure(plugins, forwarder=not args.no_forwarder, baseline=args.baseline_tree)
    # the overhead harness's defaults for everything else (upstream, timeouts, pauses between runs)
    bench_args = overhead.parse_args(
        ["--rates", f"{args.rate:g}", "--duration", str(args.duration), "--warmup", str(args.warmup)]
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        **overhead.machine(),
        "rate": args.rate,
        "duration": args.duration,
        "repeats": args.repeats,
        "config": CONFIG,
        "plugins": plugins,
        "dialects": dialects,
        "baseline_tree": args.baseline_tree,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-plugin-costs-"))
    upstream_process, upstream = start_upstream(
        workdir, bench_args.latency, bench_args.chunks, bench_args.chunk_interval
    )
    bench = overhead.Bench(bench_args, upstream, workdir)
    started: dict[str, Running] = {}
    runs = {d: {name: [] for name in measured} for d in dialects}
    pairs = {d: {name: [] for name in measured if name != CORE} for d in dialects}

    def measure(dialect: str, name: str) -> dict:
        bench.running = started[name]
        figures = _run_figures(bench.open_loop(measured[name], args.rate, args.duration, may_restart=False))
        runs[dialect][name].append(figures)
        overhead.log(
            f"  {dialect} {name}: {figures['cpu_ms_per_request']} ms CPU a request, p50 {figures['p50']} "
            f"p99 {figures['p99']} ms, errors {figures['errors']}"
        )
        return figures

    try:
        for name, system in measured.items():
            started[name] = start_system(system, upstream, workdir)
            bench.running = started[name]
            bench.warm_up(system)
        for dialect in dialects:
            bench.dialect = dialect
            for name in measured:  # each process's first requests in this dialect are not measured
                bench.running = started[name]
                bench.open_loop(measured[name], args.rate / 2, args.warmup, may_restart=False)
            others = list(pairs[dialect])
            for repeat in range(args.repeats):
                for name in others[repeat % len(others) :] + others[: repeat % len(others)]:
                    core = measure(dialect, CORE)
                    pairs[dialect][name].append({"core": core, "measured": measure(dialect, name)})
    finally:
        bench.running = None
        for running in started.values():
            running.stop()
        upstream_process.stop()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    by_dialect = {d: costs(runs[d], pairs[d], args.rate) for d in dialects}
    results = {
        "meta": meta,
        "runs": runs,
        "pairs": pairs,
        "by_dialect": by_dialect,
        "floor": floor_figures(by_dialect),
        "costs": by_dialect.get("chat") or next(iter(by_dialect.values()), []),
    }
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    (out / f"{args.name}.md").write_text(markdown(results))
    overhead.log(f"wrote {out / args.name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
