"""The `openai` kind: any server that speaks the OpenAI chat-completions API (OpenAI, vLLM, llama.cpp, TGI, Ollama)."""

from __future__ import annotations

from typing import Any, AsyncIterator

from ..bodies import loads
from ..chat import completion_to_chunks, native
from ..errors import UpstreamError
from .base import BackendSettings
from .http import HttpBackend, error_detail, iter_sse
from .params import check_parameters


class OpenAISettings(BackendSettings):
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    organization: str | None = None
    headers: dict[str, str] = {}


class OpenAIBackend(HttpBackend):
    kind = "openai"
    Settings = OpenAISettings
    secret_fields = ("api_key",)

    def _headers(self) -> dict[str, str]:
        s = self.settings
        headers = dict(s.headers)
        if s.api_key and s.api_key.lower() != "none":
            headers["Authorization"] = f"Bearer {s.api_key}"
        if s.organization:
            headers["OpenAI-Organization"] = s.organization
        return headers

    async def start(self) -> None:
        await super().start()
        self._url = self.settings.base_url.rstrip("/") + "/chat/completions"
        self._embeddings_url = self.settings.base_url.rstrip("/") + "/embeddings"

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat request as sent: every parameter passes (the server decides), and a Responses caller's
        fields the chat form lacks but this API has (`text.verbosity` as `verbosity`) go with it."""
        request = self.upstream_body(body)
        check_parameters(request, self.name, self.kind)
        if (extra := native(body, self.kind)) is not None:
            request.update(extra["params"])
        return request

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.post(self._url, self._request(body)) as resp:
            return await self.json_body(resp)

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """The server's own embeddings endpoint, the request as the caller sent it (the server decides)."""
        async with self.post(self._embeddings_url, {**body, "model": self.model}) as resp:
            return await self.json_body(resp)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request = self._request(body)
        request["stream"] = True
        request["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        async with self.post(self._url, request) as resp:
            if resp.content_type == "application/json":  # a server that answered whole: replayed, if it is whole
                answer = await self.json_body(resp)
                if "error" in answer or not answer.get("choices"):
                    raise UpstreamError(
                        f"backend '{self.name}' answered a stream request with JSON that is not a completion",
                        retryable=True,
                    )
                for chunk in completion_to_chunks(answer):
                    yield chunk
                return
            async for _event, data in iter_sse(resp.content):
                if data == "[DONE]":
                    return
                try:
                    chunk = loads(data)
                except ValueError:
                    raise UpstreamError(
                        f"backend '{self.name}' sent a stream event that is not JSON", retryable=True
                    ) from None
                if "error" in chunk:
                    raise UpstreamError(f"backend '{self.name}' failed mid-stream: {error_detail(data)}")
                yield chunk
