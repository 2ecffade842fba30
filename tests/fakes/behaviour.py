"""What every fake upstream does with a conversation, whatever protocol it speaks.

The last user message steers it, so one test can drive the same scenario through each backend kind:
- "[tool]" with tools offered: call the first tool with {"city": "Paris"};
- "[call NAME {json}]" with a tool NAME offered: call it with those arguments (an agent's own tool);
- "[status 503]" (any code): answer with that HTTP error;
- "[too long]": answer the provider's own prompt-too-long error (as does a prompt of more words than the
  fake's `max_prompt_tokens`, its context window: each fake counts a word a token);
- "[sleep 0.5]": wait that many seconds before answering;
- "[cut]": start streaming, then drop the connection;
- otherwise: answer "echo: <text>" in a few chunks.
A tool result in the conversation is answered with "tool said: <result>".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    text: str = ""
    tool_name: str | None = None
    tool_args: dict = field(default_factory=dict)
    status: int | None = None
    delay: float = 0.0
    cut: bool = False
    too_long: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def pieces(self) -> list[str]:
        words = self.text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]


def decide(last_user_text: str, tool_names: list[str], tool_result: str | None, prompt_words: int) -> Reply:
    reply = Reply(prompt_tokens=max(1, prompt_words))
    if m := re.search(r"\[sleep ([0-9.]+)\]", last_user_text):
        reply.delay = float(m.group(1))
    if m := re.search(r"\[status (\d{3})\]", last_user_text):
        reply.status = int(m.group(1))
        return reply
    reply.cut = "[cut]" in last_user_text
    reply.too_long = "[too long]" in last_user_text
    if tool_result is not None:
        reply.text = f"tool said: {tool_result}"
    elif (m := re.search(r"\[call (\w+) (\{.*?\})\]", last_user_text)) and m.group(1) in tool_names:
        reply.tool_name, reply.tool_args = m.group(1), json.loads(m.group(2))
    elif "[tool]" in last_user_text and tool_names:
        reply.tool_name = tool_names[0]
        reply.tool_args = {"city": "Paris"}
    else:
        reply.text = f"echo: {last_user_text}"
    reply.completion_tokens = len(reply.text.split()) if reply.text else 5
    return reply


class FakeUpstream:
    """What every fake keeps: each request it received, its headers, and the failures scripted next."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.headers: list[dict] = []
        self.failures: list[int] = []
        self.max_prompt_tokens: int | None = None  # the model's context window, in the fake's tokens (words)

    def fail_next(self, *statuses: int) -> None:
        """The next requests answer these HTTP statuses, in order, in the provider's error shape."""
        self.failures.extend(statuses)

    def received(self, request: web.Request, record: Any) -> web.Response | None:
        """Record a request; the scripted failure to answer with, if one is due."""
        self.requests.append(record)
        self.headers.append(dict(request.headers))
        return self._error(self.failures.pop(0), "scripted failure") if self.failures else None

    def too_long(self, reply: Reply) -> web.Response | None:
        """The provider's own prompt-too-long error, when the prompt is steered so or longer than the window."""
        limit = self.max_prompt_tokens
        if not reply.too_long and (limit is None or reply.prompt_tokens <= limit):
            return None
        limit = limit or max(1, reply.prompt_tokens - 1)
        return self._too_long(max(reply.prompt_tokens, limit + 1), limit)

    def _error(self, status: int, message: str) -> web.Response:
        raise NotImplementedError

    def _too_long(self, tokens: int, limit: int) -> web.Response:
        raise NotImplementedError
