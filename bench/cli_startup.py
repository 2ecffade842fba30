"""How long an `llmgate` command takes to start: each command run --runs times as a whole process.

An operator's command (status, rollout, --help) should answer at once; the target is 0.3 s wall
for the help of the top level, of `status` and of `check-config`, which load no plugin and none
of the daemon's dependencies. `check-config FILE` builds the whole gateway (every plugin) and is
measured for information. Each figure is wall time from spawn to exit, median and p90, with one
warm-up run first so the file cache is the same for every command.

    .venv/bin/python bench/cli_startup.py --output bench/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.3
CONFIGS = ("config/gateway.yaml", "gateway/defaults/gateway.yaml")  # a checkout's, else the packaged one


def commands(config: str) -> list[tuple[list[str], float | None]]:
    """(arguments, target seconds or None) of each command measured."""
    return [
        (["--help"], TARGET_S),
        (["status", "--help"], TARGET_S),
        (["check-config", "--help"], TARGET_S),
        (["rollout", "--help"], TARGET_S),
        (["traffic", "show", "--help"], TARGET_S),
        (["check-config", config], None),
    ]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(llmgate: str, args: list[str], runs: int) -> dict:
    walls = []
    for i in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(
            [llmgate, *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "LLMGATE_CONFIG": ""},
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"llmgate {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        if i:  # the first run warms the file cache
            walls.append(wall)
    return {
        "median_s": round(statistics.median(walls), 4),
        "p90_s": round(percentile(walls, 0.9), 4),
        "min_s": round(min(walls), 4),
        "max_s": round(max(walls), 4),
        "runs": runs,
    }


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# llmgate command start-up",
        "",
        f"Machine: {meta['cpus']} CPUs, {meta['platform']}, Python {meta['python']}; load average at start "
        f"{meta['load_average_at_start']}; {meta['finished']}",
        "",
        f"Wall time from spawn to exit, {meta['runs']} runs each after one warm-up; target {TARGET_S} s "
        "for the commands that load no plugin.",
        "",
        "| command | median (s) | p90 (s) | min (s) | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for command, figures in results["commands"].items():
        target = figures.get("target_s")
        met = "-" if target is None else ("yes" if figures["p90_s"] <= target else "no")
        lines.append(
            f"| `{command}` | {figures['median_s']:.3f} | {figures['p90_s']:.3f} | {figures['min_s']:.3f} | "
            f"{'-' if target is None else f'{target:g} s'} | {met} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument(
        "--llmgate",
        default=str(Path(sys.executable).with_name("llmgate")),
        help="the llmgate executable (default: the one beside this Python)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "results" / "cli_startup.json",
        help="the JSON to write; the Markdown goes beside it (default bench/results/cli_startup.json)",
    )
    args = parser.parse_args(argv)
    config = next((c for c in CONFIGS if (ROOT / c).exists()), CONFIGS[0])
    meta = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "runs": args.runs,
    }
    results: dict = {"meta": meta, "commands": {}}
    for command, target in commands(config):
        figures = measure(args.llmgate, command, args.runs)
        results["commands"]["llmgate " + " ".join(command)] = {**figures, "target_s": target}
        print(
            f"llmgate {' '.join(command)}: median {figures['median_s']:.3f} s, p90 {figures['p90_s']:.3f} s",
            file=sys.stderr,
        )
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(results))
    missed = [c for c, f in results["commands"].items() if f["target_s"] is not None and f["p90_s"] > f["target_s"]]
    print(
        f"wrote {args.output} and {args.output.with_suffix('.md')}"
        + (f"; over the target: {', '.join(missed)}" if missed else "; every target met"),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
