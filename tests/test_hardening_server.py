"""Hardening (issue 28) against a real `llmgate serve`: deep JSON refused at one depth, unforgeable log lines."""

import json
import re
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


def test_unauthenticated_bodies_cost_no_disk_and_no_lasting_memory(fake_openai, tmp_path):
    settings = config(fake_openai, tmp_path)
    settings["plugins"]["api_keys"] = {"enabled": True, "teams": {"a": {"keys": ["sha256:" + "0" * 64]}}}
    gw = GatewayProcess(settings, tmp_path).start()
    big = json.dumps({"model": "bot", "messages": [{"role": "user", "content": "x" * 5_000_000}]}).encode()
    try:
        baseline, stored = rss_kib(gw.proc.pid), sum(p.stat().st_size for p in tmp_path.glob("traffic.db*"))
        for _ in range(20):
            request = urllib.request.Request(
                gw.url + "/v1/chat/completions", data=big, headers={"Content-Type": "application/json"}
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 401
        after = rss_kib(gw.proc.pid)
    finally:
        gw.stop()
    grown = sum(p.stat().st_size for p in tmp_path.glob("traffic.db*")) - stored
    assert grown < 1_000_000, grown  # 20 bodies of 5 MB: 100 MB had they been stored
    assert after < baseline + 100 * 1024, (baseline, after)


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
