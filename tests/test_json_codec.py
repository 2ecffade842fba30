"""The request path's JSON (orjson where it gives what the standard library gives) reads and writes
every body as `json` did: the same values, the same refusals, the same fallbacks."""

from __future__ import annotations

import json

import pytest

from gateway.bodies import MAX_DEPTH, depth_of, loads, parse_json
from gateway.context import dumps, dumps_bytes, dumps_encodable
from gateway.errors import InvalidRequest

BODIES = [
    '{"model":"m","messages":[{"role":"user","content":"héllo ✓ 日本"}],"temperature":0.7,"n":1}',
    '{"a":[1,2.5,-3e-7,true,false,null],"b":{"c":"\\u00e9\\n\\"q\\""}}',
    '{"big":123456789012345678901234567890,"neg":-99999999999999999999}',  # past 64 bits: exact
    '{"id": 18446744073709551615, "s": "12345678901234567890 in a string"}',
    '{"nan": NaN, "inf": Infinity, "minus": -Infinity}',  # json's extension, refused later by name
    '{"lone": "\\ud800", "pair": "\\ud83d\\ude00"}',  # a lone surrogate orjson refuses; json reads it
    '{"dup": 1, "dup": 2}',
    '  {"spaced" : [ ] }  ',
    '"just a string"',
    "[]",
    '{"s": "é 12345678901234567890 ✓", "n": 1234567890123456789}',  # a run in a non-ASCII string; 19 digits
    '{"below": -9223372036854775809, "least": -9223372036854775808}',  # 19 digits past int64's least: exact
    '{"lone": "\\ud800 then 123456789012345678901"}',
]


@pytest.mark.parametrize("text", BODIES)
def test_loads_reads_what_json_reads(text):
    expected = json.loads(text)
    for raw in (text, text.encode()):
        got = loads(raw)
        assert repr(got) == repr(expected)  # repr: NaN equals nothing, and 1 and 1.0 must stay apart
        assert [type(v) for v in _leaves(got)] == [type(v) for v in _leaves(expected)]


@pytest.mark.parametrize("text", ['{"a":', '{"a":1,}', "\ufeff{}", "{'a':1}", "", "[1] [2]"])
def test_loads_refuses_what_json_refuses_with_its_message(text):
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(ValueError) as got:
        loads(text)
    assert str(got.value) == str(expected.value)


def test_parse_json_keeps_the_depth_limit_and_names_bad_json():
    with pytest.raises(InvalidRequest, match="deeper than 128 levels"):
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)[0] is not None
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_json(b'{"model": }')


@pytest.mark.parametrize(
    ("raw", "strict"),
    [
        (b'{"model": "m", "messages": [{"role": "user", "content": "h\\u00e9 \\ud83d\\ude00"}]}', True),
        (b'{"temperature": NaN}', False),  # only the standard library reads these: check_encodable must look
        (b'{"max_tokens": 1e400}', False),
        (b'{"content": "\\ud800"}', False),
        (b'{"seed": 123456789012345678901}', False),  # exact, by the standard library
    ],
)
def test_parse_json_says_whether_the_body_was_strict_json(raw, strict):
    """Strict means orjson read it, so it holds nothing the encodability walk refuses; the validator skips
    that walk only then."""
    body, was_strict = parse_json(raw)
    assert body == json.loads(raw) or repr(body) == repr(json.loads(raw))
    assert was_strict is strict


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@pytest.mark.parametrize(
    "value",
    [1, "s", [], {}, [[], [[]]], {"a": [{"b": {}}], "c": 1}, [1, [2, [3, [4]]], {"k": [[]]}], {"x": [[[[[[0]]]]]]}],
)
def test_depth_of_counts_the_deepest_nesting(value):
    assert depth_of(value) == _depth(value)


@pytest.mark.parametrize(
    "value",
    [
        {"model": "m", "choices": [{"message": {"content": 'héllo ✓ \n\t"q" </script>'}}], "usage": {"n": 3}},
        {"f": [0.1, 1.5, -2.0, 1e-7, 123456.789], "ints": [0, -1, 2**63 - 1], "b": [True, False, None]},
        {"big": 2**70},  # past 64 bits: the standard library's way
        {1: "a key that is not a string"},
        ("a", "tuple"),
    ],
)
def test_dumps_bytes_writes_what_dumps_writes(value):
    got = dumps_bytes(value)
    assert isinstance(got, bytes)
    assert json.loads(got) == json.loads(dumps(value))
    if not any(isinstance(v, float) for v in _leaves(value)):  # floats may differ in spelling only (1e-07)
        assert got == dumps(value).encode("utf-8", "surrogatepass")


def test_dumps_bytes_refuses_what_dumps_refuses():
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ValueError):
        dumps(cycle)
    with pytest.raises(ValueError):
        dumps_bytes(cycle)
    # no UTF-8 holds a lone surrogate: a body with one is refused by name before it is written back
    with pytest.raises(UnicodeEncodeError):
        dumps({"lone": "\ud800"}).encode()
    with pytest.raises(UnicodeEncodeError):
        dumps_bytes({"lone": "\ud800"})


def _leaves(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def test_dumps_encodable_always_writes_and_reads_back_what_it_was_given():
    plain = {"content": "héllo ✓", "n": [1, 2.5]}
    assert dumps_encodable(plain) == dumps_bytes(plain)
    lone = {"answer": "cut \ud800 here", "n": 1}
    written = dumps_encodable(lone)
    assert written.isascii() and json.loads(written) == lone
