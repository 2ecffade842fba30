"""The `bedrock` kind: Amazon Bedrock's Converse API through boto3's `bedrock-runtime` client.

One kind covers base models, inference profiles and fine-tuned models (custom-model deployment or
provisioned-throughput ARNs): Converse takes all of them as `modelId`. boto3 is synchronous, so
every call runs on this backend's own thread pool, sized like its connection pool, and streams are
handed to the event loop through a bounded queue. botocore's own retries are off: the gateway
retries and falls back itself.
"""
from __future__ import annotations

import asyncio
import base64
import contextvars
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, AsyncIterator

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EventStreamError,
    NoCredentialsError,
    ParamValidationError,
    ProfileNotFound,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout

from .. import tracing
from ..chat import completion, max_tokens_of, stop_list, usage
from ..errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout, from_upstream_status
from . import turns
from .base import Backend, BackendSettings

NO_CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile or role)"
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
# Errors sent inside an event stream carry no HTTP status: the service model's (a model failing mid-answer: 502).
STREAM_ERROR_STATUS = {"throttlingexception": 429, "validationexception": 400, "serviceunavailableexception": 503,
                       "internalserverexception": 500, "modelstreamerrorexception": 502}
QUEUE_SLOTS = 16  # stream events read ahead of the consumer
_END = object()


class BedrockSettings(BackendSettings):
    region: str
    endpoint_url: str | None = None
    profile: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    additional_model_request_fields: dict[str, Any] | None = None


class BedrockBackend(Backend):
    kind = "bedrock"
    Settings = BedrockSettings
    secret_fields = ("aws_access_key_id", "aws_secret_access_key")

    def __init__(self, name: str, settings: BedrockSettings, unset_env: dict[str, str]):
        super().__init__(name, settings, unset_env)
        self._executor: ThreadPoolExecutor | None = None
        self._client = None
        self._missing: list[str] | None = None  # resolved once: start() or the first check

    # --- credentials and client -------------------------------------------------------------------

    def _session(self) -> boto3.Session:
        s = self.settings
        keys = {}
        if s.aws_access_key_id and s.aws_secret_access_key:  # otherwise the standard credential chain
            keys = {"aws_access_key_id": s.aws_access_key_id, "aws_secret_access_key": s.aws_secret_access_key,
                    "aws_session_token": s.aws_session_token}
        return boto3.Session(profile_name=s.profile, region_name=s.region, **keys)

    def _resolve(self) -> boto3.Session | None:
        """Find credentials the way boto3 would; record what is missing rather than failing later."""
        try:
            session = self._session()
        except ProfileNotFound:
            self._missing = [f"the AWS profile '{self.settings.profile}' (not found in the AWS config files)"]
            return None
        creds = session.get_credentials()
        self._missing = [] if creds and creds.access_key and creds.secret_key else [NO_CREDENTIALS]
        return session

    def missing_credentials(self) -> list[str]:
        missing = super().missing_credentials()
        if missing:
            return missing
        if self._missing is None:  # not started (e.g. `check-config`): resolve now, off any event loop
            self._resolve()
        return self._missing

    def _make_client(self):
        session = self._resolve()
        if session is None:
            return None
        t, n = self.settings.timeout, self.settings.max_concurrency
        # In Config, retries' `max_attempts` counts retries (1 would mean two tries); one try in all:
        config = Config(max_pool_connections=n, connect_timeout=t.connect, read_timeout=t.first_byte,
                        retries={"total_max_attempts": 1, "mode": "standard"})
        client = session.client("bedrock-runtime", region_name=self.settings.region,
                                endpoint_url=self.settings.endpoint_url, config=config)
        # traceparent of the attempt's span (the pool thread runs in the caller's copied context)
        client.meta.events.register("before-send.bedrock-runtime.*", _add_traceparent)
        return client

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.settings.max_concurrency, thread_name_prefix=f"bedrock-{self.name}")
        self._client = await asyncio.get_running_loop().run_in_executor(self._executor, self._make_client)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    # --- OpenAI -> Converse -----------------------------------------------------------------------

    def _block(self, block: turns.Block) -> dict | None:
        if isinstance(block, turns.Text):
            return {"text": block.text} if block.text else None  # Converse refuses blank text blocks
        if isinstance(block, turns.Image):
            if block.data is None:
                raise InvalidRequest(f"backend '{self.name}' (bedrock) needs images inline as base64 data URLs, "
                                     "not links", param="messages", code="unsupported_content")
            fmt = IMAGE_FORMATS.get((block.media_type or "").lower())
            if fmt is None:
                raise InvalidRequest(f"backend '{self.name}' (bedrock) takes png, jpeg, gif or webp images, "
                                     f"not {block.media_type}", param="messages", code="unsupported_content")
            try:
                data = base64.b64decode(block.data, validate=True)
            except ValueError:
                raise InvalidRequest("an image's data URL is not valid base64", param="messages") from None
            return {"image": {"format": fmt, "source": {"bytes": data}}}
        if isinstance(block, turns.ToolCall):
            return {"toolUse": {"toolUseId": block.id, "name": block.name, "input": block.input}}
        return {"toolResult": {"toolUseId": block.tool_call_id, "content": [{"text": block.content}]}}

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        body = self.upstream_body(body)
        turns.unsupported(body, self.name, "bedrock")
        system, conversation = turns.to_turns(body["messages"])
        messages = [{"role": t.role, "content": [b for b in map(self._block, t.blocks) if b is not None]}
                    for t in conversation]
        request: dict[str, Any] = {"modelId": self.model, "messages": messages}
        if any(system):
            request["system"] = [{"text": text} for text in system if text]
        config = {"maxTokens": max_tokens_of(body), "temperature": body.get("temperature"),
                  "topP": body.get("top_p"), "stopSequences": stop_list(body) or None}
        if config := {k: v for k, v in config.items() if v is not None}:
            request["inferenceConfig"] = config
        if tools := self._tool_config(body, conversation):
            request["toolConfig"] = tools
        if self.settings.additional_model_request_fields:
            request["additionalModelRequestFields"] = self.settings.additional_model_request_fields
        return request

    def _tool_config(self, body: dict, conversation: list[turns.Turn]) -> dict | None:
        """Converse has no tool_choice 'none': keep the tools only where tool blocks in the history need them."""
        specs = turns.tool_specs(body)
        if not specs:
            return None
        choice = turns.tool_choice(body)
        if choice and choice[0] == "none":
            history = any(isinstance(b, (turns.ToolCall, turns.ToolResult)) for t in conversation for b in t.blocks)
            if not history:
                return None
        tools = [{"toolSpec": {"name": s.name, "inputSchema": {"json": s.parameters},
                               **({"description": s.description} if s.description else {})}} for s in specs]
        config: dict[str, Any] = {"tools": tools}
        if choice and choice[0] in ("auto", "any"):
            config["toolChoice"] = {choice[0]: {}}
        elif choice and choice[0] == "tool":
            config["toolChoice"] = {"tool": {"name": choice[1]}}
        return config

    # --- calls and errors -------------------------------------------------------------------------

    def _error(self, exc: BaseException) -> GatewayError:
        """botocore's failures as the gateway's; messages carry AWS's error code and text, never credentials."""
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, EventStreamError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = STREAM_ERROR_STATUS.get(code.lower(), 502)
            return from_upstream_status(self.name, status, f"{code} in the stream: "
                                        f"{exc.response.get('Error', {}).get('Message', '')}")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 502
            return from_upstream_status(self.name, status, f"{error.get('Code', '')}: {error.get('Message', '')}")
        if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError, Urllib3ReadTimeout)):
            t = self.settings.timeout
            return UpstreamTimeout(f"backend '{self.name}' did not answer in time (connect {t.connect:g}s, "
                                   f"first byte {t.first_byte:g}s)")
        if isinstance(exc, NoCredentialsError):
            return UpstreamError(f"backend '{self.name}' has no credentials: set {NO_CREDENTIALS}", status=503)
        if isinstance(exc, ParamValidationError):
            return from_upstream_status(self.name, 400, str(exc).splitlines()[-1][:500])
        if isinstance(exc, BotoCoreError):  # EndpointConnectionError, ConnectionClosedError, ...
            return UpstreamError(f"could not reach backend '{self.name}': {type(exc).__name__}", retryable=True)
        if isinstance(exc, (Urllib3Error, ConnectionError)):  # the event stream reads the socket without botocore
            return UpstreamError(f"backend '{self.name}' broke the connection: {type(exc).__name__}", retryable=True)
        return UpstreamError(f"backend '{self.name}' failed: {type(exc).__name__}", retryable=True)

    def _ready(self) -> None:
        if self._client is None:
            raise UpstreamError(f"backend '{self.name}' has no client: {', '.join(self.missing_credentials())}",
                                status=503)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        request = self._request(body)
        self._ready()
        call = asyncio.get_running_loop().run_in_executor(
            self._executor, contextvars.copy_context().run, partial(self._client.converse, **request))
        try:
            response = await asyncio.wait_for(call, self.settings.timeout.total)
        except TimeoutError:
            raise UpstreamTimeout(f"backend '{self.name}' did not answer within {self.settings.timeout.total:g}s") \
                from None
        except Exception as exc:
            raise self._error(exc) from None
        blocks: list[turns.Block] = []
        for block in (response.get("output", {}).get("message") or {}).get("content", []):
            if "text" in block:
                blocks.append(turns.Text(block["text"]))
            elif "toolUse" in block:
                use = block["toolUse"]
                blocks.append(turns.ToolCall(use["toolUseId"], use["name"], use.get("input", {})))
        return completion(f"chatcmpl-bedrock-{uuid.uuid4().hex}", self.model, turns.message_from_blocks(blocks),
                          turns.finish_reason(response.get("stopReason")), _usage(response.get("usage") or {}))

    async def _events(self, request: dict[str, Any]) -> AsyncIterator[dict]:
        """converse_stream's blocking iterator, read by one pool thread and handed over with backpressure.

        The thread waits for a free slot before each hand-over; when the consumer stops early it sets
        `stop`, frees a slot and shuts the socket, so the thread ends and the connection is dropped.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        slots, stop = threading.Semaphore(QUEUE_SLOTS), threading.Event()
        holder: dict[str, Any] = {}

        def hand_over(item: Any) -> bool:
            slots.acquire()
            if stop.is_set():
                return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone
                return False
            return True

        def pump() -> None:
            if stop.is_set():  # the consumer left while this waited for a pool thread
                return
            try:
                holder["events"] = events = self._client.converse_stream(**request)["stream"]
                for event in events:
                    if not hand_over(event):
                        return
                hand_over(_END)
            except Exception as exc:
                hand_over(exc)
            finally:
                if "events" in holder:
                    holder["events"].close()

        loop.run_in_executor(self._executor, contextvars.copy_context().run, pump)
        deadline = loop.time() + self.settings.timeout.total
        done = False
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise UpstreamTimeout(f"backend '{self.name}' did not finish within "
                                          f"{self.settings.timeout.total:g}s") from None
                slots.release()
                if item is _END:
                    done = True
                    return
                if isinstance(item, Exception):
                    done = True
                    raise self._error(item)
                yield item
        finally:
            stop.set()
            slots.release()
            if not done:  # interrupt a read the pump thread may be blocked in (urllib3 allows it from here)
                try:
                    holder["events"]._raw_stream.shutdown()
                except Exception:
                    pass

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request = self._request(body)
        self._ready()
        out = turns.ChunkBuilder(f"chatcmpl-bedrock-{uuid.uuid4().hex}", self.model)
        started = finished = False
        events = self._events(request)
        try:
            async for event in events:
                if not started:  # the first chunk waits for the first event, so a refused call can still fall back
                    started = True
                    yield out.start()
                if "contentBlockStart" in event:
                    e = event["contentBlockStart"]
                    if use := e.get("start", {}).get("toolUse"):
                        yield out.tool_start(e["contentBlockIndex"], use["toolUseId"], use["name"])
                elif "contentBlockDelta" in event:
                    e = event["contentBlockDelta"]
                    delta = e.get("delta", {})
                    if delta.get("text"):
                        yield out.text(delta["text"])
                    elif "toolUse" in delta:
                        yield out.tool_arguments(e["contentBlockIndex"], delta["toolUse"].get("input", ""))
                elif "messageStop" in event:
                    finished = True
                    yield out.finish(event["messageStop"].get("stopReason"))
                elif "metadata" in event:
                    u = _usage(event["metadata"].get("usage") or {})
                    out.prompt_tokens, out.completion_tokens = u["prompt_tokens"], u["completion_tokens"]
                    out.cached_tokens = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        finally:
            await events.aclose()
        if not finished:
            raise UpstreamError(f"backend '{self.name}' ended the stream before the answer was complete",
                                retryable=True)
        yield out.usage()


def _add_traceparent(request, **_) -> None:
    """botocore's before-send event: the current span's traceparent on the outgoing request, if any."""
    headers = tracing.inject({})
    for name, value in headers.items():
        request.headers[name] = value


def _usage(u: dict) -> dict:
    """Converse counts cache reads and writes apart from inputTokens; OpenAI's prompt_tokens includes them."""
    cached = u.get("cacheReadInputTokens") or 0
    prompt = (u.get("inputTokens") or 0) + cached + (u.get("cacheWriteInputTokens") or 0)
    return usage(prompt, u.get("outputTokens") or 0, cached or None)
