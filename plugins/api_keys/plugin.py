"""api_keys: client API keys that name a team, and the routes each team may call.

A caller sends its key as `Authorization: Bearer <key>`, as the OpenAI SDKs do, or as `x-api-key`,
as the Anthropic SDK does. The config holds only each key's SHA-256 (`sha256:<hex>`, printed by
`llmgate keys new` / `llmgate keys hash`), so a leaked config file leaks no key. `authenticate`
answers 401 (`authentication_error`) for a missing or unknown key before the request's body is read,
and names the team, which becomes `ctx.tenant` (the traffic log records it, the semantic cache
scopes by it, feedback and usage use it); `authorize` answers 403 (`permission_error`) for a route
outside the team's `routes`, before any plugin may answer; `visible_routes` makes GET /v1/models
and a 404's list of routes name only the team's routes.

Off by default. While it is off, any key (or none) passes through as before and `ctx.tenant`
stays unset. While it is on, every chat request needs a configured key. The gateway's provider
keys are never the caller's concern: callers only ever hold these client keys.

Both run before any `before_route` plugin, wherever `plugins:` lists them: a cache hit never skips them.
The team limits (`requests_per_minute`, `tokens_per_day`) are enforced by the `quotas` plugin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.config import ConfigError
from gateway.context import caller_key
from gateway.errors import PermissionDenied, Unauthorized
from gateway.hookspecs import hookimpl

NAME = "api_keys"
KEY_PREFIX = "sk-lg-"  # shaped like a provider key, so the log scrubber hides one anywhere it appears
_HASHED = re.compile(r"sha256:[0-9a-f]{64}")


def hash_key(key: str) -> str:
    """The config form of a key: `sha256:` and the hex SHA-256 of the key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


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
            raise Unauthorized(
                "You didn't provide an API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
                code="missing_api_key",
            )
        given = hash_key(api_key)
        team, stored = self._by_hash.get(given, (None, ""))
        if team is None or not hmac.compare_digest(given.encode(), stored.encode()):
            raise Unauthorized(
                "Incorrect API key provided: ask the gateway's operator for a key", code="invalid_api_key"
            )
        return team

    def team_of_request(self, request: web.Request) -> str:
        """The caller's team from an HTTP request's bearer key (for endpoints beside chat completions)."""
        return self.team_of(caller_key(request))

    def check_route(self, team: str, route: str) -> None:
        allowed = self.teams[team].routes
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
        if ctx.tenant in self.teams:  # a tenant another plugin authenticated is that plugin's to check
            self.check_route(ctx.tenant, ctx.route_name)

    @hookimpl
    def visible_routes(self, request, routes):
        """Only the team's routes: a caller never learns another team's route names (401 without a key)."""
        allowed = self.teams[self.team_of_request(request)].routes
        return list(routes) if allowed is None else [route for route in routes if route in allowed]

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
        return {
            NAME: {
                name: {
                    "keys": len(team.keys),
                    "routes": team.routes,
                    "requests_per_minute": team.requests_per_minute,
                    "tokens_per_day": team.tokens_per_day,
                }
                for name, team in self.teams.items()
            }
        }


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
