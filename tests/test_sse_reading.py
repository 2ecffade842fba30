"""An upstream's server-sent events read the same however the network cuts them: the reader splits lines
from what each read brings, so a line, a CRLF or a UTF-8 character split across two reads must not show."""

from __future__ import annotations

import asyncio
from unittest import mock

import aiohttp
import pytest

from gateway.backends.http import MAX_SSE_LINE, iter_sse
from gateway.errors import UpstreamError

STREAM = (
    ": a comment first\r\n"
    "event: message_start\r\n"
    'data: {"type": "message_start"}\r\n'
    "\r\n"
    'data: {"text": "h\u00e9llo \u2713 \u65e5\u672c"}\n'
    "id: 7\n"
    "\n"
    "data: first line\n"
    "data:second line, no space\n"
    "\n"
    "\n"  # an empty event: nothing
    "event: ping\n"
    "\n"  # an event without data: nothing
    "data: [DONE]\n"
    "\n"
    "data: the last, ended by the body"
).encode()
EXPECTED = [
    ("message_start", '{"type": "message_start"}'),
    (None, '{"text": "h\u00e9llo \u2713 \u65e5\u672c"}'),
    (None, "first line\nsecond line, no space"),
    (None, "[DONE]"),
    (None, "the last, ended by the body"),
]


def _reader() -> aiohttp.StreamReader:
    return aiohttp.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())


async def _read(pieces: list[bytes]) -> list[tuple[str | None, str]]:
    """What iter_sse yields when each piece arrives as a read of its own (the reader waits for each)."""
    reader, reads = _reader(), []

    async def arrive():
        for piece in pieces:
            await asyncio.sleep(0)  # the reader has taken what came before
            reads.append(len(reader._buffer) == 0)
            reader.feed_data(piece)
        reader.feed_eof()

    feeding = asyncio.create_task(arrive())
    events = [event async for event in iter_sse(reader)]
    await feeding
    assert all(reads)  # each piece was a read of its own
    return events


def test_events_are_read_whole_from_one_read():
    assert asyncio.run(_read([STREAM])) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16])
def test_events_are_the_same_however_the_reads_cut_the_stream(size):
    """Every cut: inside a line, between CR and LF, inside a multi-byte character, between events."""
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert asyncio.run(_read(pieces)) == EXPECTED


def test_a_line_longer_than_the_limit_is_the_upstream_s_failure_not_unbounded_memory():
    with pytest.raises(UpstreamError, match=f"longer than {MAX_SSE_LINE} bytes"):
        asyncio.run(_read([b"data: " + b"x" * 2**20] * 3))  # arriving over several reads
    with pytest.raises(UpstreamError, match=f"longer than {MAX_SSE_LINE} bytes"):
        asyncio.run(_read([b"data: " + b"x" * (3 * 2**20) + b"\n\n"]))  # whole, in one read
