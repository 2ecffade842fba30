"""Team keys made at run time: created, listed, rotated, revoked and expired through the admin API, without
a restart, and seen by every replica.

Each key is a record in the state store under `apikey:<sha256 hex>` (the key itself is never
stored: it is shown once, at creation): its id (`key_<hex>`, what operators name it by), team,
name, the first characters of the key (to recognise it), creation, an optional expiry, a
revocation time, the routes it may call (within its team's, when the team is in the config) and
optional per-key limits. Every replica keeps all records in memory (a lookup is one dict get on the
request path) and reloads one when the store's change notice names it: over Redis that is
milliseconds, so a revoked key is refused everywhere within a second; a full reload also runs on
`resync` (a lost connection) and every `resync_seconds`, in case a notice was missed.

Rotation makes a new key with the old one's team, name, routes and limits, and gives the old one an
expiry `overlap` seconds away, so callers can move over without a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidRequest, NotFound

log = logging.getLogger("llmgate.api_keys")

PREFIX = "apikey:"
SHOWN = 10  # characters of a key kept to recognise it: "sk-lg-AbCd", never enough to guess the rest


class KeyRequest(BaseModel):
    """What an operator asks for when creating a key (POST /admin/keys)."""

    model_config = ConfigDict(extra="forbid")
    team: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(min_length=1, max_length=100, description="what the key is for: 'ci', 'alice laptop'")
    expires_in_seconds: float | None = Field(None, gt=0, description="the key stops working this long from now")
    routes: list[str] | None = Field(None, description="routes the key may call (within its team's); unset: the team's")
    requests_per_minute: int | None = Field(None, ge=1, description="this key's own limit, beside its team's")
    tokens_per_day: int | None = Field(None, ge=1, description="this key's own limit, beside its team's")
    daily_usd: float | None = Field(None, gt=0, description="this key's own daily budget (the budgets plugin)")
    monthly_usd: float | None = Field(None, gt=0, description="this key's own monthly budget")


def key_id() -> str:
    return "key_" + secrets.token_hex(8)


class RuntimeKeys:
    """The store's keys, mirrored in memory."""

    def __init__(self, store, hash_key, new_key, resync_seconds: float = 30.0):
        self.store = store
        self._hash, self._new = hash_key, new_key
        self.resync_seconds = resync_seconds
        self.by_hash: dict[str, dict[str, Any]] = {}  # "sha256:<hex>" -> record
        self._task: asyncio.Task | None = None
        self.problem: str | None = None

    # --- lifetime ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.store.subscribe(self._on_change)
        await self.reload()
        self._task = asyncio.create_task(self._resync_forever(), name="api keys resync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def reload(self, digest: str | None = None) -> None:
        """Every record (or the one under `digest`) from the store."""
        if digest is not None:
            record = await self.store.get(PREFIX + digest)
            if isinstance(record, dict):
                self.by_hash["sha256:" + digest] = record
            else:
                self.by_hash.pop("sha256:" + digest, None)
            return
        stored = await self.store.items(PREFIX)
        self.by_hash = {"sha256:" + k[len(PREFIX) :]: v for k, v in stored.items() if isinstance(v, dict)}

    async def _on_change(self, message: dict) -> None:
        try:
            if message.get("kind") == "api_key" and isinstance(message.get("digest"), str):
                await self.reload(message["digest"])
            elif message.get("kind") == "resync":
                await self.reload()
        except Exception as exc:  # the store is down: keep the keys known, try again on the next resync
            log.warning("api keys: could not reload (%s); keeping the keys known", type(exc).__name__)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            try:
                await self.reload()
                self.problem = None
            except Exception as exc:
                self.problem = f"keys made at run time could not be reloaded: {type(exc).__name__}"
                log.warning("api keys: %s", self.problem)

    # --- the request path ----------------------------------------------------------------------------

    def find(self, digest: str, now: float | None = None) -> tuple[dict | None, str | None]:
        """(The live record for a key's hash, None) or (None, why it does not work: revoked, expired)."""
        record = self.by_hash.get(digest)
        if record is None:
            return None, None
        state = self.state_of(record, now)
        return (record, None) if state == "live" else (None, state)

    def state_of(self, record: dict, now: float | None = None) -> str:
        """live, revoked or expired."""
        now = time.time() if now is None else now
        if record.get("revoked_at") is not None:
            return "revoked"
        if record.get("expires_at") is not None and now >= record["expires_at"]:
            return "expired"
        return "live"

    # --- the operator's actions ------------------------------------------------------------------------

    async def create(self, asked: KeyRequest, actor: str, *, like: dict | None = None) -> tuple[str, dict]:
        """A new key and its record; the key is returned once and never kept."""
        key = self._new()
        digest = self._hash(key)[len("sha256:") :]
        now = time.time()
        record = {
            "id": key_id(),
            "team": asked.team,
            "name": asked.name,
            "shown": key[:SHOWN],
            "created_at": now,
            "created_by": actor,
            "expires_at": None if asked.expires_in_seconds is None else now + asked.expires_in_seconds,
            "revoked_at": None,
            "routes": asked.routes,
            "requests_per_minute": asked.requests_per_minute,
            "tokens_per_day": asked.tokens_per_day,
            "daily_usd": asked.daily_usd,
            "monthly_usd": asked.monthly_usd,
            **({"rotated_from": like["id"]} if like else {}),
        }
        await self.store.set(PREFIX + digest, record)
        self.by_hash["sha256:" + digest] = record
        await self.store.publish({"kind": "api_key", "digest": digest})
        return key, record

    def _digest_of(self, key_id: str) -> str:
        for digest, record in self.by_hash.items():
            if record.get("id") == key_id:
                return digest[len("sha256:") :]
        raise NotFound(f"no key with id '{key_id}' (llmgate keys list shows them)", param="id", code="key_not_found")

    async def _change(self, key_id: str, **fields: Any) -> dict:
        digest = self._digest_of(key_id)

        def change(old: dict | None) -> dict:
            if not isinstance(old, dict):
                raise NotFound(f"no key with id '{key_id}'", param="id", code="key_not_found")
            return {**old, **fields}

        _, record = await self.store.update(PREFIX + digest, change)
        self.by_hash["sha256:" + digest] = record
        await self.store.publish({"kind": "api_key", "digest": digest})
        return record

    async def revoke(self, key_id: str, actor: str) -> dict:
        record = self.by_hash.get("sha256:" + self._digest_of(key_id))
        if record and record.get("revoked_at") is not None:
            raise InvalidRequest(f"key '{key_id}' is already revoked", param="id", code="key_revoked")
        return await self._change(key_id, revoked_at=time.time(), revoked_by=actor)

    async def rotate(self, key_id: str, overlap_seconds: float, actor: str) -> tuple[str, dict, dict]:
        """(The new key, its record, the old record with its new expiry)."""
        old = self.by_hash.get("sha256:" + self._digest_of(key_id))
        if old.get("revoked_at") is not None:
            raise InvalidRequest(f"key '{key_id}' is revoked: create a new one", param="id", code="key_revoked")
        asked = KeyRequest(
            team=old["team"],
            name=old["name"],
            routes=old.get("routes"),
            requests_per_minute=old.get("requests_per_minute"),
            tokens_per_day=old.get("tokens_per_day"),
            daily_usd=old.get("daily_usd"),
            monthly_usd=old.get("monthly_usd"),
            expires_in_seconds=None if old.get("expires_at") is None else max(1.0, old["expires_at"] - time.time()),
        )
        key, record = await self.create(asked, actor, like=old)
        ends = time.time() + overlap_seconds
        previous = await self._change(
            key_id, expires_at=min(ends, old["expires_at"]) if old.get("expires_at") else ends, rotated_to=record["id"]
        )
        return key, record, previous

    def listing(self, team: str | None = None) -> list[dict]:
        """Every key's record (no hash, no key), newest first; `team` narrows it."""
        records = [r for r in self.by_hash.values() if team is None or r.get("team") == team]
        return sorted(records, key=lambda r: r.get("created_at", 0), reverse=True)
