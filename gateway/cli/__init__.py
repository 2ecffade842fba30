"""The `llmgate` command."""

from __future__ import annotations

import argparse
import os
import sys

from ..known_plugins import command_plugins  # not gateway.plugins: that one loads what the daemon needs
from .admin import add_commands
from .client import AdminError
from .common import DEFAULT_CONFIG_PATH, REASON_HELP, add_config_arg, add_reason_arg  # noqa: F401 (public here)

DESCRIPTION = """\
llmgate: an OpenAI-compatible gateway that routes, mirrors and evaluates LLM traffic.

Point an application's OpenAI base URL at http://HOST:PORT/v1 and use a route name as the model.
Start with `llmgate serve`, check a config with `llmgate check-config FILE`. Operator commands
(status, rollout, rollback, promote, events, ...) talk to a running gateway at --url with the
admin token from LLMGATE_ADMIN_TOKEN."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmgate", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway daemon",
        description="Run the gateway. SIGHUP reloads the config; SIGTERM drains and stops.",
    )
    add_config_arg(serve)
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 8080)")
    serve.add_argument(
        "--workers",
        help="processes serving the port: a number, or auto for one a core (default: server.workers, 1)",
    )
    serve.add_argument(
        "--log-level",
        default=os.environ.get("LLMGATE_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (default: $LLMGATE_LOG_LEVEL, else INFO)",
    )
    serve.add_argument("--log-json", action="store_true", help="write logs as JSON lines")

    check = commands.add_parser(
        "check-config",
        aliases=["check"],
        help="validate a config file and say what is missing",
        description="Load FILE as the daemon would; exit 1 and name every problem one run can find if it is invalid.",
    )
    check.add_argument(
        "file", nargs="?", default=None, help="the config file to check (default: as serve finds one without --config)"
    )
    check.set_defaults(handler=cmd_check_config)  # by its handler, not its name: `check` is the same command

    init = commands.add_parser(
        "init",
        help="write a starter config to edit",
        description="Write the starter config to PATH, then check and serve it.",
    )
    init.add_argument("path", nargs="?", default="llmgate.yaml", help="where to write it (default: ./llmgate.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite PATH when it exists")
    init.set_defaults(handler=cmd_init)

    add_commands(commands)
    command_plugins().hook.register_commands(commands=commands)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    # start-up: the daemon's modules (pydantic, PyYAML, aiohttp) load only for the command that needs them
    from ..config import load_config
    from ..errors import Scrubber
    from ..logs import setup_logging
    from ..server import CannotListen, run

    config = load_config(args.config)
    if args.workers is not None:
        config = config.with_workers(args.workers)
    setup_logging(Scrubber(config.secrets), args.log_level, args.log_json)
    if config.server.worker_count > 1:
        from ..workers import run_workers as run  # the prefork server: only for a config that asks for it
    try:
        run(config, config.source, args.host, args.port)  # a reload reads the file this start read
    except CannotListen as exc:
        print(f"llmgate: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Copy the packaged starter config where the operator can edit it; never over a file unless --force."""
    import shlex  # start-up, as in cmd_serve
    from pathlib import Path

    from ..config import PACKAGED_CONFIG

    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"llmgate: {path} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PACKAGED_CONFIG.read_text())
    quoted = shlex.quote(str(path))
    print(
        f"wrote {path}: edit its backends and routes, keep keys in the environment (${{VAR}}), then:\n"
        f"  llmgate check-config {quoted}\n  llmgate serve --config {quoted}"
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from .check import check  # start-up, as in cmd_serve: the config and every plugin

    report = check(args.file)
    if report.problems or report.skipped:
        raise report.error()  # every problem found, then what could not be checked and why
    settings = report.config.settings
    print(
        f"{report.source}: valid: {len(settings.backends)} backends, {len(settings.routes)} routes, "
        f"plugins: {', '.join(report.plugins)}"
    )
    for name, backend in report.backends.items():
        if missing := backend.missing_credentials():
            print(f"  backend {name}: set {', '.join(missing)} before it can serve")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    handlers = {"serve": cmd_serve}
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        return args.handler(args)
    except BrokenPipeError:  # `llmgate events | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush would raise again
        return 0
    except Exception as exc:
        config = sys.modules.get("gateway.config")  # imported by the commands that read a config, only
        if not isinstance(exc, AdminError) and not (config is not None and isinstance(exc, config.ConfigError)):
            raise
        print(f"llmgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
