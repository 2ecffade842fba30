"""What every backend kind provides: one chat request in the OpenAI shape, answered whole or streamed.

The OpenAI chat format is the gateway's lingua franca. A backend receives the caller's validated
body with `model` already set to its own model id, and returns a `chat.completion` dict, or yields
`chat.completion.chunk` dicts; kinds that speak another API translate both ways. Failures are
raised as `UpstreamError` / `UpstreamTimeout` with `retryable` set, so the router can retry or fall back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any, AsyncIterator, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..breaker import BreakerSettings, CircuitBreaker
from ..chat import without_native
from ..errors import InvalidRequest
from .params import ignored_parameters


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connect: float = Field(5.0, gt=0, description="seconds to open a connection")
    first_byte: float = Field(
        60.0, gt=0, description="seconds to wait for the answer to start, and between stream chunks"
    )
    total: float = Field(600.0, gt=0, description="seconds for the whole exchange")


class BackendSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    model: str
    timeout: Timeouts = Timeouts()
    max_concurrency: int = Field(64, ge=1, description="requests in flight to this backend at once")
    breaker: BreakerSettings = BreakerSettings()
    system_prompt: str | None = Field(
        None,
        description="a system message sent before the caller's messages: one model under two prompts "
        "makes two variants to roll out, shadow and compare",
    )
    params: dict[str, Any] = Field(
        {}, description="request parameters this backend uses where the caller sets none (temperature, max_tokens, ...)"
    )
    context_window: int | None = Field(
        None,
        gt=0,
        description="tokens the model takes, prompt and answer together: a request whose prompt (estimated "
        "at 4 characters a token) plus max_tokens cannot fit skips this backend without a call, for the "
        "route's context_fallback; unset: only the upstream's own too-long error moves a request",
    )

    @field_validator("params")
    @classmethod
    def _not_the_request_itself(cls, value: dict[str, Any]) -> dict[str, Any]:
        if fixed := sorted(set(value) & {"model", "messages", "stream"}):
            raise ValueError(
                f"{', '.join(fixed)} cannot be set here: the request itself decides "
                f"{'them' if len(fixed) > 1 else 'it'}"
            )
        return value


class Backend(ABC):
    """One configured upstream model."""

    kind: ClassVar[str]
    Settings: ClassVar[type[BackendSettings]] = BackendSettings
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, settings: BackendSettings, unset_env: dict[str, str]):
        self.name = name
        self.settings = settings
        self.model = settings.model
        self._unset_env = unset_env  # field -> environment variable that was not set
        self.breaker = CircuitBreaker(name, settings.breaker)  # kept while this backend object is reused
        self._system = None if settings.system_prompt is None else {"role": "system", "content": settings.system_prompt}

    def missing_credentials(self) -> list[str]:
        """Environment variables to set before this backend can be called; empty when ready."""
        return [
            self._unset_env[f]
            for f in self.secret_fields
            if getattr(self.settings, f, None) is None and f in self._unset_env
        ]

    def pick(self, key: str | None = None, avoid: Collection[str] = ()) -> Backend | None:
        """The backend that takes a try of a request: this one (a pool picks one of its members, gateway/pools.py)."""
        return self

    def breakers(self) -> dict[str, CircuitBreaker]:
        """The breakers that say whether it serves, by name: its own (a pool's members' their own)."""
        return {self.name: self.breaker}

    def upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The caller's request as this backend sends it: its model, its default params, its system prompt
        (and without the native slot: a kind that reads it takes it from `body`, gateway/chat.py)."""
        request = {**self.settings.params, **without_native(body), "model": self.model}
        if self._system is not None:
            request["messages"] = [self._system, *body["messages"]]
        return request

    def ignored_params(self, body: dict[str, Any]) -> list[str]:
        """The request's parameters this backend accepts without effect (hints such as store or service_tier,
        per `params.POLICY`), for the request path to report; raises nothing: refusals come from the call."""
        return ignored_parameters(self.upstream_body(body), self.kind)

    async def start(self) -> None:
        """Open connections or clients; called once before the first request."""

    async def close(self) -> None:
        """Release what `start` opened; called after the last request."""

    @abstractmethod
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a non-streaming request with a chat.completion dict."""

    @abstractmethod
    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield chat.completion.chunk dicts; the last carries `usage` (choices empty)."""

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer an OpenAI embeddings request (`model` already this backend's) with an OpenAI `list` of
        embeddings; kinds that serve none refuse it."""
        raise InvalidRequest(
            f"backend '{self.name}' ({self.kind}) does not serve embeddings: route embeddings "
            "to an OpenAI-compatible or a Bedrock embedding model",
            param="model",
            code="embeddings_not_supported",
        )
