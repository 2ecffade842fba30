"""The bad-input corpus: malformed, oversized, wrongly typed and hostile HTTP requests, as data.

Each `Case` is one raw HTTP/1.1 request (method, path, headers, body bytes) and the statuses a
healthy gateway may answer it with. Most are one exact 4xx; a few name 200 where the input is odd
but legal (a 900 KB message under the body limit, a JSON body without a Content-Type) and the
gateway deliberately serves it. tests/test_bad_input.py sends every case over a raw socket, so
nothing a client library would refuse to send (a bare CR in a header, a lying Content-Length, a
broken chunked body, invalid UTF-8 in a header) is out of reach.

The gateway under test is configured by test_bad_input.py: route `bot`, `server.max_body_bytes`
= MAX_BODY, `server.max_messages` = MAX_MESSAGES, `feedback.max_comment_chars` = MAX_COMMENT,
admin token ADMIN_TOKEN.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

MAX_BODY = 1024 * 1024
MAX_MESSAGES = 100
MAX_COMMENT = 500
ADMIN_TOKEN = "admin-token-for-bad-input-tests-7f3a9c"
CHAT = "/v1/chat/completions"
JSON = (("Content-Type", "application/json"),)
ADMIN = (("Content-Type", "application/json"), ("Authorization", f"Bearer {ADMIN_TOKEN}"))
CLOSED = 0  # "status" of a connection closed without an answer: right when the client half-closed mid-body
USER = {"role": "user", "content": "hi"}
VALID = {"model": "bot", "messages": [USER]}


@dataclass(frozen=True)
class Case:
    """One request and what may answer it.

    `headers` are sent as given (str or raw bytes values); Host and `Connection: close` are added
    unless `raw` is set, and Content-Length is computed unless a header already frames the body
    (Content-Length or Transfer-Encoding). `raw` replaces the whole request, byte for byte.
    `half_close` shuts the socket's sending side after the request: a body that promises more bytes
    than it carries then ends, as when a client dies mid-upload.
    """

    name: str
    category: str
    status: tuple[int, ...]
    method: str = "POST"
    path: str = CHAT
    headers: tuple[tuple[str, Any], ...] = JSON
    body: bytes = b""
    raw: bytes | None = None
    half_close: bool = False
    param: str | None = None  # the `error.param` a JSON error must name, where one is expected
    protocol: bool = False  # refused by the HTTP parser, before the application: a short text/plain 400
    why: str = ""

    def request_bytes(self, host: str) -> bytes:
        if self.raw is not None:
            return self.raw
        names = {name.lower() for name, _ in self.headers}
        lines = [f"{self.method} {self.path} HTTP/1.1".encode(), f"Host: {host}".encode(), b"Connection: close"]
        for name, value in self.headers:
            lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
        if not names & {"content-length", "transfer-encoding"} and (self.body or self.method in ("POST", "PUT")):
            lines.append(f"Content-Length: {len(self.body)}".encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def j(value: Any) -> bytes:
    return json.dumps(value).encode()


def chat(
    name: str,
    category: str,
    status: int | tuple[int, ...],
    body: bytes,
    *,
    headers=JSON,
    param: str | None = None,
    why: str = "",
    **kw,
) -> Case:
    statuses = status if isinstance(status, tuple) else (status,)
    return Case(name, category, statuses, body=body, headers=headers, param=param, why=why, **kw)


def with_field(name: str, value: Any) -> bytes:
    return j({**VALID, name: value})


def with_message(**fields: Any) -> bytes:
    return j({"model": "bot", "messages": [{**USER, **fields}]})


def nested(depth: int, opener: str, closer: str, leaf: str = "1") -> bytes:
    return (opener * depth + leaf + closer * depth).encode()


def _valid_body() -> bytes:
    return j(VALID)


# ---------------------------------------------------------------------------------------------
MALFORMED_JSON = [
    chat("truncated object", "malformed-json", 400, b'{"model": "bot", "messages": [{"role": "us'),
    chat("truncated after colon", "malformed-json", 400, b'{"model":'),
    chat("trailing garbage", "malformed-json", 400, _valid_body() + b" garbage"),
    chat("two objects back to back", "malformed-json", 400, _valid_body() + _valid_body()),
    chat("single quotes", "malformed-json", 400, b"{'model': 'bot', 'messages': []}"),
    chat("unquoted keys", "malformed-json", 400, b'{model: "bot"}'),
    chat(
        "trailing comma", "malformed-json", 400, b'{"model": "bot", "messages": [{"role": "user", "content": "hi"},]}'
    ),
    chat("comment inside", "malformed-json", 400, b'{"model": "bot", /* hi */ "messages": []}'),
    chat(
        "raw newline inside a string",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "a\nb"}]}',
    ),
    chat(
        "NaN temperature",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        param="temperature",
    ),
    chat(
        "Infinity max_tokens",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": Infinity}',
        param="max_tokens",
    ),
    chat(
        "-Infinity in a pass-through field",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "seed": -Infinity}',
        param="seed",
        why="NaN and Infinity are not JSON; a provider would choke on them",
    ),
    chat(
        "NaN in a pass-through field",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "top_k": NaN}',
        param="top_k",
    ),
    chat(
        "number with 5000 digits",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 5000 + b"}",
    ),
    chat(
        "float overflowing to infinity",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
        param="temperature",
    ),
    chat(
        "duplicate key, last one wrongly typed",
        "malformed-json",
        400,
        b'{"model": "bot", "model": 123, "messages": []}',
        param="model",
        why="duplicate keys: the last wins (as in every mainstream parser), then is validated",
    ),
    chat(
        "duplicate key, last messages empty",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "messages": []}',
        param="messages",
    ),
    chat(
        "UTF-8 BOM before a valid body",
        "malformed-json",
        200,
        b"\xef\xbb\xbf" + _valid_body(),
        why="RFC 8259 lets a parser ignore a BOM, and the gateway's does: the body is served",
    ),
    chat("top-level array", "malformed-json", 400, b'[{"model": "bot"}]'),
    chat("top-level string", "malformed-json", 400, b'"bot"'),
    chat("top-level number", "malformed-json", 400, b"42"),
    chat("top-level null", "malformed-json", 400, b"null"),
    chat("top-level true", "malformed-json", 400, b"true"),
    chat("empty object", "malformed-json", 400, b"{}", param="model"),
    chat("empty body", "malformed-json", 400, b""),
    chat("whitespace body", "malformed-json", 400, b"   \r\n\t  "),
    chat("NUL bytes body", "malformed-json", 400, b"\x00" * 64),
    chat(
        "lone surrogate escape in content",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}',
        param="messages[0].content",
        why="valid JSON syntax, but no UTF-8 text: a provider cannot be sent it",
    ),
    chat(
        "lone surrogate escape in model",
        "malformed-json",
        404,
        b'{"model": "bot\\udfff", "messages": [{"role": "user", "content": "hi"}]}',
    ),
    chat(
        "lone surrogate escape in metadata",
        "malformed-json",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "metadata": {"k": "\\ud83d"}}',
    ),
]

DEEP_NESTING = [
    chat("10,000 nested arrays", "deep-nesting", 400, nested(10_000, "[", "]")),
    chat("10,000 nested objects", "deep-nesting", 400, nested(10_000, '{"a":', "}")),
    chat("100,000 unclosed brackets", "deep-nesting", 400, b"[" * 100_000),
    chat(
        "deep nesting inside messages",
        "deep-nesting",
        400,
        b'{"model": "bot", "messages": ' + nested(10_000, "[", "]") + b"}",
    ),
    chat(
        "deep nesting in a pass-through field, at the stated limit of 128 levels",
        "deep-nesting",
        200,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "x_extension": '
        + nested(127, '{"a":', "}")
        + b"}",
        why="within the limit, so it is passed on and logged",
    ),
    chat(
        "deep nesting in a pass-through field, under the parser's limit but past the stated one",
        "deep-nesting",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "hi"}], "x_extension": '
        + nested(900, '{"a":', "}")
        + b"}",
        why="parses, but the encoder could not write it back: refused before anything reads it",
    ),
    chat(
        "10,000 nested objects to the feedback endpoint",
        "deep-nesting",
        400,
        nested(10_000, '{"a":', "}"),
        path="/v1/feedback",
    ),
    chat(
        "10,000 nested arrays to an admin action",
        "deep-nesting",
        400,
        nested(10_000, "[", "]"),
        path="/admin/routes/bot/rollout",
        headers=ADMIN,
    ),
]

_BIG = "x" * (MAX_BODY + 1024)
HUGE = [
    chat("message over the body limit", "huge", 413, j({"model": "bot", "messages": [{**USER, "content": _BIG}]})),
    chat(
        "900 KB message under the body limit",
        "huge",
        200,
        j({"model": "bot", "messages": [{**USER, "content": "word " * (900 * 1024 // 5)}]}),
        why="under server.max_body_bytes a long message is a legitimate request",
    ),
    chat(
        "Content-Length far over the limit, body cut short",
        "huge",
        413,
        b"{" + b" " * (MAX_BODY + 10),
        headers=JSON + (("Content-Length", str(50 * MAX_BODY)),),
        half_close=True,
    ),
    chat(
        "feedback body over the limit",
        "huge",
        413,
        j({"request_id": "x", "rating": 1, "comment": _BIG}),
        path="/v1/feedback",
    ),
    chat(
        "admin body over the limit",
        "huge",
        413,
        j({"candidate": "c", "percent": 1, "reason": _BIG}),
        path="/admin/routes/bot/rollout",
        headers=ADMIN,
    ),
    chat("100 KB model name", "huge", 404, with_field("model", "m" * 100_000)),
    chat("100 KB role", "huge", 400, with_message(role="r" * 100_000), param="messages[0].role"),
    chat(
        "gzip bomb (64 MiB of zeros) as Content-Encoding",
        "huge",
        413,
        gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9),
        headers=JSON + (("Content-Encoding", "gzip"),),
        why="a small compressed body that inflates far past the limit",
    ),
    chat(
        "Content-Encoding gzip that is not gzip",
        "huge",
        400,
        _valid_body(),
        headers=JSON + (("Content-Encoding", "gzip"),),
    ),
]

INVALID_UTF8 = [
    chat(
        "0xFF bytes in content",
        "invalid-utf8",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    ),
    chat(
        "overlong slash encoding",
        "invalid-utf8",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',
    ),
    chat(
        "UTF-8 encoded surrogate bytes",
        "invalid-utf8",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    ),
    chat(
        "truncated multibyte sequence",
        "invalid-utf8",
        400,
        b'{"model": "bot", "messages": [{"role": "user", "content": "\xe2\x82"}]}',
    ),
    chat(
        "Latin-1 body",
        "invalid-utf8",
        400,
        '{"model": "bot", "messages": [{"role": "user", "content": "café"}]}'.encode("latin-1"),
    ),
    chat("invalid UTF-8 in the model name", "invalid-utf8", 400, b'{"model": "b\xffot", "messages": []}'),
    chat(
        "invalid UTF-8 in a feedback body",
        "invalid-utf8",
        400,
        b'{"request_id": "\xff\xff", "rating": 1}',
        path="/v1/feedback",
    ),
]

CONTENT_TYPES = [
    chat("text/plain", "content-type", 415, _valid_body(), headers=(("Content-Type", "text/plain"),)),
    chat(
        "form-encoded",
        "content-type",
        415,
        b"model=bot&messages=hi",
        headers=(("Content-Type", "application/x-www-form-urlencoded"),),
    ),
    chat(
        "multipart",
        "content-type",
        415,
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nbot\r\n--B--\r\n',
        headers=(("Content-Type", "multipart/form-data; boundary=B"),),
    ),
    chat("octet-stream", "content-type", 415, _valid_body(), headers=(("Content-Type", "application/octet-stream"),)),
    chat("garbage content type", "content-type", 415, _valid_body(), headers=(("Content-Type", ";;;==="),)),
    chat(
        "xml", "content-type", 415, b"<chat><model>bot</model></chat>", headers=(("Content-Type", "application/xml"),)
    ),
    chat(
        "missing content type, JSON body",
        "content-type",
        200,
        _valid_body(),
        headers=(),
        why="a JSON body without a Content-Type is served: clients that forget it still work",
    ),
    chat("missing content type, form body", "content-type", 400, b"model=bot&messages=hi", headers=()),
    chat(
        "json with a UTF-16 charset but UTF-8 bytes",
        "content-type",
        200,
        _valid_body(),
        why="JSON is UTF-8 (RFC 8259): the charset parameter is ignored",
        headers=(("Content-Type", "application/json; charset=utf-16"),),
    ),
]

_WRONG_TYPES = [
    ("model", 123),
    ("model", None),
    ("model", ["bot"]),
    ("model", {"name": "bot"}),
    ("model", ""),
    ("model", True),
    ("messages", "hi"),
    ("messages", {"role": "user"}),
    ("messages", None),
    ("messages", [1], "messages[0]"),
    ("messages", ["hi"], "messages[0]"),
    ("messages", [[]], "messages[0]"),
    ("stream", "yes"),
    ("stream", 1),
    ("stream", {}),
    ("stream_options", "usage"),
    ("temperature", "hot"),
    ("temperature", [1]),
    ("temperature", True),
    ("top_p", "1"),
    ("max_tokens", "10"),
    ("max_tokens", 1.5),
    ("max_tokens", True),
    ("max_completion_tokens", "10"),
    ("n", "2"),
    ("n", 1.5),
    ("stop", 123),
    ("stop", [1, 2]),
    ("stop", {"x": 1}),
    ("tools", "search"),
    ("tools", [1], "tools[0]"),
    ("tools", [{"type": "function"}], "tools[0]"),
    ("tools", [{"type": "retrieval", "function": {"name": "f"}}], "tools[0]"),
    ("tool_choice", 5),
    ("tool_choice", {"type": "function"}),
    ("response_format", "json"),
    ("response_format", {"type": "xml"}),
    ("user", 123),
    ("user", {"id": "u"}),
    ("user", ["u"]),
    ("metadata", "tag"),
    ("metadata", ["a"]),
    ("metadata", {"k": 1}),
    ("seed", "42"),
    ("seed", 1.5),
    ("logprobs", "yes"),
    ("top_logprobs", "5"),
    ("logit_bias", [1]),
    ("parallel_tool_calls", "yes"),
    ("presence_penalty", "high"),
    ("frequency_penalty", [0]),
]
WRONG_TYPES = [
    chat(
        f"{name} = {json.dumps(value)[:40]}",
        "wrong-type",
        400,
        with_field(name, value),
        param=param[0] if param else name,
    )
    for name, value, *param in _WRONG_TYPES
]
WRONG_TYPES += [
    chat("role = 123", "wrong-type", 400, with_message(role=123), param="messages[0].role"),
    chat("role = null", "wrong-type", 400, with_message(role=None), param="messages[0].role"),
    chat("role = robot", "wrong-type", 400, with_message(role="robot"), param="messages[0].role"),
    chat("role = {}", "wrong-type", 400, with_message(role={}), param="messages[0].role"),
    chat("role = []", "wrong-type", 400, with_message(role=[]), param="messages[0].role"),
    chat(
        "tool_choice function a string",
        "wrong-type",
        400,
        with_field("tool_choice", {"type": "function", "function": "f"}),
        param="tool_choice",
    ),
    chat(
        "response_format type an array",
        "wrong-type",
        400,
        with_field("response_format", {"type": []}),
        param="response_format",
    ),
    chat(
        "content part type an array",
        "wrong-type",
        400,
        with_message(content=[{"type": []}]),
        param="messages[0].content[0]",
    ),
    chat(
        "role missing",
        "wrong-type",
        400,
        j({"model": "bot", "messages": [{"content": "hi"}]}),
        param="messages[0].role",
    ),
    chat("content = 123", "wrong-type", 400, with_message(content=123), param="messages[0].content"),
    chat("content = {}", "wrong-type", 400, with_message(content={}), param="messages[0].content"),
    chat("content = null for a user", "wrong-type", 400, with_message(content=None), param="messages[0].content"),
    chat("content parts of numbers", "wrong-type", 400, with_message(content=[1]), param="messages[0].content[0]"),
    chat(
        "content part without a type",
        "wrong-type",
        400,
        with_message(content=[{"text": "x"}]),
        param="messages[0].content[0]",
    ),
    chat(
        "text part whose text is a number",
        "wrong-type",
        400,
        with_message(content=[{"type": "text", "text": 5}]),
        param="messages[0].content[0].text",
    ),
    chat("message name = 5", "wrong-type", 400, with_message(name=5), param="messages[0].name"),
    chat(
        "tool message without tool_call_id",
        "wrong-type",
        400,
        j({"model": "bot", "messages": [USER, {"role": "tool", "content": "x"}]}),
        param="messages[1].tool_call_id",
    ),
    chat(
        "assistant tool_calls = 'x'",
        "wrong-type",
        400,
        j({"model": "bot", "messages": [USER, {"role": "assistant", "content": None, "tool_calls": "x"}]}),
        param="messages[1].tool_calls",
    ),
    chat(
        "assistant tool_calls of numbers",
        "wrong-type",
        400,
        j({"model": "bot", "messages": [USER, {"role": "assistant", "content": None, "tool_calls": [7]}]}),
        param="messages[1].tool_calls[0]",
    ),
    chat(
        "stream_options without stream",
        "wrong-type",
        400,
        with_field("stream_options", {"include_usage": True}),
        param="stream_options",
    ),
]

OUT_OF_RANGE = [
    chat("temperature -1", "out-of-range", 400, with_field("temperature", -1), param="temperature"),
    chat("temperature 3", "out-of-range", 400, with_field("temperature", 3), param="temperature"),
    chat("top_p 1.5", "out-of-range", 400, with_field("top_p", 1.5), param="top_p"),
    chat("presence_penalty 5", "out-of-range", 400, with_field("presence_penalty", 5), param="presence_penalty"),
    chat("max_tokens 0", "out-of-range", 400, with_field("max_tokens", 0), param="max_tokens"),
    chat("max_tokens -5", "out-of-range", 400, with_field("max_tokens", -5), param="max_tokens"),
    chat("max_tokens 1e12", "out-of-range", 400, with_field("max_tokens", 1e12), param="max_tokens"),
    chat("max_tokens 10**12 as an integer", "out-of-range", 400, with_field("max_tokens", 10**12), param="max_tokens"),
    chat("n 0", "out-of-range", 400, with_field("n", 0), param="n"),
    chat("n 129", "out-of-range", 400, with_field("n", 129), param="n"),
    chat("stop with 5 strings", "out-of-range", 400, with_field("stop", list("abcde")), param="stop"),
    chat("top_logprobs -1", "out-of-range", 400, with_field("top_logprobs", -1), param="top_logprobs"),
    chat("empty messages", "out-of-range", 400, with_field("messages", []), param="messages"),
    chat("messages of empty objects", "out-of-range", 400, with_field("messages", [{}]), param="messages[0].role"),
    chat(
        f"{MAX_MESSAGES + 1} messages (server.max_messages)",
        "out-of-range",
        400,
        with_field("messages", [USER] * (MAX_MESSAGES + 1)),
        param="messages",
    ),
    chat("5,000 messages", "out-of-range", 400, with_field("messages", [USER] * 5000), param="messages"),
]

ROUTES = [
    chat("unknown route", "route", 404, with_field("model", "no-such-route"), param="model"),
    chat("route name of 8 KB", "route", 404, with_field("model", "r" * 8192), param="model"),
    chat("unicode route name", "route", 404, with_field("model", "ボット🚀"), param="model"),
    chat("path-traversal route name", "route", 404, with_field("model", "../../etc/passwd"), param="model"),
    chat("route name with NUL", "route", 404, with_field("model", "bot\x00"), param="model"),
    chat("route name with CRLF", "route", 404, with_field("model", "bot\r\nX-Injected: 1"), param="model"),
    chat("route name with a format string", "route", 404, with_field("model", "%s%s%n{0}{model}"), param="model"),
    Case("GET an unknown model", "route", (404,), method="GET", path="/v1/models/no-such-route", headers=()),
    Case(
        "GET a model with a traversal name",
        "route",
        (404,),
        method="GET",
        path="/v1/models/..%2F..%2Fetc%2Fpasswd",
        headers=(),
    ),
]

PATHS_AND_METHODS = [
    Case("PUT chat completions", "method", (405,), method="PUT", body=_valid_body()),
    Case("GET chat completions", "method", (405,), method="GET", headers=()),
    Case("DELETE chat completions", "method", (405,), method="DELETE", headers=()),
    Case("PATCH chat completions", "method", (405,), method="PATCH", body=_valid_body()),
    Case("HEAD chat completions", "method", (405,), method="HEAD", headers=()),
    Case("made-up method", "method", (400,), method="BREW", headers=(), protocol=True),
    Case("GET feedback", "method", (405,), method="GET", path="/v1/feedback", headers=()),
    Case("POST healthz", "method", (405,), method="POST", path="/healthz", body=b"{}"),
    Case("POST /v1/models", "method", (405,), method="POST", path="/v1/models", body=b"{}"),
    Case(
        "POST /v1/embeddings without input",
        "path",
        (400,),
        path="/v1/embeddings",
        body=j({"model": "bot"}),
        param="input",
    ),
    Case("POST /v1/completions", "path", (404,), path="/v1/completions", body=j({"model": "bot", "prompt": "hi"})),
    Case(
        "POST /v1/responses without input",
        "path",
        (400,),
        path="/v1/responses",
        body=j({"model": "bot"}),
        param="input",
    ),
    Case(
        "POST /v1/messages without max_tokens",
        "path",
        (400,),
        path="/v1/messages",
        body=j({"model": "bot", "messages": [{"role": "user", "content": "hi"}]}),
    ),
    Case("POST /v1/images/generations", "path", (404,), path="/v1/images/generations", body=j({"prompt": "x"})),
    Case("POST /v1/audio/speech", "path", (404,), path="/v1/audio/speech", body=j({"input": "x"})),
    Case("GET /v1/files", "path", (404,), method="GET", path="/v1/files", headers=()),
    Case("chat completions with a trailing slash", "path", (404,), path=CHAT + "/", body=_valid_body()),
    Case("upper-case path", "path", (404,), path="/V1/CHAT/COMPLETIONS", body=_valid_body()),
    Case("unknown path", "path", (404,), method="GET", path="/nope", headers=()),
    Case("path traversal to the config", "path", (404,), method="GET", path="/../../gateway.yaml", headers=()),
    Case(
        "encoded traversal in console assets",
        "path",
        (404,),
        method="GET",
        path="/console/static/v1/..%2F..%2F..%2Fgateway.yaml",
        headers=(),
    ),
    Case(
        "dot-segments in console assets",
        "path",
        (404,),
        method="GET",
        path="/console/static/v1/../../../gateway.yaml",
        headers=(),
    ),
    Case("path of 7 KB", "path", (404,), method="GET", path="/" + "a" * 7000, headers=()),
    Case("path of 64 KB", "path", (400,), method="GET", path="/" + "a" * 65536, headers=(), protocol=True),
    Case("unicode path", "path", (404,), method="GET", path="/v1/%E3%83%9C%E3%83%83%E3%83%88", headers=()),
    Case("invalid UTF-8 percent-escapes in the path", "path", (404,), method="GET", path="/v1/%ff%fe", headers=()),
    Case(
        "raw non-ASCII bytes in the request line",
        "path",
        (400,),
        raw=b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        protocol=True,
    ),
    Case(
        "absolute URI to another host",
        "path",
        (404,),
        raw=b"GET http://169.254.169.254/latest/meta-data/ "
        b"HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    ),
]

QUERY = [
    chat("query string on chat completions, bad body", "query", 400, b"{", path=CHAT + "?model=bot&stream=true"),
    Case(
        "events limit not a number",
        "query",
        (400,),
        method="GET",
        path="/admin/events?limit=abc",
        headers=ADMIN,
        param="limit",
    ),
    Case(
        "events limit as a float",
        "query",
        (400,),
        method="GET",
        path="/admin/events?limit=1e3",
        headers=ADMIN,
        param="limit",
    ),
    Case(
        "events limit negative",
        "query",
        (400,),
        method="GET",
        path="/admin/events?limit=-5",
        headers=ADMIN,
        param="limit",
    ),
    Case(
        "events limit of 5000 digits",
        "query",
        (400,),
        method="GET",
        path="/admin/events?limit=" + "9" * 5000,
        headers=ADMIN,
        param="limit",
    ),
    Case(
        "events limit of invalid UTF-8",
        "query",
        (400,),
        method="GET",
        path="/admin/events?limit=%ff%fe",
        headers=ADMIN,
        param="limit",
    ),
    Case(
        "shadow report since NaN",
        "query",
        (400,),
        method="GET",
        path="/admin/shadow/report?route=bot&since=nan",
        headers=ADMIN,
        param="since",
    ),
    Case(
        "shadow report since -inf",
        "query",
        (400,),
        method="GET",
        path="/admin/shadow/report?route=bot&since=-inf",
        headers=ADMIN,
        param="since",
    ),
    Case(
        "shadow report without a route",
        "query",
        (400,),
        method="GET",
        path="/admin/shadow/report?route=",
        headers=ADMIN,
        param="route",
    ),
    Case(
        "shadow report of an unknown route",
        "query",
        (404,),
        method="GET",
        path="/admin/shadow/report?route=%00%ff",
        headers=ADMIN,
    ),
    Case(
        "console series after=abc",
        "query",
        (400,),
        method="GET",
        path="/admin/console/series?after=abc",
        headers=ADMIN,
        param="after",
    ),
    Case(
        "shadow pairs limit=abc",
        "query",
        (400,),
        method="GET",
        path="/admin/console/shadow/pairs?route=bot&limit=abc",
        headers=ADMIN,
        param="limit",
    ),
    Case(
        "700 query parameters without a token",
        "query",
        (401,),
        method="GET",
        path="/admin/events?" + "&".join(f"k{i}=v" for i in range(700)),
        headers=(),
    ),
]

_H = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
_BODY = _valid_body()
HEADERS = [
    Case(
        "bare CR in a header value",
        "header",
        (400,),
        raw=_H.encode() + b"X-Note: a\rInjected: 1\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        protocol=True,
    ),
    Case(
        "bare LF in a header value",
        "header",
        (400,),
        raw=_H.encode() + b"X-Note: a\nInjected: 1\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        protocol=True,
    ),
    Case(
        "NUL in a header value",
        "header",
        (400,),
        raw=_H.encode() + b"X-Note: a\x00b\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        protocol=True,
    ),
    Case(
        "obsolete line folding",
        "header",
        (400,),
        raw=_H.encode() + b"X-Note: a\r\n folded\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        protocol=True,
    ),
    Case(
        "space in a header name",
        "header",
        (400,),
        raw=_H.encode() + b"X Note: a\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        protocol=True,
    ),
    Case(
        "header without a colon",
        "header",
        (400,),
        raw=_H.encode() + b"NoColonHere\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        protocol=True,
    ),
    Case(
        "header value of 16 KB", "header", (400,), body=_BODY, headers=JSON + (("X-Big", "v" * 16384),), protocol=True
    ),
    Case(
        "header name of 16 KB", "header", (400,), body=_BODY, headers=JSON + (("X-" + "n" * 16384, "v"),), protocol=True
    ),
    Case(
        "300 headers",
        "header",
        (400,),
        body=_BODY,
        headers=JSON + tuple((f"X-H{i}", "v") for i in range(300)),
        protocol=True,
    ),
    Case(
        "invalid UTF-8 in x-llmgate-user",
        "header",
        (400,),
        body=_BODY,
        headers=JSON + (("x-llmgate-user", b"\xff\xfe\xfd"),),
    ),
    Case(
        "invalid UTF-8 in Authorization",
        "header",
        (400,),
        body=_BODY,
        headers=JSON + (("Authorization", b"Bearer \xff\xfe-key"),),
    ),
    Case(
        "invalid UTF-8 in the admin token",
        "header",
        (400,),
        method="GET",
        path="/admin/status",
        headers=(("Authorization", b"Bearer \xc3\x28\xff"),),
    ),
    Case(
        "invalid UTF-8 in the actor header",
        "header",
        (400,),
        path="/admin/routes/bot/kill",
        body=j({"on": False, "reason": "x"}),
        headers=ADMIN + (("X-LLMgate-Actor", b"\xff\xfe"),),
    ),
    Case(
        "hostile x-request-id",
        "header",
        (400,),
        body=b"{",
        headers=JSON + (("x-request-id", "<script>alert(1)</script>"),),
    ),
    Case(
        "Content-Length not a number",
        "framing",
        (400,),
        raw=_H.encode() + b"Content-Length: abc\r\n\r\n" + _BODY,
        protocol=True,
    ),
    Case(
        "Content-Length negative",
        "framing",
        (400,),
        raw=_H.encode() + b"Content-Length: -1\r\n\r\n" + _BODY,
        protocol=True,
    ),
    Case(
        "two different Content-Lengths",
        "framing",
        (400,),
        raw=_H.encode() + b"Content-Length: 5\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        protocol=True,
    ),
    Case(
        "Content-Length of 2**70",
        "framing",
        (400,),
        raw=_H.encode() + b"Content-Length: 1180591620717411303424\r\n\r\n" + _BODY,
        protocol=True,
    ),
    Case(
        "Content-Length shorter than the body",
        "framing",
        (400,),
        raw=_H.encode() + b"Content-Length: 10\r\n\r\n" + _BODY,
        protocol=True,
    ),
    Case(
        "Content-Length longer than the body, then EOF",
        "framing",
        (400, CLOSED),
        raw=_H.encode() + b"Content-Length: %d\r\n\r\n" % (len(_BODY) + 100) + _BODY,
        half_close=True,
    ),
    Case(
        "Content-Length and Transfer-Encoding together",
        "framing",
        (400,),
        raw=_H.encode() + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        protocol=True,
    ),
    Case(
        "chunk size not hex",
        "framing",
        (400,),
        raw=_H.encode() + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        protocol=True,
    ),
    Case(
        "chunk longer than its size",
        "framing",
        (400,),
        raw=_H.encode() + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}}}}\r\n0\r\n\r\n",
        protocol=True,
    ),
    Case(
        "chunked body without the last chunk, then EOF",
        "framing",
        (400, CLOSED),
        raw=_H.encode() + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(_BODY) + _BODY + b"\r\n",
        half_close=True,
    ),
    Case(
        "chunk size overflowing 64 bits",
        "framing",
        (400,),
        raw=_H.encode() + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        protocol=True,
    ),
    Case(
        "Transfer-Encoding gzip",
        "framing",
        (400,),
        raw=_H.encode() + b"Transfer-Encoding: gzip\r\n\r\n" + _BODY,
        protocol=True,
    ),
    Case(
        "Transfer-Encoding chunked twice",
        "framing",
        (400,),
        raw=_H.encode() + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        protocol=True,
    ),
    Case(
        "valid chunked body of bad JSON",
        "framing",
        (400,),
        raw=_H.encode() + b'Transfer-Encoding: chunked\r\n\r\n3\r\n{"m\r\n0\r\n\r\n',
    ),
    Case("garbage request line", "framing", (400,), raw=b"HELLO THERE\r\n\r\n", protocol=True),
    Case(
        "HTTP/2.0 in an HTTP/1 request line",
        "framing",
        (200,),
        why="the parser reads it as HTTP/1.1: harmless",
        raw=b"GET /healthz HTTP/2.0\r\nHost: x\r\nConnection: close\r\n\r\n",
    ),
    Case(
        "HTTP/9.9",
        "framing",
        (400,),
        raw=b"GET /healthz HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n",
        protocol=True,
    ),
    Case(
        "TLS handshake bytes on the plain port",
        "framing",
        (400,),
        raw=bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64,
        protocol=True,
    ),
]

_ACTION = "/admin/routes/bot/rollout"
ADMIN_CASES = [
    Case("admin status without a token", "admin", (401,), method="GET", path="/admin/status", headers=()),
    Case(
        "admin status with a wrong token",
        "admin",
        (401,),
        method="GET",
        path="/admin/status",
        headers=(("Authorization", "Bearer wrong"),),
    ),
    Case(
        "admin status with an empty bearer",
        "admin",
        (401,),
        method="GET",
        path="/admin/status",
        headers=(("Authorization", "Bearer "),),
    ),
    Case(
        "admin status with Basic auth",
        "admin",
        (401,),
        method="GET",
        path="/admin/status",
        headers=(("Authorization", "Basic YWRtaW46YWRtaW4="),),
    ),
    Case(
        "admin status with a 4 KB token",
        "admin",
        (401,),
        method="GET",
        path="/admin/status",
        headers=(("Authorization", "Bearer " + "t" * 4096),),
    ),
    Case(
        "admin token as a prefix",
        "admin",
        (401,),
        method="GET",
        path="/admin/status",
        headers=(("Authorization", "Bearer " + ADMIN_TOKEN[:-1]),),
    ),
    chat("admin action without a token", "admin", 401, j({"candidate": "c", "percent": 5}), path=_ACTION),
    chat(
        "admin action, wrong token, malformed body",
        "admin",
        401,
        b"{{{",
        path=_ACTION,
        headers=JSON + (("Authorization", "Bearer nope"),),
    ),
    chat("admin action, malformed body", "admin", 400, b"{{{", path=_ACTION, headers=ADMIN),
    chat("admin action, body an array", "admin", 400, b"[1, 2]", path=_ACTION, headers=ADMIN),
    chat(
        "admin action, percent a string",
        "admin",
        400,
        j({"candidate": "cand", "percent": "5"}),
        path=_ACTION,
        headers=ADMIN,
        param="percent",
    ),
    chat(
        "admin action, percent 101", "admin", 400, j({"candidate": "cand", "percent": 101}), path=_ACTION, headers=ADMIN
    ),
    chat(
        "admin action, percent NaN",
        "admin",
        400,
        b'{"candidate": "cand", "percent": NaN}',
        path=_ACTION,
        headers=ADMIN,
        param="percent",
    ),
    chat("admin action, candidate missing", "admin", 400, j({"percent": 5}), path=_ACTION, headers=ADMIN),
    chat(
        "admin action on an unknown route",
        "admin",
        404,
        j({"candidate": "cand", "percent": 5}),
        path="/admin/routes/nope/rollout",
        headers=ADMIN,
    ),
    chat("unknown admin action", "admin", 404, j({}), path="/admin/routes/bot/explode", headers=ADMIN),
    chat(
        "admin action, invalid UTF-8 body",
        "admin",
        400,
        b'{"reason": "\xff"}',
        path="/admin/routes/bot/kill",
        headers=ADMIN,
    ),
    chat(
        "canary users not strings",
        "admin",
        400,
        j({"candidate": "cand", "users": [1, 2]}),
        path="/admin/routes/bot/canary",
        headers=ADMIN,
        param="users",
    ),
    chat("register a model, malformed body", "admin", 400, b'{"name": ', path="/admin/models", headers=ADMIN),
    chat("register a model, body a string", "admin", 400, b'"model"', path="/admin/models", headers=ADMIN),
    chat(
        "register a model, fields wrongly typed",
        "admin",
        400,
        j({"name": 5, "backend": []}),
        path="/admin/models",
        headers=ADMIN,
    ),
    Case(
        "delete an unknown registered model", "admin", (404,), method="DELETE", path="/admin/models/nope", headers=ADMIN
    ),
]

_FEEDBACK = "/v1/feedback"
FEEDBACK = [
    chat("feedback, malformed JSON", "feedback", 400, b'{"request_id": ', path=_FEEDBACK),
    chat("feedback, body an array", "feedback", 400, b"[]", path=_FEEDBACK),
    chat("feedback, empty body", "feedback", 400, b"", path=_FEEDBACK, param="request_id"),
    chat("feedback, request_id missing", "feedback", 400, j({"rating": 1}), path=_FEEDBACK, param="request_id"),
    chat(
        "feedback, request_id a number",
        "feedback",
        400,
        j({"request_id": 5, "rating": 1}),
        path=_FEEDBACK,
        param="request_id",
    ),
    chat(
        "feedback, rating a word",
        "feedback",
        400,
        j({"request_id": "r", "rating": "great"}),
        path=_FEEDBACK,
        param="rating",
    ),
    chat("feedback, rating 6", "feedback", 400, j({"request_id": "r", "rating": 6}), path=_FEEDBACK, param="rating"),
    chat(
        "feedback, rating true", "feedback", 400, j({"request_id": "r", "rating": True}), path=_FEEDBACK, param="rating"
    ),
    chat(
        "feedback, rating NaN", "feedback", 400, b'{"request_id": "r", "rating": NaN}', path=_FEEDBACK, param="rating"
    ),
    chat(
        "feedback, comment a number",
        "feedback",
        400,
        j({"request_id": "r", "rating": 1, "comment": 5}),
        path=_FEEDBACK,
        param="comment",
    ),
    chat(
        "feedback, comment too long",
        "feedback",
        400,
        j({"request_id": "r", "rating": 1, "comment": "c" * (MAX_COMMENT + 1)}),
        path=_FEEDBACK,
        param="comment",
    ),
    chat(
        "feedback, unknown request id",
        "feedback",
        404,
        j({"request_id": "never-seen", "rating": 1}),
        path=_FEEDBACK,
        param="request_id",
    ),
    chat(
        "feedback, request id with a lone surrogate",
        "feedback",
        400,
        b'{"request_id": "\\ud800", "rating": 1}',
        path=_FEEDBACK,
    ),
    chat(
        "feedback, 100 KB request id",
        "feedback",
        404,
        j({"request_id": "i" * 100_000, "rating": 1}),
        path=_FEEDBACK,
        param="request_id",
    ),
    chat(
        "feedback, SQL in the request id",
        "feedback",
        404,
        j({"request_id": "x' OR '1'='1", "rating": 1}),
        path=_FEEDBACK,
        param="request_id",
    ),
    chat(
        "feedback as text/plain",
        "feedback",
        415,
        j({"request_id": "r", "rating": 1}),
        path=_FEEDBACK,
        headers=(("Content-Type", "text/plain"),),
    ),
]

CASES: list[Case] = [
    *MALFORMED_JSON,
    *DEEP_NESTING,
    *HUGE,
    *INVALID_UTF8,
    *CONTENT_TYPES,
    *WRONG_TYPES,
    *OUT_OF_RANGE,
    *ROUTES,
    *PATHS_AND_METHODS,
    *QUERY,
    *HEADERS,
    *ADMIN_CASES,
    *FEEDBACK,
]
