"""MkDocs hook: the manual's reference sections, generated from the code at every build.

A page asks for a generated section with an HTML comment on a line of its own; the hook puts the
section there before the page is converted, so the hand-written prose around it stays and the
reference cannot drift from the code:

- `<!-- hookspecs -->`: every hookspec in gateway/hookspecs.py, by phase (signature, how it is called, docstring).
- `<!-- options: NAME -->`: the options of the built-in plugin NAME (`gateway.plugins.DEFAULT_PLUGINS`),
  from its nested pydantic `Settings` model.
- `<!-- config: SECTION -->`: a config section: server, state, routes, pools, prices, backends (the keys
  every backend takes, then each kind's own), plugins (the core keys of every plugin section).
- `<!-- cli -->`: every `llmgate` command and subcommand from `gateway.cli.build_parser()`.
- `<!-- parameters -->`: what each backend kind does with each chat parameter, from
  `gateway.backends.params` (POLICY, NOTES).

An unknown marker, and a built-in plugin with settings whose options no page shows, are warnings,
which `mkdocs build --strict` turns into a failed build.
"""

from __future__ import annotations

import argparse
import ast
import enum
import importlib
import inspect
import json
import posixpath
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger(__name__)

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!--\s*(hookspecs|cli|options|config|parameters)\s*(?::\s*([\w.-]+))?\s*-->[ \t]*$", re.M)
CONFIG_SECTIONS = ("server", "state", "routes", "pools", "prices", "backends", "plugins")
_shown_options: set[str] = set()


# --- markdown helpers ---------------------------------------------------------------------------


def text(value: str) -> str:
    """Plain text for a table cell or a paragraph: HTML-significant characters escaped outside code spans."""
    parts = re.split(r"(`[^`]*`)", value)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(part)
        else:
            out.append(
                part.replace("&", "&amp;")
                .replace("<", "&lt;")
                .replace(">", "&gt;")
                .replace("*", r"\*")
                .replace("|", r"\|")
            )
    return "".join(out)


def cell(value: str) -> str:
    return text(" ".join(value.split()))


def code(value: str) -> str:
    """A code span that survives any backticks inside it."""
    value = " ".join(str(value).split())
    fence = "``" if "`" in value else "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- pydantic settings models -------------------------------------------------------------------


def _base_model() -> type:
    from pydantic import BaseModel

    return BaseModel


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, _base_model())


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def type_name(tp: Any) -> str:
    tp = _strip_annotated(tp)
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    args = _union_args(tp)
    if args is not None:
        return " | ".join(type_name(a) for a in args)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin is not None:
        inner = ", ".join(type_name(a) for a in typing.get_args(tp))
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{inner}]" if inner else name
    if isinstance(tp, type):
        if _is_model(tp):
            return "object"
        if issubclass(tp, enum.Enum):
            return " | ".join(json.dumps(m.value) for m in tp)
        return tp.__name__
    return str(tp).replace("typing.", "")


def _constraints(field: Any) -> str:
    symbols = {
        "ge": ">=",
        "gt": ">",
        "le": "<=",
        "lt": "<",
        "min_length": "min length",
        "max_length": "max length",
        "pattern": "matches",
        "multiple_of": "multiple of",
    }
    found = []
    for meta in field.metadata:
        for attribute, symbol in symbols.items():
            value = getattr(meta, attribute, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return ", ".join(found)


def _default(field: Any) -> tuple[bool, Any]:
    """(required, default value)."""
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return True, None
    if field.default_factory is not None:
        try:
            return False, field.default_factory()
        except TypeError:
            return False, "(computed)"
    return False, None if field.default is PydanticUndefined else field.default


def _jsonable(value: Any) -> Any:
    if _is_model(type(value)):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return value


def default_text(field: Any) -> str:
    required, value = _default(field)
    if required:
        return "required"
    value = _jsonable(value)
    if value is None:
        return code("null")
    rendered = json.dumps(value, ensure_ascii=False, default=str)
    if len(rendered) > 100:
        rendered = rendered[:97] + "..."
    return code(rendered)


def _class_source_notes(model: type) -> dict[str, str]:
    """Attribute docstrings (a string right after the field), else a comment on the field's own line."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    cls = tree.body[0]
    notes: dict[str, str] = {}
    body = getattr(cls, "body", [])
    for i, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        name = node.target.id
        following = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            notes[name] = inspect.cleandoc(following.value.value)
            continue
        line = lines[node.end_lineno - 1]
        comment = _trailing_comment(line)
        if comment:
            notes[name] = comment
    return notes


def _trailing_comment(line: str) -> str | None:
    """The `# ...` comment ending a source line, outside string literals."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[i + 1 :].strip() or None
    return None


def _notes(model: type) -> dict[str, str]:
    """Notes for a model's fields, its base classes' included (a subclass's own win)."""
    found: dict[str, str] = {}
    for klass in reversed(model.__mro__):
        if _is_model(klass) and klass is not _base_model():
            found.update(_class_source_notes(klass))
    return found


def _nested(tp: Any) -> tuple[str, type] | None:
    """('' | '.<name>' | '[]', model) when a field holds a model directly, optionally, as the values of a map,
    or as the items of a list."""
    tp = _strip_annotated(tp)
    args = _union_args(tp)
    if args is not None:
        models = [a for a in args if a is not type(None)]
        return _nested(models[0]) if len(models) == 1 else None
    if _is_model(tp):
        return "", tp
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (None,)
        return ("[]", item) if _is_model(_strip_annotated(item)) else None
    if typing.get_origin(tp) is dict:
        key, value = typing.get_args(tp) or (None, None)
        value = _strip_annotated(value)
        if _is_model(value):
            return ".<name>", value
    return None


def settings_rows(model: type, prefix: str = "", skip: frozenset[str] = frozenset()) -> list[list[str]]:
    rows = []
    notes = _notes(model)
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = prefix + (field.alias or name)
        nested = _nested(field.annotation)
        description = field.description or notes.get(name) or ""
        if not description and nested is not None:
            description = inspect.cleandoc(nested[1].__doc__ or "") if nested[1].__doc__ else ""
        kind = type_name(field.annotation)
        limits = _constraints(field)
        type_cell = code(kind) + (f" ({text(limits)})" if limits else "")
        _, value = _default(field)
        expanded = nested is not None and _is_model(type(value))  # its own rows below give each default
        rows.append([code(key), type_cell, "" if expanded else default_text(field), cell(description)])
        if nested is not None:
            rows += settings_rows(nested[1], f"{key}{nested[0]}.")
    return rows


def settings_table(model: type, prefix: str = "", skip: frozenset[str] = frozenset()) -> str:
    rows = settings_rows(model, prefix, skip)
    if not rows:
        return "_No options._"
    return table(["option", "type", "default", "description"], rows)


# --- the sections -------------------------------------------------------------------------------


def plugin_settings() -> dict[str, type]:
    """Built-in plugin name -> its Settings model, for those that have one."""
    from gateway.plugins import DEFAULT_PLUGINS

    found = {}
    for name, target in DEFAULT_PLUGINS.items():
        module_name, _, attribute = target.partition(":")
        obj = importlib.import_module(module_name)
        if attribute:
            obj = getattr(obj, attribute)
        model = getattr(obj, "Settings", None)
        if _is_model(model):
            found[name] = model
    return found


def options_section(name: str, where: str) -> str:
    models = plugin_settings()
    if name not in models:
        log.warning(
            "<!-- options: %s -->: no built-in plugin with a Settings model is called that (known: %s)",
            name,
            ", ".join(sorted(models)),
        )
        return ""
    _shown_options.add(name)
    link = posixpath.relpath("configuration.md", posixpath.dirname(where) or ".")
    return (
        f"Options of `plugins.{name}` (from its `Settings` model), beside the "
        f"[keys every plugin section takes]({link}#plugins):\n\n" + settings_table(models[name], "", frozenset())
    )


def backend_kinds() -> dict[str, type]:
    from gateway.backends import BuiltinBackends

    return BuiltinBackends({}).register_backend_kinds()


def config_section(name: str) -> str:
    from gateway import config
    from gateway.backends import BackendSettings

    if name == "server":
        return settings_table(config.ServerSettings, "server.")
    if name == "state":
        return settings_table(config.StateSettings, "state.")
    if name == "routes":
        return settings_table(config.RouteSettings, "routes.<name>.")
    if name == "pools":
        return settings_table(config.PoolSettings, "pools.<name>.")
    if name == "prices":
        return settings_table(config.Price, "prices.<backend or model>.")
    if name == "plugins":
        rows = settings_rows(config.PluginSettings, "plugins.<name>.")
        # Keys the core reads that are not fields of the model (`module`: an unpackaged plugin's import path).
        for key in getattr(config, "PLUGIN_CORE_KEYS", ()):
            if key not in config.PluginSettings.model_fields:
                rows.append([code(f"plugins.<name>.{key}"), code("str"), code("null"), ""])
        return table(["option", "type", "default", "description"], rows)
    if name == "backends":
        parts = ["Every backend, whatever its kind:", "", settings_table(BackendSettings, "backends.<name>.")]
        common = frozenset(BackendSettings.model_fields)
        for kind, backend in backend_kinds().items():
            model = getattr(backend, "Settings", BackendSettings)
            parts += ["", f"### Kind `{kind}`", ""]
            doc = inspect.getdoc(inspect.getmodule(backend)) or ""
            if doc:
                parts += [text(doc.split("\n\n")[0].replace("\n", " ")), ""]
            own = frozenset(model.model_fields) - common
            parts.append(settings_table(model, "backends.<name>.", common) if own else "_No options of its own._")
        return "\n".join(parts)
    log.warning("<!-- config: %s -->: unknown section (known: %s)", name, ", ".join(CONFIG_SECTIONS))
    return ""


def hookspecs_section() -> str:
    """The module's docstring, then each phase's hooks in file order: signature, how it is called, docstring."""
    from gateway import hookspecs

    path = ROOT / "gateway" / "hookspecs.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    intro = ast.get_docstring(tree) or ""
    parts = [text(paragraph.replace("\n", " ")) + "\n" for paragraph in intro.split("\n\n") if paragraph.strip()]
    nodes = {
        node.name: node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in hookspecs.SPECS
    }
    for phase in hookspecs.PHASES:
        parts += [f"### {phase[0].upper()}{phase[1:]}", ""]
        for name in [name for name, where in hookspecs.SPECS.items() if where == phase]:
            node = nodes[name]
            function = getattr(hookspecs, name)
            opts = getattr(function, hookspecs.hookspec.project_name + "_spec", {})
            how = ["the first answer wins" if opts.get("firstresult") else "every implementation runs"]
            if name in hookspecs.TIMED:
                how.append("within each plugin's `timeout_ms`")
            if name in hookspecs.REVERSED:
                how.append("in reverse plugin order")
            decorators = "\n".join(f"@{ast.unparse(d)}" for d in node.decorator_list)
            doc = ast.get_docstring(node) or ""
            parts += [
                f"#### `{name}`",
                "",
                "```python",
                f"{decorators}\ndef {name}({ast.unparse(node.args)}): ...",
                "```",
                "",
                f"_Called: {'; '.join(how)}._",
                "",
            ]
            parts += [text(paragraph.replace("\n", " ")) + "\n" for paragraph in doc.split("\n\n") if paragraph.strip()]
    if not nodes:
        log.warning("<!-- hookspecs -->: no hookspec found in %s", path)
    return "\n".join(parts)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=100, max_help_position=40)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _argument_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    formatter = argparse.HelpFormatter(prog=parser.prog)
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += " " + formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
        else:
            name = formatter._format_args(action, formatter._get_default_metavar_for_positional(action))
        help_text = formatter._expand_help(action) if action.help else ""
        if action.choices and not isinstance(action.choices, dict):
            help_text += (" " if help_text else "") + "(one of: " + ", ".join(map(str, action.choices)) + ")"
        default = action.default
        if action.required and action.option_strings:
            default_cell = "required"
        elif default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            default_cell = ""
        else:
            default_cell = code(json.dumps(default) if isinstance(default, (list, dict)) else str(default))
        rows.append([code(name), cell(help_text), default_cell])
    return rows


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            found.append((name, helps.get(name, ""), sub))
    return found


def _command(parser: argparse.ArgumentParser, help_text: str, level: int) -> list[str]:
    heading = "#" * min(level, 6)
    parts = [f"{heading} `{parser.prog}`", ""]
    if help_text:
        parts += [text(help_text[0].upper() + help_text[1:]) + ("" if help_text.endswith(".") else "."), ""]
    parts += ["```text", _usage(parser), "```", ""]
    if parser.description and parser.description.strip() != help_text.strip():
        parts += [text(" ".join(parser.description.split())), ""]
    rows = _argument_rows(parser)
    if rows:
        parts += [table(["argument", "help", "default"], rows), ""]
    subs = _subcommands(parser)
    if subs:
        parts += ["Subcommands: " + ", ".join(f"`{name}`" for name, _, _ in subs) + ".", ""]
    for _name, sub_help, sub in subs:
        parts += _command(sub, sub_help, level + 1)
    return parts


def cli_section() -> str:
    from gateway.cli import build_parser

    parser = build_parser()
    parts = ["```text", _usage(parser), "```", ""]
    for _name, help_text, sub in _subcommands(parser):
        parts += _command(sub, help_text, 3)
    return "\n".join(parts)


def parameters_section() -> str:
    """The parameter table: one row per chat parameter (then the fields inside messages), a column per kind."""
    from gateway.backends.params import KINDS, NOTES, POLICY, is_field

    rows = [
        [code(name), *(cell(POLICY[name][kind]) for kind in KINDS), cell(NOTES.get(name, ""))]
        for name in sorted(POLICY, key=is_field)
    ]
    return table(["parameter", *KINDS, "how"], rows)


def render(kind: str, name: str | None, where: str) -> str:
    if kind == "hookspecs":
        return hookspecs_section()
    if kind == "cli":
        return cli_section()
    if kind == "parameters":
        return parameters_section()
    if not name:
        log.warning("%s: <!-- %s: NAME --> needs a name", where, kind)
        return ""
    return options_section(name, where) if kind == "options" else config_section(name)


# --- MkDocs events ------------------------------------------------------------------------------


def on_pre_build(config: Any, **kwargs: Any) -> None:
    _shown_options.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    where = page.file.src_uri

    def replace(match: re.Match) -> str:
        try:
            return render(match.group(1), match.group(2), where)
        except Exception as exc:  # the code the reference is read from is broken: say where, fail a strict build
            log.error("%s: %s could not be generated: %s: %s", where, match.group(0), type(exc).__name__, exc)
            return ""

    return MARKER.sub(replace, markdown)


def on_post_build(config: Any, **kwargs: Any) -> None:
    missing = sorted(set(plugin_settings()) - _shown_options)
    for name in missing:
        log.warning(
            "the built-in plugin %r has settings but no page shows them: add <!-- options: %s --> "
            "to its page under docs/plugins/",
            name,
            name,
        )
