"""Structured logs: every line logged while serving a request carries its id, one access line per
request says what it became (route, variant, status, latency, overhead), and no secret is written.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import openai
import pytest
import yaml

from gateway import logs
from gateway.errors import Scrubber
from gateway.hookspecs import hookimpl
from gateway.logs import BackgroundWriter, ScrubbingFormatter, current_request_id, log_access
from tests.conftest import UPSTREAM_KEY, backend_config
from tests.support import free_port, wait_for_http, wait_until


class LeakyFailure:
    """Fails in after_response with the upstream key in its message, as careless code might."""

    @hookimpl
    def after_response(self, ctx):
        raise RuntimeError(f"could not reach upstream with key {UPSTREAM_KEY}")


@pytest.fixture
def json_lines():
    """The JSON lines logged while the test runs (access lines included), scrubbed like the daemon's."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ScrubbingFormatter(Scrubber({UPSTREAM_KEY}), as_json=True))
    root, access = logging.getLogger(), logging.getLogger("llmgate.access")
    root.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        access.setLevel(logging.NOTSET)


def test_request_lines_carry_the_request_id_and_the_access_line_says_what_happened(
    fake_openai, make_gateway, json_lines
):
    gw = make_gateway(
        {
            "backends": {"base": backend_config("openai", fake_openai)},
            "routes": {"bot": {"baseline": "base"}},
            "plugins": {"leaky": {"module": "tests.test_logs:LeakyFailure"}},
        }
    )
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-caller", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "req-logs-1"}
    )
    assert raw.headers["x-client-request-id"] == "req-logs-1"  # the caller's, echoed; the exchange has its own
    request_id = raw.headers["x-request-id"]

    # after_response runs once the answer is out: wait for its lines rather than assume they are there
    lines = wait_until(
        lambda: (got := json_lines()) and any(line["logger"] == "llmgate.access" for line in got) and got
    )
    fault = [line for line in lines if line["logger"] == "llmgate.plugins"]
    assert fault and all(line["request_id"] == request_id for line in fault)
    assert fault[0]["level"] == "error" and "exception" in fault[0]
    [access] = [line for line in lines if line["logger"] == "llmgate.access"]
    assert access["request_id"] == request_id
    assert (access["method"], access["path"], access["status"]) == ("POST", "/v1/chat/completions", 200)
    assert (access["route"], access["variant"], access["served_by"]) == ("bot", "base", "base")
    assert access["latency_ms"] >= access["overhead_ms"] >= 0
    assert access["overhead_ms"] == pytest.approx(float(raw.headers["x-llmgate-overhead-ms"]), abs=0.001)
    everything = json.dumps(lines)
    assert UPSTREAM_KEY not in everything and "sk-caller" not in everything


def test_unrouted_requests_get_an_access_line_too(fake_openai, make_gateway, json_lines):
    gw = make_gateway(
        {"backends": {"base": backend_config("openai", fake_openai)}, "routes": {"bot": {"baseline": "base"}}}
    )
    request = urllib.request.Request(gw.url + "/v1/models", headers={"x-request-id": "req-models"})
    with urllib.request.urlopen(request) as resp:
        assert resp.status == 200
        request_id = resp.headers["x-request-id"]
    lines = wait_until(lambda: [line for line in json_lines() if line["logger"] == "llmgate.access"])
    [access] = lines
    assert (access["request_id"], access["path"], access["status"]) == (request_id, "/v1/models", 200)
    assert "route" not in access


@pytest.mark.slow
def test_the_daemon_writes_json_lines_with_log_json(fake_openai, tmp_path):
    config = {
        "backends": {"base": backend_config("openai", fake_openai)},
        "routes": {"bot": {"baseline": "base"}},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(tmp_path / "gateway.yaml"),
            "--port",
            str(port),
            "--log-json",
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-caller", max_retries=0
        ).chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "req-daemon"}
        )
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    # every log line is JSON (a library's own warnings, printed outside logging, are not log lines)
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    [access] = [line for line in lines if line.get("path") == "/v1/chat/completions"]
    assert access["logger"] == "llmgate.access" and access["route"] == "bot" and access["status"] == 200
    assert isinstance(access["overhead_ms"], float)
    assert not [line for line in lines if line.get("path") == "/healthz" and line["level"] == "info"]  # probes: DEBUG
    assert UPSTREAM_KEY not in stderr.decode()


class Stderr(io.StringIO):
    """A stderr that remembers each write; a stalled one (a pipe nobody reads) holds every write
    until `release` is set."""

    def __init__(self, stalled: bool = False):
        super().__init__()
        self.writes = []
        self.release = threading.Event()
        if not stalled:
            self.release.set()

    def write(self, text):
        self.release.wait()
        self.writes.append(text)
        return super().write(text)


def logger_writing_to(writer: BackgroundWriter, fmt: str = "%(message)s") -> logging.Logger:
    writer.setFormatter(logging.Formatter(fmt))
    logger = logging.Logger("writer-test")
    logger.addHandler(writer)
    return logger


def test_a_stalled_stderr_never_blocks_the_logger_and_dropped_lines_are_counted():
    stream = Stderr(stalled=True)
    writer = BackgroundWriter(stream, capacity=5)
    logger = logger_writing_to(writer)
    done = threading.Event()

    def log_many():
        for i in range(50):
            logger.warning("line %d", i)
        done.set()

    threading.Thread(target=log_many, daemon=True).start()
    assert done.wait(10), "logging waited on a stalled stderr"
    # through at most: the batch the writer took before the stream stalled (a queue's worth) and a full queue
    assert writer.dropped >= 50 - 2 * (5 + 1)
    stream.release.set()
    writer.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "line 0"
    written = [line for line in lines if line.startswith("line ")]
    assert written == sorted(written, key=lambda line: int(line.split()[1]))  # in order, the first ones kept
    assert f"{writer.dropped} log lines dropped: stderr was not keeping up" in lines
    assert len(written) + writer.dropped == 50


def test_lines_logged_while_the_writer_rests_go_out_in_one_write():
    stream = Stderr()
    writer = BackgroundWriter(stream, pause=30)
    logger = logger_writing_to(writer)
    logger.warning("first")
    wait_until(lambda: stream.writes)
    for i in range(20):
        logger.warning("line %d", i)
    time.sleep(0.2)
    assert stream.writes == ["first\n"]  # resting after its write: the writer was not woken line by line
    writer.flush()  # cuts the rest short
    assert stream.writes == ["first\n", "".join(f"line {i}\n" for i in range(20))]
    writer.close()


def test_flushing_or_closing_the_writer_writes_every_queued_line():
    stream = Stderr()
    writer = BackgroundWriter(stream)
    logger = logger_writing_to(writer, "%(levelname)s %(message)s")
    for i in range(1000):
        logger.info("line %d", i)
    writer.flush()
    assert stream.getvalue().splitlines()[-1] == "INFO line 999"
    logger.info("the last")
    writer.close()
    assert stream.getvalue().splitlines() == [f"INFO line {i}" for i in range(1000)] + ["INFO the last"]


@pytest.mark.parametrize("as_json", [False, True])
def test_the_access_line_made_without_a_log_record_is_the_line_logging_makes(as_json):
    """Where the gateway's writer is the one handler, log_access queues its line without a LogRecord (the
    line every request writes); any other handler set up gets the record. Both lines are the same text,
    escaped and scrubbed alike."""
    formatter = ScrubbingFormatter(Scrubber({UPSTREAM_KEY}), as_json=as_json)
    direct, captured = io.StringIO(), io.StringIO()
    writer = BackgroundWriter(direct)
    writer.setFormatter(formatter)
    root, access = logging.getLogger(), logging.getLogger("llmgate.access")
    saved = root.handlers[:]
    root.handlers[:] = [writer]
    access.setLevel(logging.INFO)
    ctx = SimpleNamespace(
        route_name="bot",
        variant="base",
        served_by="base",
        overhead_ms=0.1234,
        upstream_ms=12.0,
        ttft_ms=None,
        error=None,
    )
    path = f"/v1/chat/completions/{UPSTREAM_KEY}\n2026-12-04 forged line"
    token = current_request_id.set("req-1")
    try:
        log_access("POST", path, 200, 3.21, ctx)
        assert logs._sole_writer(logging.INFO) is writer
        writer.flush()
        capture = logging.StreamHandler(captured)
        capture.setFormatter(formatter)
        root.addHandler(capture)  # two handlers: the record's way, for both
        assert logs._sole_writer(logging.INFO) is None
        log_access("POST", path, 200, 3.21, ctx)
        writer.flush()
    finally:
        current_request_id.reset(token)
        root.handlers[:] = saved
        access.setLevel(logging.NOTSET)
        writer.close()
    first, second = direct.getvalue().splitlines()
    [other] = captured.getvalue().splitlines()
    assert UPSTREAM_KEY not in first  # the line written is one line, the caller's newline escaped
    assert ("\\n2026-12-04 forged" if as_json else "\\x0a2026-12-04 forged") in first
    if as_json:
        lines = [json.loads(line) for line in (first, second, other)]
        for line in lines:
            del line["ts"]
        assert lines[0] == lines[1] == lines[2]
        assert lines[0]["request_id"] == "req-1" and lines[0]["overhead_ms"] == 0.123
    else:
        assert first[23:] == second[23:] == other[23:]  # past the time stamp
        assert first[23:].startswith(" INFO llmgate.access: POST /v1/chat/completions/***\\x0a")
