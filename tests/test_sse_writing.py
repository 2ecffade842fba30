"""A streamed answer costs one send an event: the headers leave with the first event (the stream is
prepared only once that event is in hand), and the end of the body with the last. Each send is a
system call, and on loopback the kernel's whole delivery to the reader, so two sends where one does
were paid once a stream on the way to its first token and once at its end."""

from __future__ import annotations

import json
import urllib.request
from unittest import mock

import pytest
from aiohttp import http_writer, web

from gateway.proxy import SseResponse
from tests.fakes.openai_api import FakeOpenAI
from tests.support import gateway_thread, serving


@pytest.fixture
def upstream():
    with serving(FakeOpenAI()) as fake:
        yield fake


def test_aiohttp_still_reads_the_switch_that_holds_a_streams_headers():
    # the class attribute aiohttp's own whole-body Response sets; renamed by an upgrade, this would be
    # an attribute nobody reads and the headers would go alone again
    assert web.StreamResponse._send_headers_immediately is True
    assert web.Response._send_headers_immediately is False
    assert SseResponse._send_headers_immediately is False


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_stream_is_one_send_an_event_headers_with_the_first_and_the_end_with_the_last(upstream, tmp_path, route):
    sends: dict[int, list[bytes]] = {}
    real_write, real_writelines = http_writer.StreamWriter._write, http_writer.StreamWriter._writelines

    def write(self, chunk):
        sends.setdefault(id(self), []).append(bytes(chunk))
        return real_write(self, chunk)

    def writelines(self, chunks):
        sends.setdefault(id(self), []).append(b"".join(bytes(c) for c in chunks))
        return real_writelines(self, chunks)

    config = {
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": {"up": {"kind": "openai", "base_url": upstream.url + "/v1", "model": "m", "api_key": "none"}},
        "routes": {"bot": {"baseline": "up"}},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
    }
    messages = [{"role": "user", "content": "Say hello in three words."}]
    body = {"model": "bot", "stream": True}
    if route == "/v1/responses":
        body.update(input="Say hello in three words.", max_output_tokens=50)
    else:
        body.update(messages=messages, max_tokens=50)
    with gateway_thread(config) as gw, mock.patch.object(http_writer.StreamWriter, "_write", write):
        with mock.patch.object(http_writer.StreamWriter, "_writelines", writelines):
            request = urllib.request.Request(
                gw.url + route, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert resp.status == 200
                events = [e for e in resp.read().split(b"\n\n") if e.strip()]
    # the gateway's answer to the caller (the fake upstream serves in this process too)
    answers = [s for s in sends.values() if s[0].startswith(b"HTTP/1.1 200") and b"x-request-id" in s[0].lower()]
    assert len(answers) == 1
    (answer,) = answers
    assert len(events) >= 3
    assert b"\r\n\r\n" in answer[0] and answer[0].split(b"\r\n\r\n", 1)[1].strip()  # headers and an event
    assert answer[-1].endswith(b"\r\n0\r\n\r\n") and len(answer[-1]) > len(b"\r\n0\r\n\r\n") + 8
    # one send an event at most: the first carries the headers, the last the end of the body
    assert len(answer) <= len(events)
