"""The systems under test: how each is started as its own process, made ready, watched and stopped.

Every system answers POST /v1/chat/completions for the model "bench" and reaches the same
fixed-latency upstream. A process is started in a session of its own so that stopping it stops
whatever it started (LiteLLM's workers), and only that. A ResourceMonitor samples the CPU time
and RSS of a system's whole process tree while a measurement runs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = ROOT / ".venv" / "bin"
LITELLM_BIN = ROOT / ".venv-litellm" / "bin"
LITELLM_PIN = "1.106.2"
READY_TIMEOUT = 180.0
DEFAULT_KEY = "bench-key"
QUIET_SHARE = 0.05  # a system using less of a core than this between runs has worked off what a run left


@dataclass(frozen=True)
class System:
    """One system to measure; `config` is an llmgate config under bench/configs/."""

    name: str
    label: str
    kind: str  # "direct", "forwarder", "llmgate", "litellm"
    config: str | None = None
    unique_prompts: bool = False  # a new question per request (a cache miss every time)
    expect_cache: str | None = None  # the x-llmgate-cache header a request must carry once warm
    only_plugins: frozenset[str] | None = None  # every installed plugin but these switched off
    workers: int = 1  # server.workers: processes serving the port
    tree: str | None = None  # another checkout whose gateway/ and plugins/ serve (a before-and-after run)


SYSTEMS = {
    s.name: s
    for s in (
        System("direct", "upstream direct", "direct"),
        System("forwarder", "minimal aiohttp forwarder", "forwarder"),
        System("llmgate-bare", "llmgate, plugins off", "llmgate", "bare.yaml", only_plugins=frozenset()),
        System("llmgate-full", "llmgate, rollout + shadow + log", "llmgate", "full.yaml"),
        System("llmgate-full-2w", "llmgate full, 2 workers", "llmgate", "full.yaml", workers=2),
        System(
            "llmgate-cache-miss",
            "llmgate, semantic cache miss",
            "llmgate",
            "cache.yaml",
            unique_prompts=True,
            expect_cache="miss",
        ),
        System("llmgate-cache-hit", "llmgate, semantic cache hit", "llmgate", "cache.yaml", expect_cache="hit-exact"),
        System("litellm", f"LiteLLM proxy {LITELLM_PIN}", "litellm"),
    )
}


class Unavailable(Exception):
    """The system cannot be run here (not installed, would not start); the reason says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat(
    url: str,
    model: str = "bench",
    prompt: str = "Where is my order? It was placed last week.",
    timeout: float = 10.0,
    api_key: str = DEFAULT_KEY,
) -> tuple[int, dict]:
    """One blocking chat completion: (status, response headers)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {})


@dataclass
class Process:
    """A process this harness started, in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    workdir: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_mb(self) -> float:
        """Resident memory now, summed over the process tree."""
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 2**20

    def peak_rss_mb(self) -> float | None:
        """The high-water mark of resident memory (VmHWM), summed over the process tree."""
        total, seen = 0, False
        for proc in self.tree():
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        seen = True
            except OSError:
                continue
        return round(total / 2**20, 1) if seen else None

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)


def _spawn(name: str, command: list[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
    log_path = workdir / f"{name}.log"
    log_file = open(log_path, "wb")
    popen = subprocess.Popen(
        command,
        cwd=workdir,
        env={**os.environ, **(env or {})},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log_file.close()
    return Process(name, popen, log_path, workdir)


def wait_ready(process: Process, url: str, timeout: float = READY_TIMEOUT, api_key: str = DEFAULT_KEY) -> None:
    """Until a chat completion through `url` answers 200; Unavailable if the process dies or never does."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise Unavailable(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
        try:
            status, _ = chat(url, timeout=5, api_key=api_key)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.3)
    process.stop()
    raise Unavailable(f"{process.name} was not ready within {timeout:g}s ({last}):\n{process.log_tail()}")


def start_upstream(workdir: Path, latency: float, chunks: int, chunk_interval: float) -> tuple[Process, str]:
    """The fixed-latency fake upstream; (process, origin)."""
    port = free_port()
    process = _spawn(
        "upstream",
        [
            sys.executable,
            str(BENCH / "upstream.py"),
            "--port",
            str(port),
            "--latency",
            str(latency),
            "--chunks",
            str(chunks),
            "--chunk-interval",
            str(chunk_interval),
        ],
        workdir,
    )
    origin = f"http://127.0.0.1:{port}"
    wait_ready(process, origin + "/v1/chat/completions", timeout=30)
    return process, origin


def _llmgate_config(system: System, workdir: Path) -> Path:
    """The system's config; with `only_plugins`, every installed plugin but those switched off (their
    settings in the file kept), so a plugin installed later cannot slip into `bare` or a plugin's cost."""
    raw = yaml.safe_load((BENCH / "configs" / system.config).read_text())
    if system.only_plugins is not None:
        sys.path.insert(0, str(ROOT))
        from gateway.plugins import discover

        plugins = raw.setdefault("plugins", {})
        for plugin in discover():
            if plugin != "backends" and plugin not in system.only_plugins:
                plugins[plugin] = {**(plugins.get(plugin) or {}), "enabled": False}
    if system.workers != 1:
        raw.setdefault("server", {})["workers"] = system.workers
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def litellm_available() -> str | None:
    """None when LiteLLM's proxy is installed in .venv-litellm, else why not."""
    if not (LITELLM_BIN / "litellm").exists():
        return (
            f"LiteLLM is not installed: bench/setup_litellm.sh creates .venv-litellm with "
            f"litellm[proxy]=={LITELLM_PIN} (it failed or was not run)"
        )
    return None


@dataclass
class Running:
    """A started system: its process (None for the upstream direct), chat URL and the key it wants."""

    process: Process | None
    url: str
    api_key: str = DEFAULT_KEY

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def start_system(system: System, upstream: str, workdir: Path) -> Running:
    """Start `system` against `upstream` and wait until it answers."""
    if system.kind == "direct":
        return Running(None, upstream + "/v1/chat/completions")
    port = free_port()
    api_key = DEFAULT_KEY
    home = Path(tempfile.mkdtemp(prefix=f"{system.name}-", dir=workdir))
    if system.kind == "forwarder":
        process = _spawn(
            system.name,
            [sys.executable, str(BENCH / "forwarder.py"), "--port", str(port), "--upstream", upstream],
            home,
        )
    elif system.kind == "llmgate":
        config = _llmgate_config(system, home)
        process = _spawn(
            system.name,
            [str(VENV_BIN / "llmgate"), "serve", "--config", str(config), "--port", str(port)],
            home,
            {
                "BENCH_UPSTREAM_URL": upstream,
                "BENCH_STATE_DIR": str(home),
                "AWS_EC2_METADATA_DISABLED": "true",
                "HF_HUB_OFFLINE": "1",
                **({"PYTHONPATH": system.tree} if system.tree else {}),
            },
        )
    elif system.kind == "litellm":
        if (reason := litellm_available()) is not None:
            raise Unavailable(reason)
        api_key = f"sk-{secrets.token_hex(32)}"  # LiteLLM refuses to start without a strong master key
        process = _spawn(
            system.name,
            [
                str(LITELLM_BIN / "litellm"),
                "--config",
                str(BENCH / "litellm_config.yaml"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
                "--log_config",
                str(BENCH / "litellm_logging.json"),
            ],
            home,
            {
                "BENCH_UPSTREAM_BASE": upstream + "/v1",
                "LITELLM_LOG": "ERROR",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_TELEMETRY": "False",
                "LITELLM_MASTER_KEY": api_key,
            },
        )
    else:
        raise ValueError(f"unknown system kind {system.kind!r}")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wait_ready(process, url, api_key=api_key)
    return Running(process, url, api_key)


def cpu_seconds(process: Process) -> float:
    """CPU time (user and system) the process tree has used so far."""
    total = 0.0
    for proc in process.tree():
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def cpu_description() -> str | None:
    """The CPU's model and widest vector extension (int8 kernels differ with it), from /proc/cpuinfo: each
    session may get a different virtual machine, and figures move with it."""
    try:
        with open("/proc/cpuinfo") as info:
            fields = dict(line.split(":", 1) for line in info.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = (
        "AVX-512 with VNNI"
        if "avx512_vnni" in flags
        else "AVX-512"
        if "avx512f" in flags
        else "AVX2"
        if "avx2" in flags
        else None
    )
    return ", ".join(x for x in (fields.get("model name"), vector) if x) or None


def machine_jiffies() -> tuple[int, int, int] | None:
    """(busy, steal, total) clock ticks of the whole machine since boot, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and waiting on I/O
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle - steal, steal, total


def machine_share(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None) -> dict | None:
    """How busy the machine's cores were between two readings, and what the hypervisor took (steal), in %."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    total = after[2] - before[2]
    return {
        "busy_percent": round(100 * (after[0] - before[0]) / total, 1),
        "steal_percent": round(100 * (after[1] - before[1]) / total, 2),
    }


def wait_quiet(process: Process, timeout: float, share: float = QUIET_SHARE, window: float = 0.5) -> float | None:
    """Wait until the process tree uses under `share` of a core over `window` seconds; the seconds that took,
    or None if it was still busy after `timeout`. Work an overload queued (shadow calls, log writes) would
    otherwise run on into the next measurement and be charged to it."""
    started = time.monotonic()
    while True:
        before = cpu_seconds(process)
        time.sleep(window)
        if cpu_seconds(process) - before < share * window:
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            return None


@dataclass
class ResourceMonitor:
    """Samples CPU time and RSS of a process tree in a thread, from `start()` to `stop()`."""

    process: Process | None
    interval: float = 0.25
    rss_series: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cpu_start: float = 0.0
    _cpu_end: float = 0.0
    _t_start: float = 0.0
    _t_end: float = 0.0

    def _cpu(self) -> float:
        return cpu_seconds(self.process)

    def _rss_mb(self) -> float:
        return self.process.rss_mb()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.rss_series.append((round(time.monotonic() - self._t_start, 2), round(self._rss_mb(), 2)))

    def start(self) -> "ResourceMonitor":
        if self.process is None:
            return self
        self._t_start = time.monotonic()
        self._cpu_start = self._cpu()
        self.rss_series.append((0.0, round(self._rss_mb(), 2)))
        self._thread = threading.Thread(target=self._sample, name="resource monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict | None:
        """CPU share of one core, CPU seconds, and RSS at start, end and peak (MiB) over the window."""
        if self.process is None:
            return None
        self._t_end = time.monotonic()
        self._cpu_end = self._cpu()
        self._stop.set()
        self._thread.join()
        self.rss_series.append((round(self._t_end - self._t_start, 2), round(self._rss_mb(), 2)))
        wall = max(1e-9, self._t_end - self._t_start)
        cpu = self._cpu_end - self._cpu_start
        rss = [mb for _, mb in self.rss_series]
        return {
            "cpu_seconds": round(cpu, 3),
            "cpu_percent": round(100 * cpu / wall, 1),
            "rss_start_mb": rss[0],
            "rss_end_mb": rss[-1],
            "rss_peak_mb": max(rss),
        }
