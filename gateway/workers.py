"""`server.workers`: several processes serving one port, under gunicorn's arbiter.

The arbiter binds the port, forks the workers, replaces one that dies or whose loop stops turning
(each beats every HEARTBEAT_SECONDS), and on SIGTERM or SIGINT passes the signal to every worker,
which drains as a single process does, then stops them past the drain's time. Each worker runs the
gateway's own `serve` on the arbiter's sockets (no WSGI). SIGHUP is changed: gunicorn would replace
every worker; here the arbiter passes it on and each worker reloads in place as a single process
does (an invalid config is refused by each, which keeps serving the previous one). Workers share
what a node shares: the state store (rollout changes reach every worker through its change
notices), the traffic log's file, and `/metrics`, which sums every worker's figures.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from .config import Config, load_config
from .gateway import Gateway
from .node import WORKERS_DIR_ENV, WORKERS_ENV
from .server import CannotListen, loop_factory, serve

log = logging.getLogger("llmgate.workers")
LISTEN_BACKLOG = 2048  # connections the kernel queues on each socket before a worker accepts them
WORKER_TIMEOUT_SECONDS = 30  # a worker whose loop has not turned for this long is replaced


class GatewayLogger(glogging.Logger):
    """gunicorn's own lines (a worker booting, exiting) through the gateway's logging (JSON with --log-json),
    instead of handlers of its own; it logs no requests."""

    def setup(self, cfg) -> None:
        self.cfg = cfg
        self._access_log_enabled = False
        self.error_log.propagate = True
        self.error_log.setLevel(logging.INFO)

    def reopen_files(self) -> None: ...

    def close_on_exec(self) -> None: ...


class GatewayWorker(Worker):
    """One worker: the gateway's `serve` on the arbiter's sockets, with the gateway's own signal handling."""

    def init_signals(self) -> None:
        for sig in self.SIGNALS:  # serve() handles TERM, INT and HUP on its loop; QUIT stops it too
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))

    def load_wsgi(self) -> None:
        """No WSGI application: `run` serves the gateway itself."""

    def run(self) -> None:
        app: GatewayApplication = self.app
        config = load_config(app.config_path) if app.config_path else app.config  # a replacement reads the file
        sockets = [listener.sock for listener in self.sockets]
        sockets += [own for own in map(own_listener, sockets) if own is not None]
        for sock in sockets:
            sock.setblocking(False)
        os.environ[WORKERS_DIR_ENV] = str(app.snapshots)
        os.environ[WORKERS_ENV] = str(config.server.worker_count)
        with asyncio.Runner(loop_factory=loop_factory(config)) as runner:
            runner.run(serve(config, app.config_path, sockets=sockets, heartbeat=self.notify, announce=self.age == 1))


def own_listener(shared: socket.socket) -> socket.socket | None:
    """A listening socket of this worker's own on the shared one's address, where the kernel balances them.

    On the one socket every worker inherits, the worker that wakes first accepts every connection
    waiting (a burst of 32 keep-alive clients all went to one of two workers): the others sit idle
    while it saturates. Sockets bound with SO_REUSEPORT share a port and Linux spreads new connections
    over them by a hash of the addresses. The shared socket stays served too (the arbiter's, which
    the kernel counts as one more member of the group), so no connection waits on a socket nobody
    accepts. None where the platform does not balance (SO_REUSEPORT elsewhere only shares the port).
    """
    if not sys.platform.startswith("linux") or shared.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    own = socket.socket(shared.family, socket.SOCK_STREAM)
    try:
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if shared.family == socket.AF_INET6:
            v6only = shared.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            own.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        own.bind(shared.getsockname())
        own.listen(LISTEN_BACKLOG)
    except OSError as exc:  # the shared socket alone still serves
        own.close()
        log.warning("this worker accepts on the shared socket only (%s): connections may gather on one worker", exc)
        return None
    return own


class GatewayArbiter(Arbiter):
    def handle_hup(self) -> None:
        """Reload in place: every worker reloads its config (gunicorn's own HUP would replace the workers)."""
        self.log.info("SIGHUP: every worker reloads its config")
        self.kill_workers(signal.SIGHUP)


class GatewayApplication(BaseApplication):
    def __init__(self, config: Config, config_path: str | None, host: str, port: int):
        self.config, self.config_path, self.host, self.port = config, config_path, host, port
        # where the workers' /metrics figures meet: beside the node's state, one folder per arbiter
        self.snapshots = Path(config.settings.state.sqlite_path).resolve().parent / f"workers-{os.getpid()}"
        super().__init__()

    def load_config(self) -> None:
        server = self.config.server
        for name, value in {
            "bind": [f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"],
            "workers": server.worker_count,
            "worker_class": GatewayWorker,
            "timeout": WORKER_TIMEOUT_SECONDS,
            "reuse_port": True,  # each worker adds a socket of its own on the port (own_listener)
            "backlog": LISTEN_BACKLOG,
            "graceful_timeout": math.ceil(server.shutdown_timeout) + 5,  # the drain, then the plugins' own shutdown
            "logger_class": GatewayLogger,
            "proc_name": "llmgate",
            "control_socket_disable": True,  # no socket in $HOME: a container's root file system is read-only
        }.items():
            self.cfg.set(name, value)

    def load(self):
        return None

    def run(self) -> None:
        self.snapshots.mkdir(parents=True, exist_ok=True)  # there from the start, gone with the arbiter
        try:
            GatewayArbiter(self).run()
        finally:
            shutil.rmtree(self.snapshots, ignore_errors=True)


def check_port(host: str, port: int) -> None:
    """One line that names a busy port, before the arbiter retries it five times with tracebacks."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CannotListen(host, port, exc) from None


def run_workers(config: Config, config_path: str | None, host: str | None, port: int | None) -> None:
    host = host or config.server.host
    port = config.server.port if port is None else port
    check_port(host, port)
    Gateway(config)  # the plugins' options checked here, once, rather than by each worker failing to boot
    log.info("serving on %s:%s with %d workers", host, port, config.server.worker_count)
    try:
        GatewayApplication(config, config_path, host, port).run()
    except SystemExit as exc:
        if exc.code not in (0, None):
            log.error("the workers stopped (exit %s): the lines above say why", exc.code)
            raise
