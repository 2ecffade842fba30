"""The overhead benchmark's report: Markdown tables, the targets, and a PNG of overhead against rate.

Added latency is a system's percentile minus the upstream-direct percentile at the same offered
rate (a difference of percentiles, as gateway benchmarks report it). Where the run was paired with
a direct run just before it (bench/overhead.py does so for every open-loop run), the figure is the
median over the runs of that difference within each pair; else the difference from the direct
system's own figure. Reads the JSON that bench/overhead.py writes; can be rerun on its own:

    .venv/bin/python bench/report.py bench/results/overhead.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PERCENTILES = ("p50", "p95", "p99")
TARGET_RATE = 300
TARGET_P50_MS = 1.5
TARGET_P99_MS = 10.0
TARGET_LITELLM_FACTOR = 3.0
TARGET_SOAK_GROWTH = 5.0
TARGET_SYSTEM = "llmgate-full"
TARGET_WORKERS_SYSTEM = "llmgate-full-2w"  # issue 25: two workers on this 2-core machine
TARGET_WORKERS_FACTOR = 1.3
# issue 30: the floor, a minimal aiohttp forwarder measured in the same run
FLOOR_SYSTEM = "forwarder"
FLOOR_FACTOR = 2.0  # added latency, CPU a request and time to first token: at most this many times the floor's
FLOOR_SEQUENTIAL_MS = 0.5  # and the sequential added latency under this
FLOOR_RATE_SHARE = 0.75  # the sustained rate: at least this share of the floor's


def _at_rate(system: dict, rate: float) -> dict | None:
    return next((s for s in system.get("rates", ()) if s["offered_rps"] == rate), None)


def difference(summary: dict | None, direct: dict | None, key: str = "latency_ms") -> dict | None:
    """Each percentile of `summary` minus the same of `direct` (None where either lacks `key`)."""
    if not summary or not direct or not summary.get(key) or not direct.get(key):
        return None
    return {q: round(summary[key][q] - direct[key][q], 3) for q in PERCENTILES}


def _overhead(summary: dict | None, direct: dict | None, key: str = "latency_ms") -> dict | None:
    """What a run added: its paired figure where it has one, else the difference from `direct`."""
    if summary and key in summary.get("added", {}):
        return summary["added"][key]
    return difference(summary, direct, key)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def overheads(results: dict) -> dict[str, dict[float, dict]]:
    """{system: {rate: {"p50", "p95", "p99"}}} of added latency over direct at the pinned rates."""
    direct = results["systems"].get("direct", {})
    table: dict[str, dict[float, dict]] = {}
    for name, system in results["systems"].items():
        if name == "direct":
            continue
        table[name] = {}
        for summary in system.get("rates", ()):
            added = _overhead(summary, _at_rate(direct, summary["offered_rps"]))
            if added is not None:
                table[name][summary["offered_rps"]] = added
    return table


def _rate_ratio(systems: dict, ours_name: str, theirs_name: str, factor: float, theirs: str) -> dict:
    """The target that `ours_name` sustains at least `factor` times the rate `theirs_name` does, with no errors."""
    target = f"{ours_name}: sustained rate >= {factor:g}x {theirs}, 0 errors"
    ours = systems.get(ours_name, {}).get("max_sustained")
    other = systems.get(theirs_name, {}).get("max_sustained")
    if not (ours and other and other["rate"]):
        return {"target": target, "value": None, "met": None}
    measured = ours["rate"] / other["rate"]
    return {
        "target": target,
        "value": f"{ours['rate']} vs {other['rate']} RPS ({measured:.2f}x), {ours.get('errors')} errors",
        "met": measured >= factor and not ours.get("errors"),
    }


def targets(results: dict) -> list[dict]:
    """The issue's targets for llmgate with rollout + shadow + logging, each with its value and verdict."""
    rows = []
    systems = results["systems"]
    full = systems.get(TARGET_SYSTEM)
    added = overheads(results).get(TARGET_SYSTEM, {}).get(TARGET_RATE) if full else None
    runs = (_at_rate(full, TARGET_RATE) or {}).get("runs", []) if full else []
    for q, limit in (("p50", TARGET_P50_MS), ("p99", TARGET_P99_MS)):
        value = added[q] if added else None
        each = [run["added"][q] for run in runs if run.get("added")] if len(runs) > 1 else []
        shown = value if not each else f"{value} (runs: {', '.join(f'{v:.2f}' for v in each)})"
        rows.append(
            {
                "target": f"{q} overhead at {TARGET_RATE} RPS < {limit} ms",
                "value": shown,
                "met": None if value is None else value < limit,
            }
        )
    rows.append(_rate_ratio(systems, TARGET_SYSTEM, "litellm", TARGET_LITELLM_FACTOR, "LiteLLM's"))
    rows.append(_rate_ratio(systems, TARGET_WORKERS_SYSTEM, TARGET_SYSTEM, TARGET_WORKERS_FACTOR, "1 worker's"))
    soak = results.get("soak", {}).get(TARGET_SYSTEM)
    rows.append(
        {
            "target": f"RSS growth over the soak < {TARGET_SOAK_GROWTH:g}%",
            "value": f"{soak['growth_percent']}% over {soak['seconds']:g}s" if soak else None,
            "met": None if not soak else soak["growth_percent"] < TARGET_SOAK_GROWTH,
        }
    )
    return rows


def floor_targets(results: dict) -> list[dict]:
    """Issue 30's targets: llmgate-full against the minimal forwarder (the floor) in the same run, with the
    spread over the runs where a figure has several."""
    systems = results["systems"]
    full, floor = systems.get(TARGET_SYSTEM), systems.get(FLOOR_SYSTEM)
    if not full or not floor:
        return []
    direct = systems.get("direct", {})
    rows = []

    def ratio_row(target: str, ours: float | None, theirs: float | None, spread: str = "", limit=None) -> None:
        if ours is None or theirs is None:
            rows.append({"target": target, "value": None, "met": None})
            return
        ratio = ours / theirs if theirs > 0 else float("inf")
        met = ratio <= FLOOR_FACTOR and (limit is None or ours < limit)
        value = f"{ours:.2f} vs {theirs:.2f} ({ratio:.2f}x){spread}"
        rows.append({"target": target, "value": value, "met": met})

    seq = [(_overhead(s.get("sequential"), direct.get("sequential")) or {}).get("p50") for s in (full, floor)]
    seq_target = f"sequential added p50 <= {FLOOR_FACTOR:g}x the forwarder's and < {FLOOR_SEQUENTIAL_MS} ms"
    ratio_row(seq_target, *seq, limit=FLOOR_SEQUENTIAL_MS)
    added = overheads(results)
    at = [added.get(name, {}).get(TARGET_RATE) or {} for name in (TARGET_SYSTEM, FLOOR_SYSTEM)]
    runs = (_at_rate(full, TARGET_RATE) or {}).get("runs", [])
    each = [run["added"]["p99"] for run in runs if run.get("added")]
    spread = f"; llmgate's runs {min(each):.2f}-{max(each):.2f}" if len(each) > 1 else ""
    p99_target = f"p99 added at {TARGET_RATE} RPS <= {FLOOR_FACTOR:g}x the forwarder's"
    ratio_row(p99_target, at[0].get("p99"), at[1].get("p99"), spread)
    cpu = [((_at_rate(s, TARGET_RATE) or {}).get("resources") or {}).get("cpu_ms_per_request") for s in (full, floor)]
    ratio_row(f"CPU ms a request at {TARGET_RATE} RPS <= {FLOOR_FACTOR:g}x the forwarder's", *cpu)
    ttft = [(_overhead(s.get("stream"), direct.get("stream"), "ttft_ms") or {}).get("p50") for s in (full, floor)]
    ratio_row(f"streamed time to first token added (p50) <= {FLOOR_FACTOR:g}x the forwarder's", *ttft)
    rows.append(_rate_ratio(systems, TARGET_SYSTEM, FLOOR_SYSTEM, FLOOR_RATE_SHARE, "the forwarder's"))
    return rows


def _target_table(title: str, value_header: str, rows: list[dict]) -> list[str]:
    lines = [f"## {title}", "", f"| target | {value_header} | met |", "|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['target']} | {_fmt(row['value'])} | {met} |")
    return [*lines, ""]


def resolution(results: dict) -> dict | None:
    """The direct against itself where the targets judge: in each of the target system's pairs at the target
    rate a second direct run followed, and this is what it added over the first (median and each run), with
    how busy the machine was and what the hypervisor took during those runs."""
    full = _at_rate(results["systems"].get(TARGET_SYSTEM, {}), TARGET_RATE) or {}
    drift = full.get("direct_drift", {}).get("latency_ms")
    if not drift:
        return None
    runs = [run for run in full.get("runs", ()) if run.get("direct_drift")]
    machine = [run["machine"] for run in runs if run.get("machine")]
    return {
        "median": drift,
        "runs": [run["direct_drift"] for run in runs],
        "busy_percent": [m["busy_percent"] for m in machine],
        "steal_percent": [m["steal_percent"] for m in machine],
    }


def machine_line(meta: dict) -> str:
    """What the run ran on, as a report's first line says it (the CPU where the run recorded it)."""
    cpu = f" ({meta['cpu']})" if meta.get("cpu") else ""
    return (
        f"Machine: {meta['cpus']} CPUs{cpu}, {meta['platform']}, Python {meta['python']}; load average at start "
        f"{meta['load_average_at_start']}"
    )


def markdown(results: dict) -> str:
    meta = results["meta"]
    args = meta["args"]
    systems = results["systems"]
    direct = systems.get("direct", {})
    added = overheads(results)
    lines = [f"# Gateway overhead benchmark ({meta['started']})", ""]
    if meta.get("note"):
        lines += [f"**{meta['note']}**", ""]
    lines += [
        f"{machine_line(meta)}, at end {meta.get('load_average_at_end')}. Upstream: fixed "
        f"{args['latency'] * 1000:g} ms, streams {args['chunks'] + 1} content chunks. Every system and the "
        f"load generator share this machine. Runs of {args['duration']:g} s after {args['warmup']:g} s of "
        "warm-up; latency counted from when each request was due (open loop). "
        f"Each pinned rate is run {args.get('repeats', 1)} times, interleaved with the other rates (a rate "
        "not sustained once is not repeated)"
        + (
            f", and {TARGET_SYSTEM} {args['target_repeats']} times at {TARGET_RATE} RPS, the targets' rate"
            if args.get("target_repeats", 0) > args.get("repeats", 1)
            else ""
        )
        + "; a figure is the median over the runs, errors their sum.",
        "",
    ]
    if any("added" in s for system in systems.values() for s in system.get("rates", ())):
        lines += [
            "Every run of a system at a pinned rate, and its stream run, came right after a run of the upstream "
            "direct at the same rate. Added latency (+p50, +p95, +p99, TTFT +) is the median over a rate's "
            "runs of the difference within each pair, so it is not the system's percentile shown here minus "
            "the direct system's: the machine's drift between runs minutes apart stays out of it.",
            "",
        ]

    lines += [
        "## Added latency over the upstream direct (ms)",
        "",
        "| system | RPS | achieved | errors | p50 | p95 | p99 | +p50 | +p95 | +p99 | CPU % | CPU ms/req | RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, system in systems.items():
        for summary in system.get("rates", ()):
            lat = summary.get("latency_ms") or {}
            extra = added.get(name, {}).get(summary["offered_rps"]) or {}
            res = summary.get("resources") or {}
            lines.append(
                f"| {system['label']} | {summary['offered_rps']:g} | {summary['achieved_rps']} | {summary['errors']} | "
                f"{_fmt(lat.get('p50'))} | {_fmt(lat.get('p95'))} | {_fmt(lat.get('p99'))} | "
                f"{_fmt(extra.get('p50'))} | {_fmt(extra.get('p95'))} | {_fmt(extra.get('p99'))} | "
                f"{_fmt(res.get('cpu_percent'), 1)} | {_fmt(res.get('cpu_ms_per_request'))} | "
                f"{_fmt(res.get('rss_peak_mb'), 0)} |"
            )
    lines.append("")

    lines += [
        "## Sequential (one request at a time) and streams",
        "",
        "| system | seq p50 | seq +p50 | seq +p99 | stream seq TTFT +p50 | stream "
        f"{args['stream_rate']:g} RPS TTFT p50 | TTFT +p50 | TTFT +p99 | peak RSS MiB | start s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, system in systems.items():
        seq = system.get("sequential") or {}
        seq_added = _overhead(seq, direct.get("sequential")) or {}
        seq_ttft = _overhead(system.get("sequential_stream"), direct.get("sequential_stream"), "ttft_ms") or {}
        stream = system.get("stream") or {}
        ttft_added = _overhead(stream, direct.get("stream"), "ttft_ms") or {}
        lines.append(
            f"| {system['label']} | {_fmt((seq.get('latency_ms') or {}).get('p50'))} | {_fmt(seq_added.get('p50'))} | "
            f"{_fmt(seq_added.get('p99'))} | {_fmt(seq_ttft.get('p50'))} | "
            f"{_fmt((stream.get('ttft_ms') or {}).get('p50'))} | {_fmt(ttft_added.get('p50'))} | "
            f"{_fmt(ttft_added.get('p99'))} | {_fmt(system.get('peak_rss_mb'), 0)} | "
            f"{_fmt(system.get('start_seconds'), 1)} |"
        )
    lines.append("")

    searched = {n: s["max_sustained"] for n, s in systems.items() if s.get("max_sustained")}
    if searched:
        lines += [
            "## Highest rate sustained",
            "",
            f"Achieved within 3% of offered and errors under {args['max_error_rate'] * 100:g}%, probes of "
            f"{args['search_duration']:g} s. The direct figure is the ceiling of the load generator and "
            "upstream on this machine: no system behind them can show more.",
            "",
            "| system | sustained RPS | errors there | CPU % there | probes (RPS: sustained?) |",
            "|---|---|---|---|---|",
        ]
        for name, found in searched.items():
            best = next((p for p in found["probes"] if p["rate"] == found["rate"]), None)
            cpu = ((best or {}).get("resources") or {}).get("cpu_percent")
            probes = ", ".join(f"{p['rate']}: {'yes' if p['sustained'] else 'no'}" for p in found["probes"])
            capped = " (hit --max-rate)" if found.get("capped_at_max_rate") else ""
            lines.append(
                f"| {systems[name]['label']} | {found['rate']}{capped} | {_fmt(found.get('errors'))} | "
                f"{_fmt(cpu, 1)} | {probes} |"
            )
        lines.append("")

    floor = [(s["offered_rps"], s.get("send_lag_ms") or {}, s.get("latency_ms") or {}) for s in direct.get("rates", ())]
    if floor:
        lines += [
            "## The load generator's own floor",
            "",
            "Measured against the upstream direct: how late sends left the generator, and what the client "
            f"and loopback add to the upstream's fixed {args['latency'] * 1000:g} ms.",
            "",
            "| RPS | send lag p50 | send lag p99 | direct p50 - upstream | direct p99 - upstream |",
            "|---|---|---|---|---|",
        ]
        for rate, lag, lat in floor:
            base = args["latency"] * 1000
            lines.append(
                f"| {rate:g} | {_fmt(lag.get('p50'))} | {_fmt(lag.get('p99'))} | "
                f"{_fmt(lat.get('p50') - base if lat else None)} | "
                f"{_fmt(lat.get('p99') - base if lat else None)} |"
            )
        lines.append("")

    if results.get("soak"):
        lines += [
            "## Memory soak",
            "",
            "After `warm-up` seconds of the same load (RSS before any load, then at the end of the warm-up); "
            "growth compares the first and last tenths of the soak.",
            "",
            "| system | RPS | warm-up s | seconds | RSS at start MiB | after warm-up | first tenth | last tenth "
            "| growth | errors |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, soak in results["soak"].items():
            lines.append(
                f"| {name} | {soak['rate']:g} | {soak.get('warmup_seconds', 0):g} | {soak['seconds']:g} | "
                f"{soak.get('rss_at_start_mb', '')} | {soak.get('rss_after_warmup_mb', '')} | "
                f"{soak['rss_first_tenth_mb']} | {soak['rss_last_tenth_mb']} | {soak['growth_percent']}% | "
                f"{soak['summary']['errors']} |"
            )
        lines.append("")

    lines += _target_table("Targets (llmgate with rollout + shadow + logging)", "value", targets(results))
    if floor_rows := floor_targets(results):
        title = f"Against the floor ({TARGET_SYSTEM} and the minimal aiohttp forwarder, this run)"
        lines += _target_table(title, "llmgate vs forwarder", floor_rows)
    seen = resolution(results)
    if seen:
        each = ", ".join(f"{run['p99']:.2f}" for run in seen["runs"])
        lines += [
            f"The resolution of those pairs: in each, the upstream direct ran again right after "
            f"{TARGET_SYSTEM}'s run, and it differed from the direct run before by "
            f"{_fmt(seen['median']['p50'])} ms at p50 and {_fmt(seen['median']['p99'])} ms at p99 at the "
            f"median (p99 runs: {each}). That is the machine "
            "against itself: a figure nearer a target than that spread is not told apart from it by this run."
            + (
                f" During {TARGET_SYSTEM}'s runs the machine's cores were {min(seen['busy_percent']):g}-"
                f"{max(seen['busy_percent']):g}% busy, and the hypervisor took {max(seen['steal_percent']):g}% "
                "at most (steal)."
                if seen["busy_percent"]
                else ""
            ),
            "",
        ]
    floor = overheads(results).get("forwarder", {}).get(TARGET_RATE)
    if floor:  # what the machine allowed: no Python proxy on it does better than this one
        lines += [
            f"In the same run the minimal aiohttp forwarder, the floor for a Python proxy, added "
            f"{_fmt(floor['p50'])} ms at p50 and {_fmt(floor['p99'])} ms at p99 at {TARGET_RATE} RPS.",
            "",
        ]

    for name, system in systems.items():
        prof = system.get("profile")
        if not prof or "samples" not in prof:
            continue
        lines += [
            f"## Where {system['label']} spends its time (py-spy, {prof['rate']:g} RPS, {prof['seconds']:g} s, "
            f"{prof['samples']} busy samples, CPU {_fmt(prof.get('cpu_percent'), 1)}%)",
            "",
            *(
                [
                    f"{prof['waiting_samples']} more samples caught a thread waiting in a blocking call (the event "
                    f"loop in epoll, a writer on its condition) and are left out: py-spy's idle check is racy "
                    f"without pausing the process.",
                    "",
                ]
                if prof.get("waiting_samples")
                else []
            ),
            *(
                [
                    f"{prof['event_loop_samples']} more samples were inside uvloop's C code, the event loop at its "
                    f"own work or waiting in epoll, which py-spy cannot tell apart from the Python frames; they are "
                    f"left out of the shares below.",
                    "",
                ]
                if prof.get("event_loop_samples")
                else []
            ),
            "By owner (the project module that was running, library time charged to its caller):",
            "",
            "| owner | share |",
            "|---|---|",
        ]
        lines += [f"| {row['function']} | {row['share'] * 100:.1f}% |" for row in prof["by_owner"][:15]]
        lines += ["", "By area (the innermost library or module):", "", "| area | share |", "|---|---|"]
        lines += [f"| {row['function']} | {row['share'] * 100:.1f}% |" for row in prof["by_area"][:15]]
        lines += [
            "",
            "Functions, inclusive (on the stack) and self (innermost):",
            "",
            "| inclusive | share | self | share |",
            "|---|---|---|---|",
        ]
        for inc, own in zip(prof["top_inclusive"][:20], prof["top_self"][:20]):
            lines.append(
                f"| `{inc['function']}` | {inc['share'] * 100:.1f}% | `{own['function']}` | {own['share'] * 100:.1f}% |"
            )
        lines += ["", f"Collapsed stacks: `{Path(prof['collapsed_stacks']).name}` (feed to any flame-graph tool).", ""]

    restarted = {system["label"]: len(system["restarts"]) for system in systems.values() if system.get("restarts")}
    if restarted:
        lines += [
            "## Restarts",
            "",
            "A system still working through a backlog a minute after an overloaded run was "
            "restarted (and warmed up) before the next run:",
            "",
        ]
        lines += [f"- {label}: {count}" for label, count in restarted.items()]
        lines.append("")

    if results.get("skipped"):
        lines += ["## Skipped", ""]
        lines += [f"- {name}: {reason.splitlines()[0]}" for name, reason in results["skipped"].items()]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path | None:
    """Overhead p50 and p99 against rate, absolute p99 with every search probe, and the soak's RSS."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    systems = results["systems"]
    added = overheads(results)
    palette = plt.get_cmap("tab10").colors
    color = {name: palette[i % len(palette)] for i, name in enumerate(systems)}  # one colour per system everywhere
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for ax, q in ((axes[0][0], "p50"), (axes[0][1], "p99")):
        for name, by_rate in added.items():
            if by_rate:
                rates = sorted(by_rate)
                ax.plot(
                    rates, [by_rate[r][q] for r in rates], marker="o", label=systems[name]["label"], color=color[name]
                )
        ax.set_title(f"added latency over direct, {q}")
        ax.set_xlabel("offered rate (RPS)")
        ax.set_ylabel("ms")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[1][0]
    for name, system in systems.items():
        points = {s["offered_rps"]: (s.get("latency_ms") or {}).get("p99") for s in system.get("rates", ())}
        for probe in (system.get("max_sustained") or {}).get("probes", ()):
            points.setdefault(probe["rate"], (probe.get("latency_ms") or {}).get("p99"))
        points = {r: v for r, v in points.items() if v is not None}
        if points:
            rates = sorted(points)
            ax.plot(rates, [points[r] for r in rates], marker=".", label=system["label"], color=color[name])
    ax.set_title("p99 latency, pinned rates and search probes")
    ax.set_xlabel("offered rate (RPS)")
    ax.set_ylabel("ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1][1]
    for name, soak in results.get("soak", {}).items():
        series = soak["rss_series"]
        ax.plot(
            [t for t, _ in series],
            [mb for _, mb in series],
            label=f"{name} at {soak['rate']:g} RPS",
            color=color.get(name),
        )
    ax.set_title("memory soak: RSS")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.grid(True, alpha=0.3)
    if results.get("soak"):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no soak in this run", ha="center", va="center", transform=ax.transAxes)
    note = results["meta"].get("note")
    fig.suptitle(
        f"gateway overhead, upstream {results['meta']['args']['latency'] * 1000:g} ms" + (f" ({note})" if note else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: dict, out: Path, name: str) -> list[Path]:
    """<name>.md and <name>.png in `out`; the paths written."""
    results["targets"] = targets(results)
    results["floor_targets"] = floor_targets(results)
    results["resolution"] = resolution(results)
    md = out / f"{name}.md"
    md.write_text(markdown(results))
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    written = [md, out / f"{name}.json"]
    png = plot(results, out / f"{name}.png")
    return written + ([png] if png else [])


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(sys.argv[1])
    results = json.loads(path.read_text())
    for written in write(results, path.parent, path.stem):
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
