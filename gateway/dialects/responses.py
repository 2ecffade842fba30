"""The OpenAI Responses API (POST /v1/responses), turned into the chat form and back: pure translation, no I/O.

Callers: the openai SDK's `responses.create`, the OpenAI Agents SDK, Codex CLI. The request side
(`to_chat_request`) checks what the chat form cannot express and refuses it with a 400 naming the
parameter (`input[3].content[0].type`); every top-level parameter is translated, reported as
ignored, or refused, never silently dropped. The answer side (`from_chat_completion`,
`StreamTranslator`) builds what the SDK's `Response` and `ResponseStreamEvent` types parse.
`previous_response_id` is the caller's job: it keeps `turn_history(...)` of each answered turn and
hands it back as `previous` (instructions are not carried over, per the API).

Chat-form conventions this module relies on or introduces (beyond OpenAI's own chat shapes):

- Reasoning in answers: a chat.completion message, or a chunk's delta, may carry `reasoning_content`
  (str; `reasoning` as a str is read too, the name vLLM and OpenRouter use): the model's reasoning
  text. It becomes a `reasoning` output item whose `content` is one `reasoning_text` part (raw
  reasoning, not a summary: `summary` stays empty), streamed as `response.reasoning_text.delta`.
- `thinking_blocks` (list) on a chat assistant message, or a chunk's delta: opaque reasoning that
  must go back to the model on the next turn. Each block is either ours,
  `{"type": "reasoning", "id", "summary": [summary_text parts], "encrypted_content", "content"?}`,
  or Anthropic's `{"type": "thinking", "thinking", "signature"}` / `{"type": "redacted_thinking",
  "data"}` (signature / data become `encrypted_content`). In answers each block is one reasoning item
  (they take precedence over `reasoning_content`); in a stream, a block with no text of its own
  (a signature arriving after the thinking deltas) completes the reasoning item being streamed.
- Reasoning items in the input become `thinking_blocks` (our `reasoning` shape) on the next assistant
  message, the one they precede; a reasoning item not followed by an assistant message or a
  function call is dropped. Backends that cannot send reasoning back must drop the key.
- `developer` messages become `system` messages (every chat backend knows that role).
- Items are numbered from the response id: `resp_X` answers with `msg_X`, `rs_X_<n>`, `fc_X_<n>`
  (n is the output index), so a stream and a whole answer to the same request name them alike.

Hint parameters (sent by coding agents on every call):
  prompt_cache_key, prompt_cache_retention, service_tier: the chat parameters of the same names (an
  OpenAI backend gets them; the other kinds name them as ignored); text.verbosity: chat completions'
  `verbosity` in the native slot (`chat.NATIVE`), for an OpenAI backend only, named as ignored by the
  others; store, include, prompt_cache_options, max_tool_calls, context_management, stream_options,
  reasoning.summary: ignored, named in the ignored list when set (the dialect may act on `store`
  itself: the body is its to read);
  truncation "auto" and top_logprobs > 0: ignored, listed (truncation "disabled", top_logprobs 0 are
  what the gateway does anyway); background false: accepted, true: 400 (no background responses);
  conversation, prompt, moderation, image, access_programs, background_options: 400.
  `user` and `safety_identifier` both become the chat `user` (the rollout's sticky key);
  safety_identifier, the field OpenAI now asks for, wins, and a different `user` is listed as ignored.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from typing import Any

from ..chat import native_slot, reasoning_text
from ..checks import bad, is_int, shown
from ..context import RequestContext
from ..errors import GatewayError
from .base import Dialect, EventStream, StreamEncoder

log = logging.getLogger("llmgate.dialects")

ItemEvent = tuple[str, dict]

_TRANSLATED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "reasoning",
        "user",
        "safety_identifier",
        "metadata",
        "previous_response_id",
    }
)
# Hints chat completions has too: passed as chat parameters (an OpenAI backend sends them; the other kinds
# name them as ignored, per gateway/backends/params.py).
_PASSED = frozenset({"prompt_cache_key", "prompt_cache_retention", "service_tier"})
_IGNORED = frozenset(
    {
        "store",
        "include",
        "prompt_cache_options",
        "max_tool_calls",
        "context_management",
        "stream_options",
        "client_metadata",
    }
)
_REFUSED = {
    "conversation": "conversations are not supported by this gateway: pass previous_response_id, or send the "
    "earlier items in 'input'",
    "prompt": "stored prompt templates are not supported by this gateway: send 'instructions' and 'input' instead",
    "moderation": "moderation is not supported by this gateway: leave 'moderation' out",
    "image": "image generation settings are not supported by this gateway: leave 'image' out",
    "access_programs": "access programs are not supported by this gateway: leave 'access_programs' out",
    "background_options": "background responses are not supported by this gateway: leave 'background_options' out",
}
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_IMAGE_DETAILS = frozenset({"auto", "low", "high"})
_ITEM_TYPES = "message, function_call, function_call_output or reasoning"
_EMPTY_SCHEMA = {"type": "object", "properties": {}}


def _has_instructions(request: dict) -> bool:
    return isinstance(request.get("instructions"), str) and request["instructions"] != ""


# ---- the request: Responses -> chat ---------------------------------------------------------------------------


def to_chat_request(body: Any, previous: list[dict] | None = None) -> tuple[dict, list[str]]:
    """(The chat body, the parameters accepted but ignored) for a Responses request.

    `previous` is the chat history of the turn `previous_response_id` names (`turn_history` of it),
    already resolved by the caller; it goes between the new instructions and the new input.
    Raises InvalidRequest naming the parameter to fix.
    """
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", "body")
    ignored: list[str] = []
    passed: dict[str, Any] = {}
    for name, value in body.items():
        if name in _TRANSLATED:
            continue
        if name in _PASSED:
            if not (value is None or isinstance(value, str)):
                raise bad(f"'{name}' must be a string", name)
            if value is not None:
                passed[name] = value
        elif name in _REFUSED:
            if value is not None:
                raise bad(_REFUSED[name], name, "unsupported_parameter")
        elif name == "background":
            if not (value is None or isinstance(value, bool)):
                raise bad("'background' must be a boolean", name)
            if value:
                raise bad(
                    "background responses are not supported by this gateway: set 'background' to false "
                    "(or leave it out) and stream the answer instead",
                    name,
                    "unsupported_parameter",
                )
        elif name == "truncation":
            if value not in (None, "auto", "disabled"):
                raise bad("'truncation' must be 'auto' or 'disabled'", name)
            if value == "auto":
                ignored.append(name)
        elif name == "top_logprobs":
            if not (value is None or (is_int(value) and 0 <= value <= 20)):
                raise bad("'top_logprobs' must be an integer from 0 to 20", name)
            if value:
                ignored.append(name)
        elif name in _IGNORED:
            if name == "include":
                if not (value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                    raise bad("'include' must be an array of strings", name)
            if value is not None and value != []:
                ignored.append(name)
        else:
            raise bad(
                f"Unrecognized request argument supplied: '{name}'. Remove it: the Responses API "
                "takes no such parameter (check its spelling)",
                name,
                "unknown_parameter",
            )

    model = body.get("model")
    if not (isinstance(model, str) and model != ""):
        raise bad("you must provide a model parameter naming a route (GET /v1/models lists them)", "model")
    previous_id = body.get("previous_response_id")
    if not (previous_id is None or isinstance(previous_id, str)):
        raise bad("'previous_response_id' must be a string", "previous_response_id")
    chat: dict[str, Any] = {"model": model, **passed}

    messages: list[dict] = []
    instructions = body.get("instructions")
    if not (instructions is None or isinstance(instructions, str)):
        raise bad("'instructions' must be a string", "instructions")
    if _has_instructions(body):
        messages.append({"role": "system", "content": instructions})
    messages.extend(previous or ())
    items = body.get("input")
    if items is None:
        if not previous:
            raise bad("'input' is required: a string, or an array of input items", "input")
    elif isinstance(items, str):
        messages.append({"role": "user", "content": items})
    else:
        if not isinstance(items, list):
            raise bad("'input' must be a string or an array of input items", "input")
        if not (items or previous):
            raise bad("'input' must not be empty", "input")
        messages.extend(_items_to_messages(items, "input"))
    chat["messages"] = messages

    tools, names = _tools(body.get("tools"), ignored)
    choice, allowed = _tool_choice(body.get("tool_choice"), names)
    if allowed is not None:
        tools = [t for t in tools if t["function"]["name"] in allowed]
    if tools:
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    elif choice == "required" or isinstance(choice, dict):
        raise bad(
            "'tool_choice' asks for a tool call but the request has no tools: add function tools to "
            "'tools' or set tool_choice to 'auto'",
            "tool_choice",
        )
    elif body.get("parallel_tool_calls") is not None:
        if not isinstance(body["parallel_tool_calls"], bool):
            raise bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")

    fmt = _text_format(body.get("text"), ignored, chat)
    if fmt is not None:
        chat["response_format"] = fmt
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not (is_int(limit) and limit > 0):
            raise bad("'max_output_tokens' must be a positive integer", "max_output_tokens")
        chat["max_tokens"] = limit
    for name in ("temperature", "top_p", "stream", "metadata"):
        if body.get(name) is not None:
            chat[name] = body[name]
    effort = _reasoning(body.get("reasoning"), ignored)
    if effort is not None:
        chat["reasoning_effort"] = effort
    user, safety = body.get("user"), body.get("safety_identifier")
    if not (user is None or isinstance(user, str)):
        raise bad("'user' must be a string", "user")
    if not (safety is None or isinstance(safety, str)):
        raise bad("'safety_identifier' must be a string", "safety_identifier")
    if safety is not None:
        chat["user"] = safety
        if user is not None and user != safety:
            ignored.append("user")
    elif user is not None:
        chat["user"] = user
    return chat, ignored


# Tools the provider runs (and Codex's tool namespaces): offered beside an agent's function tools on every
# call. No backend here runs them, so they are not offered to the model, and named as ignored; the model
# answers with the function tools it has. A tool_choice that forces one is refused.
PROVIDER_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "file_search",
        "code_interpreter",
        "image_generation",
        "mcp",
        "computer_use_preview",
        "namespace",
    }
)


def _tools(tools: Any, ignored: list[str] | None = None) -> tuple[list[dict], set[str]]:
    if tools is None:
        return [], set()
    if not isinstance(tools, list):
        raise bad("'tools' must be an array of tools", "tools")
    out: list[dict] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not (isinstance(tool, dict) and isinstance(tool.get("type"), str)):
            raise bad(f"{where} must be an object with a 'type'", where)
        kind = tool["type"]
        if kind in PROVIDER_TOOLS and ignored is not None:
            if f"tools.{kind}" not in ignored:
                ignored.append(f"tools.{kind}")
            continue
        if kind != "function":
            raise bad(
                f"{where}.type '{kind}' is not supported: this gateway serves function tools only "
                f"(type 'function'); run {kind} in your own code and offer it as a function tool",
                f"{where}.type",
                "unsupported_tool",
            )
        name = tool.get("name")
        if name is None and isinstance(tool.get("function"), dict):
            raise bad(
                f"{where}.name is required: Responses function tools are flat ({{'type': 'function', "
                "'name', 'parameters'}), not the chat form's {'function': {...}}",
                f"{where}.name",
            )
        if not (isinstance(name, str) and name != ""):
            raise bad(f"{where}.name is required (a non-empty string)", f"{where}.name")
        fn: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if not (description is None or isinstance(description, str)):
            raise bad(f"{where}.description must be a string", f"{where}.description")
        if description is not None:
            fn["description"] = description
        parameters = tool.get("parameters")
        if not (parameters is None or isinstance(parameters, dict)):
            raise bad(f"{where}.parameters must be a JSON schema object", f"{where}.parameters")
        fn["parameters"] = parameters if parameters is not None else dict(_EMPTY_SCHEMA)
        strict = tool.get("strict")
        if not (strict is None or isinstance(strict, bool)):
            raise bad(f"{where}.strict must be a boolean", f"{where}.strict")
        if strict is not None:
            fn["strict"] = strict
        out.append({"type": "function", "function": fn})
    return out, {t["function"]["name"] for t in out}


def _tool_choice(choice: Any, names: set[str]) -> tuple[Any, set[str] | None]:
    """(The chat tool_choice, the tool names an allowed_tools choice keeps or None)."""
    if choice is None:
        return None, None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise bad(
                f"'tool_choice' must be 'auto', 'none', 'required' or an object, got {shown(choice)}", "tool_choice"
            )
        return choice, None
    if not (isinstance(choice, dict) and isinstance(choice.get("type"), str)):
        raise bad("'tool_choice' must be 'auto', 'none', 'required' or an object with a 'type'", "tool_choice")
    kind = choice["type"]
    if kind == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise bad("'tool_choice.name' is required with type 'function'", "tool_choice.name")
        if name not in names:
            raise bad(
                f"'tool_choice.name' {shown(name)} is not one of the function tools in 'tools'", "tool_choice.name"
            )
        return {"type": "function", "function": {"name": name}}, None
    if kind == "allowed_tools":
        mode, allowed = choice.get("mode"), choice.get("tools")
        if mode not in ("auto", "required"):
            raise bad("'tool_choice.mode' must be 'auto' or 'required'", "tool_choice.mode")
        if not isinstance(allowed, list):
            raise bad("'tool_choice.tools' must be an array of tools", "tool_choice.tools")
        keep: set[str] = set()
        for i, tool in enumerate(allowed):
            where = f"tool_choice.tools[{i}]"
            if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str)):
                raise bad(
                    f"{where} must be {{'type': 'function', 'name': ...}} (only function tools are served)", where
                )
            if tool["name"] not in names:
                raise bad(f"{where}.name {shown(tool['name'])} is not one of the tools in 'tools'", f"{where}.name")
            keep.add(tool["name"])
        return mode, keep
    raise bad(
        f"'tool_choice.type' '{kind}' is not supported: this gateway serves function tools only; use 'auto', "
        "'none', 'required', {'type': 'function', 'name'} or {'type': 'allowed_tools', ...}",
        "tool_choice.type",
        "unsupported_tool",
    )


def _text_format(text: Any, ignored: list[str], chat: dict) -> dict | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad("'text' must be an object ({'format': ..., 'verbosity': ...})", "text")
    for key, value in text.items():
        if key not in ("format", "verbosity") and value is not None:
            ignored.append(f"text.{key}")
    if text.get("verbosity") is not None:
        if text["verbosity"] not in ("low", "medium", "high"):
            raise bad("'text.verbosity' must be 'low', 'medium' or 'high'", "text.verbosity")
        # chat completions' `verbosity`, for an OpenAI backend; a hint the other kinds name as ignored
        slot = native_slot(chat, "openai")
        slot["params"]["verbosity"] = text["verbosity"]
        slot["names"].append("text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise bad("'text.format' must be an object with a 'type'", "text.format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema":
        raise bad(
            f"'text.format.type' must be 'text', 'json_object' or 'json_schema', got {shown(kind)}", "text.format.type"
        )
    name, schema = fmt.get("name"), fmt.get("schema")
    if not (isinstance(name, str) and name != ""):
        raise bad("'text.format.name' is required with type 'json_schema'", "text.format.name")
    if not isinstance(schema, dict):
        raise bad(
            "'text.format.schema' is required with type 'json_schema': a JSON schema object", "text.format.schema"
        )
    spec: dict[str, Any] = {"name": name, "schema": schema}
    for key, kind_ok in (("strict", bool), ("description", str)):
        value = fmt.get(key)
        if not (value is None or isinstance(value, kind_ok)):
            raise bad(
                f"'text.format.{key}' must be a {'boolean' if kind_ok is bool else 'string'}", f"text.format.{key}"
            )
        if value is not None:
            spec[key] = value
    return {"type": "json_schema", "json_schema": spec}


def _reasoning(reasoning: Any, ignored: list[str]) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise bad("'reasoning' must be an object ({'effort': ..., 'summary': ...})", "reasoning")
    effort = reasoning.get("effort")
    if not (effort is None or isinstance(effort, str)):
        raise bad("'reasoning.effort' must be a string such as 'low', 'medium' or 'high'", "reasoning.effort")
    for key, value in reasoning.items():
        if key != "effort" and value is not None:
            ignored.append(f"reasoning.{key}")
    return effort


class _History:
    """Chat messages built item by item: function calls join the assistant message before them,
    reasoning waits for the next assistant message."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.thinking: list[dict] = []

    def assistant(self, joins: bool) -> dict:
        last = self.messages[-1] if self.messages else None
        if joins and last is not None and last["role"] == "assistant" and not self.thinking:
            return last
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if self.thinking:
            message["thinking_blocks"], self.thinking = self.thinking, []
        self.messages.append(message)
        return message

    def add(self, message: dict) -> None:
        if message["role"] == "assistant":
            target = self.assistant(joins=False)
            target.update(message)
        else:
            self.thinking = []
            self.messages.append(message)


def _items_to_messages(items: list, where: str) -> list[dict]:
    history = _History()
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{at} must be an object: an input item ({_ITEM_TYPES})", at)
        kind = item.get("type")
        if kind is None and "role" not in item and "id" in item:
            kind = "item_reference"
        if kind is None or kind == "message":
            history.add(_message(item, at))
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not (isinstance(call_id, str) and call_id != ""):
                raise bad(f"{at}.call_id is required (the id the model gave the call)", f"{at}.call_id")
            if not (isinstance(name, str) and name != ""):
                raise bad(f"{at}.name is required", f"{at}.name")
            if not isinstance(arguments, str):
                raise bad(f"{at}.arguments is required: the call's arguments as a JSON string", f"{at}.arguments")
            message = history.assistant(joins=True)
            message.setdefault("tool_calls", []).append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not (isinstance(call_id, str) and call_id != ""):
                raise bad(f"{at}.call_id is required: the call_id of the function_call this answers", f"{at}.call_id")
            history.add({"role": "tool", "tool_call_id": call_id, "content": _tool_output(item.get("output"), at)})
        elif kind == "reasoning":
            history.thinking.append(_reasoning_block(item, at))
        elif kind == "item_reference":
            raise bad(
                f"{at} is an item_reference, which this gateway cannot resolve: send the item itself, or "
                "previous_response_id for a whole earlier turn",
                at,
                "unsupported_item",
            )
        elif isinstance(kind, str):
            raise bad(
                f"{at}.type '{kind}' is not supported: this gateway takes {_ITEM_TYPES} items",
                f"{at}.type",
                "unsupported_item",
            )
        else:
            raise bad(f"{at}.type must be a string: one of {_ITEM_TYPES}", f"{at}.type")
    return history.messages


def _message(item: dict, at: str) -> dict:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise bad(f"{at}.role must be 'user', 'assistant', 'system' or 'developer', got {shown(role)}", f"{at}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": "system" if role == "developer" else role, "content": content}
    if not isinstance(content, list):
        raise bad(f"{at}.content must be a string or an array of content parts", f"{at}.content")
    if role == "user":
        parts = [_input_part(part, f"{at}.content[{j}]") for j, part in enumerate(content)]
        if len(parts) == 1 and parts[0]["type"] == "text":  # what every chat server takes: a plain string
            return {"role": "user", "content": parts[0]["text"]}
        return {"role": "user", "content": parts}
    texts = []
    for j, part in enumerate(content):
        where = f"{at}.content[{j}]"
        if not isinstance(part, dict):
            raise bad(f"{where} must be an object with a 'type'", where)
        kind = part.get("type")
        allowed = ("output_text", "refusal", "input_text") if role == "assistant" else ("input_text",)
        if kind not in allowed:
            raise bad(
                f"{where}.type must be {' or '.join(repr(a) for a in allowed)} in a {role} message, got {shown(kind)}",
                f"{where}.type",
            )
        key = "refusal" if kind == "refusal" else "text"
        if not isinstance(part.get(key), str):
            raise bad(f"{where}.{key} must be a string", f"{where}.{key}")
        texts.append(part[key])
    return {"role": "system" if role == "developer" else role, "content": "".join(texts)}


def _input_part(part: Any, where: str) -> dict:
    if not isinstance(part, dict):
        raise bad(f"{where} must be an object with a 'type'", where)
    kind = part.get("type")
    if kind == "input_text":
        if not isinstance(part.get("text"), str):
            raise bad(f"{where}.text must be a string", f"{where}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise bad(
                f"{where}.file_id: file ids need the OpenAI Files API, which this gateway does not serve; send "
                "the image as image_url (an https URL or a data: URL)",
                f"{where}.file_id",
                "unsupported_file",
            )
        url = part.get("image_url")
        if not (isinstance(url, str) and url != ""):
            raise bad(f"{where}.image_url is required (an https URL or a data: URL)", f"{where}.image_url")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in _IMAGE_DETAILS:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_id") is not None:
            raise bad(
                f"{where}.file_id: file ids need the OpenAI Files API, which this gateway does not serve; send "
                "the file's content as file_data (a base64 data: URL)",
                f"{where}.file_id",
                "unsupported_file",
            )
        data = part.get("file_data")
        if data is None and part.get("file_url") is not None:
            raise bad(
                f"{where}.file_url is not supported: send the file's content as file_data (a base64 data: URL)",
                f"{where}.file_url",
                "unsupported_file",
            )
        if not (isinstance(data, str) and data != ""):
            raise bad(f"{where}.file_data is required (a base64 data: URL)", f"{where}.file_data")
        file = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    if kind in ("output_text", "refusal"):
        raise bad(
            f"{where}.type '{kind}' belongs in assistant messages: use 'input_text' in a user message", f"{where}.type"
        )
    raise bad(f"{where}.type must be 'input_text', 'input_image' or 'input_file', got {shown(kind)}", f"{where}.type")


def _tool_output(output: Any, at: str) -> str | list[dict]:
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise bad(
            f"{at}.output is required: a string, or an array of input_text, input_image and input_file parts",
            f"{at}.output",
        )
    parts = [_input_part(part, f"{at}.output[{j}]") for j, part in enumerate(output)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _reasoning_block(item: dict, at: str) -> dict:
    summary = item.get("summary") or []
    if not (isinstance(summary, list) and all(isinstance(s, dict) and isinstance(s.get("text"), str) for s in summary)):
        raise bad(f"{at}.summary must be an array of {{'type': 'summary_text', 'text': ...}} parts", f"{at}.summary")
    encrypted = item.get("encrypted_content")
    if not (encrypted is None or isinstance(encrypted, str)):
        raise bad(f"{at}.encrypted_content must be a string", f"{at}.encrypted_content")
    block = {
        "type": "reasoning",
        "id": item.get("id"),
        "summary": [{"type": "summary_text", "text": s["text"]} for s in summary],
        "encrypted_content": encrypted,
    }
    content = item.get("content")
    if content:
        if not (
            isinstance(content, list) and all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in content)
        ):
            raise bad(
                f"{at}.content must be an array of {{'type': 'reasoning_text', 'text': ...}} parts", f"{at}.content"
            )
        block["content"] = [{"type": "reasoning_text", "text": c["text"]} for c in content]
    return block


def output_items_to_chat(response: dict) -> list[dict]:
    """A stored response's output as chat messages (assistant, with tool_calls and thinking_blocks)."""
    return _items_to_messages(list(response.get("output") or ()), "output")


def turn_history(request: dict, chat_body: dict, response: dict) -> list[dict]:
    """What to keep for a later `previous_response_id`: this turn's chat messages, earlier turns included,
    less its instructions (which the API never carries over), then its answer."""
    messages = chat_body["messages"][1:] if _has_instructions(request) else chat_body["messages"]
    return [*messages, *output_items_to_chat(response)]


# ---- the answer: chat -> Responses -----------------------------------------------------------------------------


def _base(response_id: str) -> str:
    return response_id[5:] if response_id.startswith("resp_") else response_id


def _response_object(request: dict, response_id: str, model: str, created_at: float) -> dict:
    """The response as it stands before any output: every field the SDK's Response needs, the request echoed."""
    text: dict[str, Any] = {"format": (request.get("text") or {}).get("format") or {"type": "text"}}
    if (request.get("text") or {}).get("verbosity") is not None:
        text["verbosity"] = request["text"]["verbosity"]
    reasoning = request.get("reasoning") or {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default",
        "temperature": request.get("temperature"),
        "text": text,
        "tool_choice": request.get("tool_choice") if request.get("tool_choice") is not None else "auto",
        "tools": list(request.get("tools") or ()),
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation") or "disabled",
        "usage": None,
        "user": request.get("user"),
        "safety_identifier": request.get("safety_identifier"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "metadata": request.get("metadata") or {},
    }


def _usage(usage: dict | None) -> dict | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        },
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _finished(response: dict, output: list[dict], finish_reason: str | None, usage: dict | None) -> dict:
    reason = _INCOMPLETE.get(finish_reason or "")
    if reason and output:
        output[-1]["status"] = "incomplete"
    response.update(
        status="incomplete" if reason else "completed",
        output=output,
        usage=_usage(usage),
        incomplete_details={"reason": reason} if reason else None,
    )
    return response


def _block_item(block: dict, item_id: str) -> dict:
    """A thinking block as a reasoning output item (complete)."""
    kind = block.get("type")
    summary, content, encrypted = [], None, None
    if kind == "thinking":
        content = [{"type": "reasoning_text", "text": block.get("thinking") or ""}]
        encrypted = block.get("signature")
    elif kind == "redacted_thinking":
        encrypted = block.get("data")
    else:
        summary = [{"type": "summary_text", "text": s.get("text", "")} for s in block.get("summary") or ()]
        content = [{"type": "reasoning_text", "text": c.get("text", "")} for c in block.get("content") or ()] or None
        encrypted = block.get("encrypted_content")
        item_id = block.get("id") or item_id
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": summary, "status": "completed"}
    if content:
        item["content"] = content
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    return item


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def from_chat_completion(answer: dict, *, response_id: str, model: str, request: dict, created_at: float) -> dict:
    """A chat.completion as a Responses `response` object: reasoning, message and function_call items."""
    base = _base(response_id)
    choices = answer.get("choices") or [{}]
    message, finish_reason = choices[0].get("message") or {}, choices[0].get("finish_reason")
    output: list[dict] = []
    blocks = message.get("thinking_blocks") or []
    if blocks:
        output.extend(_block_item(b, f"rs_{base}_{i}") for i, b in enumerate(blocks))
    elif thought := reasoning_text(message):
        output.append(
            {
                "id": f"rs_{base}_0",
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": thought}],
                "status": "completed",
            }
        )
    text, refusal, calls = _text_of(message.get("content")), message.get("refusal"), message.get("tool_calls") or []
    if text or refusal or not calls:
        parts = [_text_part(text)] if text or not refusal else []
        if refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        output.append(
            {"id": f"msg_{base}", "type": "message", "role": "assistant", "status": "completed", "content": parts}
        )
    for call in calls:
        fn = call.get("function") or {}
        output.append(
            {
                "id": f"fc_{base}_{len(output)}",
                "type": "function_call",
                "status": "completed",
                "call_id": call.get("id") or f"call_{base}_{len(output)}",
                "name": fn.get("name") or "",
                "arguments": fn.get("arguments") or "",
            }
        )
    return _finished(
        _response_object(request, response_id, model, created_at), output, finish_reason, answer.get("usage")
    )


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


# ---- streams ---------------------------------------------------------------------------------------------------

_RESPONSE_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})


class StreamTranslator:
    """chat.completion.chunk dicts in, Responses stream events out: `(event name, data)` pairs.

    A reasoning or message item closes as soon as another item starts (a later reasoning or text
    delta opens a new item); function calls stay open until `finish`, since a server may interleave
    the argument fragments of parallel calls. Only choice 0 is read (Responses has no `n`).
    """

    def __init__(self, response_id: str, model: str, request: dict, created_at: float):
        self._base = _base(response_id)
        self._response = _response_object(request, response_id, model, created_at)
        self._seq = 0
        self._items: list[dict] = []  # in output order: {"item": final item dict, "open": bool, ...}
        self._reasoning: dict | None = None  # the open reasoning / message item's slot
        self._message: dict | None = None
        self._calls: dict[int, dict] = {}  # chat tool-call index -> its slot
        self._finish_reason: str | None = None
        self._usage: dict | None = None
        self._done = False

    def _event(self, out: list[ItemEvent], type: str, **fields: Any) -> None:
        out.append((type, {"type": type, "sequence_number": self._seq, **fields}))
        self._seq += 1

    def _snapshot(self, status: str) -> dict:
        return {**self._response, "status": status, "output": [dict(s["item"]) for s in self._items]}

    def start(self) -> list[ItemEvent]:
        out: list[ItemEvent] = []
        self._event(out, "response.created", response=self._snapshot("in_progress"))
        self._event(out, "response.in_progress", response=self._snapshot("in_progress"))
        return out

    # -- items --

    def _add(self, out: list[ItemEvent], item: dict, **state: Any) -> dict:
        slot = {"index": len(self._items), "item": item, "open": True, **state}
        self._items.append(slot)
        self._event(
            out,
            "response.output_item.added",
            output_index=slot["index"],
            item={**item, "content": []} if item["type"] != "function_call" else dict(item),
        )
        return slot

    def _close(self, out: list[ItemEvent], slot: dict, status: str = "completed") -> None:
        if not slot["open"]:
            return
        slot["open"] = False
        item, index = slot["item"], slot["index"]
        if item["type"] == "message":
            self._close_part(out, slot)
            if self._message is slot:
                self._message = None
        elif item["type"] == "reasoning":
            if "content" in item:
                text = "".join(slot["text"])
                item["content"] = [{"type": "reasoning_text", "text": text}]
                self._event(
                    out,
                    "response.reasoning_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                )
                self._event(
                    out,
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part={"type": "reasoning_text", "text": text},
                )
            if self._reasoning is slot:
                self._reasoning = None
        else:
            item["arguments"] = "".join(slot["arguments"])
            self._event(
                out,
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
        item["status"] = status
        self._event(out, "response.output_item.done", output_index=index, item=dict(item))

    def _close_part(self, out: list[ItemEvent], slot: dict) -> None:
        part = slot.get("part")
        if part is None:
            return
        slot["part"] = None
        item, index, content_index = slot["item"], slot["index"], len(slot["item"]["content"])
        text = "".join(part["fragments"])
        if part["type"] == "output_text":
            done = _text_part(text)
            self._event(
                out,
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=content_index,
                text=text,
                logprobs=[],
            )
        else:
            done = {"type": "refusal", "refusal": text}
            self._event(
                out,
                "response.refusal.done",
                item_id=item["id"],
                output_index=index,
                content_index=content_index,
                refusal=text,
            )
        self._event(
            out,
            "response.content_part.done",
            item_id=item["id"],
            output_index=index,
            content_index=content_index,
            part=done,
        )
        item["content"].append(done)

    def _close_others(self, out: list[ItemEvent], keep: dict | None) -> None:
        for slot in (self._reasoning, self._message):
            if slot is not None and slot is not keep:
                self._close(out, slot)

    def _text(self, out: list[ItemEvent], kind: str, delta: str) -> None:
        slot = self._message
        if slot is None:
            self._close_others(out, None)
            item = {
                "id": f"msg_{self._base}"
                if not any(s["item"]["type"] == "message" for s in self._items)
                else f"msg_{self._base}_{len(self._items)}",
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            slot = self._message = self._add(out, item, part=None)
        item, index = slot["item"], slot["index"]
        part = slot["part"]
        if part is not None and part["type"] != kind:
            self._close_part(out, slot)
            part = None
        if part is None:
            part = slot["part"] = {"type": kind, "fragments": []}
            empty = _text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            self._event(
                out,
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=len(item["content"]),
                part=empty,
            )
        if not delta:
            return
        part["fragments"].append(delta)
        if kind == "output_text":
            self._event(
                out,
                "response.output_text.delta",
                item_id=item["id"],
                output_index=index,
                content_index=len(item["content"]),
                delta=delta,
                logprobs=[],
            )
        else:
            self._event(
                out,
                "response.refusal.delta",
                item_id=item["id"],
                output_index=index,
                content_index=len(item["content"]),
                delta=delta,
            )

    def _thought(self, out: list[ItemEvent], delta: str) -> None:
        slot = self._reasoning
        if slot is None:
            self._close_others(out, None)
            item = {
                "id": f"rs_{self._base}_{len(self._items)}",
                "type": "reasoning",
                "summary": [],
                "content": [],
                "status": "in_progress",
            }
            slot = self._reasoning = self._add(out, item, text=[])
            self._event(
                out,
                "response.content_part.added",
                item_id=item["id"],
                output_index=slot["index"],
                content_index=0,
                part={"type": "reasoning_text", "text": ""},
            )
        slot["text"].append(delta)
        self._event(
            out,
            "response.reasoning_text.delta",
            item_id=slot["item"]["id"],
            output_index=slot["index"],
            content_index=0,
            delta=delta,
        )

    def _block(self, out: list[ItemEvent], block: dict) -> None:
        own_text = block.get("thinking") or block.get("summary") or block.get("content")
        slot = self._reasoning
        if slot is not None and not own_text:
            encrypted = block.get("signature") or block.get("data") or block.get("encrypted_content")
            if encrypted is not None:
                slot["item"]["encrypted_content"] = encrypted
            self._close(out, slot)
            return
        self._close_others(out, None)
        item = _block_item(block, f"rs_{self._base}_{len(self._items)}")
        slot = self._add(out, {**item, "status": "in_progress"})
        slot["item"] = item
        slot["open"] = False
        self._event(out, "response.output_item.done", output_index=slot["index"], item=dict(item))

    def _call(self, out: list[ItemEvent], fragment: dict) -> None:
        index = fragment.get("index", 0)
        fn = fragment.get("function") or {}
        slot = self._calls.get(index)
        if slot is None:
            self._close_others(out, None)
            position = len(self._items)
            item = {
                "id": f"fc_{self._base}_{position}",
                "type": "function_call",
                "status": "in_progress",
                "call_id": fragment.get("id") or f"call_{self._base}_{position}",
                "name": fn.get("name") or "",
                "arguments": "",
            }
            slot = self._calls[index] = self._add(out, item, arguments=[])
        elif fn.get("name"):
            slot["item"]["name"] += fn["name"]
        if fn.get("arguments"):
            slot["arguments"].append(fn["arguments"])
            self._event(
                out,
                "response.function_call_arguments.delta",
                item_id=slot["item"]["id"],
                output_index=slot["index"],
                delta=fn["arguments"],
            )

    # -- the public steps --

    def feed(self, chunk: dict) -> list[ItemEvent]:
        """The events for one chat.completion.chunk (often one, sometimes none)."""
        out: list[ItemEvent] = []
        if self._done:
            return out
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thought = reasoning_text(delta)
            if thought:
                self._thought(out, thought)
            for block in delta.get("thinking_blocks") or ():
                self._block(out, block)
            if delta.get("content"):
                self._text(out, "output_text", delta["content"])
            if delta.get("refusal"):
                self._text(out, "refusal", delta["refusal"])
            for fragment in delta.get("tool_calls") or ():
                self._call(out, fragment)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> list[ItemEvent]:
        """Close every open item in output order, then `response.completed` (or `.incomplete`) with it all."""
        out: list[ItemEvent] = []
        if self._done:
            return out
        self._done = True
        if not any(s["item"]["type"] in ("message", "function_call") for s in self._items):
            self._text(out, "output_text", "")
        incomplete = self._finish_reason in _INCOMPLETE
        for slot in self._items:
            last = slot is self._items[-1]
            self._close(out, slot, "incomplete" if incomplete and last else "completed")
        response = _finished(self._response, [dict(s["item"]) for s in self._items], self._finish_reason, self._usage)
        self._event(out, "response.incomplete" if incomplete else "response.completed", response=response)
        return out

    def error_event(self, code: str | None, message: str) -> list[ItemEvent]:
        """A failure mid-stream: an `error` event, then `response.failed` with what was sent so far."""
        out: list[ItemEvent] = []
        if self._done:
            return out
        self._done = True
        self._event(out, "error", code=code, message=message, param=None)
        if code == "rate_limit_error":
            code = "rate_limit_exceeded"
        failed = self._snapshot("failed")
        for item in failed["output"]:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        failed["error"] = {"code": code if code in _RESPONSE_ERROR_CODES else "server_error", "message": message}
        failed["usage"] = _usage(self._usage)
        self._event(out, "response.failed", response=failed)
        return out


# ---- the endpoint: POST /v1/responses ----------------------------------------------------------------------------

STORED_KEY = "responses:{tenant}:{id}"  # tenant-scoped: another team's response id finds nothing


class ResponsesStream(EventStream):
    """The Responses stream events; a broken stream ends with `error` and `response.failed`."""

    def failed(self, error: GatewayError) -> list[ItemEvent]:
        return self.translator.error_event(error.code or error.type, error.body()["error"]["message"])


class OpenAIResponses(Dialect):
    """The Responses API. With `store` (the default) an answered turn is kept in the state store for
    `server.stored_responses_ttl` seconds, under the caller's tenant, so `previous_response_id` works on
    every replica sharing the store; `store: false` keeps nothing (the caller sends the history itself)."""

    name = "responses"

    def __init__(self) -> None:
        # Turns being written, per state store: this replica finds them at once; another, once the write
        # lands (a millisecond or so: the answer does not wait for it).
        self._writing: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def to_chat(self, ctx: RequestContext, gateway) -> tuple[dict, list[str]]:
        body = ctx.body
        previous = None
        if body.get("previous_response_id") is not None:
            given = body["previous_response_id"]
            if not (isinstance(given, str) and given != ""):
                raise bad("'previous_response_id' must be a response id", "previous_response_id")
            key = STORED_KEY.format(tenant=ctx.tenant or "", id=given)
            writing = self._writing.get(gateway.store, {}).get(key)
            previous = writing[0] if writing is not None else await gateway.store.get_expiring(key)
            if previous is None:
                ttl = gateway.config.server.stored_responses_ttl
                raise bad(
                    f"previous_response_id '{shown(given)[1:-1]}' is not a response this gateway holds: it "
                    f"keeps answered turns for {ttl / 3600:g} hours, for the team that made them, and never "
                    "when the request said store: false; send the earlier items in 'input' instead",
                    "previous_response_id",
                    "previous_response_not_found",
                )
        chat, ignored = to_chat_request(body, previous)
        ctx.state[self.name] = {"id": f"resp_{secrets.token_hex(16)}", "created_at": time.time()}
        return chat, [name for name in ignored if name != "store"]

    def _response(self, completion: dict, ctx: RequestContext) -> dict:
        mine = ctx.state[self.name]
        return from_chat_completion(
            completion, response_id=mine["id"], model=ctx.route_name, request=ctx.inbound, created_at=mine["created_at"]
        )

    def answer(self, completion: dict, ctx: RequestContext) -> dict:
        built = ctx.state[self.name].get("response")  # built once, when the turn was stored
        return built if built is not None and completion is ctx.response else self._response(completion, ctx)

    def encoder(self, ctx: RequestContext) -> StreamEncoder:
        mine = ctx.state[self.name]
        return ResponsesStream(StreamTranslator(mine["id"], ctx.route_name, ctx.inbound, mine["created_at"]))

    def error_body(self, error: GatewayError) -> dict:
        return error.body()

    async def answered(self, ctx: RequestContext, gateway) -> None:
        if ctx.inbound.get("store") is False or ctx.response is None:
            return
        response = ctx.state[self.name]["response"] = self._response(ctx.response, ctx)
        history = turn_history(ctx.inbound, ctx.body, response)
        key = STORED_KEY.format(tenant=ctx.tenant or "", id=ctx.state[self.name]["id"])
        writing = self._writing.setdefault(gateway.store, {})
        task = asyncio.create_task(self._store(gateway, key, history, ctx.request_id), name="store a response")
        writing[key] = (history, task)
        task.add_done_callback(lambda _: writing.pop(key, None))

    @staticmethod
    async def _store(gateway, key: str, history: list[dict], request_id: str) -> None:
        try:
            await gateway.store.put_expiring(key, history, gateway.config.server.stored_responses_ttl)
        except Exception as exc:  # the answer went out; a later previous_response_id says it is not held
            log.warning(
                "request %s: the answered turn could not be stored for previous_response_id: %s",
                request_id,
                type(exc).__name__,
            )


RESPONSES = OpenAIResponses()
