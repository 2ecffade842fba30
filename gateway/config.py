"""Loading and validating the gateway's YAML config.

Errors name the key and the problem (`routes.support-bot.baseline: unknown backend 'x'`).
`${VAR}` and `${VAR:-default}` are interpolated from the environment; a variable that is unset
does not fail the load, it leaves the value empty and is remembered, so a backend whose key is
missing can say which variable to set while the rest of the gateway serves.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_PATH = "config/gateway.yaml"
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


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_messages: int = Field(2048, gt=0, description="messages in one chat request")
    admin_token: str | None = None
    shutdown_timeout: float = Field(30.0, gt=0, description="seconds to drain in-flight requests on SIGTERM")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="uvloop: the event loop in C, a little less CPU a request; "
                            "auto: uvloop where it is installed, else asyncio's own")


class StateSettings(Strict):
    sqlite_path: str = "var/llmgate.db"
    redis_url: str | None = None


class Price(Strict):
    """USD per million tokens."""
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)


class RouteSettings(Strict):
    baseline: str
    candidates: dict[str, float] = {}
    shadow: list[str] = []
    fallback: list[str] = []
    retries: int = Field(1, ge=0, le=5, description="extra tries per backend on retryable errors")
    description: str = ""

    @field_validator("candidates")
    @classmethod
    def _percents(cls, value: dict[str, float]) -> dict[str, float]:
        for name, percent in value.items():
            if not 0 <= percent <= 100:
                raise ValueError(f"percent for '{name}' must be between 0 and 100, got {percent}")
        if sum(value.values()) > 100:
            raise ValueError(f"candidate percents add up to {sum(value.values())}, more than 100")
        return value


class PluginSettings(BaseModel):
    """The keys the core reads from each plugin's section; the rest belong to the plugin."""
    model_config = ConfigDict(extra="allow")
    enabled: bool | None = None
    fail_closed: bool = False
    timeout_ms: float = Field(1000, gt=0, description="budget for one hook call of this plugin")


class GatewaySettings(Strict):
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()
    backends: dict[str, dict[str, Any]] = {}
    routes: dict[str, RouteSettings] = {}
    prices: dict[str, Price] = {}
    plugins: dict[str, PluginSettings] = {}

    @model_validator(mode="after")
    def _references(self) -> "GatewaySettings":
        problems = []
        for route_name, route in self.routes.items():
            refs = [("baseline", route.baseline)]
            refs += [(f"candidates.{b}", b) for b in route.candidates]
            refs += [(f"shadow[{i}]", b) for i, b in enumerate(route.shadow)]
            refs += [(f"fallback[{i}]", b) for i, b in enumerate(route.fallback)]
            for where, backend in refs:
                if backend not in self.backends:
                    known = ", ".join(sorted(self.backends)) or "none"
                    problems.append(f"routes.{route_name}.{where}: unknown backend '{backend}' (defined: {known})")
            if route.baseline in route.candidates:
                problems.append(f"routes.{route_name}.candidates.{route.baseline}: the baseline cannot also be a candidate")
        for name, backend in self.backends.items():
            if not isinstance(backend.get("kind"), str):
                problems.append(f"backends.{name}.kind: required (openai, anthropic, bedrock, ...)")
        if problems:
            raise ValueError("\n".join(problems))
        return self


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

    def price_for(self, backend: str, model: str | None) -> Price | None:
        prices = self.settings.prices
        return prices.get(backend) or (prices.get(model) if model else None)

    def cost(self, backend: str, model: str | None, usage: dict | None) -> float | None:
        """USD for one answer's usage, from the price table; None when the price or usage is unknown."""
        price = self.price_for(backend, model)
        if price is None or not usage:
            return None
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        cached = 0
        if price.cached_input is not None:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return ((prompt - cached) * price.input + cached * (price.cached_input or 0) + completion * price.output) / 1e6


def _interpolate(node: Any, path: str, unset: dict[str, str], secrets: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), unset, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", unset, secrets) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _ENV_REF.fullmatch(node)
    if whole and whole.group(1) not in os.environ and whole.group(2) is None:
        unset[path] = whole.group(1)
        return None

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                unset[path] = name
                return ""
            return default
        if _SECRET_KEY.search(path.rsplit(".", 1)[-1]):
            secrets.add(value)
        return value

    return _ENV_REF.sub(substitute, node)


def _format_validation(error: ValidationError, unset: dict[str, str]) -> list[str]:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "value_error" and not key:
            problems.extend(message.splitlines())
            continue
        if key in unset:
            message = f"environment variable {unset[key]} is not set"
        problems.append(f"{key}: {message}" if key else message)
    return problems


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
        raise ConfigError(source, _format_validation(exc, unset)) from None
    for backend in settings.backends.values():
        for key in ("api_key", "aws_secret_access_key", "aws_session_token"):
            if isinstance(backend.get(key), str):
                secrets.add(backend[key])
    for token in (settings.server.admin_token, os.environ.get("LLMGATE_ADMIN_TOKEN")):
        if token:
            secrets.add(token)
    return Config(settings=settings, source=source, unset_env=unset, secrets=secrets)


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read the config at `path`, else `$LLMGATE_CONFIG`, else config/gateway.yaml."""
    path = Path(path or os.environ.get("LLMGATE_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_config(raw, str(path))
