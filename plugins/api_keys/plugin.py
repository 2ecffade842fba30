"""api_keys: client API keys that name a team, and the routes each team may call.

A caller sends its key as `Authorization: Bearer <key>`, as the OpenAI SDKs do, or as `x-api-key`,
as the Anthropic SDK does. The config holds only each key's SHA-256 (`sha256:<hex>`, printed by
`llmgate keys new` / `llmgate keys hash`), so a leaked config file leaks no key. `authenticate`
answers 401 (`authentication_error`) for a missing or unknown key before the request's body is read,
and names the team, which becomes `ctx.tenant` (the traffic log records it, the semantic cache
scopes by it, feedback and usage use it); `visible_routes` makes a route outside the team's `routes`
answer the same 404 as one that does not exist, and GET /v1/models and a 404's list of routes name only
the team's routes (`authorize` still refuses such a route with a 403, should another way reach it).

Off by default. While it is off, any key (or none) passes through as before and `ctx.tenant`
stays unset. While it is on, every chat request needs a configured key. The gateway's provider
keys are never the caller's concern: callers only ever hold these client keys.

Both run before any `before_route` plugin, wherever `plugins:` lists them: a cache hit never skips them.
The team limits (`requests_per_minute`, `tokens_per_day`) are enforced by the `quotas` plugin.

Keys can also be made at run time (runtime.py: `llmgate keys create|list|rotate|revoke`, the admin
API's /admin/keys), kept hashed in the state store and seen by every replica; the config's keys keep
working beside them. A key made at run time may name a team the config lacks (its routes are then
the key's own) and carry its own routes and limits, within its team's.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sys

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.admin import actor, audit, read_body
from gateway.config import ConfigError
from gateway.context import caller_key
from gateway.errors import InvalidRequest, PermissionDenied, Unauthorized
from gateway.hookspecs import hookimpl

from .runtime import KeyRequest, RuntimeKeys

log = logging.getLogger("llmgate.api_keys")
NAME = "api_keys"
KEY_PREFIX = "sk-lg-"  # shaped like a provider key, so the log scrubber hides one anywhere it appears
_HASHED = re.compile(r"sha256:[0-9a-f]{64}")


def hash_key(key: str) -> str:
    """The config form of a key: `sha256:` and the hex SHA-256 of the key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


MAX_KEY_CHARS = 512  # a longer "key" is something else pasted into the header
HOW_TO_SEND = "send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"


def _header_problem(header: str) -> str:
    """What is wrong with an Authorization header that carries no bearer key, never quoting a secret."""
    word = header.split()[0]
    if word.lower() == "bearer":
        return "the Authorization header says 'Bearer' but no key follows it"
    if word.isalpha() and len(word) <= 10 and len(header.split()) > 1:  # a scheme's name: Basic, Token, ...
        return f"the Authorization header's scheme is '{word}', which llmgate does not take"
    return "the Authorization header has no 'Bearer ' before the key"


def new_key() -> str:
    """A fresh random client key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Team(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[str] = Field(min_length=1, description="hashed keys: sha256:<hex>")
    routes: list[str] | None = Field(None, description="routes the team may call; unset: every route")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=1)

    @field_validator("keys")
    @classmethod
    def _hashed(cls, keys: list[str]) -> list[str]:
        normalised = [k.strip().lower() for k in keys]
        for i, key in enumerate(normalised):
            if not _HASHED.fullmatch(key):  # never echo the value: it may be a key pasted by mistake
                raise ValueError(
                    f"keys[{i}] must be 'sha256:' and 64 hex digits (print one with "
                    "`llmgate keys new --team T`); put hashes in the config, never keys"
                )
        return normalised


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teams: dict[str, Team] = {}
    resync_seconds: float = Field(
        30.0, gt=0, description="how often the keys made at run time are reloaded whole (changes arrive at once)"
    )

    @model_validator(mode="after")
    def _one_team_per_key(self) -> "Settings":
        owner: dict[str, str] = {}
        for name, team in self.teams.items():
            for key in team.keys:
                if key in owner and owner[key] != name:
                    raise ValueError(f"teams.{name}: a key is also listed under team '{owner[key]}'")
                owner[key] = name
        return self


class ApiKeys:
    Settings = Settings
    DEFAULT_ENABLED = False  # on only where the config enables it

    def __init__(self, settings: Settings):
        self._install(settings)
        self.runtime: RuntimeKeys | None = None
        self.gateway = None

    def _install(self, settings: Settings) -> None:
        self.settings = settings
        self.teams: dict[str, Team] = dict(settings.teams)
        self._by_hash = {key: (name, key) for name, team in settings.teams.items() for key in team.keys}

    # --- who is calling -----------------------------------------------------------------------

    def team_of(self, api_key: str | None) -> str:
        """The team that owns `api_key`; 401 when there is no key or it is not a configured one.

        The key itself is never compared: its SHA-256 is looked up, so the lookup's timing depends
        on a hash that a caller cannot steer towards a valid key, and the stored hash is confirmed
        with a constant-time comparison. That keeps the check O(1) with thousands of keys."""
        if not api_key:
            raise Unauthorized(f"You didn't provide an API key: {HOW_TO_SEND}", code="missing_api_key")
        if len(api_key) > MAX_KEY_CHARS or not api_key.isprintable() or any(c.isspace() for c in api_key):
            raise Unauthorized(  # never echoed: it may be a secret pasted into the wrong place
                f"the API key is malformed: a key is printable characters without spaces, at most {MAX_KEY_CHARS}",
                code="malformed_api_key",
            )
        given = hash_key(api_key)
        team, stored = self._by_hash.get(given, (None, ""))
        if team is not None and hmac.compare_digest(given.encode(), stored.encode()):
            return team
        record, why = self.runtime.find(given) if self.runtime is not None else (None, None)
        if why is not None:
            raise Unauthorized(
                f"this API key was {why}: ask the gateway's operator for a new key", code=f"{why}_api_key"
            )
        if record is None:
            raise Unauthorized(
                "Incorrect API key provided: ask the gateway's operator for a key", code="invalid_api_key"
            )
        return record["team"]

    def key_record(self, api_key: str | None) -> dict | None:
        """The run-time record of a caller's key (its id, routes, limits); None for a config key or none."""
        if not api_key or self.runtime is None:
            return None
        return self.runtime.find(hash_key(api_key))[0]

    def allowed_routes(self, team: str, api_key: str | None) -> list[str] | None:
        """The routes a caller may use: its team's (from the config), narrowed by its key's; None: all."""
        team_routes = self.teams[team].routes if team in self.teams else None
        record = self.key_record(api_key)
        key_routes = record.get("routes") if record else None
        if key_routes is None:
            return team_routes
        return key_routes if team_routes is None else [r for r in key_routes if r in team_routes]

    def team_of_request(self, request: web.Request) -> str:
        """The caller's team from an HTTP request's bearer key (for endpoints beside chat completions)."""
        key = caller_key(request)
        if key is None and (header := request.headers.get("Authorization", "").strip()):
            raise Unauthorized(f"{_header_problem(header)}: {HOW_TO_SEND}", code="malformed_api_key")
        return self.team_of(key)

    def check_route(self, team: str, route: str, api_key: str | None = None) -> None:
        allowed = self.allowed_routes(team, api_key)
        if allowed is not None and route not in allowed:
            raise PermissionDenied(
                f"your key's team may not use the model '{route}'", param="model", code="route_not_allowed"
            )

    # --- hooks --------------------------------------------------------------------------------

    @hookimpl
    def authenticate(self, request):
        return self.team_of_request(request)

    @hookimpl
    def authorize(self, ctx):
        # a tenant another plugin authenticated is that plugin's to check
        if ctx.tenant in self.teams or self.key_record(ctx.api_key) is not None:
            self.check_route(ctx.tenant, ctx.route_name, ctx.api_key)

    @hookimpl
    def visible_routes(self, request, routes):
        """Only the team's routes: a caller never learns another team's route names (401 without a key)."""
        key = caller_key(request)
        allowed = self.allowed_routes(self.team_of(key), key)
        return list(routes) if allowed is None else [route for route in routes if route in allowed]

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        self.runtime = RuntimeKeys(gateway.store, hash_key, new_key, self.settings.resync_seconds)
        try:
            await self.runtime.start()
        except Exception as exc:  # the store is down at start: config keys serve, run-time keys come on resync
            self.runtime.problem = f"keys made at run time not loaded yet: {type(exc).__name__}"
            log.warning("api keys: %s", self.runtime.problem)

    @hookimpl
    async def shutdown(self, gateway):
        if self.runtime is not None:
            await self.runtime.close()

    @hookimpl
    def readiness(self, gateway):
        return {NAME: self.runtime.problem if self.runtime is not None else None}

    @hookimpl
    def register_routes(self, gateway):
        async def create(request: web.Request) -> web.Response:
            """POST /admin/keys: a new key, shown once in the answer; audited as key_create (without the key)."""
            gateway.require_admin(request)
            body = await read_body(request)
            try:
                asked = KeyRequest(**{k: v for k, v in body.items() if k != "reason"})
            except (TypeError, ValidationError) as exc:
                raise InvalidRequest(f"the key request is not valid: {_problems(exc)}", param="body") from None
            self._check_routes(asked.routes)
            key, record = await self.runtime.create(asked, actor(request))
            await audit(gateway, "key_create", None, actor(request), after=record, reason=body.get("reason"))
            return web.json_response({"key": key, **record})

        async def listing(request: web.Request) -> web.Response:
            gateway.require_admin(request)
            return web.json_response({"keys": self.runtime.listing(request.query.get("team"))})

        async def act(request: web.Request) -> web.Response:
            gateway.require_admin(request)
            body = await read_body(request)
            key_id, action, who = request.match_info["id"], request.match_info["action"], actor(request)
            if action == "revoke":
                record = await self.runtime.revoke(key_id, who)
                await audit(gateway, "key_revoke", None, who, after=record, reason=body.get("reason"))
                return web.json_response(record)
            if action != "rotate":
                raise InvalidRequest(f"no key action '{action}' (rotate, revoke)", param="action")
            overlap = body.get("overlap_seconds", 3600)
            if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0 <= overlap <= 30 * 86400:
                raise InvalidRequest("'overlap_seconds' must be 0 to 2592000 (30 days)", param="overlap_seconds")
            key, record, previous = await self.runtime.rotate(key_id, float(overlap), who)
            why = body.get("reason")
            await audit(gateway, "key_rotate", None, who, before=previous, after=record, reason=why)
            return web.json_response({"key": key, **record, "previous": previous})

        return [
            web.post("/admin/keys", create),
            web.get("/admin/keys", listing),
            web.post("/admin/keys/{id}/{action}", act),
        ]

    def _check_routes(self, routes: list[str] | None) -> None:
        known = self.gateway.config.settings.routes
        for route in routes or ():
            if route not in known:
                raise InvalidRequest(
                    f"unknown route '{route}' (routes: {', '.join(sorted(known)) or 'none'})", param="routes"
                )

    @hookimpl
    def config_problems(self, config):
        section = config.settings.plugins.get(NAME)
        if section is None:
            return []
        try:
            settings = config.plugin_options(NAME, Settings)
        except ConfigError as exc:
            return exc.problems
        problems = []
        routes = config.settings.routes
        for name, team in settings.teams.items():
            for route in team.routes or ():
                if route not in routes:
                    problems.append(
                        f"plugins.{NAME}.teams.{name}.routes: unknown route '{route}' "
                        f"(routes: {', '.join(sorted(routes)) or 'none'})"
                    )
        admin = config.server.admin_token
        if admin and hash_key(admin) in {k for t in settings.teams.values() for k in t.keys}:
            problems.append(f"plugins.{NAME}.teams: the admin token is also a client key; give clients their own")
        return problems

    @hookimpl
    def config_reloaded(self, gateway, config):
        section = config.settings.plugins.get(NAME)
        if section is not None:  # validated by config_problems before the reload was accepted
            self._install(config.plugin_options(NAME, Settings))

    @hookimpl
    def admin_status(self, gateway):
        made = self.runtime.listing() if self.runtime is not None else []
        live = [r for r in made if self.runtime.state_of(r) == "live"] if self.runtime is not None else []
        return {
            NAME: {
                **{
                    name: {
                        "keys": len(team.keys),
                        "routes": team.routes,
                        "requests_per_minute": team.requests_per_minute,
                        "tokens_per_day": team.tokens_per_day,
                    }
                    for name, team in self.teams.items()
                },
                "keys_made_at_run_time": {"total": len(made), "live": len(live)},
            }
        }


def _problems(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return str(exc)


# --- the command line (registered by plugins.api_keys.commands) --------------------------------


def _cmd_new(args) -> int:
    key = new_key()
    print(f"key for team {args.team} (shown once; give it to the team, keep only the hash):")
    print(f"  {key}")
    print(f"add under plugins.{NAME}.teams.{args.team}.keys:")
    print(f'  - "{hash_key(key)}"')
    return 0


def _cmd_hash(args) -> int:
    key = args.key if args.key not in (None, "-") else sys.stdin.readline()
    key = key.strip()
    if not key:
        print("llmgate keys hash: no key given", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0
