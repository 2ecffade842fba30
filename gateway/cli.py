"""The `llmgate` command."""
from __future__ import annotations

import argparse
import os
import sys

from .config import DEFAULT_CONFIG_PATH, ConfigError, load_config

DESCRIPTION = """\
llmgate: an OpenAI-compatible gateway that routes, mirrors and evaluates LLM traffic.

Point an application's OpenAI base URL at http://HOST:PORT/v1 and use a route name as the model.
Start with `llmgate serve`, check a config with `llmgate check-config FILE`. Operator commands
(status, rollout, rollback, promote, events, ...) talk to a running gateway at --url with the
admin token from LLMGATE_ADMIN_TOKEN."""


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """The `--config/-c` option every command that reads a config file takes."""
    parser.add_argument("--config", "-c", default=None,
                        help=f"config file (default: $LLMGATE_CONFIG, else {DEFAULT_CONFIG_PATH})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmgate", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway daemon",
                                description="Run the gateway. SIGHUP reloads the config; SIGTERM drains and stops.")
    add_config_arg(serve)
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 8080)")
    serve.add_argument("--log-level", default=os.environ.get("LLMGATE_LOG_LEVEL", "INFO"))
    serve.add_argument("--log-json", action="store_true", help="write logs as JSON lines")

    check = commands.add_parser("check-config", help="validate a config file and say what is missing",
                                description="Load FILE as the daemon would; exit 1 and name each problem if it is invalid.")
    check.add_argument("file")

    from .cli_admin import add_commands
    add_commands(commands)
    from .plugins import command_plugins
    command_plugins().hook.register_commands(commands=commands)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from .errors import Scrubber
    from .logs import setup_logging
    from .server import run

    config = load_config(args.config)
    setup_logging(Scrubber(config.secrets), args.log_level, args.log_json)
    run(config, args.config, args.host, args.port)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from .gateway import Gateway

    config = load_config(args.file)
    gateway = Gateway(config)
    settings = config.settings
    print(f"{config.source}: valid: {len(settings.backends)} backends, {len(settings.routes)} routes, "
          f"plugins: {', '.join(sorted(name for name, _ in gateway.pm.list_name_plugin()))}")
    for backend, missing in gateway.missing_credentials().items():
        print(f"  backend {backend}: set {', '.join(missing)} before it can serve")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .admin_client import AdminClient, AdminError
    from .cli_admin import HANDLERS

    handlers = {"serve": cmd_serve, "check-config": cmd_check_config}
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command in HANDLERS:
            return HANDLERS[args.command](AdminClient(args.url), args)
        if args.command in handlers:
            return handlers[args.command](args)
        return args.handler(args)
    except (ConfigError, AdminError) as exc:
        print(f"llmgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
