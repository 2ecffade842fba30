"""What the HTTP backend kinds share: one pooled aiohttp session per backend, error mapping, SSE reading."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import aiohttp

from .. import tracing
from ..bodies import loads
from ..context import dumps_encodable
from ..errors import UpstreamError, UpstreamTimeout, from_upstream_status
from .base import Backend

JSON_BODY = {"Content-Type": "application/json"}


MAX_SSE_LINE = 2 * 2**20  # the longest line of a stream an upstream may send (aiohttp's own readline limit here)


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[list[bytes]]:
    """The stream's lines, without their newlines, as many as each network read completes."""
    pending = b""
    async for piece in content.iter_any():
        buffer = pending + piece if pending else piece
        lines = buffer.split(b"\n")
        pending = lines.pop()  # after the last newline: not a whole line yet
        if len(buffer) > MAX_SSE_LINE and max(map(len, (pending, *lines))) > MAX_SSE_LINE:
            raise UpstreamError(f"the upstream sent a stream line longer than {MAX_SSE_LINE} bytes", retryable=True)
        yield lines
    if pending:  # the last line, ended by the end of the body
        yield [pending]


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str | None, str]]:
    """Yield (event, data) for each server-sent event; comments and ids are skipped.

    Lines are split here from what each read brings (one await a read, not one a line): a stream of a
    few hundred events was paying aiohttp's line reader twice an event."""
    event: str | None = None
    data: list[str] = []
    async for lines in _lines(content):
        for raw in lines:
            line = raw.decode("utf-8").rstrip("\r")
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = None, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
    if data:
        yield event, "\n".join(data)


_CREDENTIAL_HEADER = re.compile(r"authorization|key|token|secret", re.IGNORECASE)


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_detail(text: str) -> str:
    """The provider's own error message when the body has one (OpenAI and Anthropic both nest it)."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:500]
        if isinstance(error, str):
            return error[:500]
    return text[:500]


class HttpBackend(Backend):
    """A backend reached over HTTP with aiohttp."""

    def _headers(self) -> dict[str, str]:
        return {}

    def _without_credentials(self, text: str) -> str:
        """The provider's error text without the credentials this backend sent (some providers echo a bad key).

        Cut here, where the error is made, so the key reaches no attempt record, log, trace or caller."""
        for name, value in self._headers().items():
            if _CREDENTIAL_HEADER.search(name) and value:
                for secret in {value, value.removeprefix("Bearer ").strip()}:
                    if len(secret) >= 4:
                        text = text.replace(secret, "***")
        return text

    async def start(self) -> None:
        t = self.settings.timeout
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.max_concurrency, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),  # one session serves every caller: an upstream's cookie is no one's
            timeout=aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_byte),
            headers=self._headers(),
            read_bufsize=2**20,
        )

    async def close(self) -> None:
        await self._session.close()

    @asynccontextmanager
    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST `body` (with this request's own `headers` beside the backend's); yield a 2xx response or
        raise an UpstreamError that says what went wrong."""
        t = self.settings.timeout
        try:
            # traceparent of the attempt's span when tracing is on: the upstream's trace continues this one
            # serialized here, compact, and always encodable (a judge's prompt may quote an upstream's lone surrogate)
            data = dumps_encodable(body)
            async with self._session.post(
                url, data=data, headers=tracing.inject({**JSON_BODY, **(headers or {})})
            ) as resp:
                if resp.status >= 400:
                    text = await resp.text(errors="replace")
                    detail = self._without_credentials(error_detail(text))
                    raise from_upstream_status(self.name, resp.status, detail, _retry_after(resp.headers), text)
                yield resp
        except UpstreamError:
            raise
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(f"backend '{self.name}' did not accept a connection within {t.connect:g}s") from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(
                f"backend '{self.name}' did not answer within its timeout "
                f"(first byte {t.first_byte:g}s, total {t.total:g}s)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                f"could not connect to backend '{self.name}': {exc.os_error.strerror or exc}", retryable=True
            ) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(
                f"backend '{self.name}' broke the connection: {type(exc).__name__}", retryable=True
            ) from None

    async def json_body(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        try:
            if resp.charset in (None, "utf-8", "UTF-8"):  # read as aiohttp would, parsed once by orjson
                raw = (await resp.read()).strip()
                body = loads(raw.decode("utf-8")) if raw else None
            else:
                body = await resp.json(content_type=None)
        except ValueError:
            raise UpstreamError(
                f"backend '{self.name}' answered with a body that is not JSON", retryable=True
            ) from None
        if not isinstance(body, dict):
            raise UpstreamError(f"backend '{self.name}' answered with JSON that is not an object", retryable=True)
        return body
