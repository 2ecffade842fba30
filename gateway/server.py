"""Running the daemon: listen, reload on SIGHUP, drain and stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import time
from typing import Callable

from aiohttp import web

from .app import create_app
from .banner import banner
from .config import Config, ConfigError, load_config
from .connections import Guard, GuardedRunner
from .errors import GatewayError
from .gateway import GATEWAY

log = logging.getLogger("llmgate")


class CannotListen(Exception):
    """The address cannot be bound: said in one line that names it and how to choose another."""

    def __init__(self, host: str, port: int, error: OSError):
        if error.errno == errno.EADDRINUSE:
            why = (
                f"port {port} is in use (another llmgate, or another server); choose another with "
                f"`llmgate serve --port {port + 1}` or `make run PORT={port + 1}`"
            )
        else:
            why = error.strerror or str(error)
        super().__init__(f"cannot listen on {host}:{port}: {why}")


def settle_heap(reclaim: bool = False) -> None:
    """Take what start-up built (config, plugins, the SDKs' modules: ~100k objects) out of the collector's way.

    Every full collection walked all of them, a stall of tens of milliseconds that each request
    in flight waited out. Frozen, they are not scanned again; what requests make is collected as
    before. `reclaim` (after a reload) first thaws and collects, so a replaced config's cycles go."""
    if reclaim:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where the config chooses it (or says `auto` and it is installed); None: asyncio's own.

    Every request passes through the event loop's own machinery (ready queue, selector, transports)
    several times; uvloop does that in C."""
    choice = config.server.event_loop
    if choice == "asyncio":
        return None
    try:
        import uvloop  # optional: not on every platform (server.event_loop: auto falls back to asyncio)
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                config.source,
                ["server.event_loop: uvloop is not installed here (pip install uvloop, or choose auto or asyncio)"],
            ) from None
        return None
    return uvloop.new_event_loop


def run(config: Config, config_path: str | None, host: str | None = None, port: int | None = None) -> None:
    """Serve until stopped in this process, on the event loop the config chooses (gateway.workers runs several)."""
    with asyncio.Runner(loop_factory=loop_factory(config)) as runner:
        runner.run(serve(config, config_path, host, port))


async def serve(
    config: Config,
    config_path: str | None,
    host: str | None = None,
    port: int | None = None,
    *,
    sockets: list[socket.socket] | None = None,
    heartbeat: Callable[[], None] | None = None,
    announce: bool = True,
) -> None:
    """Serve on `host:port`, or on `sockets` a prefork server bound (`heartbeat` then tells it this worker lives;
    only the first worker `announce`s the banner)."""
    app = create_app(config)
    gateway = app[GATEWAY]
    host = host or config.server.host
    port = config.server.port if port is None else port
    guard = Guard(config.server, may_send_body=lambda request: _authenticated(gateway, request))
    gateway.connections = guard
    runner = GuardedRunner(
        app, guard, handle_signals=False, access_log=None, shutdown_timeout=config.server.shutdown_timeout
    )
    await runner.setup()
    if sockets:
        sites = [web.SockSite(runner, sock) for sock in sockets]
    else:
        sites = [web.TCPSite(runner, host, port, reuse_address=True)]
    try:
        for site in sites:
            await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotListen(host, port, exc) from None
    settle_heap()
    bound = runner.addresses[0] if runner.addresses else (host, port)
    loop = asyncio.get_running_loop()
    if announce:
        for line in banner(gateway, f"http://{bound[0]}:{bound[1]}", type(loop).__module__.partition(".")[0]):
            log.info("%s", line)
        log.info(
            "connections: at most %d at once (descriptor limit %d), %d more for health probes",
            guard.cap,
            guard.limit,
            config.server.probe_connections,
        )
    beating = asyncio.create_task(_beat(heartbeat)) if heartbeat is not None else None
    sweeping = asyncio.create_task(guard.run())

    stopping = asyncio.Event()

    async def reload() -> None:
        try:
            await gateway.reload(load_config(config_path))
            guard.configure(gateway.config.server)
            settle_heap(reclaim=True)
            gateway.reload_refused = None
        except ConfigError as exc:
            log.error("reload refused, still serving the previous config: %s", exc)
            gateway.reload_refused = (time.time(), str(exc))
        except Exception as exc:
            log.exception("reload failed, still serving the previous config")
            gateway.reload_refused = (time.time(), f"{type(exc).__name__}: {exc}")

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    try:
        await stopping.wait()
        log.info("stopping: draining in-flight requests (up to %gs)", config.server.shutdown_timeout)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # stop listening, finish in-flight requests, then the gateway's own shutdown
        sweeping.cancel()
        if beating is not None:
            beating.cancel()
    log.info("stopped")


async def _authenticated(gateway, request: web.BaseRequest) -> bool:
    """Whether a request's headers alone pass the admin token or the `authenticate` hook (none: anyone)."""
    try:
        gateway.require_admin(request)
        return True
    except GatewayError:
        pass
    try:
        await gateway.authenticate(request)
        return True
    except GatewayError:
        return False


HEARTBEAT_SECONDS = 2.0  # well inside the prefork server's worker timeout


async def _beat(heartbeat: Callable[[], None]) -> None:
    """Tell the prefork server this worker's loop still turns (a worker whose loop is stuck is replaced)."""
    while True:
        heartbeat()
        await asyncio.sleep(HEARTBEAT_SECONDS)
