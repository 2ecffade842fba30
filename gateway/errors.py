"""Errors a caller can see, in the OpenAI error shape, and the scrubbing that keeps secrets out of them.

Every failure that reaches a client goes through `GatewayError`, so the official SDKs raise
their matching exception (`BadRequestError` for 400, `NotFoundError` for 404, ...).
"""

from __future__ import annotations

import re
from typing import Iterable


class GatewayError(Exception):
    """A failure with an HTTP status and an OpenAI-style `error` object."""

    status = 500
    type = "server_error"
    #: False when sending the same request again cannot help (a configuration error, a refusal that
    #: stands): the answer then says `x-should-retry: false`, which the official SDKs obey instead of
    #: retrying a 5xx or 409 twice with backoff. None leaves the choice to the client.
    retry: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response_headers(self) -> dict[str, str]:
        """The headers this error's answer carries: its own (`Retry-After`, ...) and whether to retry."""
        if self.retry is False:
            return {**self.headers, "x-should-retry": "false"}
        return self.headers

    def body(self) -> dict:
        return {
            "error": {
                "message": presentable(self.message),
                "type": self.type,
                "param": presentable(self.param, 200) if self.param else self.param,
                "code": self.code,
            }
        }


MAX_MESSAGE_CHARS = 1000


def presentable(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Text an answer can carry: valid UTF-8 (a caller's lone surrogate becomes "?"), and the middle of
    an over-long message (one echoing a hostile value) left out, keeping its start and its end.

    Applied when the error is written, after scrubbing, so a secret is never cut into an unrecognisable piece.
    """
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 4
    return f"{text[:head]} ... ({len(text) - head - tail} characters left out) ... {text[-tail:]}"


class InvalidRequest(GatewayError):
    status, type = 400, "invalid_request_error"


class NotFound(GatewayError):
    status, type = 404, "invalid_request_error"


class BodyTooLarge(GatewayError):
    status, type = 413, "invalid_request_error"


class UnsupportedMediaType(GatewayError):
    status, type = 415, "invalid_request_error"


class Unauthorized(GatewayError):
    status, type = 401, "authentication_error"


class PermissionDenied(GatewayError):
    """The caller is known but may not do this (a route outside its team's)."""

    status, type = 403, "permission_error"


class RateLimited(GatewayError):
    status, type = 429, "rate_limit_error"


# Said wherever a newcomer meets missing keys (the 503, the start-up banner): the way to try it with none.
NO_KEYS_HINT = "No provider keys at all? `make demo` in a checkout serves a local model that needs none."


class MissingCredentials(GatewayError):
    """A backend cannot be called until an operator sets its secret."""

    status, type = 503, "configuration_error"
    retry = False


class StoreUnavailable(GatewayError):
    """The shared state store cannot be reached: requests still route, changes cannot be made."""

    status, type = 503, "state_store_unavailable"


class UpstreamError(GatewayError):
    """The backend answered with an error, or could not be reached.

    `retryable` says whether the same request may succeed on a second try or on another backend;
    `too_long`, that the prompt does not fit this backend's context window (one with a longer one may
    take it: the route's `context_fallback`).
    """

    status, type = 502, "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        too_long: bool = False,
        **kw,
    ):
        super().__init__(message, **kw)
        self.upstream_status = upstream_status
        self.retryable = retryable
        self.too_long = too_long
        if not retryable:
            self.retry = False
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    status, type = 504, "timeout_error"

    def __init__(self, message: str, **kw):
        kw.setdefault("retryable", True)
        super().__init__(message, **kw)


RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # OpenAI's code for it, which the SDKs and frameworks know
# How providers say a prompt does not fit the model's context window: OpenAI's code and message (vLLM and
# DeepSeek say it the same way; the Responses API "exceeds the context window"), llama.cpp's error type
# and message, Anthropic's (Claude on Bedrock too: "prompt is too long: 210000 tokens > 200000 maximum",
# "input length and `max_tokens` exceed context limit"), and Bedrock's ValidationException.
_TOO_LONG = re.compile(
    r"context_length_exceeded|maximum context length|exceeds? the context window|exceed_context_size"
    r"|exceeds the available context size|prompt is too long|exceed context limit|input is too long"
    r"|too many input tokens",
    re.IGNORECASE,
)


def prompt_too_long(status: int, text: str) -> bool:
    """Whether an upstream's error (its status and body, or message) says the prompt is longer than its window."""
    return status in (400, 413, 422) and _TOO_LONG.search(text) is not None


def from_upstream_status(
    backend: str, status: int, detail: str, retry_after: float | None = None, body: str | None = None
) -> UpstreamError:
    """Map an upstream HTTP error to what the caller should see.

    The caller's own mistakes (400, 404, 413, 422) stay 400s; the gateway's problems with its
    provider (401, 403: our key) and the provider's failures become 502; a provider's 429 stays 429.
    A prompt too long for the backend's window (read from the whole error `body` where there is one:
    OpenAI says it in `code`) is a 400 with the code `context_length_exceeded`, marked `too_long`.
    """
    message = f"backend '{backend}' answered {status}: {detail}" if detail else f"backend '{backend}' answered {status}"
    retryable = status in RETRYABLE_STATUSES
    if status == 429:
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
        return UpstreamError(
            message,
            status=429,
            type="rate_limit_error",
            upstream_status=status,
            retryable=True,
            retry_after=retry_after,
            headers=headers,
        )
    if status in (400, 404, 413, 422):
        too_long = prompt_too_long(status, body or detail)
        return UpstreamError(
            message,
            status=400,
            type="invalid_request_error",
            upstream_status=status,
            code=CONTEXT_LENGTH_EXCEEDED if too_long else None,
            too_long=too_long,
        )
    return UpstreamError(message, upstream_status=status, retryable=retryable, retry_after=retry_after)


_KEY_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|Bearer\s+[A-Za-z0-9._\-]{8,})"
)


class Scrubber:
    """Removes known secret values, and strings shaped like provider keys, from text.

    The config registers every value that came from a secret (API keys, `${ENV}` values), so an
    upstream that echoes our key in its error message never passes it on.
    """

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return _KEY_SHAPES.sub("***", text)
