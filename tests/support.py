"""Running aiohttp servers (fake upstreams, gateways) on loopback in their own threads, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import yaml
from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """An aiohttp app served on 127.0.0.1 by a thread with its own event loop."""

    def __init__(self, make_app: Callable[[], web.Application], port: int | None = None):
        self._make_app = make_app
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self.app: web.Application | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.app = self._make_app()
            self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5)
            self.loop.run_until_complete(self._runner.setup())
            self.loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        except BaseException as exc:  # surface start-up failures in the test
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        return self

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop (to reach into the running app)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def gateway_thread(config: dict) -> ServerThread:
    from gateway.app import create_app
    from gateway.config import parse_config

    return ServerThread(lambda: create_app(parse_config(config, "<test>")))


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout}s")
            time.sleep(0.05)


class GatewayProcess:
    """`llmgate serve` as a real process, for signals and restarts."""

    def __init__(self, config: dict, workdir: Path, env: dict | None = None, nofile: int | None = None):
        self.port = free_port()
        self.nofile = nofile  # the child's RLIMIT_NOFILE, lowered for it alone (the test process keeps its own)
        self.config_path = workdir / "gateway.yaml"
        self.write_config(config)
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, config: dict) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> "GatewayProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path), "--port", str(self.port)],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit_descriptors if self.nofile else None,
        )
        wait_for_http(self.url + "/healthz")
        return self

    def _limit_descriptors(self) -> None:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=None) -> int:
        import signal as _signal

        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig or _signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class RedisProcess:
    """A redis-server on a fixed loopback port that a test can stop and start again (an outage)."""

    def __init__(self, workdir):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
        self.port = free_port()
        self.workdir = workdir
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 20 s")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        import redis

        try:
            return redis.Redis(port=self.port, socket_connect_timeout=1).ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def wait_until(predicate: Callable[[], object], what: str = "condition", timeout: float = 30.0):
    """Poll until `predicate()` is truthy and return its value; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


@contextlib.contextmanager
def serving(fake):
    """Run a fake upstream (anything with `app()`) on a loopback port; its `url` is set while it serves."""
    with ServerThread(fake.app) as server:
        fake.url = server.url
        yield fake
