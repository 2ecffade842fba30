"""Models registered at run time: backends (and shadow targets of routes) that live in the state store.

A fine-tuned model finishes training while the gateway runs; it should start serving shadow
traffic without anyone editing the config file. A registration is one record in the state store
under `models:<backend name>`:

    {"backend": {"like": "claude-base", "model": "arn:...:provisioned-model/abc"},
     "shadow": ["support-bot"], "registered_by": "...", "registered_at": 1700000000.0, "details": {...}}

`backend` is a backend entry as in the config's `backends:`; `like` names a configured backend
whose settings (kind, region, endpoint, credentials) it copies before its own keys apply, so a
registration never carries a secret: it holds none itself (no literal key, and no `${VAR}`, which
only the operator's config file expands, never what the admin API is sent), and the credentials
`like` copies go only to the host they were configured for: a registration that moves to another
host (a new `base_url` or `endpoint_url`, another kind) gets none of them. Each registration is in
the audit with the host it sends to and whether it carries the copied credentials. The
Gateway merges every record into the config it builds a Generation from (at start-up, on SIGHUP
and when a change notice arrives), so a registration survives restarts and, with Redis, reaches
every replica. The config file wins a name clash, and a record that does not fit the config
(unknown route or `like`, invalid settings) is skipped with a log line, never fatal.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import ValidationError

from ..config import Config, _format_validation, choices
from ..errors import InvalidRequest, NotFound
from .common import actor, audit, read_body

log = logging.getLogger("llmgate.models")

KEY = "models:"
NOTICE = "models"  # the change notice's kind
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}")
_SECRET_KEY = re.compile(r"key|token|secret|password|credential", re.IGNORECASE)
# what `like` copies only to the host it was configured for: the keys, and headers that carry a credential
_CREDENTIAL_FIELDS = frozenset(
    {"api_key", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "profile"}
)
_CREDENTIAL_HEADER = re.compile(r"authorization|key|token|secret|cookie", re.IGNORECASE)
_HOST_FIELDS = ("base_url", "endpoint_url")


def _host(settings: dict[str, Any], kinds: dict) -> str:
    """Where a backend entry sends its requests: scheme://host[:port] of its URL (or its kind's default)."""
    for field in _HOST_FIELDS:
        if isinstance(settings.get(field), str):
            parts = urlsplit(settings[field].strip())
            return f"{parts.scheme.lower()}://{(parts.netloc.rpartition('@')[2]).lower()}"
    kind = kinds.get(settings.get("kind"))
    default = getattr(kind, "Settings", None) and kind.Settings.model_fields.get("base_url")
    if default is not None and isinstance(default.default, str):
        return _host({"base_url": default.default}, kinds)
    if settings.get("region"):  # Bedrock: the region's own endpoint
        return f"https://bedrock-runtime.{settings['region']}.amazonaws.com"
    return f"{settings.get('kind')}:"


def _without_credentials(settings: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in settings.items() if k not in _CREDENTIAL_FIELDS}
    if isinstance(kept.get("headers"), dict):
        kept["headers"] = {k: v for k, v in kept["headers"].items() if not _CREDENTIAL_HEADER.search(k)}
    return kept


_NOT_EXPANDED = (
    "{where}: ${{VAR}} is expanded only in the config file; a registration refers to credentials "
    "with 'like' (a configured backend of the same host)"
)


def _env_references(node: Any, path: str = "backend") -> list[str]:
    """Where `node` (what the admin API was sent) names an environment variable: never expanded there."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _env_references(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _env_references(v, f"{path}[{i}]")]
    return [path] if isinstance(node, str) and "${" in node else []


def _backend_settings(
    name: str, record: dict, config: Config, kinds: dict
) -> tuple[dict[str, Any], dict[str, str], bool]:
    """The backend entry a record stands for, the unset variables it refers to (the config's, through
    `like`), and whether it carries the credentials `like` copied (only to the host they are for)."""
    wanted = dict(record.get("backend") or {})
    like = wanted.pop("like", None)
    if references := _env_references(wanted):
        raise ValueError(_NOT_EXPANDED.format(where=references[0]))
    if like is None:
        return wanted, {}, False
    if like not in config.settings.backends:
        raise ValueError(f"like: no configured backend '{like}'")
    base = dict(config.settings.backends[like])
    settings = {**base, **wanted}
    if _host(settings, kinds) != _host(base, kinds) or settings.get("kind") != base.get("kind"):
        return {**_without_credentials(base), **wanted}, {}, False
    prefix = f"backends.{like}."
    unset = {
        f"backends.{name}.{path[len(prefix) :]}": var
        for path, var in config.unset_env.items()
        if path.startswith(prefix)
    }
    return settings, unset, True


def problems_of(name: str, record: dict, config: Config, kinds: dict) -> list[str]:
    """Why a record cannot join `config` (empty when it can)."""
    if not _NAME.fullmatch(name):
        return [f"'{name}' is not a valid backend name (letters, digits, . _ : -)"]
    if name in config.settings.backends:
        return [f"'{name}' is already a backend of the config file"]
    if name in config.settings.pools:
        return [f"'{name}' is already a pool of the config file"]
    problems = [
        f"{field}: no route named '{r}'"
        for field in ("shadow", "candidate")
        for r in record.get(field) or []
        if r not in config.settings.routes
    ]
    try:
        settings, unset, _ = _backend_settings(name, record, config, kinds)
    except ValueError as exc:
        return problems + [str(exc)]
    kind = kinds.get(settings.get("kind"))
    if kind is None:
        kind_name = str(settings.get("kind"))
        return problems + [f"backend.kind: unknown kind '{kind_name}' {choices(kind_name, kinds, 'known')}"]
    try:
        kind.Settings.model_validate(settings)
    except ValidationError as exc:
        own_unset = {path.removeprefix(f"backends.{name}."): var for path, var in unset.items()}
        problems += [f"backend.{p}" for p in _format_validation(exc, own_unset, kind.Settings)]
    return problems


def merged(config: Config, records: dict[str, dict], kinds: dict) -> Config:
    """`config` plus every registered model that fits it (the others are logged and left out)."""
    if not records:
        return config
    backends = dict(config.settings.backends)
    routes = dict(config.settings.routes)
    unset = dict(config.unset_env)
    for key, record in sorted(records.items()):
        name = key.removeprefix(KEY)
        if problems := problems_of(name, record, config, kinds):
            log.error("registered model %s left out: %s", name, "; ".join(problems))
            continue
        backends[name], more_unset, _ = _backend_settings(name, record, config, kinds)
        unset.update(more_unset)
        for route in record.get("shadow") or []:
            if name not in routes[route].shadow:
                routes[route] = routes[route].model_copy(update={"shadow": [*routes[route].shadow, name]})
        for route in record.get("candidate") or []:  # a candidate at 0% until the rollout gives it users
            if name not in routes[route].candidates:
                routes[route] = routes[route].model_copy(update={"candidates": {**routes[route].candidates, name: 0}})
    settings = config.settings.model_copy(update={"backends": backends, "routes": routes})
    return Config(settings=settings, source=config.source, unset_env=unset, secrets=set(config.secrets))


def _literal_secrets(backend: dict) -> list[str]:
    return [k for k, v in backend.items() if _SECRET_KEY.search(k) and isinstance(v, str) and v != "none"]


async def register(
    gateway,
    name: str,
    backend: dict,
    shadow: list[str],
    who: str,
    *,
    reason: str | None = None,
    details: dict | None = None,
    candidate: list[str] | None = None,
) -> dict:
    """Store a registration, audit it, rebuild this gateway's backends and tell the other replicas.

    `candidate` names routes where the model is a candidate (at 0% until a rollout moves users).

    Returns the record. Raises InvalidRequest when it does not fit the config."""
    if not isinstance(backend, dict) or not (backend.get("like") or backend.get("kind")):
        raise InvalidRequest(
            "'backend' must be an object with 'like' (a configured backend to copy) or 'kind'", param="backend"
        )
    if references := _env_references(backend):
        raise InvalidRequest(_NOT_EXPANDED.format(where=references[0]), param="backend")
    if secrets := _literal_secrets(backend):
        raise InvalidRequest(
            f"backend.{secrets[0]}: a registration carries no secret (it is stored in the state store): "
            "copy a configured backend's credentials with 'like', for that backend's host",
            param="backend",
        )
    if not isinstance(shadow, list) or not all(isinstance(r, str) for r in shadow):
        raise InvalidRequest("'shadow' must be a list of route names", param="shadow")
    record = {
        "backend": backend,
        "shadow": shadow,
        **({"candidate": candidate} if candidate else {}),
        "registered_by": who,
        "registered_at": time.time(),
        "details": details or {},
    }
    if problems := problems_of(name, record, gateway.file_config, gateway.kinds):
        raise InvalidRequest(f"model '{name}' cannot be registered: " + "; ".join(problems), param="name")
    old = await gateway.store.get(KEY + name)
    await gateway.store.set(KEY + name, record)
    await gateway.refresh_registered()
    await gateway.store.publish({"kind": NOTICE, "name": name})
    settings, _, credentials = _backend_settings(name, record, gateway.file_config, gateway.kinds)
    for route in shadow or [None]:
        await audit(
            gateway,
            "register_model",
            route,
            who,
            before=(old or {}).get("backend"),
            after=backend,
            reason=reason,
            backend=name,
            host=_host(settings, gateway.kinds),
            credentials=f"copied from '{backend['like']}'" if credentials else None,
        )
    return record


async def unregister(gateway, name: str, who: str, reason: str | None = None) -> dict:
    old = await gateway.store.get(KEY + name)
    if old is None:
        raise NotFound(f"no registered model named '{name}'", param="name", code="model_not_found")
    await gateway.store.delete(KEY + name)
    await gateway.refresh_registered()
    await gateway.store.publish({"kind": NOTICE, "name": name})
    for route in old.get("shadow") or [None]:
        await audit(
            gateway, "unregister_model", route, who, before=old.get("backend"), after=None, reason=reason, backend=name
        )
    return old


def routes(gateway_key) -> list[web.RouteDef]:
    """GET /admin/models, POST /admin/models {name, backend, shadow, reason}, DELETE /admin/models/{name}."""

    async def listing(request: web.Request) -> web.Response:
        gateway = request.app[gateway_key]
        gateway.require_admin(request)
        records = await gateway.store.items(KEY)
        serving = gateway.backends
        return web.json_response(
            {
                "models": {
                    k.removeprefix(KEY): {**r, "serving": k.removeprefix(KEY) in serving} for k, r in records.items()
                }
            }
        )

    async def add(request: web.Request) -> web.Response:
        gateway = request.app[gateway_key]
        gateway.require_admin(request)
        body = await read_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'name' (the new backend's name) is required", param="name")
        record = await register(
            gateway,
            name,
            body.get("backend"),
            body.get("shadow") or [],
            actor(request),
            reason=body.get("reason"),
            details=body.get("details") if isinstance(body.get("details"), dict) else None,
        )
        return web.json_response({"name": name, **record, "serving": name in gateway.backends})

    async def remove(request: web.Request) -> web.Response:
        gateway = request.app[gateway_key]
        gateway.require_admin(request)
        body = await read_body(request)
        name = request.match_info["name"]
        return web.json_response(
            {"name": name, "removed": await unregister(gateway, name, actor(request), body.get("reason"))}
        )

    return [
        web.get("/admin/models", listing),
        web.post("/admin/models", add),
        web.delete("/admin/models/{name}", remove),
    ]
