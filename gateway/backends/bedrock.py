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
import json
import re
import struct
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, AsyncIterator, Literal

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
from pydantic import Field
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout

from .. import tracing
from ..chat import completion, stop_list, usage
from ..errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout, from_upstream_status
from . import turns
from .base import Backend, BackendSettings
from .params import check_parameters, reasoning_effort_setting, refusal, structured_output_setting

NO_CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile or role)"
IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
}
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9\s()\[\]-]+")  # a document name takes letters, digits, spaces, - ( ) [ ]
# Errors sent inside an event stream carry no HTTP status: the service model's (a model failing mid-answer: 502).
STREAM_ERROR_STATUS = {
    "throttlingexception": 429,
    "validationexception": 400,
    "serviceunavailableexception": 503,
    "internalserverexception": 500,
    "modelstreamerrorexception": 502,
}
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
    claude: bool | None = Field(
        None,
        description="whether the model is an Anthropic Claude model (thinking, "
        "top_k, signed reasoning blocks); unset: a model id naming anthropic or claude is",
    )
    structured_output: Literal["tool", "native"] = structured_output_setting("outputConfig.textFormat")
    reasoning_effort_as: Literal["budget_tokens", "effort"] = reasoning_effort_setting("outputConfig.effort")


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
            keys = {
                "aws_access_key_id": s.aws_access_key_id,
                "aws_secret_access_key": s.aws_secret_access_key,
                "aws_session_token": s.aws_session_token,
            }
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
        config = Config(
            max_pool_connections=n,
            connect_timeout=t.connect,
            read_timeout=t.first_byte,
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        client = session.client(
            "bedrock-runtime", region_name=self.settings.region, endpoint_url=self.settings.endpoint_url, config=config
        )
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

    @property
    def claude(self) -> bool:
        if self.settings.claude is not None:
            return self.settings.claude
        model = self.model.lower()
        return "anthropic" in model or "claude" in model

    def _image(self, block: turns.Image) -> dict:
        if block.data is None:
            raise InvalidRequest(
                f"{block.where}: backend '{self.name}' (bedrock) needs images inline as base64 data URLs, "
                "not links: fetch the image and send it as a data URL",
                param=block.where,
                code="unsupported_content",
            )
        fmt = IMAGE_FORMATS.get((block.media_type or "").lower())
        if fmt is None:
            raise InvalidRequest(
                f"{block.where}: backend '{self.name}' (bedrock) takes png, jpeg, gif or webp images, "
                f"not {block.media_type}",
                param=block.where,
                code="unsupported_content",
            )
        return {
            "image": {
                "format": fmt,
                "source": {"bytes": _bytes(block.data, f"{block.where}: the image's data URL", block.where)},
            }
        }

    def _document(self, block: turns.Document, names: set[str]) -> dict:
        fmt = DOCUMENT_FORMATS.get(block.media_type.lower())
        if fmt is None:
            raise InvalidRequest(
                f"{block.where}: backend '{self.name}' (bedrock) takes documents as "
                f"{', '.join(DOCUMENT_FORMATS.values())}, not {block.media_type}",
                param=block.where,
                code="unsupported_content",
            )
        name = " ".join(_NOT_IN_A_NAME.sub(" ", (block.name or "").rsplit(".", 1)[0]).split()) or "document"
        unique, n = name, 1
        while unique in names:  # Converse wants each document named apart
            n += 1
            unique = f"{name} ({n})"
        names.add(unique)
        return {
            "document": {
                "format": fmt,
                "name": unique,
                "source": {"bytes": _bytes(block.data, f"{block.where}: the file part's data URL", block.where)},
            }
        }

    def _blocks(self, block: turns.Block, names: set[str]) -> list[dict]:
        """A block in Converse's shape, then its cache point; none for what Converse cannot take back."""
        if isinstance(block, turns.Text):
            out = {"text": block.text} if block.text else None  # Converse refuses blank text blocks
        elif isinstance(block, turns.Image):
            out = self._image(block)
        elif isinstance(block, turns.Document):
            out = self._document(block, names)
        elif isinstance(block, turns.Thinking):
            text = {"text": block.thinking, **({"signature": block.signature} if block.signature else {})}
            out = {"reasoningContent": {"reasoningText": text}} if self.claude else None
        elif isinstance(block, turns.RedactedThinking):
            out = {"reasoningContent": {"redactedContent": _redacted(block.data)}} if self.claude else None
        elif isinstance(block, turns.ToolCall):
            out = {"toolUse": {"toolUseId": block.id, "name": block.name, "input": block.input}}
        else:
            content = [b for part in block.content for b in self._blocks(part, names) if "cachePoint" not in b]
            out = {"toolResult": {"toolUseId": block.tool_call_id, "content": content or [{"text": ""}]}}
            if block.is_error:
                out["toolResult"]["status"] = "error"
        if out is None:
            return []
        return [out, _cache_point(block.cache)] if getattr(block, "cache", None) else [out]

    def _request(self, body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The Converse request, and the name of the tool a JSON answer is forced through (if any)."""
        body = self.upstream_body(body)
        check_parameters(body, self.name, "bedrock")
        s = self.settings
        reasoning = self._claude_only(body, turns.reasoning(body, self.name, "bedrock", s.reasoning_effort_as))
        native = s.structured_output == "native"
        output = turns.output_tool(body, self.name, "bedrock", native=native)
        turns.check_thinking(body, reasoning, self.name, "bedrock", output)
        system, conversation = turns.to_turns(body["messages"])
        names: set[str] = set()
        messages = [
            {"role": t.role, "content": [b for block in t.blocks for b in self._blocks(block, names)]}
            for t in conversation
        ]
        request: dict[str, Any] = {"modelId": self.model, "messages": messages}
        if system_blocks := [b for text in system if text.text for b in self._blocks(text, names)]:
            request["system"] = system_blocks
        config = {
            "maxTokens": turns.max_tokens(body, None, reasoning),
            "temperature": body.get("temperature"),
            "topP": body.get("top_p"),
            "stopSequences": stop_list(body) or None,
        }
        if config := {k: v for k, v in config.items() if v is not None}:
            request["inferenceConfig"] = config
        if tools := self._tool_config(body, conversation, output):
            request["toolConfig"] = tools
        fields = dict(s.additional_model_request_fields or {})
        if reasoning.thinking is not None and self.claude:
            fields["thinking"] = reasoning.thinking
        if body.get("top_k") is not None:
            fields["top_k"] = body["top_k"]
        if fields:
            request["additionalModelRequestFields"] = fields
        output_config: dict[str, Any] = {}
        if reasoning.effort is not None:
            output_config["effort"] = reasoning.effort
        if native and (schema := turns.json_schema(body)) is not None:
            structure = {
                "schema": json.dumps(schema.get("schema") or {"type": "object"}),
                "name": schema.get("name") or turns.JSON_TOOL,
            }
            if schema.get("description"):
                structure["description"] = schema["description"]
            output_config["textFormat"] = {"type": "json_schema", "structure": {"jsonSchema": structure}}
        if output_config:
            request["outputConfig"] = output_config
        return request, output.name if output else None

    def _claude_only(self, body: dict, reasoning: turns.Reasoning) -> turns.Reasoning:
        """Thinking and top_k are Claude's fields in additionalModelRequestFields: for other models a thinking
        the model may skip (adaptive, disabled) is moot and not sent, the rest refused by name."""
        if self.claude:
            return reasoning
        hint = (
            "the model is not an Anthropic Claude model (set `claude: true` on the backend if it is, or pass the "
            "model's own fields in additional_model_request_fields)"
        )
        if body.get("top_k") is not None:
            raise refusal("top_k", self.name, "bedrock", hint)
        if _moot_thinking(body):
            return turns.Reasoning()
        if reasoning.thinking is not None:
            raise refusal(
                "thinking" if body.get("thinking") is not None else "reasoning_effort", self.name, "bedrock", hint
            )
        return reasoning

    def ignored_params(self, body: dict[str, Any]) -> list[str]:
        ignored = super().ignored_params(body)
        body = self.upstream_body(body)
        if not self.claude and _moot_thinking(body):
            ignored += [name for name in ("thinking", "reasoning_effort") if body.get(name) is not None]
        return ignored

    def _tool_config(self, body: dict, conversation: list[turns.Turn], output: turns.ToolSpec | None) -> dict | None:
        """Converse has no tool_choice 'none': keep the tools only where tool blocks in the history need them."""
        specs = turns.tool_specs(body)
        choice = turns.tool_choice(body)
        if choice and choice[0] == "none" and not turns.has_tool_blocks(conversation):
            specs = []
        if output is not None:
            specs.append(output)
        if not specs:
            return None
        tools: list[dict] = []
        for spec in specs:
            tools.append(
                {
                    "toolSpec": {
                        "name": spec.name,
                        "inputSchema": {"json": spec.parameters},
                        **({"description": spec.description} if spec.description else {}),
                        **({"strict": spec.strict} if spec.strict is not None else {}),
                    }
                }
            )
            if spec.cache:
                tools.append(_cache_point(spec.cache))
        config: dict[str, Any] = {"tools": tools}
        choice = turns.choose_tool(body, output)
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
            return from_upstream_status(
                self.name, status, f"{code} in the stream: {exc.response.get('Error', {}).get('Message', '')}"
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 502
            return from_upstream_status(self.name, status, f"{error.get('Code', '')}: {error.get('Message', '')}")
        if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError, Urllib3ReadTimeout)):
            t = self.settings.timeout
            return UpstreamTimeout(
                f"backend '{self.name}' did not answer in time (connect {t.connect:g}s, first byte {t.first_byte:g}s)"
            )
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
            raise UpstreamError(
                f"backend '{self.name}' has no client: {', '.join(self.missing_credentials())}", status=503
            )

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        request, output = self._request(body)
        self._ready()
        response = await self._call(self._client.converse, **request)
        blocks: list[turns.Block] = []
        for block in (response.get("output", {}).get("message") or {}).get("content", []):
            if "text" in block:
                blocks.append(turns.Text(block["text"]))
            elif "toolUse" in block:
                use = block["toolUse"]
                blocks.append(turns.ToolCall(use["toolUseId"], use["name"], use.get("input", {})))
            elif "reasoningContent" in block:
                reasoning = block["reasoningContent"]
                if "reasoningText" in reasoning:
                    text = reasoning["reasoningText"]
                    blocks.append(turns.Thinking(text.get("text", ""), text.get("signature", "")))
                elif "redactedContent" in reasoning:
                    blocks.append(turns.RedactedThinking(_base64(reasoning["redactedContent"])))
        message = turns.message_from_blocks(blocks, output)
        return completion(
            f"chatcmpl-bedrock-{uuid.uuid4().hex}",
            self.model,
            message,
            turns.finish_reason(response.get("stopReason"), message),
            _usage(response.get("usage") or {}),
        )

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI embeddings request through InvokeModel: Titan Text Embeddings (v2: `dimensions` 256,
        512 or 1024) one input a call, Cohere Embed all inputs in one call. Token arrays are refused
        (these models take text); `encoding_format: base64` is honoured here (float32, little-endian)."""
        family = embedding_family(self.model)
        if family is None:
            raise InvalidRequest(
                f"backend '{self.name}' (bedrock) is not a Titan or Cohere embedding model: route embeddings "
                "to one (amazon.titan-embed-text-v2:0, cohere.embed-...)",
                param="model",
                code="embeddings_not_supported",
            )
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not all(isinstance(item, str) for item in inputs):
            raise InvalidRequest(
                f"backend '{self.name}' (bedrock) embeds text, not token ids: send 'input' as strings",
                param="input",
                code="unsupported_parameter",
            )
        dimensions = body.get("dimensions")
        if dimensions is not None and (family != "titan-v2" or dimensions not in TITAN_DIMENSIONS):
            allowed = ", ".join(map(str, TITAN_DIMENSIONS)) if family == "titan-v2" else "none (leave it out)"
            raise InvalidRequest(
                f"backend '{self.name}' ({self.model}) cannot make {dimensions}-dimension vectors: allowed {allowed}",
                param="dimensions",
                code="unsupported_parameter",
            )
        self._ready()
        if family == "cohere":
            answers = [await self._invoke({"texts": inputs, "input_type": "search_document"})]
            vectors = answers[0].get("embeddings") or []
            vectors = vectors.get("float", []) if isinstance(vectors, dict) else vectors
            tokens = sum(len(text.split()) for text in inputs)  # Cohere on Bedrock reports no count
        else:
            request = {"dimensions": dimensions} if dimensions else {}
            answers = [await self._invoke({"inputText": text, **request}) for text in inputs]
            vectors = [answer["embedding"] for answer in answers]
            tokens = sum(answer.get("inputTextTokenCount") or 0 for answer in answers)
        base64_wanted = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _packed(v) if base64_wanted else v}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        def invoke() -> dict[str, Any]:  # the answer's body is read on the pool too: it is network I/O
            response = self._client.invoke_model(
                modelId=self.model, body=json.dumps(payload), contentType="application/json", accept="application/json"
            )
            return json.loads(response["body"].read())

        return await self._call(invoke)

    async def _call(self, operation, **request: Any) -> dict[str, Any]:
        """One blocking runtime call on the pool, within the backend's total timeout; its failure as ours."""
        call = asyncio.get_running_loop().run_in_executor(
            self._executor, contextvars.copy_context().run, partial(operation, **request)
        )
        try:
            return await asyncio.wait_for(call, self.settings.timeout.total)
        except TimeoutError:
            raise UpstreamTimeout(
                f"backend '{self.name}' did not answer within {self.settings.timeout.total:g}s"
            ) from None
        except Exception as exc:
            raise self._error(exc) from None

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
                    raise UpstreamTimeout(
                        f"backend '{self.name}' did not finish within {self.settings.timeout.total:g}s"
                    ) from None
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
        request, output = self._request(body)
        self._ready()
        out = turns.ChunkBuilder(f"chatcmpl-bedrock-{uuid.uuid4().hex}", self.model, output)
        started = finished = False
        events = self._events(request)
        try:
            async for event in events:
                if not started:  # the first chunk waits for the first event, so a refused call can still fall back
                    started = True
                    yield out.start()
                if "metadata" in event:
                    u = _usage(event["metadata"].get("usage") or {})
                    out.prompt_tokens, out.completion_tokens = u["prompt_tokens"], u["completion_tokens"]
                    out.cached_tokens = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                    out.cache_write_tokens = u.get("cache_creation_input_tokens", 0)
                    continue
                if "messageStop" in event:
                    finished = True
                if (piece := _event(out, event)) is not None:
                    yield piece
        finally:
            await events.aclose()
        if not finished:
            raise UpstreamError(
                f"backend '{self.name}' ended the stream before the answer was complete", retryable=True
            )
        yield out.usage()


def _event(out: turns.ChunkBuilder, event: dict) -> dict | None:
    """The chunk for one ConverseStream event, if it has one to send."""
    if "contentBlockStart" in event:
        e = event["contentBlockStart"]
        if use := e.get("start", {}).get("toolUse"):
            return out.tool_start(e["contentBlockIndex"], use["toolUseId"], use["name"])
    elif "contentBlockDelta" in event:
        e = event["contentBlockDelta"]
        index, delta = e["contentBlockIndex"], e.get("delta", {})
        if delta.get("text"):
            return out.text(delta["text"])
        if "toolUse" in delta:
            return out.tool_arguments(index, delta["toolUse"].get("input", ""))
        if "reasoningContent" in delta:
            reasoning = delta["reasoningContent"]
            if "text" in reasoning:
                return out.thinking_text(index, reasoning["text"])
            if "signature" in reasoning:
                out.thinking_signature(index, reasoning["signature"])
            elif "redactedContent" in reasoning:
                out.redacted_thinking(index, _base64(reasoning["redactedContent"]))
    elif "contentBlockStop" in event:
        return out.block_stop(event["contentBlockStop"]["contentBlockIndex"])
    elif "messageStop" in event:
        return out.finish(event["messageStop"].get("stopReason"))
    return None


def _moot_thinking(body: dict) -> bool:
    """A thinking the caller lets the model skip (Claude Code asks for adaptive thinking on every call)."""
    return (body.get("thinking") or {}).get("type") in ("adaptive", "disabled")


def _bytes(data: str, what: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise InvalidRequest(f"{what} is not valid base64", param=where) from None


def _base64(data: bytes | str) -> str:
    """Redacted reasoning's bytes as the chat form's `data` string (base64), so they go back byte for byte."""
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def _redacted(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:  # not from a Converse answer: the string itself
        return data.encode()


def _cache_point(marker: dict) -> dict:
    """cache_control as Converse's cache point, which goes after the block it marks."""
    point = {"type": "default"}
    if marker.get("ttl") in ("5m", "1h"):
        point["ttl"] = marker["ttl"]
    return {"cachePoint": point}


def _add_traceparent(request, **_) -> None:
    """botocore's before-send event: the current span's traceparent on the outgoing request, if any."""
    headers = tracing.inject({})
    for name, value in headers.items():
        request.headers[name] = value


def _usage(u: dict) -> dict:
    """Converse counts cache reads and writes apart from inputTokens; OpenAI's prompt_tokens includes them."""
    cached, written = u.get("cacheReadInputTokens") or 0, u.get("cacheWriteInputTokens") or 0
    prompt = (u.get("inputTokens") or 0) + cached + written
    return usage(prompt, u.get("outputTokens") or 0, cached or None, cache_write=written or None)


TITAN_DIMENSIONS = (256, 512, 1024)


def embedding_family(model: str) -> str | None:
    """Which Bedrock embedding API a model id speaks: titan-v2, titan (v1, no dimensions), cohere, or None."""
    if "titan-embed-text-v2" in model:
        return "titan-v2"
    if "titan-embed" in model:
        return "titan"
    if "cohere.embed" in model:
        return "cohere"
    return None


def _packed(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
