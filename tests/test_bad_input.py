"""Every case of the bad-input corpus against one real gateway process.

Each case goes over a raw socket (so nothing a client library refuses to send is out of reach)
and must get a clean answer: its expected status (a 4xx, never a 5xx, never a hang), the OpenAI
error shape when the answer is JSON, and nothing internal in it (no stack trace, no source path,
no secret). Every 20 cases, and at the end, the daemon must still be healthy: alive, /healthz
200, a normal chat completion through the official SDK, and a resident size nowhere near a leak.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from plugins.traffic_log.plugin import read_records
from tests.bad_inputs import ADMIN_TOKEN, CASES, CLOSED, MAX_BODY, MAX_COMMENT, MAX_MESSAGES, Case
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_api import FakeOpenAI
from tests.support import GatewayProcess, ServerThread

ROOT = Path(__file__).resolve().parent.parent
HEALTH_EVERY = 20
RSS_LIMIT_KB = 1024 * 1024  # 1 GiB: a leak or a buffered bomb, not the few tens of MB the daemon needs
LEAKS = ("Traceback", 'File "', "site-packages", str(ROOT), UPSTREAM_KEY, ADMIN_TOKEN)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Daemon:
    gateway: GatewayProcess
    fake: FakeOpenAI

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bad-input")
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    with ServerThread(fake.app) as upstream:
        config = {
            "server": {"max_body_bytes": MAX_BODY, "max_messages": MAX_MESSAGES, "admin_token": ADMIN_TOKEN},
            "state": {"sqlite_path": str(workdir / "state.db")},
            "backends": {
                "up": {"kind": "openai", "base_url": upstream.url + "/v1", "model": "m-up", "api_key": UPSTREAM_KEY},
                "cand": {
                    "kind": "openai",
                    "base_url": upstream.url + "/v1",
                    "model": "m-cand",
                    "api_key": UPSTREAM_KEY,
                },
            },
            "routes": {"bot": {"baseline": "up", "candidates": {"cand": 0}, "retries": 0}},
            "plugins": {
                "traffic_log": {"path": str(workdir / "traffic.db")},
                "feedback": {"path": str(workdir / "feedback.db"), "max_comment_chars": MAX_COMMENT},
                "shadow": {"path": str(workdir / "shadow.db")},
            },
        }
        gateway = GatewayProcess(config, workdir).start()
        try:
            yield Daemon(gateway, fake)
        finally:
            gateway.stop()


def _parse(data: bytes) -> Answer | None:
    """The first response in `data`, or None while it is incomplete."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        return Answer(status, headers, rest[:length]) if len(rest) >= length else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = b"", 0
        while True:
            line_end = rest.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(rest[pos:line_end].split(b";")[0], 16)
            if size == 0:
                return Answer(status, headers, body)
            if len(rest) < line_end + 2 + size + 2:
                return None
            body += rest[line_end + 2 : line_end + 2 + size]
            pos = line_end + 2 + size + 2
    return None  # framed by the connection's end: complete at EOF


def send(daemon: Daemon, case: Case, timeout: float = 30.0) -> Answer:
    """Send the case's bytes; read one response. A silent close or a stall fails the case."""
    request = case.request_bytes(daemon.host)
    with socket.create_connection(("127.0.0.1", daemon.gateway.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            if case.half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may answer and stop reading before a hostile body ends: read what it said
        data = b""
        deadline = time.monotonic() + timeout
        while (answer := _parse(data)) is None or case.method == "HEAD" and not data.endswith(b"\r\n\r\n"):
            if case.method == "HEAD" and answer is None and b"\r\n\r\n" in data:
                head = data.partition(b"\r\n\r\n")[0]
                return Answer(int(head.split(b" ")[1]), {}, b"")
            if time.monotonic() > deadline:
                raise AssertionError(f"no complete answer within {timeout}s; got {data[:300]!r}")
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                head, sep, rest = data.partition(b"\r\n\r\n")
                if not sep:
                    assert not data, f"the gateway broke off its answer: {data[:300]!r}"
                    return Answer(CLOSED, {}, b"")
                return Answer(int(head.split(b" ")[1]), {}, rest)
            data += chunk
        return answer


def check_answer(case: Case, answer: Answer) -> None:
    text = answer.body.decode("utf-8", errors="replace")
    assert answer.status < 500, f"{case.name}: {answer.status} {text[:500]}"
    assert answer.status in case.status, f"{case.name}: expected {case.status}, got {answer.status}: {text[:500]}"
    for leak in LEAKS:
        assert leak not in text, f"{case.name}: the answer contains {leak[:20]!r}: {text[:500]}"
    if case.protocol and answer.headers.get("content-type", "").startswith("text/plain"):
        assert len(answer.body) < 1024, f"{case.name}: a {len(answer.body)}-byte refusal"
    elif answer.status >= 400 and case.method != "HEAD":
        assert answer.headers.get("content-type", "").startswith("application/json"), (
            f"{case.name}: error is not JSON ({answer.headers.get('content-type')}): {text[:300]}"
        )
        body = json.loads(answer.body)
        error = body["error"]
        if case.path.startswith("/v1/messages"):  # the Anthropic Messages API's own shape
            assert body["type"] == "error" and set(error) == {"type", "message"}, body
            error = {**error, "param": None}
        else:
            assert set(error) >= {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str) and error["type"], error
        assert len(error["message"]) <= 2000, f"{case.name}: a {len(error['message'])}-character error message"
        if case.param is not None:
            assert error["param"] == case.param, f"{case.name}: param {error['param']!r}, wanted {case.param!r}"
    elif answer.status == 200 and case.raw is None and case.path == "/v1/chat/completions":
        assert json.loads(answer.body)["choices"][0]["message"]["content"].startswith("echo:")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def assert_healthy(daemon: Daemon) -> None:
    proc = daemon.gateway.proc
    assert proc.poll() is None, f"the gateway exited ({proc.returncode}):\n{daemon.gateway.log()[-3000:]}"
    with urllib.request.urlopen(daemon.gateway.url + "/healthz", timeout=10) as resp:
        assert resp.status == 200
    client = openai.OpenAI(base_url=daemon.gateway.url + "/v1", api_key="app-key", max_retries=0, timeout=30)
    answer = client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "still there?"}])
    assert answer.choices[0].message.content == "echo: still there?"
    assert rss_kb(proc.pid) < RSS_LIMIT_KB, f"the gateway holds {rss_kb(proc.pid)} kB"


def test_the_corpus_is_large_and_named_uniquely():
    assert len(CASES) >= 100
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(1 for c in CASES if all(400 <= s < 500 for s in c.status)) >= 100


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_bad_input_gets_a_clean_answer(daemon, index):
    case = CASES[index]
    check_answer(case, send(daemon, case))
    if (index + 1) % HEALTH_EVERY == 0:
        assert_healthy(daemon)


def test_the_daemon_is_healthy_after_the_corpus(daemon):
    assert_healthy(daemon)
    log = daemon.gateway.log()
    assert "failed inside the gateway" not in log, log[-3000:]
    assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:3000]
    assert "rows lost" not in log, "a refused request cost the traffic log its batch"
    assert "refused a malformed request" in log  # the HTTP parser's refusals, one line each
    assert UPSTREAM_KEY not in log and ADMIN_TOKEN not in log


def test_a_refused_request_with_a_lone_surrogate_is_still_logged(daemon):
    """The traffic log keeps the refused request (escaped) instead of losing its whole batch to it."""
    path = str(daemon.gateway.workdir / "traffic.db")

    def logged() -> list[dict]:
        try:
            return [
                r
                for r in read_records(path, "status = 400")
                if (r["request"] or {}).get("messages") == [{"role": "user", "content": "hi \ud800 there"}]
            ]
        except sqlite3.Error:
            return []

    deadline = time.monotonic() + 30
    while not logged():
        assert time.monotonic() < deadline, "the refused request never reached the traffic log"
        time.sleep(0.1)
    assert logged()[0]["error_type"] == "invalid_request_error"
