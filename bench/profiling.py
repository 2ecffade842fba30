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
