"""Loading and validating the gateway's YAML config.

Errors name the key and the problem (`routes.support-bot.baseline: unknown backend 'x'`).
`${VAR}` and `${VAR:-default}` are interpolated from the environment; a variable that is unset
does not fail the load, it leaves the value empty and is remembered, so a backend whose key is
missing can say which variable to set while the rest of the gateway serves.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .breaker import BreakerSettings

DEFAULT_CONFIG_PATH = "config/gateway.yaml"  # a checkout's, relative to the working directory
# The starter config, shipped inside the package (config/gateway.yaml links to it: one file, no copy to drift).
PACKAGED_CONFIG = Path(__file__).parent / "defaults" / "gateway.yaml"
_SECRET_KEY = re.compile(r"key|token|secret|password|credential", re.IGNORECASE)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The config cannot be used; `problems` lists each as 'key.path: what is wrong'."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_WORKERS_PER_CORE = 4  # more processes than that only share the same cores at more memory


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_messages: int = Field(2048, gt=0, description="messages in one chat request")
    admin_token: str | None = None
    shutdown_timeout: float = Field(30.0, gt=0, description="seconds to drain in-flight requests on SIGTERM")
    stored_responses_ttl: float = Field(
        24 * 3600,
        gt=0,
        description="seconds a Responses API answer stays in the state store for a later "
        "`previous_response_id` (never kept when the request says store: false)",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="uvloop: the event loop in C, a little less CPU a request; "
        "auto: uvloop where it is installed, else asyncio's own",
    )
    workers: int | Literal["auto"] = Field(
        1,
        description="processes serving the one port (a prefork server): auto = this machine's cores; "
        "every worker shares the state store, the traffic log and /metrics",
    )

    header_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a request's line and headers may take from their first byte (a new connection's "
        "from its opening): a client sends them in one packet, a slow-loris never finishes them",
    )
    body_min_rate: int = Field(
        1024,
        ge=0,
        description="bytes a second a request body must average once body_grace has passed, or the "
        "connection is closed with a 408 (0: no minimum); the answer, however long it streams, is not timed",
    )
    body_grace: float = Field(10.0, ge=0, description="seconds a request body may take before body_min_rate applies")
    write_timeout: float = Field(
        60.0,
        ge=0,
        description="seconds an answer's unsent bytes may wait with the client taking none of them, or the "
        "connection is closed (0: no limit); a client reading slowly, or a stream whose model is slow, is "
        "not cut: only one that stopped reading holds the answer, the upstream call and the memory",
    )
    keepalive_timeout: float = Field(
        75.0,
        gt=0,
        description="seconds an idle keep-alive connection stays open between requests (above a load "
        "balancer's own idle timeout, 60 s on AWS, so that it closes first)",
    )
    max_connections: int | Literal["auto"] = Field(
        "auto",
        description="client connections served at once by each process; auto: half its descriptor limit "
        "(the other half for upstream connections and files) less probe_connections. Past it a new "
        "connection may only ask /healthz or /readyz",
    )
    probe_connections: int = Field(
        16,
        ge=1,
        description="connections kept past max_connections for health probes (/healthz, /readyz); past "
        "those, a new connection is closed as soon as it is accepted",
    )
    max_connections_per_client: int | None = Field(
        None,
        ge=1,
        description="connections one client address may hold (unset: no limit); behind a trusted proxy, "
        "requests in flight of the address X-Forwarded-For names",
    )
    trusted_proxies: list[str] = Field(
        [],
        description="addresses or networks (10.0.0.0/8) of proxies whose X-Forwarded-For names the client; "
        "from any other peer the header is ignored",
    )

    @field_validator("max_connections")
    @classmethod
    def _cap_positive(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"server.max_connections is {value}: give a positive number, or auto")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, values: list[str]) -> list[str]:
        import ipaddress

        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"server.trusted_proxies: {value!r} is not an address or network") from None
        return values

    @field_validator("workers")
    @classmethod
    def _workers_fit(cls, value: int | str) -> int | str:
        cores = os.cpu_count() or 1
        if value != "auto" and not 1 <= value <= MAX_WORKERS_PER_CORE * cores:
            raise ValueError(
                f"server.workers is {value}: give 1 to {MAX_WORKERS_PER_CORE * cores} "
                f"(this machine has {cores} cores), or auto for one a core"
            )
        return value

    @property
    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)


class StateSettings(Strict):
    sqlite_path: str = "var/llmgate.db"
    redis_url: str | None = Field(
        None,
        description="redis://host:port/db (one node), redis+cluster://host:port,host:port (a Redis Cluster) "
        "or redis+sentinel://host:port,host:port/service_name (a Sentinel service); rediss for TLS",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_names_a_redis(cls, url: str | None) -> str | None:
        from .state.redis_connect import parse_redis_url  # imports nothing of redis-py

        if url is not None:
            parse_redis_url(url)  # a ValueError naming the accepted forms
        return url


class Price(Strict):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(
        None,
        ge=0,
        description="prompt tokens read from the provider's prompt cache "
        "(usage.prompt_tokens_details.cached_tokens); unset: priced as input",
    )
    cache_write: float | None = Field(
        None,
        ge=0,
        description="prompt tokens written to the provider's prompt "
        "cache (usage.cache_creation_input_tokens: Anthropic's cache creation, "
        "Bedrock's cacheWriteInputTokens); unset: priced as input",
    )


class RouteSettings(Strict):
    baseline: str
    candidates: dict[str, float] = {}
    shadow: list[str] = []
    fallback: list[str] = []
    context_fallback: list[str] = Field(
        [],
        description="backends with longer context windows, tried in order when a prompt is too long for the "
        "backend that had it (its too-long error, or its configured context_window); without any, the caller "
        "gets that 400",
    )
    retries: int = Field(1, ge=0, le=5, description="extra tries per backend on retryable errors")
    deadline: float | None = Field(
        None,
        gt=0,
        description="seconds a request may take in all: every try, retry, backoff and fallback, a stream to "
        "its end, each try given what is left; past it the caller gets a 504; unset: the gateway's deadline",
    )
    description: str = ""

    def answering(self) -> list[str]:
        """Every backend a request to this route may be answered by, once each: the baseline, candidates,
        fallbacks, context fallbacks (shadows answer no one)."""
        return list(dict.fromkeys([self.baseline, *self.candidates, *self.fallback, *self.context_fallback]))

    @field_validator("candidates")
    @classmethod
    def _percents(cls, value: dict[str, float]) -> dict[str, float]:
        for name, percent in value.items():
            if not 0 <= percent <= 100:
                raise ValueError(f"percent for '{name}' must be between 0 and 100, got {percent}")
        if sum(value.values()) > 100:
            raise ValueError(f"candidate percents add up to {sum(value.values())}, more than 100")
        return value


class PoolMember(Strict):
    backend: str = Field(description="a backend of the config: one deployment of the pool's model")
    weight: float = Field(1.0, description="its share of the pool's traffic, against the other members' weights")

    @field_validator("weight", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ValueError(f"weight must be a positive number, got {value!r}")
        return value


class Ejection(BreakerSettings):
    """A pool member's breaker: Envoy's outlier detection, ejected for longer each time it fails again."""

    max_open_seconds: float | None = Field(
        300.0,
        gt=0,
        description="the longest ejection: each lasts open_seconds times the ejections counted, one forgiven "
        "per open_seconds back in the pool",
    )


class PoolSettings(Strict):
    members: list[PoolMember] = Field(
        default_factory=list,
        validate_default=True,
        description="the deployments: {backend, weight} each, or a backend's name (weight 1)",
    )
    balance: Literal["weighted", "least_in_flight", "latency"] = Field(
        "weighted",
        description="weighted: at random by weight; least_in_flight: the fewest requests in flight for its "
        "weight; latency: the cheaper of two drawn by weight, its latency (an EWMA) times its requests in flight",
    )
    affinity: Literal["none", "user"] = Field(
        "none",
        description="user: a request naming its user (user, x-llmgate-user, the caller's key) goes to the member "
        "that user hashes to, keeping prompt and prefix caches warm; an ejected member moves only its own users",
    )
    ejection: Ejection = Field(Ejection(), description="each member's own breaker")
    latency_half_life: float = Field(
        10.0,
        gt=0,
        description="seconds after which a member's latency estimate, not renewed by a request, counts half: "
        "a member once slow is tried again",
    )
    description: str = ""

    @field_validator("members", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"backend": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("members")
    @classmethod
    def _some(cls, value: list[PoolMember]) -> list[PoolMember]:
        if not value:
            raise ValueError("a pool needs at least one member: list its backends as {backend: NAME, weight: N}")
        names = [m.backend for m in value]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            listed = ", ".join(f"'{n}'" for n in twice)
            raise ValueError(f"{listed} listed more than once: give each backend one entry, with its weight")
        return value


class PluginSettings(BaseModel):
    """The keys the core reads from each plugin's section; the rest belong to the plugin."""

    model_config = ConfigDict(extra="allow")
    enabled: bool | None = None
    fail_closed: bool = False
    timeout_ms: float = Field(1000, gt=0, description="budget for one hook call of this plugin")


# The keys of a plugin's section that the core reads; the plugin's own Settings sees the rest.
PLUGIN_CORE_KEYS = (*PluginSettings.model_fields, "module")


class GatewaySettings(Strict):
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()
    deadline: float | None = Field(
        None,
        gt=0,
        description="seconds a request may take in all, for each route that sets no deadline of its own; "
        "unset: only each backend's own timeouts bound a try",
    )
    backends: dict[str, dict[str, Any]] = {}
    pools: dict[str, PoolSettings] = {}
    routes: dict[str, RouteSettings] = {}
    prices: dict[str, Price] = {}
    plugins: dict[str, PluginSettings] = {}

    @model_validator(mode="after")
    def _references(self) -> "GatewaySettings":
        problems = self._pool_problems()
        serving = {**self.backends, **self.pools}  # what a route may name
        for route_name, route in self.routes.items():
            refs = [("baseline", route.baseline)]
            refs += [(f"candidates.{b}", b) for b in route.candidates]
            refs += [(f"shadow[{i}]", b) for i, b in enumerate(route.shadow)]
            refs += [(f"fallback[{i}]", b) for i, b in enumerate(route.fallback)]
            refs += [(f"context_fallback[{i}]", b) for i, b in enumerate(route.context_fallback)]
            for where, backend in refs:
                if backend not in serving:
                    known = choices(backend, serving, "defined")
                    problems.append(f"routes.{route_name}.{where}: unknown backend '{backend}' {known}")
            if route.baseline in route.candidates:
                problems.append(
                    f"routes.{route_name}.candidates.{route.baseline}: the baseline cannot also be a candidate"
                )
        for name, backend in self.backends.items():
            if not isinstance(backend.get("kind"), str):
                problems.append(f"backends.{name}.kind: required (openai, anthropic, bedrock, ...)")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def deployments(self, name: str) -> list[str]:
        """What a route's `name` may be priced as: a pool and each of its members' backends, or the backend."""
        pool = self.pools.get(name)
        return [name] if pool is None else [name, *(member.backend for member in pool.members)]

    def _pool_problems(self) -> list[str]:
        """What keeps a pool from serving: a name a backend has too, a member that is not a backend."""
        problems = []
        for name, pool in self.pools.items():
            if name in self.backends:
                problems.append(
                    f"pools.{name}: '{name}' is a backend's name too, so a route naming it would be ambiguous: "
                    "rename the pool or the backend"
                )
            for i, member in enumerate(pool.members):
                where = f"pools.{name}.members[{i}].backend"
                if member.backend in self.backends:
                    continue
                if member.backend in self.pools:
                    problems.append(f"{where}: '{member.backend}' is a pool: a member is a backend, pools do not nest")
                else:
                    known = choices(member.backend, self.backends, "defined")
                    problems.append(f"{where}: unknown backend '{member.backend}' {known}")
        return problems


@dataclass
class Config:
    """A validated config plus what interpolation learned: unset variables and secret values."""

    settings: GatewaySettings
    source: str
    unset_env: dict[str, str] = field(default_factory=dict)  # "backends.x.api_key" -> "VAR"
    secrets: set[str] = field(default_factory=set)

    @property
    def server(self) -> ServerSettings:
        return self.settings.server

    def with_workers(self, workers: str) -> "Config":
        """This config with `server.workers` as the command line gives it (a number or auto)."""
        value: int | str = int(workers) if workers.strip().isdigit() else workers.strip()
        try:
            server = ServerSettings.model_validate({**self.server.model_dump(), "workers": value})
        except ValidationError as exc:
            problems = [f"--workers: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
            raise ConfigError(self.source, problems) from None
        settings = self.settings.model_copy(update={"server": server})
        return dataclasses.replace(self, settings=settings)

    def price_for(self, backend: str, model: str | None) -> Price | None:
        prices = self.settings.prices
        return prices.get(backend) or (prices.get(model) if model else None)

    def plugin_options(self, name: str, model: type[BaseModel] | None = None) -> Any:
        """Plugin `name`'s own options from its section, validated by `model` when given (a ConfigError
        naming each problem as `plugins.<name>.<key>`); the dict as written without one."""
        options = own_options(self.settings.plugins.get(name))
        return options if model is None else validated_options(name, model, options, self.source)

    def cost(self, backend: str, model: str | None, usage: dict | None) -> float | None:
        """USD for one answer's usage, from the price table; None when the price or usage is unknown."""
        price = self.price_for(backend, model)
        if price is None or not usage:
            return None
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        cached = written = 0
        if price.cached_input is not None:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        if price.cache_write is not None:
            written = usage.get("cache_creation_input_tokens") or 0
        return (
            (prompt - cached - written) * price.input
            + cached * (price.cached_input or 0)
            + written * (price.cache_write or 0)
            + completion * price.output
        ) / 1e6


def _interpolate(node: Any, path: str, unset: dict[str, str], secrets: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), unset, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", unset, secrets) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _ENV_REF.fullmatch(node)
    if whole and not os.environ.get(whole.group(1)) and whole.group(2) is None:  # unset or empty, as in sh
        unset[path] = whole.group(1)
        return None

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if not value:  # `${VAR:-default}` takes the default when VAR is unset or empty, as sh does
            if default is None:
                unset[path] = name
                return ""
            return default
        if _SECRET_KEY.search(path.rsplit(".", 1)[-1]):
            secrets.add(value)
        return value

    return _ENV_REF.sub(substitute, node)


def choices(wrong: str, names: Iterable[str], label: str = "allowed") -> str:
    """'(did you mean 'x'? allowed: a, b, x)': the valid names, and the nearest one when one is close."""
    names = sorted(set(names))
    close = difflib.get_close_matches(wrong, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"({hint}{label}: {', '.join(names) or 'none'})"


def yaml_keys(model: type[BaseModel]) -> list[str]:
    """A model's keys as a config file spells them (the alias where a field has one)."""
    keys = []
    for name, info in model.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        keys.append(alias or name)
    return sorted(keys)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _options(annotation: Any) -> list[Any]:
    """The types an annotation may hold: Optional, Union and Annotated unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _options(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [option for arg in get_args(annotation) for option in _options(arg)]
    return [annotation]


def _step(annotation: Any, part: str | int) -> list[Any]:
    """What one part of an error's location leads to from `annotation`: a field, a dict value, a list item."""
    if _is_model(annotation):
        for name, info in annotation.model_fields.items():
            if part in (name, info.alias, info.validation_alias):
                return [info.annotation]
        return [annotation] if part == annotation.__name__ else []  # pydantic names the union member it tried
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return [args[1]] if len(args) == 2 else []
    if isinstance(origin, type) and issubclass(origin, Sequence | set | frozenset) and isinstance(part, int):
        return [args[0]] if args else []
    return []


def model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model whose keys sit at `loc` (a pydantic error location) inside `model`; None when it is no model."""
    current = [model]
    for part in loc:
        current = [found for annotation in current for option in _options(annotation) for found in _step(option, part)]
    models = [option for annotation in current for option in _options(annotation) if _is_model(option)]
    return models[0] if models else None


def _unknown_key(loc: Sequence[str | int], model: type[BaseModel] | None, also_allowed: Iterable[str]) -> str:
    """'unknown key (did you mean ...? allowed: ...)' for a key the owning model forbids."""
    owner = model_at(model, loc[:-1]) if model is not None else None
    if owner is None:
        return "unknown key"
    allowed = yaml_keys(owner) + (list(also_allowed) if len(loc) == 1 else [])
    return "unknown key " + choices(str(loc[-1]), allowed)


def _format_validation(
    error: ValidationError | list[dict],
    unset: dict[str, str],
    model: type[BaseModel] | None = None,
    also_allowed: Iterable[str] = (),
) -> list[str]:
    """One 'key.path: problem' line per pydantic error.

    With the validated `model`, an unknown key names the allowed keys of its section and the nearest
    one; `also_allowed` are keys the caller took out of the top level before validating (a plugin's
    core keys). `error` may be a list of its `errors()`, when the caller keeps only some."""
    problems = []
    for item in error.errors() if isinstance(error, ValidationError) else error:
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "value_error" and not key:
            problems.extend(message.splitlines())
            continue
        if key in unset:
            message = f"environment variable {unset[key]} is not set"
        elif item["type"] == "extra_forbidden" and item["loc"]:
            message = _unknown_key(item["loc"], model, also_allowed)
        problems.append(f"{key}: {message}" if key else message)
    return problems


def own_options(section: PluginSettings | None) -> dict[str, Any]:
    """A plugin section's own options: what it holds beside the core's keys (enabled, timeout_ms, module, ...)."""
    return {k: v for k, v in ((section.model_extra or {}) if section else {}).items() if k != "module"}


def validated_options(
    name: str, model: type[BaseModel], options: dict[str, Any], source: str, unknown_keys_only: bool = False
) -> Any:
    """`options` checked by plugin `name`'s Settings `model`; problems are raised as `plugins.<name>.<key>`.

    `unknown_keys_only` checks a disabled plugin's section for misspelt keys alone (and returns None):
    `enable: true` would otherwise leave an opt-in plugin off without a word."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if e["type"] == "extra_forbidden" or not unknown_keys_only]
        if not errors:
            return None
        problems = [f"plugins.{name}.{p}" for p in _format_validation(errors, {}, model, PLUGIN_CORE_KEYS)]
        raise ConfigError(source, problems) from None


def parse_config(raw: Any, source: str = "<config>") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"the top level must be a mapping, got {type(raw).__name__}"])
    unset: dict[str, str] = {}
    secrets: set[str] = set()
    data = _interpolate(raw, "", unset, secrets)
    try:
        settings = GatewaySettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _format_validation(exc, unset, GatewaySettings)) from None
    for backend in settings.backends.values():
        for key in ("api_key", "aws_secret_access_key", "aws_session_token"):
            if isinstance(backend.get(key), str) and backend[key].lower() != "none":  # "none": send no key
                secrets.add(backend[key])
    for token in (settings.server.admin_token, os.environ.get("LLMGATE_ADMIN_TOKEN")):
        if token:
            secrets.add(token)
    return Config(settings=settings, source=source, unset_env=unset, secrets=secrets)


def config_path(path: str | os.PathLike | None = None) -> Path:
    """The file a command reads: `path`, else `$LLMGATE_CONFIG`, else ./config/gateway.yaml, else the packaged one.

    The packaged starter config lets an installed `llmgate` run outside a checkout."""
    if path or os.environ.get("LLMGATE_CONFIG"):
        return Path(path or os.environ["LLMGATE_CONFIG"])
    tried = [Path(DEFAULT_CONFIG_PATH), PACKAGED_CONFIG]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        DEFAULT_CONFIG_PATH,
        [
            f"no config file: no --config, no $LLMGATE_CONFIG, and none of {', '.join(map(str, tried))}; "
            "pass --config FILE, set LLMGATE_CONFIG, or write one with `llmgate init FILE`"
        ],
    )


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read the config at `path`, else `$LLMGATE_CONFIG`, else ./config/gateway.yaml, else the packaged one."""
    path = config_path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_config(raw, str(path))
