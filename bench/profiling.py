"""Where a system's time goes: sample it with py-spy under load and summarise the stacks.

py-spy samples the process from outside (no code change, `--nonblocking` so the process is not
paused), writing collapsed stacks ("frame;frame;frame count", outermost first). The summary
gives each function's share of the busy samples twice: *self* (it was the innermost frame: the
time spent in its own code) and *inclusive* (it was anywhere on the stack: the time spent in it
and what it called), the busy samples by area (the gateway core, each plugin, aiohttp,
asyncio, JSON, SQLite, ...) by the innermost frame that belongs to a named area, and by owner:
the innermost frame of the project's own code (gateway/, plugins/, evaluators/), so that the
time spent in a library is charged to the module that called it.

py-spy leaves out the samples of a thread it finds idle, but with `--nonblocking` it tells idle from
busy by a racy check (py-spy issues #92 and #480), so a thread waiting in a blocking call is still
caught now and then: the event loop in epoll, a writer thread on its condition. A sample whose
innermost frame is at one of those calls (WAIT_CALLS) is counted as waiting, not as work.

On uvloop the event loop is C code, which py-spy shows as one Python frame, the call that runs the
loop: a sample whose innermost frame is that call (LOOP_CALLS) is the loop at its own work or waiting
in epoll, which py-spy cannot tell apart without native frames. Those are counted apart too.
"""

from __future__ import annotations

import linecache
import re
import subprocess
import sysconfig
from collections import Counter
from pathlib import Path

from systems import ROOT, VENV_BIN

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")
PROJECT_DIRS = ("gateway/", "plugins/", "evaluators/", "flywheel/")
# Project frames that only start the event loop: every sample has them, so they own nothing.
ENTRY_MODULES = ("gateway/cli/__init__.py", "gateway/server.py", "gateway/__main__.py")
# Libraries, by a part of their file's path; first match wins.
AREAS = (
    ("aiohttp/", lambda f: "aiohttp"),
    ("yarl/", lambda f: "aiohttp"),
    ("multidict/", lambda f: "aiohttp"),
    ("pydantic", lambda f: "pydantic"),
    ("pluggy/", lambda f: "pluggy"),
    ("json/", lambda f: "json"),
    ("sqlite3/", lambda f: "sqlite3"),
    ("logging/", lambda f: "logging"),
    ("asyncio/", lambda f: "asyncio"),
    ("selectors.py", lambda f: "asyncio"),
    ("onnxruntime", lambda f: "embeddings (onnxruntime)"),
    ("tokenizers", lambda f: "embeddings (onnxruntime)"),
    ("numpy", lambda f: "numpy"),
    ("litellm/", lambda f: "litellm"),
    ("starlette/", lambda f: "starlette/fastapi"),
    ("fastapi/", lambda f: "starlette/fastapi"),
    ("uvicorn/", lambda f: "uvicorn"),
    ("httpx", lambda f: "httpx"),
    ("openai/", lambda f: "openai sdk"),
)


# Blocking calls, by (function, the end of its file's path): the call's text on the sampled line.
WAIT_CALLS = {
    ("EpollSelector.select", "selectors.py"): "self._selector.poll(",  # the event loop, between events
    ("Condition.wait", "threading.py"): "waiter.acquire(",  # a thread waiting to be notified
    ("_worker", "concurrent/futures/thread.py"): "work_queue.get(block=True)",  # an idle executor thread
}
# The call that runs a loop written in C (uvloop): below it, only that loop's code, or its epoll wait.
LOOP_CALLS = {("Runner.run", "asyncio/runners.py"): "self._loop.run_until_complete("}
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def record(pid: int, seconds: float, output: Path, rate: int = 200, subprocesses: bool = False) -> subprocess.Popen:
    """Start py-spy on `pid` for `seconds`, collapsed stacks to `output`; the caller waits on it."""
    command = [
        str(VENV_BIN / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
    ]
    if subprocesses:
        command.append("--subprocesses")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _parse(frame: str) -> tuple[str, str]:
    """(function label, file) of a py-spy frame such as `send (gateway/proxy.py:140)`."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    file = match.group("file")
    short = file.split("site-packages/")[-1].split("/work/main/")[-1]
    return f"{match.group('function')} ({short})", file


def _at_call(frame: str, calls: dict[tuple[str, str], str]) -> bool:
    """Whether a py-spy frame (`function (file:line)`) is at one of `calls` (WAIT_CALLS, LOOP_CALLS)."""
    match = _FRAME.match(frame.strip())
    if not match or not match.group("line"):
        return False
    function, file = match.group("function"), match.group("file")
    call = next((text for (name, suffix), text in calls.items() if function == name and file.endswith(suffix)), None)
    if call is None:
        return False
    path = Path(file)
    if not path.is_absolute():  # py-spy shortens the standard library's paths
        path = STDLIB / path
    return call in linecache.getline(str(path), int(match.group("line")))


def _project_path(file: str) -> str | None:
    """The path inside this repository of one of its modules (py-spy shortens paths), else None."""
    relative = file.removeprefix(str(ROOT) + "/")
    return relative if relative.startswith(PROJECT_DIRS) else None


def _is_project(file: str) -> bool:
    relative = _project_path(file)
    return relative is not None and relative not in ENTRY_MODULES


def _area(file: str) -> str | None:
    """A project module by name (gateway/proxy, plugins/shadow; a package's modules together), else a library."""
    if (relative := _project_path(file)) is not None:
        parts = relative.removesuffix(".py").split("/")
        return "/".join(parts[:2])
    for needle, name in AREAS:
        if needle in file:
            return name(file)
    return None


def summarize(collapsed: Path, top: int = 25) -> dict:
    """Shares of busy samples by function (self and inclusive) and by area; samples caught waiting, and
    those inside a C event loop, are counted apart."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    total = waiting = in_loop = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not raw:
            continue
        if _at_call(raw[-1], WAIT_CALLS):
            waiting += n
            continue
        if _at_call(raw[-1], LOOP_CALLS):
            in_loop += n
            continue
        total += n
        frames = [_parse(f) for f in raw]
        self_counts[frames[-1][0]] += n
        for label in {label for label, _ in frames}:
            inclusive[label] += n
        area = next((a for _, file in reversed(frames) if (a := _area(file))), "other")
        areas[area] += n
        owned = (_area(file) for _, file in reversed(frames) if _is_project(file))
        owners[next(owned, None) or area] += n

    def shares(counter: Counter[str], limit: int) -> list[dict]:
        return [{"function": k, "samples": v, "share": round(v / total, 4)} for k, v in counter.most_common(limit)]

    return {
        "samples": total,
        "waiting_samples": waiting,
        "event_loop_samples": in_loop,
        "top_self": shares(self_counts, top),
        "top_inclusive": shares(inclusive, top),
        "by_area": shares(areas, 40),
        "by_owner": shares(owners, 40),
    }


def _stacks(collapsed: Path) -> list[tuple[list[str], int]]:
    """The busy stacks of a collapsed file (outermost frame first, functions as labels), with their counts:
    the samples caught waiting are left out, and those inside a C event loop end at the loop's frame."""
    stacks = []
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        raw = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if raw and not _at_call(raw[-1], WAIT_CALLS):
            stacks.append(([_parse(f)[0] for f in raw], int(count)))
    return stacks


def _colour(label: str) -> str:
    """Warm for the project's own code, cool for a library, the same colour for a function every time."""
    seed = sum(label.encode()) % 60
    if any(label.endswith(f"({d}") or f"({d}" in label for d in PROJECT_DIRS):
        return f"rgb(230,{100 + seed},40)"
    return f"rgb({120 + seed},{160 + seed // 2},220)"


def flamegraph_svg(collapsed: Path, output: Path, title: str, width: int = 1400, row: int = 16) -> int:
    """Write the busy stacks of `collapsed` as a flame graph (SVG, the root at the bottom, a frame's width its
    share of the samples, its full name and share in a tooltip); the number of samples drawn."""
    tree: dict = {"children": {}, "count": 0}
    depth = 0
    for frames, count in _stacks(collapsed):
        node = tree
        node["count"] += count
        depth = max(depth, len(frames))
        for frame in frames:
            node = node["children"].setdefault(frame, {"children": {}, "count": 0})
            node["count"] += count
    total = max(1, tree["count"])
    height = (depth + 3) * row
    scale = (width - 20) / total
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
        f'font-size="11"><rect width="100%" height="100%" fill="#fdfdf6"/>',
        f'<text x="10" y="14" font-size="13">{_escape(title)} ({tree["count"]} busy samples)</text>',
    ]

    def draw(node: dict, label: str, x: float, level: int) -> None:
        w = node["count"] * scale
        if w < 0.3:
            return
        y = height - (level + 1) * row
        share = 100 * node["count"] / total
        name = _escape(label)
        parts.append(
            f"<g><title>{name}: {node['count']} samples, {share:.1f}%</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row - 1}" fill="{_colour(label)}" rx="1"/>'
        )
        if w > 40:
            text = label[: int(w / 6.6)]
            parts.append(f'<text x="{x + 2:.2f}" y="{y + row - 4}">{_escape(text)}</text>')
        parts.append("</g>")
        child_x = x
        for child_label, child in sorted(node["children"].items()):
            draw(child, child_label, child_x, level + 1)
            child_x += child["count"] * scale

    x = 10.0
    for label, child in sorted(tree["children"].items()):
        draw(child, label, x, 0)
        x += child["count"] * scale
    parts.append("</svg>")
    output.write_text("\n".join(parts) + "\n")
    return tree["count"]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def top_markdown(summary: dict, meta: dict, top: int = 10) -> str:
    """The profile's top functions by self time (and by owner) as Markdown."""
    busy = summary["samples"]
    lines = [
        f"# Where {meta['system']}'s time goes ({meta['started']})",
        "",
        f"py-spy at {meta['sample_rate']} Hz over `{meta['system']}` (bench/configs/full.yaml) serving "
        f"{meta['rate']:g} RPS of {meta['dialect']} for {meta['seconds']:g} s: {busy} busy samples, "
        f"{summary['event_loop_samples']} inside uvloop's C loop (its own work or its wait in epoll, "
        "which py-spy cannot tell apart), "
        f"{summary['waiting_samples']} caught waiting. The gateway used {meta.get('cpu_ms_per_request')} ms of CPU "
        f"a request meanwhile. The flame graph is [{meta['svg']}]({meta['svg']}); the stacks, "
        f"`{meta['collapsed']}`.",
        "",
        f"## The top {top} functions by self time (share of the busy samples)",
        "",
        "| # | function | samples | share |",
        "|---|---|---|---|",
    ]
    for i, row in enumerate(summary["top_self"][:top], 1):
        lines.append(f"| {i} | `{row['function']}` | {row['samples']} | {100 * row['share']:.1f}% |")
    lines += [
        "",
        "## By owner (the innermost frame of the project's own code, else the library)",
        "",
        "| owner | samples | share |",
        "|---|---|---|",
    ]
    for row in summary["by_owner"][:15]:
        lines.append(f"| {row['function']} | {row['samples']} | {100 * row['share']:.1f}% |")
    lines += ["", "## By area (the innermost frame that belongs to a named area)", "", "| area | share |", "|---|---|"]
    for row in summary["by_area"][:15]:
        lines.append(f"| {row['function']} | {100 * row['share']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Profile llmgate-full under load: collapsed stacks, a flame graph SVG and the top functions' table."""
    import argparse
    import json
    import tempfile
    import time

    import overhead
    from systems import SYSTEMS, start_system, start_upstream

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--system", default="llmgate-full")
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--sample-rate", type=int, default=200)
    parser.add_argument("--dialect", default="chat")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--name", default="profile")
    args = parser.parse_args(argv)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    bench_args = overhead.parse_args(["--rates", f"{args.rate:g}", "--warmup", "5"])
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-profile-"))
    upstream_process, upstream = start_upstream(
        workdir, bench_args.latency, bench_args.chunks, bench_args.chunk_interval
    )
    bench = overhead.Bench(bench_args, upstream, workdir)
    bench.dialect = args.dialect
    system = SYSTEMS[args.system]
    stem = f"{args.name}_{args.system}"
    collapsed, svg = out / f"{stem}.collapsed.txt", out / f"{stem}.svg"
    meta = {
        "system": args.system,
        "rate": args.rate,
        "seconds": args.seconds,
        "sample_rate": args.sample_rate,
        "dialect": args.dialect,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "svg": svg.name,
        "collapsed": collapsed.name,
    }
    try:
        bench.running = start_system(system, upstream, workdir)
        bench.warm_up(system)
        spy = record(bench.running.process.pid, args.seconds, collapsed, rate=args.sample_rate)
        time.sleep(1.0)  # py-spy attaches
        run = bench.open_loop(system, args.rate, args.seconds - 1.5, may_restart=False)
        _, errors = spy.communicate(timeout=args.seconds + 60)
        meta["cpu_ms_per_request"] = (run.get("resources") or {}).get("cpu_ms_per_request")
    finally:
        if bench.running is not None:
            bench.running.stop()
        upstream_process.stop()
    if not collapsed.exists():
        overhead.log(f"py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}")
        return 1
    summary = summarize(collapsed)
    flamegraph_svg(collapsed, svg, f"{args.system} at {args.rate:g} RPS ({args.dialect})")
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, **summary}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(top_markdown(summary, meta))
    overhead.log(f"wrote {svg}, {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
