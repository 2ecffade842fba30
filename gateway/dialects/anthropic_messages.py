"""The Anthropic Messages API (POST /v1/messages) to the chat form and back: pure translation, no I/O.

Callers: the anthropic SDK's `messages.create` / `messages.stream`, Claude Code, agents built on them.
`to_chat_request` checks a Messages request by hand (it runs on every request) and refuses what the
chat form cannot carry with a 400 naming the parameter (`messages[2].content[0].type`); every
top-level parameter is translated, reported as ignored, or refused, never silently dropped.
`from_chat_completion` and `StreamTranslator` build what the SDK's `Message` and
`RawMessageStreamEvent` types parse; `error_body` is Anthropic's error shape.

Chat-form conventions this module introduces or relies on (beyond OpenAI's own chat shapes); a
backend that cannot use one drops the key before sending:

- `thinking_blocks` (list) on an assistant message: its `thinking` / `redacted_thinking` blocks
  exactly as the caller sent them (`signature` / `data` included), so they can go back to the model
  unchanged; `reasoning_content` (str) alongside: the thinking text of those blocks joined with a
  blank line ("" when all are redacted). Their order relative to the text and tool_use blocks of the
  same message is not kept: the chat form has thinking, then content, then tool_calls.
- In answers, a chat.completion message may carry `thinking_blocks` (Anthropic's two block shapes;
  they win) or `reasoning_content` (`reasoning` as a str is read too): they become the Message's
  first content blocks, a bare `reasoning_content` as one thinking block with signature "".
- In a stream, a chunk's delta may carry `reasoning_content` pieces (thinking_delta of the open
  thinking block), and `thinking_blocks: [block]` when a thinking block ends: a `thinking` block's
  `signature` is sent as its signature_delta, then the block stops (its text is sent only when no
  piece of it was streamed); a `redacted_thinking` block is sent whole, start and stop.
- The request's `thinking` (`{"type": "enabled", "budget_tokens"}`, disabled, adaptive, ...) and
  `top_k` keep their names and values in the chat body: the backend decides what they mean for its
  model. `output_config.effort` becomes `reasoning_effort` (low, medium, high; xhigh and max: xhigh),
  `output_config.format` (or the beta `output_format`) becomes a strict json_schema `response_format`.
- `cache_control` stays on what it marks: a translated content part (text, image_url, file), a chat
  tool (next to `function`), a `tool_calls` entry (a marked tool_use block), a system part, and on
  the `role: "tool"` message itself for a marked tool_result. A top-level `cache_control` marks the
  last block of the last message, as Anthropic's automatic caching does.
- A tool_result with `is_error: true` becomes a tool message with `is_error: True`.
- `metadata.user_id` becomes `user` (the rollout's sticky key): for Claude Code's user ids the
  account (else the device) part, so one person stays in one bucket across sessions.
- What the chat form has no field for but Anthropic does goes in the native slot (`chat.NATIVE`), for
  an Anthropic backend to send as it came: service_tier, inference_geo, speed, context_management,
  the tools' defer_loading / eager_input_streaming / input_examples / allowed_callers, and
  `metadata.user_id` whole; other backends name the first two groups as ignored.

Message order: a user message's tool_result blocks become one `role: "tool"` message each, placed
first (right after the assistant message whose tool_calls they answer: each must answer a tool_use
of the latest assistant message), then the rest of that user message as one user message.
Documents: a base64 PDF becomes `{"type": "file", "file": {"file_data": data URL, "filename": title}}`,
a plain-text or content-source document its text / parts; url and file (Files API) sources are
refused, since the gateway fetches nothing. Provider-run (server) tools and their blocks are refused.

Answers: tool-call arguments that are not a JSON object (malformed, or a list) become `input: {}`
in a whole Message (the client's tool then reports the missing arguments to the model; a stream
passes the fragments on as they come). A `stop` finish with tool calls present is `tool_use`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..chat import MAX_TOKENS_LIMIT, NATIVE, native_slot, reasoning_text
from ..checks import bad, is_int, is_number, shown
from ..errors import InvalidRequest, presentable

Event = tuple[str, dict]

# Top-level parameters: translated, accepted without effect (hints), or known and refused.
TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "output_format",
        "cache_control",
    }
)
# Passed untouched to an Anthropic backend (the chat form has no such field), named as ignored by others.
NATIVE_PARAMS = ("service_tier", "inference_geo", "speed", "context_management")
IGNORED = ("diagnostics", "anthropic_version")
REFUSED = {
    "container": "a code-execution container belongs to provider-run tools, which no backend here runs",
    "mcp_servers": "MCP servers are called by Anthropic's servers, which no backend here is: run the MCP "
    "client yourself and declare its tools as custom tools",
}
KNOWN = TRANSLATED | frozenset(NATIVE_PARAMS) | frozenset(IGNORED) | frozenset(REFUSED)

ROLES = ("user", "assistant", "system")  # system: a mid-conversation system message (Claude Code sends them)
THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
MAX_STOP_SEQUENCES = 4  # what the chat form (and OpenAI-compatible backends) take
TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "cache_control", "strict"})
TOOL_HINTS = ("defer_loading", "eager_input_streaming", "input_examples", "allowed_callers")
USER_BLOCKS = "text, image, document, search_result, tool_result"
ASSISTANT_BLOCKS = "text, tool_use, thinking, redacted_thinking"
# Blocks of tools the provider runs (and their results): nothing here ran them, nothing can replay them.
PROVIDER_BLOCKS = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
        "mcp_tool_use",
        "mcp_tool_result",
        "tool_reference",
        "browser_state",
    }
)

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# --- the request ---------------------------------------------------------------------------------------


def _marked(part: dict, block: dict, where: str) -> dict:
    """`part` with the cache_control marker of `block`, when it has one."""
    marker = block.get("cache_control")
    if marker is not None:
        if not (isinstance(marker, dict) and marker.get("type") == "ephemeral"):
            raise bad(
                f"{where}.cache_control must be {{'type': 'ephemeral'}} (with an optional 'ttl')",
                f"{where}.cache_control",
            )
        part["cache_control"] = marker
    return part


def _block_list(content: Any, where: str) -> list[dict]:
    if not isinstance(content, list):
        raise bad(f"{where} must be a string or an array of content blocks", where)
    for j, block in enumerate(content):
        if not (isinstance(block, dict) and isinstance(block.get("type"), str)):
            raise bad(f"{where}[{j}] must be a content block: an object with a 'type'", f"{where}[{j}]")
    return content


def _text(block: dict, where: str, ignored: dict) -> dict:
    if not isinstance(block.get("text"), str):
        raise bad(f"{where}.text must be a string", f"{where}.text")
    if block.get("citations"):
        ignored["citations"] = None
    return _marked({"type": "text", "text": block["text"]}, block, where)


def _data_url(source: dict, where: str) -> str:
    if not (isinstance(source.get("media_type"), str) and source["media_type"] != ""):
        raise bad(
            f"{where}.source.media_type must name the data's type (image/png, application/pdf, ...)",
            f"{where}.source.media_type",
        )
    if not (isinstance(source.get("data"), str) and source["data"] != ""):
        raise bad(f"{where}.source.data must be the base64 bytes", f"{where}.source.data")
    return f"data:{source['media_type']};base64,{source['data']}"


def _source(block: dict, where: str, kinds: tuple[str, ...]) -> dict:
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad(f"{where}.source must be an object with a 'type'", f"{where}.source")
    kind = source.get("type")
    if kind == "file":
        raise bad(
            f"{where}.source is a Files API file, which this gateway does not serve: send the content inline (base64)",
            f"{where}.source.type",
            "unsupported_source",
        )
    if kind not in kinds:
        raise bad(f"{where}.source.type must be one of {', '.join(kinds)}, got {shown(kind)}", f"{where}.source.type")
    return source


def _image(block: dict, where: str) -> dict:
    source = _source(block, where, ("base64", "url"))
    if source["type"] == "url":
        if not (isinstance(source.get("url"), str) and source["url"] != ""):
            raise bad(f"{where}.source.url must be a URL", f"{where}.source.url")
        url = source["url"]
    else:
        url = _data_url(source, where)
    return _marked({"type": "image_url", "image_url": {"url": url}}, block, where)


def _document(block: dict, where: str, ignored: dict) -> list[dict]:
    source = _source(block, where, ("base64", "text", "content", "url"))
    kind = source["type"]
    if block.get("citations"):
        ignored["citations"] = None
    if block.get("context") is not None:
        ignored["document.context"] = None
    if kind == "url":
        raise bad(
            f"{where}.source is a URL, which this gateway does not fetch: send the document as base64 "
            "(or its text as a text source)",
            f"{where}.source.type",
            "unsupported_source",
        )
    if kind == "base64":
        file: dict[str, Any] = {"file_data": _data_url(source, where)}
        if isinstance(block.get("title"), str) and block["title"]:
            file["filename"] = block["title"]
        return [_marked({"type": "file", "file": file}, block, where)]
    if block.get("title") is not None:
        ignored["document.title"] = None
    if kind == "text":
        if not isinstance(source.get("data"), str):
            raise bad(f"{where}.source.data must be the document's text", f"{where}.source.data")
        return [_marked({"type": "text", "text": source["data"]}, block, where)]
    inner = source.get("content")  # a content source: the document given as blocks
    if isinstance(inner, str):
        return [_marked({"type": "text", "text": inner}, block, where)]
    at = f"{where}.source.content"
    parts = []
    for k, item in enumerate(_block_list(inner, at)):
        if item["type"] == "text":
            parts.append(_text(item, f"{at}[{k}]", ignored))
        elif item["type"] == "image":
            parts.append(_image(item, f"{at}[{k}]"))
        else:
            raise bad(
                f"{at}[{k}].type must be text or image, got {shown(item['type'])}",
                f"{at}[{k}].type",
                "unsupported_content",
            )
    if parts:
        _marked(parts[-1], block, where)
    return parts


def _search_result(block: dict, where: str, ignored: dict) -> dict:
    """A search result as the text a model reads: its title, its source, then its text blocks."""
    for key in ("title", "source"):
        if not isinstance(block.get(key), str):
            raise bad(f"{where}.{key} must be a string", f"{where}.{key}")
    texts = [
        _text(b, f"{where}.content[{k}]", ignored)["text"]
        for k, b in enumerate(_block_list(block.get("content"), f"{where}.content"))
    ]
    if block.get("citations"):
        ignored["citations"] = None
    return _marked({"type": "text", "text": "\n".join([block["title"], block["source"], "", *texts])}, block, where)


def _unsupported(kind: str, where: str, allowed: str, role: str) -> InvalidRequest:
    if kind in PROVIDER_BLOCKS:
        return bad(
            f"{where}.type '{kind}' belongs to a provider-run tool, which no backend of this gateway runs",
            f"{where}.type",
            "unsupported_content",
        )
    return bad(
        f"{where}.type {shown(kind)} is not a content block of a {role} message this gateway "
        f"translates: use one of {allowed}",
        f"{where}.type",
        "unsupported_content",
    )


def _user_parts(block: dict, where: str, ignored: dict) -> list[dict]:
    kind = block["type"]
    if kind == "text":
        return [_text(block, where, ignored)]
    if kind == "image":
        return [_image(block, where)]
    if kind == "document":
        return _document(block, where, ignored)
    if kind == "search_result":
        return [_search_result(block, where, ignored)]
    raise _unsupported(kind, where, USER_BLOCKS, "user")


def _content(parts: list[dict]) -> str | list[dict]:
    """Parts as chat content: a lone unmarked text part as its string, anything else as the parts."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        return parts[0]["text"]
    return parts


def _tool_message(block: dict, where: str, ignored: dict, answerable: set[str]) -> dict:
    call_id = block.get("tool_use_id")
    if not (isinstance(call_id, str) and call_id != ""):
        raise bad(f"{where}.tool_use_id must name the tool_use it answers", f"{where}.tool_use_id")
    if call_id not in answerable:
        raise bad(
            f"{where}.tool_use_id {shown(call_id)} answers no tool_use block of the latest assistant message: "
            "a tool_result must follow the assistant message that asked for it",
            f"{where}.tool_use_id",
        )
    content = block.get("content", "")
    if isinstance(content, list):
        at = f"{where}.content"
        parts = []
        for k, item in enumerate(_block_list(content, at)):
            if item["type"] == "tool_result":
                raise bad(
                    f"{at}[{k}].type: a tool_result cannot hold another tool_result",
                    f"{at}[{k}].type",
                    "unsupported_content",
                )
            parts.extend(_user_parts(item, f"{at}[{k}]", ignored))
        content = _content(parts) if parts else ""
    elif not isinstance(content, str):
        raise bad(f"{where}.content must be a string or an array of content blocks", f"{where}.content")
    message: dict[str, Any] = {"role": "tool", "tool_call_id": call_id, "content": content}
    is_error = block.get("is_error")
    if not (is_error is None or isinstance(is_error, bool)):
        raise bad(f"{where}.is_error must be a boolean", f"{where}.is_error")
    if is_error:
        message["is_error"] = True
    return _marked(message, block, where)


def _user_messages(content: Any, where: str, ignored: dict, answerable: set[str]) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    blocks = _block_list(content, where)
    if not blocks:
        raise bad(f"{where} must not be empty: give a string or at least one content block", where)
    results, parts = [], []
    for j, block in enumerate(blocks):
        if block["type"] == "tool_result":
            results.append(_tool_message(block, f"{where}[{j}]", ignored, answerable))
        else:
            parts.extend(_user_parts(block, f"{where}[{j}]", ignored))
    if parts:
        results.append({"role": "user", "content": _content(parts)})
    return results


def _tool_call(block: dict, where: str) -> dict:
    for key in ("id", "name"):
        if not (isinstance(block.get(key), str) and block[key] != ""):
            raise bad(f"{where}.{key} must be a non-empty string", f"{where}.{key}")
    arguments = block.get("input")
    if not isinstance(arguments, dict):
        raise bad(f"{where}.input must be an object (the tool's arguments)", f"{where}.input")
    call = {
        "id": block["id"],
        "type": "function",
        "function": {
            "name": block["name"],
            "arguments": json.dumps(arguments, separators=(",", ":"), ensure_ascii=False),
        },
    }
    return _marked(call, block, where)


def _assistant_message(content: Any, where: str, ignored: dict) -> tuple[dict, set[str]]:
    """The assistant message, and the ids of its tool calls (what the next user message may answer)."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}, set()
    parts: list[dict] = []
    calls: list[dict] = []
    thinking: list[dict] = []
    for j, block in enumerate(_block_list(content, where)):
        at, kind = f"{where}[{j}]", block["type"]
        if kind == "text":
            parts.append(_text(block, at, ignored))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        elif kind == "thinking":
            for key in ("thinking", "signature"):
                if not isinstance(block.get(key), str):
                    raise bad(f"{at}.{key} must be a string (send the block back as the answer gave it)", f"{at}.{key}")
            thinking.append(dict(block))
        elif kind == "redacted_thinking":
            if not isinstance(block.get("data"), str):
                raise bad(f"{at}.data must be a string (send the block back as the answer gave it)", f"{at}.data")
            thinking.append(dict(block))
        else:
            raise _unsupported(kind, at, ASSISTANT_BLOCKS, "assistant")
    message: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts else (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
        message["reasoning_content"] = "\n\n".join(b["thinking"] for b in thinking if b["type"] == "thinking")
    return message, {call["id"] for call in calls}


def _system_message(system: Any, where: str, ignored: dict) -> dict | None:
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    if not isinstance(system, list):
        raise bad(f"{where} must be a string or an array of text blocks", where)
    parts = []
    for j, block in enumerate(_block_list(system, where)):
        if block["type"] != "text":
            raise bad(f"{where}[{j}].type must be 'text': a system prompt is text", f"{where}[{j}].type")
        parts.append(_text(block, f"{where}[{j}]", ignored))
    return {"role": "system", "content": _content(parts)} if parts else None


def _tools(tools: Any, native: dict) -> list[dict]:
    if not isinstance(tools, list):
        raise bad("'tools' must be an array of tool definitions", "tools")
    out, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad(f"{where} must be an object", where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise bad(
                f"{where}.type {shown(kind)} is a tool Anthropic defines and runs or describes itself, "
                "which this gateway cannot do for other models: declare it as a custom tool (name, "
                "description, input_schema) instead",
                f"{where}.type",
                "unsupported_tool",
            )
        name = tool.get("name")
        if not (isinstance(name, str) and name != ""):
            raise bad(f"{where}.name must be a non-empty string", f"{where}.name")
        if name in names:
            raise bad(f"{where}.name: a tool named {name!r} is already declared", f"{where}.name")
        names.add(name)
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad(f"{where}.input_schema must be a JSON schema object", f"{where}.input_schema")
        function: dict[str, Any] = {"name": name}
        if tool.get("description") is not None:
            if not isinstance(tool["description"], str):
                raise bad(f"{where}.description must be a string", f"{where}.description")
            function["description"] = tool["description"]
        function["parameters"] = schema
        if tool.get("strict") is not None:
            if not isinstance(tool["strict"], bool):
                raise bad(f"{where}.strict must be a boolean", f"{where}.strict")
            function["strict"] = tool["strict"]
        for key in tool:
            if key in TOOL_HINTS:
                native["tools"].setdefault(name, {})[key] = tool[key]
                if f"tools.{key}" not in native["names"]:
                    native["names"].append(f"tools.{key}")
            elif key not in TOOL_KEYS:
                raise bad(
                    f"{where}.{key} is not a tool field this gateway knows: remove it",
                    f"{where}.{key}",
                    "unknown_parameter",
                )
        out.append(_marked({"type": "function", "function": function}, tool, where))
    return out


def _tool_choice(choice: Any, names: set[str], chat: dict) -> None:
    if not isinstance(choice, dict):
        raise bad("'tool_choice' must be an object: {'type': 'auto' | 'any' | 'tool' | 'none'}", "tool_choice")
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise bad(f"'tool_choice.type' must be auto, any, tool or none, got {shown(kind)}", "tool_choice.type")
    allowed = {
        "auto": ("type", "disable_parallel_tool_use"),
        "any": ("type", "disable_parallel_tool_use"),
        "tool": ("type", "name", "disable_parallel_tool_use"),
        "none": ("type",),
    }[kind]
    for key in choice:
        if key not in allowed:
            raise bad(f"'tool_choice.{key}' is not a field of a tool_choice of type {kind!r}", f"tool_choice.{key}")
    single = choice.get("disable_parallel_tool_use", False)
    if not isinstance(single, bool):
        raise bad("'tool_choice.disable_parallel_tool_use' must be a boolean", "tool_choice.disable_parallel_tool_use")
    if kind in ("any", "tool"):
        if not names:
            raise bad(f"'tool_choice' of type {kind!r} needs 'tools' to choose from", "tool_choice")
    if kind == "tool":
        name = choice.get("name")
        if not (isinstance(name, str) and name in names):
            raise bad(f"'tool_choice.name' must name one of the request's tools, got {shown(name)}", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif names:  # without tools, auto and none are what happens anyway (and chat APIs refuse a tool_choice alone)
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if single and names:
        chat["parallel_tool_calls"] = False


def _thinking(value: Any) -> dict:
    if not (isinstance(value, dict) and value.get("type") in THINKING_TYPES):
        raise bad(f"'thinking.type' must be one of {', '.join(THINKING_TYPES)}", "thinking.type")
    if value["type"] == "enabled":
        budget = value.get("budget_tokens")
        if not (is_int(budget) and 0 < budget <= MAX_TOKENS_LIMIT):
            raise bad(
                "'thinking.budget_tokens' must be a positive integer (Anthropic asks for at least 1024)",
                "thinking.budget_tokens",
            )
    return dict(value)


def _json_format(fmt: Any, param: str) -> dict:
    if not (isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict)):
        raise bad(f"'{param}' must be {{'type': 'json_schema', 'schema': {{...}}}}", param)
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def _output_config(config: Any, chat: dict) -> None:
    if not isinstance(config, dict):
        raise bad("'output_config' must be an object", "output_config")
    for key in config:
        if key not in ("effort", "format"):
            raise bad(
                f"'output_config.{key}' is not an output setting this gateway knows: it takes effort and format",
                f"output_config.{key}",
            )
    effort = config.get("effort")
    if effort is not None:
        if not (isinstance(effort, str) and effort in EFFORTS):
            raise bad(f"'output_config.effort' must be one of {', '.join(EFFORTS)}", "output_config.effort")
        chat["reasoning_effort"] = EFFORTS[effort]
    if config.get("format") is not None:
        chat["response_format"] = _json_format(config["format"], "output_config.format")


def sticky_user(user_id: str) -> str:
    """The rollout's sticky user for a `metadata.user_id`. Claude Code names the device, the account and the
    session, as JSON (`{"device_id", "account_uuid", "session_id"}`) or as `user_<hash>_account_<uuid>_session_
    <uuid>`: the session part is left out, so one person keeps one bucket across sessions."""
    if user_id.startswith("{"):
        try:
            named = json.loads(user_id)
        except ValueError:
            return user_id
        if isinstance(named, dict):
            return str(named.get("account_uuid") or named.get("device_id") or user_id)
        return user_id
    head, sep, _ = user_id.partition("_session_")
    return head if sep and head.startswith("user_") else user_id


def _mark_last(messages: list[dict], marker: Any) -> None:
    """Top-level cache_control: the marker on the last block of the last message (unless it has one)."""
    if not (isinstance(marker, dict) and marker.get("type") == "ephemeral"):
        raise bad("'cache_control' must be {'type': 'ephemeral'} (with an optional 'ttl')", "cache_control")
    last = messages[-1]
    if last["role"] == "tool":
        last.setdefault("cache_control", marker)
    elif last.get("tool_calls"):
        last["tool_calls"][-1].setdefault("cache_control", marker)
    elif isinstance(last.get("content"), list) and last["content"]:
        last["content"][-1].setdefault("cache_control", marker)
    elif isinstance(last.get("content"), str) and last["content"]:
        last["content"] = [{"type": "text", "text": last["content"], "cache_control": marker}]


def to_chat_request(body: Any) -> tuple[dict, list[str]]:
    """A Messages request as the chat form, and the names of the parameters accepted but ignored.

    Raises InvalidRequest (400) naming the parameter that is wrong, unknown or cannot be translated.
    """
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object (a Messages API request)", "body")
    unknown = sorted(key for key in body if key not in KNOWN)
    if unknown:
        named = ", ".join(repr(key) for key in unknown)
        raise bad(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {named}: not a Messages API parameter this "
            "gateway knows (it refuses what it cannot honour rather than dropping it): remove "
            f"{'them' if len(unknown) > 1 else 'it'}",
            unknown[0],
            "unknown_parameter",
        )
    for name, why in REFUSED.items():
        if body.get(name) not in (None, [], {}):
            raise bad(f"'{name}' is not served: {why}", name, "unsupported_parameter")
    model = body.get("model")
    if not (isinstance(model, str) and model != ""):
        raise bad("'model' is required: the name of a route (GET /v1/models lists them)", "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise bad("'max_tokens' is required by the Messages API: the most tokens to generate", "max_tokens")
    if not (is_int(max_tokens) and 0 < max_tokens <= MAX_TOKENS_LIMIT):
        raise bad(
            f"'max_tokens' must be a positive integer no larger than {MAX_TOKENS_LIMIT}, got {shown(max_tokens)}",
            "max_tokens",
        )
    messages = body.get("messages")
    if not (isinstance(messages, list) and len(messages) > 0):
        raise bad("'messages' must be a non-empty array of {'role', 'content'} objects", "messages")

    ignored: dict[str, None] = {name: None for name in IGNORED if name in body}
    native = native_slot({}, "anthropic")
    for name in NATIVE_PARAMS:
        if body.get(name) is not None:
            native["params"][name] = body[name]
            native["names"].append(name)
    chat_messages: list[dict] = []
    if body.get("system") is not None:
        system = _system_message(body["system"], "system", ignored)
        if system is not None:
            chat_messages.append(system)
    answerable: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object with a role and content", where)
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role must be user or assistant (or system), got {shown(role)}", f"{where}.role")
        if "content" not in message:
            raise bad(f"{where}.content is required (a string or an array of content blocks)", f"{where}.content")
        for key in message:
            if key not in ("role", "content"):
                raise bad(f"{where}.{key} is not a message field: a message has role and content", f"{where}.{key}")
        content, at = message["content"], f"{where}.content"
        if role == "user":
            chat_messages.extend(_user_messages(content, at, ignored, answerable))
        elif role == "assistant":
            translated, answerable = _assistant_message(content, at, ignored)
            chat_messages.append(translated)
        else:
            system = _system_message(content, at, ignored)
            if system is not None:
                chat_messages.append(system)
    if not chat_messages:
        raise bad("'messages' has nothing to send: give at least one non-empty message", "messages")

    chat: dict[str, Any] = {"model": model, "messages": chat_messages, "max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not (is_number(value) and 0 <= value <= 1):
                raise bad(f"'{name}' must be a number from 0 to 1", name)
            chat[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if not (is_int(top_k) and top_k > 0):
            raise bad("'top_k' must be a positive integer", "top_k")
        chat["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
            raise bad("'stop_sequences' must be an array of non-empty strings", "stop_sequences")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise bad(
                f"'stop_sequences' may hold at most {MAX_STOP_SEQUENCES} sequences here (the chat backends' limit)",
                "stop_sequences",
            )
        if stops:
            chat["stop"] = list(stops)
    names: set[str] = set()
    if body.get("tools") is not None:
        tools = _tools(body["tools"], native)
        if tools:
            chat["tools"] = tools
            names = {tool["function"]["name"] for tool in tools}
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], names, chat)
    if body.get("thinking") is not None:
        chat["thinking"] = _thinking(body["thinking"])
    if body.get("output_config") is not None:
        _output_config(body["output_config"], chat)
    if body.get("output_format") is not None:
        if "response_format" in chat:
            raise bad("give 'output_format' or 'output_config.format', not both", "output_format")
        chat["response_format"] = _json_format(body["output_format"], "output_format")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise bad("'metadata' must be an object", "metadata")
        for key in metadata:
            if key != "user_id":
                raise bad(f"'metadata.{key}' is not a metadata field: metadata takes user_id", f"metadata.{key}")
        user_id = metadata.get("user_id")
        if not (user_id is None or isinstance(user_id, str)):
            raise bad("'metadata.user_id' must be a string", "metadata.user_id")
        if user_id:
            chat["user"] = sticky_user(user_id)
            native["params"]["metadata"] = {"user_id": user_id}  # as sent, session and all
    if body.get("cache_control") is not None:
        _mark_last(chat_messages, body["cache_control"])
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise bad("'stream' must be a boolean", "stream")
        chat["stream"] = stream
        if stream:
            chat["stream_options"] = {"include_usage": True}  # the closing message_delta carries the usage
    if native["params"] or native["tools"]:
        chat[NATIVE] = native
    return chat, list(ignored)


# --- the answer -----------------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _stem(message_id: str) -> str:
    return message_id[4:] if message_id.startswith("msg_") else message_id


def anthropic_usage(usage: dict | None) -> dict:
    """The chat form's usage as the Messages API counts it: the cached input (read and written) apart from the
    rest (the chat form's prompt_tokens includes both)."""
    usage = usage or {}
    read = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return {
        "input_tokens": max(0, (usage.get("prompt_tokens") or 0) - read - written),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
    }


def _thinking_content(message: dict) -> list[dict]:
    blocks = [
        dict(b)
        for b in message.get("thinking_blocks") or ()
        if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
    ]
    if blocks:
        for block in blocks:
            if block["type"] == "thinking":
                block.setdefault("signature", "")
                block.setdefault("thinking", "")
        return blocks
    text = reasoning_text(message)
    return [{"type": "thinking", "thinking": text, "signature": ""}] if text else []


def _tool_input(arguments: Any) -> dict:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def stop_reason(finish_reason: str | None, has_tool_calls: bool) -> str:
    if has_tool_calls and finish_reason in (None, "stop", "tool_calls", "function_call"):
        return "tool_use"
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def from_chat_completion(answer: dict, *, model: str, message_id: str | None = None) -> dict:
    """A chat.completion (its first choice) as an Anthropic `Message`; `message_id` defaults to a new `msg_` id."""
    message_id = message_id or _new_id("msg_")
    choices = answer.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content = _thinking_content(message)
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text") or p.get("refusal") or "" for p in text if isinstance(p, dict))
    if not text and isinstance(message.get("refusal"), str):
        text = message["refusal"]
    if text:
        content.append({"type": "text", "text": text})
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    for i, call in enumerate(calls):
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{_stem(message_id)}_{i}",
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    reason = (
        "refusal"
        if not calls and message.get("refusal") and not message.get("content")
        else stop_reason(finish, bool(calls))
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": None,
        "usage": anthropic_usage(answer.get("usage")),
    }


class StreamTranslator:
    """chat.completion.chunk dicts in, Messages stream events out, as `(event name, data)` pairs.

    One content block is open at a time and indexes count up from 0: a block stops when a block of
    another kind (or another tool call) starts. Tool calls: a call's block starts when its first
    fragment (id and name) arrives and its argument fragments follow as input_json_delta. A second
    call that appears while the first one's arguments are not yet a whole JSON value (a server
    interleaving parallel calls) is held back and sent whole once the open one stops, so no delta
    ever lands on a stopped block. Only choice 0 is read (Messages has no `n`).
    """

    def __init__(self, model: str, message_id: str):
        self.model, self.message_id = model, message_id
        self._index = -1
        self._open: str | None = None  # kind of the open block: text, thinking, tool_use
        self._streamed = False  # whether the open thinking block got text
        self._calls: dict[int, dict] = {}  # chat tool-call index -> {"id", "name", "args", "state"}
        self._live: int | None = None  # the tool call whose block is open
        self._pending: list[int] = []  # calls seen but not yet started, in order
        self._finish_reason: str | None = None
        self._usage: dict | None = None
        self._done = False

    @staticmethod
    def _event(out: list[Event], kind: str, **fields: Any) -> None:
        out.append((kind, {"type": kind, **fields}))

    def start(self) -> list[Event]:
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out: list[Event] = []
        self._event(out, "message_start", message=message)
        self._event(out, "ping")
        return out

    # -- blocks --

    def _close(self, out: list[Event]) -> None:
        if self._open is None:
            return
        if self._open == "tool_use" and self._live is not None:
            self._calls[self._live]["state"] = "done"
            self._live = None
        self._event(out, "content_block_stop", index=self._index)
        self._open = None

    def _begin(self, out: list[Event], kind: str, block: dict) -> None:
        self._close(out)
        self._index += 1
        self._open = kind
        self._streamed = False
        self._event(out, "content_block_start", index=self._index, content_block=block)

    def _delta(self, out: list[Event], delta: dict) -> None:
        self._event(out, "content_block_delta", index=self._index, delta=delta)

    # -- tool calls --

    def _start_call(self, out: list[Event], position: int) -> None:
        slot = self._calls[position]
        self._begin(
            out,
            "tool_use",
            {
                "type": "tool_use",
                "id": slot["id"] or f"toolu_{_stem(self.message_id)}_{self._index + 1}",
                "name": slot["name"],
                "input": {},
            },
        )
        slot["state"], self._live = "live", position
        if slot["args"]:
            self._delta(out, {"type": "input_json_delta", "partial_json": "".join(slot["args"])})

    def _whole(self, position: int) -> bool:
        try:
            json.loads("".join(self._calls[position]["args"]))
        except ValueError:
            return False
        return True

    def _advance(self, out: list[Event]) -> None:
        """Start held-back calls while nothing is open, or the open call's arguments are whole."""
        while self._pending and (self._live is None or self._whole(self._live)):
            self._start_call(out, self._pending.pop(0))

    def _flush_calls(self, out: list[Event]) -> None:
        """Stop the open call and send every held-back one whole (the turn moved on, or it ends)."""
        if self._live is not None:
            self._close(out)
        while self._pending:
            self._start_call(out, self._pending.pop(0))
            self._close(out)

    def _tool_fragment(self, out: list[Event], call: dict) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        slot = self._calls.get(position)
        fresh = slot is None
        if fresh:
            slot = self._calls[position] = {"id": None, "name": "", "args": [], "state": "pending"}
            self._pending.append(position)
        if slot["state"] == "pending":
            slot["id"] = slot["id"] or call.get("id")
            slot["name"] += function.get("name") or ""
        arguments = function.get("arguments")
        if arguments:
            if slot["state"] == "live":
                slot["args"].append(arguments)
                self._delta(out, {"type": "input_json_delta", "partial_json": arguments})
            elif slot["state"] == "pending":
                slot["args"].append(arguments)
            # a fragment for a stopped call can only follow whole JSON (whitespace): nothing to send
        if fresh:
            self._advance(out)

    # -- thinking --

    def _thinking_block(self, out: list[Event], block: dict) -> None:
        if block.get("type") == "redacted_thinking":
            self._flush_calls(out)
            self._begin(out, "redacted_thinking", dict(block))
            self._close(out)
            return
        if block.get("type") != "thinking":
            return
        if self._open != "thinking":  # a whole block that was not streamed piece by piece
            self._flush_calls(out)
            self._begin(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if not self._streamed and block.get("thinking"):
            self._delta(out, {"type": "thinking_delta", "thinking": block["thinking"]})
        if block.get("signature"):
            self._delta(out, {"type": "signature_delta", "signature": block["signature"]})
        self._close(out)

    def feed(self, chunk: dict) -> list[Event]:
        out: list[Event] = []
        if self._done:
            return out
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = reasoning_text(delta)
            if reasoning:
                if self._open != "thinking":
                    self._flush_calls(out)
                    self._begin(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
                self._delta(out, {"type": "thinking_delta", "thinking": reasoning})
                self._streamed = True
            for block in delta.get("thinking_blocks") or ():
                if isinstance(block, dict):
                    self._thinking_block(out, block)
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                if self._open != "text":
                    self._flush_calls(out)
                    self._begin(out, "text", {"type": "text", "text": ""})
                self._delta(out, {"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._tool_fragment(out, call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> list[Event]:
        """Stop the open block, then message_delta (stop reason and usage) and message_stop."""
        out: list[Event] = []
        if self._done:
            return out
        self._done = True
        self._flush_calls(out)
        self._close(out)
        reason = stop_reason(self._finish_reason, bool(self._calls))
        self._event(
            out,
            "message_delta",
            delta={"stop_reason": reason, "stop_sequence": None},
            usage=anthropic_usage(self._usage),
        )
        self._event(out, "message_stop")
        return out

    def fail(self, status: int, message: str) -> list[Event]:
        """The stream breaking off after it started: one `error` event, and nothing after it."""
        self._done = True
        return [("error", error_body(status, message))]


# --- errors ---------------------------------------------------------------------------------------------


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (other 4xx: invalid_request_error, other 5xx: api_error)."""
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict:
    """An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": error_type(status), "message": presentable(message)}}
