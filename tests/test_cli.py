"""The command line as one tool: every argument explained, `--reason` the same wherever state changes,
`check` for check-config, and a start that loads none of the daemon's dependencies."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from gateway import cli, config
from gateway.known_plugins import COMMAND_MODULES, DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parent.parent

# Every command that changes state (each is audited), as its words on the command line.
STATE_CHANGING = [
    ["rollout"],
    ["rollback"],
    ["promote"],
    ["schedule", "start"],
    ["schedule", "pause"],
    ["schedule", "resume"],
    ["schedule", "abort"],
    ["cache", "clear"],
    ["retrain", "launch"],
    ["retrain", "cancel"],
]


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) for the parser and every subcommand's, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # an alias names the same parser
                    seen.add(id(sub))
                    yield from walk(sub, (*path, name))


def parser_at(words: list[str]) -> argparse.ArgumentParser:
    return dict(walk(cli.build_parser()))[tuple(words)]


def test_every_argument_and_subcommand_says_what_it_is():
    missing = []
    for path, parser in walk(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [" ".join((*path, c.dest)) for c in action._choices_actions if not (c.help or "").strip()]
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path) or 'llmgate'} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("words", STATE_CHANGING, ids=" ".join)
def test_state_changing_commands_take_the_same_reason(words):
    reason = next(a for a in parser_at(words)._actions if "--reason" in a.option_strings)
    assert reason.help.startswith(cli.REASON_HELP) and reason.metavar == "TEXT"
    assert reason.required == (words == ["rollback"])  # on-call says why a candidate lost its users
    if reason.required:
        assert "required" in reason.help


def test_every_subcommand_prints_its_help(capsys):
    for path, _ in walk(cli.build_parser()):
        with pytest.raises(SystemExit) as done:
            cli.build_parser().parse_args([*path, "--help"])
        assert done.value.code == 0, path
        assert "usage: llmgate" in capsys.readouterr().out


def test_check_is_check_config(tmp_path, capsys):
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "backends": {"b": {"kind": "openai", "model": "m", "api_key": "none"}},
                "routes": {"r": {"baseline": "b"}},
                "state": {"sqlite_path": str(tmp_path / "s.db")},
                "plugins": {"traffic_log": {"path": str(tmp_path / "t.db")}},
            }
        )
    )
    assert cli.main(["check", str(path)]) == 0
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: valid: 1 backends, 1 routes") and out[0] in out[1:]
    path.write_text("routes: [")
    assert cli.main(["check", str(path)]) == 1
    assert "invalid" in capsys.readouterr().err


def test_the_default_config_path_is_the_configs():
    assert cli.DEFAULT_CONFIG_PATH == config.DEFAULT_CONFIG_PATH


def test_building_the_parser_loads_none_of_the_daemons_dependencies():
    heavy = (
        "aiohttp",
        "pydantic",
        "yaml",
        "redis",
        "boto3",
        "botocore",
        "opentelemetry",
        "numpy",
        "jsonschema",
        "gateway.config",
        "gateway.plugins",
        "urllib.request",
    )
    code = f"import sys, gateway.cli; gateway.cli.build_parser(); print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_built_in_commands_are_registered_from_their_command_modules():
    """A built-in plugin's `register_commands` lives in its COMMAND_MODULES module, which the CLI reads."""
    for name, target in DEFAULT_PLUGINS.items():
        module = importlib.import_module(target.partition(":")[0])
        if hasattr(module, "register_commands"):
            assert COMMAND_MODULES.get(name) == module.__name__, name
    for name, module_name in COMMAND_MODULES.items():
        assert name in DEFAULT_PLUGINS and hasattr(importlib.import_module(module_name), "register_commands")


def test_a_third_party_plugin_adds_commands_through_the_same_hook(tmp_path, monkeypatch, capsys):
    (tmp_path / "tp_commands.py").write_text(
        textwrap.dedent("""
        from gateway.cli import add_reason_arg
        from gateway.hookspecs import hookimpl

        def hello(args):
            print(f"hello {args.name} because {args.reason}")
            return 0

        @hookimpl
        def register_commands(commands):
            p = commands.add_parser("hello", help="say hello")
            p.add_argument("name", help="who to greet")
            add_reason_arg(p)
            p.set_defaults(handler=hello)
    """)
    )
    dist = tmp_path / "tp_commands-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-commands\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[llmgate]\ntp = tp_commands\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["hello", "world", "--reason", "a test"]) == 0
    assert capsys.readouterr().out == "hello world because a test\n"
