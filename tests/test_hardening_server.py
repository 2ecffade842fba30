"""Hardening (issue 28) against a real `llmgate serve`: deep JSON refused at one depth, unforgeable log lines."""

import concurrent.futures
import contextlib
import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from gateway.bodies import MAX_DEPTH
from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY
from tests.support import GatewayProcess, free_port, wait_for_http, wait_until

pytestmark = pytest.mark.slow
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def config(fake, tmp_path):
    return {
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": {"up": {"kind": "openai", "base_url": fake.url + "/v1", "model": "m", "api_key": UPSTREAM_KEY}},
        "routes": {"bot": {"baseline": "up"}},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db"), "batch_wait_ms": 0}},
    }


def post(url: str, raw: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=raw, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def nested(depth: int) -> bytes:
    """A chat body nesting arrays and objects `depth` levels deep in all (the body itself is level 1)."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return ('{"model":"bot","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"extra":%s}' % inner).encode()


def test_json_deeper_than_the_limit_is_a_400_in_each_dialect_and_no_record_is_lost(fake_openai, tmp_path):
    gw = GatewayProcess(config(fake_openai, tmp_path), tmp_path).start()
    try:
        status, _ = post(gw.url + "/v1/chat/completions", nested(MAX_DEPTH))
        assert status == 200
        for depth in (MAX_DEPTH + 1, 975, 979):  # 975: parsed, then failed to encode (a 500) before
            status, body = post(gw.url + "/v1/chat/completions", nested(depth))
            assert status == 400 and body["error"]["code"] == "invalid_json", (depth, body)
            assert f"deeper than {MAX_DEPTH} levels" in body["error"]["message"]
            status, body = post(gw.url + "/v1/messages", nested(depth))
            assert status == 400 and body["type"] == "error", (depth, body)
            assert body["error"]["type"] == "invalid_request_error"
        records = wait_until(lambda: list(read_records(str(tmp_path / "traffic.db"))), "the one record")
        assert [r["status"] for r in records] == [200]
        with urllib.request.urlopen(gw.url + "/readyz", timeout=10) as answer:
            ready = json.loads(answer.read())
        assert ready["status"] == "ready" and ready["degraded"] == {}, ready
    finally:
        gw.stop()
    assert "Traceback" not in gw.log()


def forge(url: str) -> None:
    for path in ("/nosuch%0aFORGED%1b[31m", "/admin/nosuch%0d%0aFORGED2%e2%80%a8"):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url + path, timeout=10)


def test_a_forged_path_is_one_log_line_without_control_characters(fake_openai, tmp_path):
    gw = GatewayProcess(config(fake_openai, tmp_path), tmp_path).start()
    try:
        forge(gw.url)
        wait_until(lambda: "FORGED2" in gw.log(), "the access lines")
    finally:
        gw.stop()
    lines = gw.log().splitlines()
    forged = [line for line in lines if "FORGED" in line]
    assert len(forged) == 2, forged
    assert all(line.startswith("20") and "llmgate.access: GET /" in line for line in forged), forged
    assert not any(CONTROL.search(line) for line in lines)
    assert "/nosuch\\x0aFORGED\\x1b[31m 404" in forged[0]
    assert "\\x0d\\x0aFORGED2\\u2028" in forged[1]


def test_json_logs_are_one_parseable_record_a_line(fake_openai, tmp_path):
    (tmp_path / "gateway.yaml").write_text(json.dumps(config(fake_openai, tmp_path)))
    port, log_path = free_port(), tmp_path / "json.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", "gateway.yaml", "--port", str(port), "--log-json"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz")
            forge(f"http://127.0.0.1:{port}")
            wait_until(lambda: "FORGED2" in log_path.read_text(errors="replace"), "the access lines")
            time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(30)
    records = [json.loads(line) for line in log_path.read_text().splitlines()]  # each line one whole record
    paths = [r["path"] for r in records if "FORGED" in r.get("path", "")]
    assert paths == ["/nosuch\nFORGED\x1b[31m", "/admin/nosuch\r\nFORGED2\u2028"]


def test_a_value_the_encoder_cannot_write_is_a_marker_not_a_lost_batch():
    from plugins.traffic_log.plugin import _json_text

    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert json.loads(_json_text({"note": deep})) == {"unstorable": "dict nested too deeply to store"}


def rss_kib(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(status.split("VmRSS:")[1].split()[0])


def with_keys(fake, tmp_path, **server) -> dict:
    settings = config(fake, tmp_path)
    settings["plugins"]["api_keys"] = {"enabled": True, "teams": {"a": {"keys": ["sha256:" + "0" * 64]}}}
    settings["server"] = server
    return settings


def test_unauthenticated_bodies_cost_no_disk_and_no_lasting_memory(fake_openai, tmp_path):
    import openai

    gw = GatewayProcess(with_keys(fake_openai, tmp_path), tmp_path).start()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-not-a-key", max_retries=0, timeout=30)
    try:
        baseline, stored = rss_kib(gw.proc.pid), sum(p.stat().st_size for p in tmp_path.glob("traffic.db*"))
        for _ in range(20):  # the SDK reads the 401 though its body was not: the connection closed under it
            with pytest.raises(openai.AuthenticationError):
                client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "x" * 5_000_000}])
        after = rss_kib(gw.proc.pid)
    finally:
        gw.stop()
    grown = sum(p.stat().st_size for p in tmp_path.glob("traffic.db*")) - stored
    assert grown < 1_000_000, grown  # 20 bodies of 5 MB: 100 MB had they been stored
    assert after < baseline + 100 * 1024, (baseline, after)


def head(path: str = "/v1/chat/completions", length: int | None = None, extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gw", "Content-Type: application/json"]
    lines += [f"Content-Length: {length}"] if length is not None else []
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def read_to_close(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """What the gateway sent until it closed the connection, and when (from now) it closed it."""
    sock.settimeout(timeout)
    started, got = time.monotonic(), b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += chunk
    return got, time.monotonic() - started


def test_a_refused_body_is_not_read_its_connection_is_closed(fake_openai, tmp_path):
    gw = GatewayProcess(with_keys(fake_openai, tmp_path), tmp_path).start()
    try:
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(head(length=5_000_000) + b"{" * 1000)  # 1 KB of a 5 MB body, then nothing more
            answer, closed = read_to_close(sock, 20)
    finally:
        gw.stop()
    assert answer.startswith(b"HTTP/1.1 401 ") and b"Connection: close" in answer, answer[:200]
    assert closed < 5, closed  # before: the 401, then 10 s of reading the body to throw it away


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def get_or_reset(url: str) -> int | None:
    """get(), or None when the connection broke before an answer was read."""
    try:
        return get(url)
    except (urllib.error.URLError, ConnectionError):
        return None


def open_slowly(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each began a request's headers and will never finish them."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        with contextlib.suppress(OSError):  # one refused at the cap may already be closed
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        socks.append(sock)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of `socks` the gateway has not closed (a byte each keeps a slow-loris's headers coming)."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            sock.send(b"a")
            while chunk := sock.recv(65536):  # a 408 before the close
                del chunk
        except BlockingIOError:
            count += 1  # nothing to read and not closed
        except OSError:
            pass
    return count


def test_slow_loris_connections_are_closed_within_the_header_timeout_and_probes_still_answer(fake_openai, tmp_path):
    settings = config(fake_openai, tmp_path)
    settings["server"] = {"header_timeout": 2}
    gw = GatewayProcess(settings, tmp_path, nofile=256).start()  # auto: 112 connections and 16 for probes
    socks = []
    try:
        socks = open_slowly(gw.port, 500)
        started = time.monotonic()
        time.sleep(1.2)  # the oldest have waited past EVICT_AFTER: a new client takes its place
        assert get(gw.url + "/healthz") == 200
        assert get(gw.url + "/v1/models") == 200
        wait_until(lambda: still_open(socks) == 0, "every slow connection closed", timeout=10)
        closed_after = time.monotonic() - started
        assert get(gw.url + "/readyz") == 200
        with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
    finally:
        for sock in socks:
            sock.close()
        gw.stop()
    assert closed_after < 2 + 1.5, closed_after  # the timeout and a sweep's tick; before: never
    log = gw.log()
    assert "Too many open files" not in log and "out of system resource" not in log
    assert "whose request headers were not complete in time" in log
    # and on a dashboard: the closures by reason, the open connections back down, the cap
    figures = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("llmgate_connections_")
    }
    closed = figures['llmgate_connections_closed_total{reason="head"}'] + figures.get(
        'llmgate_connections_closed_total{reason="evicted"}', 0
    )
    assert closed + figures['llmgate_connections_closed_total{reason="cap"}'] >= 500 and closed >= 100, figures
    assert figures["llmgate_connections_limit"] == 112 and figures['llmgate_connections_open{kind="serve"}'] <= 2


def stream(url: str, content: str, forwarded: str | None = None) -> tuple[int, str]:
    body = json.dumps({"model": "bot", "stream": True, "messages": [{"role": "user", "content": content}]}).encode()
    headers = {"Content-Type": "application/json", **({"X-Forwarded-For": forwarded} if forwarded else {})}
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_at_the_cap_busy_connections_leave_room_for_probes_and_long_streams_are_not_cut(fake_openai, tmp_path):
    settings = config(fake_openai, tmp_path)
    settings["server"] = {"max_connections": 4, "probe_connections": 2, "header_timeout": 1, "body_grace": 1}
    gw = GatewayProcess(settings, tmp_path).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            streams = [pool.submit(stream, gw.url, "[sleep 3] long answer") for _ in range(4)]
            wait_until(lambda: len(fake_openai.requests) >= 4, "four streams in flight")
            assert get(gw.url + "/v1/models") == 503
            assert get(gw.url + "/healthz") == 200 and get(gw.url + "/readyz") == 200
            answers = [s.result() for s in streams]
        whole = [status == 200 and text.count("data: ") > 4 and "data: [DONE]" in text for status, text in answers]
        assert all(whole), answers
        assert get(gw.url + "/v1/models") == 200
    finally:
        gw.stop()


def test_a_body_slower_than_the_minimum_rate_is_a_408(fake_openai, tmp_path):
    settings = config(fake_openai, tmp_path)
    settings["server"] = {"body_grace": 1, "body_min_rate": 1000}
    gw = GatewayProcess(settings, tmp_path).start()
    try:
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(head(length=100_000))
            started = time.monotonic()
            with contextlib.suppress(OSError):
                while time.monotonic() - started < 10:
                    sock.sendall(b" " * 50)  # 100 bytes a second
                    time.sleep(0.5)
                    if select.select([sock], [], [], 0)[0]:
                        break
            answer, _ = read_to_close(sock, 5)
            closed = time.monotonic() - started
    finally:
        gw.stop()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"slower than 1000 bytes a second" in answer, answer
    assert closed < 4, closed


def test_one_address_holds_at_most_its_connections_and_x_forwarded_for_counts_only_from_a_trusted_proxy(
    fake_openai, tmp_path
):
    settings = config(fake_openai, tmp_path)
    settings["server"] = {"max_connections_per_client": 2}
    gw = GatewayProcess(settings, tmp_path).start()
    try:
        held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(2)]
        with socket.create_connection(("127.0.0.1", gw.port)) as third:
            third.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n")
            answer, _ = read_to_close(third, 5)
        assert answer.startswith(b"HTTP/1.1 429 ") and b"too_many_connections" in answer, answer
        for sock in held:
            sock.close()
        wait_until(lambda: get(gw.url + "/healthz") == 200, "a slot again")
        gw.write_config({**settings, "server": {"max_connections_per_client": 1}})
        gw.proc.send_signal(signal.SIGHUP)  # the limits follow a reload
        with socket.create_connection(("127.0.0.1", gw.port)) as first:
            wait_until(lambda: get_or_reset(gw.url + "/healthz") == 429, "the reloaded limit")
            del first
    finally:
        gw.stop()

    settings["server"]["trusted_proxies"] = ["127.0.0.0/8"]  # loopback is the proxy: requests count per client
    gw = GatewayProcess(settings, tmp_path).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            slow = [pool.submit(stream, gw.url, "[sleep 2] hi", "203.0.113.7, 127.0.0.1") for _ in range(2)]
            wait_until(lambda: len(fake_openai.requests) >= 2, "two requests of 203.0.113.7 in flight")
            status, text = stream(gw.url, "hi", "203.0.113.7")
            assert status == 429 and "too_many_connections" in text
            assert stream(gw.url, "hi", "203.0.113.8")[0] == 200  # another client behind the same proxy
            assert [s.result()[0] for s in slow] == [200, 200]
    finally:
        gw.stop()


def test_the_client_behind_trusted_proxies_is_the_nearest_untrusted_hop():
    from gateway.config import ServerSettings
    from gateway.connections import Guard

    guard = Guard(ServerSettings(trusted_proxies=["10.0.0.0/8", "192.0.2.1"]), limit=1024)
    assert guard.client_address("10.1.1.1", ["198.51.100.1, 10.0.0.2"]) == "198.51.100.1"
    assert guard.client_address("10.1.1.1", ["6.6.6.6, 198.51.100.1", "192.0.2.1"]) == "198.51.100.1"  # forged
    assert guard.client_address("10.1.1.1", []) == "10.1.1.1"
    assert guard.cap == 1024 // 2 - 16


def test_a_refused_exchange_is_a_record_without_bodies_and_a_counted_refusal(tmp_path):
    from gateway.config import RouteSettings
    from gateway.context import RequestContext
    from gateway.errors import PermissionDenied
    from plugins import metrics
    from plugins.traffic_log.plugin import Settings, TrafficLog

    error = PermissionDenied("not yours", code="route_not_allowed")
    ctx = RequestContext("r1", "bot", RouteSettings(baseline="up"), {"messages": ["x" * 1000]}, {}, status=403)
    ctx.error = error
    record = TrafficLog(Settings(path=str(tmp_path / "t.db")))._record(ctx)
    assert record["status"] == 403 and record["request"] is None and record["response"] is None
    figures = metrics.Metrics(metrics.Settings())
    figures.after_response(ctx)
    assert figures.refused.labels("route_not_allowed")._value.get() == 1


def test_a_retrained_openai_model_is_registered_like_a_configured_backend_never_with_a_key(tmp_path):
    from plugins.retrain.providers import OpenAIProvider, OpenAIProviderSettings, RetrainError

    job = {"serving_model": "ft:gpt-4o-mini:org::x1"}
    like = OpenAIProvider(OpenAIProviderSettings(backend="base")).serving_backend(job)
    assert like == {"like": "base", "model": "ft:gpt-4o-mini:org::x1"}  # what the admin API registers
    keyed = OpenAIProvider(OpenAIProviderSettings(api_key="sk-direct", base_url="https://api.example/v1"))
    with pytest.raises(RetrainError, match="plugins.retrain.openai.backend is not set"):
        keyed.serving_backend(job)  # before: {"api_key": "${OPENAI_API_KEY}", ...}, which the admin API refuses
    with pytest.raises(RetrainError, match="backend is not set"):
        keyed.start("rt-1", None, "gpt-4o-mini", {}, "bot")  # refused at launch, before anything is uploaded
    assert keyed._client is None


def test_a_team_erases_only_its_own_user_and_the_admin_names_a_team(make_gateway, fake_openai, tmp_path):
    import openai

    from plugins.api_keys.plugin import hash_key

    keys = {"a": "sk-team-a-0123456789abcdef", "b": "sk-team-b-0123456789abcdef"}
    gw = make_gateway(
        {
            "server": {"admin_token": "admin-0123456789"},
            "backends": {
                "up": {"kind": "openai", "base_url": fake_openai.url + "/v1", "model": "m", "api_key": UPSTREAM_KEY}
            },
            "routes": {"bot": {"baseline": "up"}},
            "plugins": {
                "traffic_log": {"path": str(tmp_path / "traffic.db"), "batch_wait_ms": 0},
                "api_keys": {"enabled": True, "teams": {t: {"keys": [hash_key(k)]} for t, k in keys.items()}},
            },
        }
    )
    for team, key in keys.items():  # one user id, two teams: two people
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        for _ in range(2):
            client.chat.completions.create(model="bot", user="alice", messages=[{"role": "user", "content": team}])
    tenants = lambda: sorted(r["tenant"] for r in read_records(str(tmp_path / "traffic.db")))  # noqa: E731
    wait_until(lambda: len(tenants()) == 4, "the four records")

    def erase(token: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            gw.url + "/admin/erase",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, body = erase(keys["a"], {"user": "alice", "team": "b"})
    assert status == 403 and body["error"]["code"] == "team_not_allowed"
    status, body = erase(keys["a"], {"user": "alice"})
    assert status == 200 and body["team"] == "a" and body["exchanges"] == 2, body
    assert tenants() == ["b", "b"]  # before: team b's alice went too (and a team key could not erase)
    assert erase("sk-not-a-key", {"user": "alice"})[0] == 401
    status, body = erase("admin-0123456789", {"user": "alice", "team": "b"})
    assert status == 200 and body["exchanges"] == 2 and tenants() == []


def test_an_unauthenticated_request_is_not_asked_for_its_body(fake_openai, tmp_path):
    from plugins.api_keys.plugin import hash_key

    settings = with_keys(fake_openai, tmp_path)
    settings["plugins"]["api_keys"]["teams"]["a"]["keys"].append(hash_key("sk-team-a-0123456789abcdef"))
    gw = GatewayProcess(settings, tmp_path).start()
    try:
        for key, first in ((None, b"HTTP/1.1 401 "), ("sk-team-a-0123456789abcdef", b"HTTP/1.1 100 Continue")):
            with socket.create_connection(("127.0.0.1", gw.port)) as sock:
                auth = f"Authorization: Bearer {key}\r\n" if key else ""
                sock.sendall(head(length=5_000_000, extra="Expect: 100-continue\r\n" + auth))
                sock.settimeout(10)
                assert sock.recv(65536).startswith(first), key  # before: 100 Continue for both
    finally:
        gw.stop()


def metric(url: str, sample: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return next((float(line.rsplit(" ", 1)[1]) for line in lines if line.rsplit(" ", 1)[0] == sample), 0.0)


def ask_for_a_long_answer(port: int, stream: bool, receive_buffer: int | None = None) -> socket.socket:
    """A request whose answer (the fake's echo) is about 8 MB, more than the kernel's send buffer holds
    (tcp_wmem's 4 MB at most), on a socket with the receive buffer given (else the kernel's)."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    content = " ".join(["a" * 1000] * 8000) if stream else "a" * 8_000_000
    body = json.dumps({"model": "bot", "stream": stream, "messages": [{"role": "user", "content": content}]})
    sock.sendall(head(length=len(body)) + body.encode())
    return sock


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_client_that_stops_reading_is_cut_off_after_the_write_timeout_and_a_slow_reader_is_not(
    fake_openai, tmp_path, stream
):
    settings = config(fake_openai, tmp_path)
    settings["server"] = {"write_timeout": 2}
    gw = GatewayProcess(settings, tmp_path).start()
    try:
        stalled = ask_for_a_long_answer(gw.port, stream, receive_buffer=4096)  # and never reads
        slow = ask_for_a_long_answer(gw.port, stream)
        slow.settimeout(30)
        got, ended = b"", False
        started = time.monotonic()
        while time.monotonic() - started < 30:  # about 2 MB a second: slower than loopback, but reading
            chunk = slow.recv(1024 * 1024)
            got += chunk
            if not chunk or got.endswith(b"0\r\n\r\n") or (not stream and len(got) > 8_000_000):
                ended = True
                break
            time.sleep(0.5)
        wait_until(lambda: metric(gw.url, 'llmgate_connections_closed_total{reason="write"}') == 1, "the cut", 10)
        assert ended, "the slow reader got its whole answer"
        # the slow reader got its whole answer; the stalled one's connection is gone
        assert got.startswith(b"HTTP/1.1 200") and (
            b"data: [DONE]" in got if stream else got.count(b"a" * 1000) >= 2999
        )
        leftover, _ = read_to_close(stalled, 10)
        assert len(leftover) < 8_000_000, "the stalled client never got the whole answer"
        assert metric(gw.url, 'llmgate_connections_closed_total{reason="write"}') == 1
    finally:
        gw.stop()
    assert "that took none of their answer for server.write_timeout" in gw.log()
