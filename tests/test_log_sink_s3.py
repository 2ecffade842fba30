"""The S3 log sink against moto's real S3 server: replicas ship every record exactly once, lose
nothing while S3 is down or after a crash, and `read_records_s3` reads them all back.

A small proxy in front of moto (FlakyS3) plays an S3 that answers 500s, takes an object but
loses the reply, or (stopped) refuses connections. No assertion depends on timing: each test
waits for an outcome with a generous deadline.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import signal
import sqlite3
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timezone

import aiohttp
import boto3
import openai
import pytest
from aiohttp import web

from plugins.log_sink_s3 import LogSinkS3, S3ReadError, Settings, read_records_s3
from plugins.log_sink_s3.layout import encode_object, hour_prefix
from tests.conftest import backend_config
from tests.support import GatewayProcess, ServerThread, free_port, wait_until

ADMIN = "admin-token-for-s3-sink-tests"
SECRET = "s3-sink-secret-key-never-shown-0123456789"
KEY_PATTERN = re.compile(
    r"^(?P<prefix>.+)/route=(?P<route>[^/]+)/dt=(?P<dt>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/"
    r"(?P<replica>[A-Za-z0-9._-]+)-(?P<first>\d+)-(?P<last>\d+)\.jsonl\.gz$"
)


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 call otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_client(url: str):
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIAFAKEFAKEFAKEFAKE",
        aws_secret_access_key="fake",
    )


@pytest.fixture
def bucket(moto_url, aws_env):
    name = f"logs-{uuid.uuid4().hex[:12]}"
    s3_client(moto_url).create_bucket(Bucket=name)
    return name


class FlakyS3:
    """A pass-through to moto whose `mode` makes it fail: "ok", "fail" (500, nothing stored), "lose_reply"
    (stored, then 500); `puts` counts the objects moto received through it."""

    def __init__(self, upstream: str):
        self.upstream, self.mode, self.puts = upstream, "ok", 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        if self.mode == "fail":
            return self._internal_error()
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding", "expect")
        }
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body
            ) as reply:
                data = await reply.read()
                status, reply_headers = (
                    reply.status,
                    {
                        k: v
                        for k, v in reply.headers.items()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date")
                    },
                )
        if request.method == "PUT" and status == 200:
            self.puts += 1
        if self.mode == "lose_reply":
            return self._internal_error()
        return web.Response(status=status, body=data, headers=reply_headers)

    @staticmethod
    def _internal_error() -> web.Response:
        return web.Response(
            status=500,
            content_type="application/xml",
            text=(
                '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
                "<Message>We encountered an internal error. Please try again.</Message></Error>"
            ),
        )


def objects(url: str, bucket: str) -> dict[str, list[dict]]:
    """{key: its records} of every object in the bucket, read raw (no dedupe)."""
    client = s3_client(url)
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", ()):
            data = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
            found[entry["Key"]] = [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line]
    return found


def id_counts(url: str, bucket: str) -> Counter:
    return Counter(record["request_id"] for records in objects(url, bucket).values() for record in records)


def sink_config(bucket: str, endpoint: str, tmp_path, replica: str, **extra) -> dict:
    return {
        "enabled": True,
        "bucket": bucket,
        "prefix": "traffic",
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "replica": replica,
        "spool_path": str(tmp_path / f"spool-{replica}.db"),
        "batch_size": 4,
        "max_batch_age": 0.2,
        "retry_min_seconds": 0.05,
        "retry_max_seconds": 0.3,
        "shutdown_seconds": 5,
        **extra,
    }


def sink_plugin(bucket: str, endpoint: str, tmp_path, replica: str, **extra) -> LogSinkS3:
    """The plugin alone, as the gateway would build it from its config section."""
    options = sink_config(bucket, endpoint, tmp_path, replica, **extra)
    del options["enabled"]
    return LogSinkS3(Settings(**options))


def gateway_config(fake, tmp_path, replica: str, sink: dict) -> dict:
    return {
        "server": {"admin_token": ADMIN},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": {"up": backend_config("openai", fake)},
        "routes": {"support-bot": {"baseline": "up"}, "sales bot/eu": {"baseline": "up"}},
        "plugins": {"traffic_log": {"path": str(tmp_path / f"traffic-{replica}.db")}, "log_sink_s3": sink},
    }


def send(url: str, route: str, text: str, stream: bool = False) -> str:
    """One chat completion through the official SDK; the gateway's request id."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="app-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": text}], stream=stream
    )
    if stream:
        list(raw.parse())
    else:
        assert raw.parse().choices[0].message.content == f"echo: {text}"
    return raw.headers["x-request-id"]


def spooled_rows(path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def get_json(url: str, admin: bool = False) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"} if admin else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as exc:  # /readyz answers 503 with the same body
        return json.load(exc)


def admin_status(url: str) -> dict:
    return get_json(url + "/admin/status", admin=True)


def readyz(url: str) -> dict:
    return get_json(url + "/readyz")


def test_two_replicas_ship_every_record_once_partitioned_by_route_and_hour(
    fake_openai, make_gateway, moto_url, bucket, tmp_path
):
    replicas = {
        name: make_gateway(gateway_config(fake_openai, tmp_path, name, sink_config(bucket, moto_url, tmp_path, name)))
        for name in ("replica-a", "replica-b")
    }
    sent: dict[str, tuple[str, str]] = {}  # request id -> (replica, route)
    for i in range(9):
        for name, gw in replicas.items():
            route = "support-bot" if i % 3 else "sales bot/eu"
            sent[send(gw.url, route, f"question {i} for {name}", stream=i == 4)] = (name, route)

    for name, gw in replicas.items():
        mine = sum(1 for replica, _ in sent.values() if replica == name)
        wait_until(lambda: admin_status(gw.url)["log_sink_s3"]["uploaded"] == mine, what=f"{name} uploaded")
    for gw in replicas.values():
        gw.stop()  # a clean shutdown flushes too: nothing may be uploaded twice
    stored = objects(moto_url, bucket)
    counts = Counter(r["request_id"] for records in stored.values() for r in records)
    assert counts == Counter(list(sent)), "every request id of both replicas exactly once"

    for key, records in stored.items():
        match = KEY_PATTERN.match(key)
        assert match, key
        assert match["prefix"] == "traffic"
        for record in records:
            replica, route = sent[record["request_id"]]
            hour = datetime.fromtimestamp(record["ts"], timezone.utc)
            assert key.startswith(hour_prefix("traffic", route, hour))
            assert match["replica"] == replica
            assert record["status"] == 200 and record["request"]["model"] == route
        assert int(match["first"]) <= int(match["last"])
        assert len(records) <= 4  # batch_size
    assert {KEY_PATTERN.match(k)["route"] for k in stored} == {"support-bot", "sales%20bot%2Feu"}
    assert {spooled_rows(tmp_path / f"spool-{n}.db") for n in replicas} == {0}

    settings = {"enabled": True, **sink_config(bucket, moto_url, tmp_path, "reader")}
    everything = list(read_records_s3(settings))
    assert sorted(r["request_id"] for r in everything) == sorted(sent)
    assert [r["ts"] for r in everything] == sorted(r["ts"] for r in everything)
    sales = list(read_records_s3(settings, route="sales bot/eu"))
    assert {r["request_id"] for r in sales} == {rid for rid, (_, route) in sent.items() if route == "sales bot/eu"}


def test_s3_answering_500s_loses_nothing_and_everything_goes_up_when_it_recovers(
    fake_openai, make_gateway, moto_url, bucket, tmp_path, caplog
):
    flaky = FlakyS3(moto_url)
    flaky.mode = "fail"
    with ServerThread(flaky.app) as proxy:
        sink = sink_config(
            bucket, proxy.url, tmp_path, "r1", aws_access_key_id="AKIAFAKEFAKEFAKEFAKE", aws_secret_access_key=SECRET
        )
        gw = make_gateway(gateway_config(fake_openai, tmp_path, "r1", sink))
        sent = [send(gw.url, "support-bot", f"while down {i}") for i in range(10)]

        status = wait_until(
            lambda: (s := admin_status(gw.url)["log_sink_s3"])["spooled"] == 10 and s["failing_attempts"] >= 2 and s,
            what="records spooled, uploads failing",
        )
        assert status["uploaded"] == 0 and status["dropped"] == 0 and "InternalError" in status["last_error"]
        ready = readyz(gw.url)
        assert "S3 uploads failing" in ready["degraded"]["log_sink_s3"]
        assert spooled_rows(tmp_path / "spool-r1.db") == 10
        assert flaky.puts == 0 and not objects(moto_url, bucket)

        flaky.mode = "ok"
        status = wait_until(
            lambda: (s := admin_status(gw.url)["log_sink_s3"])["spooled"] == 0 and s,
            what="the spool uploaded after recovery",
        )
        assert id_counts(moto_url, bucket) == Counter(sent)
        assert status["uploaded"] == 10 and status["failing_attempts"] == 0
        assert "log_sink_s3" not in readyz(gw.url)["degraded"]
        gw.stop()
    shown = json.dumps(status) + caplog.text
    assert SECRET not in shown and "AKIAFAKEFAKEFAKEFAKE" not in shown


async def test_an_object_s3_stored_without_confirming_is_rewritten_under_the_same_key(moto_url, bucket, tmp_path):
    flaky = FlakyS3(moto_url)
    flaky.mode = "lose_reply"
    with ServerThread(flaky.app) as proxy:
        sink = sink_plugin(bucket, proxy.url, tmp_path, "r2", batch_size=100)
        await sink.startup(None)
        now = time.time()
        ids = [f"req-{i}" for i in range(6)]
        for i, rid in enumerate(ids):
            assert sink.offer(record(rid, "support-bot", now + i))
        while flaky.puts < 3:  # the same object, stored three times, never confirmed
            await asyncio.sleep(0.05)
        first_keys = set(objects(moto_url, bucket))
        flaky.mode = "ok"
        while sink.spooled:
            await asyncio.sleep(0.05)
        await sink.shutdown(None)
    stored = objects(moto_url, bucket)
    assert set(stored) == first_keys and len(stored) == 1, "retries overwrite, never add an object"
    assert id_counts(moto_url, bucket) == Counter(ids)


def record(request_id: str, route: str, ts: float) -> dict:
    return {
        "request_id": request_id,
        "ts": ts,
        "route": route,
        "variant": "up",
        "served_by": "up",
        "status": 200,
        "error_type": None,
        "error_message": None,
        "stream": False,
        "latency_ms": 1.0,
        "ttft_ms": None,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cost_usd": None,
        "sticky_hash": "x",
        "tenant": None,
        "attempts": [],
        "annotations": {},
        "request": {"model": route},
        "response": None,
    }


async def test_read_records_s3_lists_only_the_window_merges_replicas_and_dedupes(moto_url, bucket, tmp_path):
    base = datetime(2026, 11, 21, 22, 0, tzinfo=timezone.utc).timestamp()  # spans a day boundary
    sinks = [sink_plugin(bucket, moto_url, tmp_path, name, batch_size=1000) for name in ("east", "west")]
    expected = []
    for n, sink in enumerate(sinks):
        await sink.startup(None)
        for hour in range(4):  # 22:00, 23:00, 00:00 and 01:00
            for minute, route in ((10 + n, "support-bot"), (40 + n, "billing")):
                rec = record(f"{sink.replica}-{hour}-{route}", route, base + hour * 3600 + minute * 60)
                assert sink.offer(rec)
                expected.append(rec)
        await sink.shutdown(None)  # the final flush uploads everything
        assert sink.uploaded == 8 and sink.spooled == 0
    # The same records once more under another object name (as after a crash with an older name).
    duplicate = [r for r in expected if r["request_id"].startswith("east-2-")]
    s3_client(moto_url).put_object(
        Bucket=bucket,
        Key=hour_prefix("traffic", "billing", datetime.fromtimestamp(base + 2 * 3600, timezone.utc))
        + "old-name-1-2.jsonl.gz",
        Body=encode_object([json.dumps(r) for r in duplicate if r["route"] == "billing"]),
    )

    settings = sink_config(bucket, moto_url, tmp_path, "reader")
    everything = list(read_records_s3(settings))
    assert [r["request_id"] for r in everything] == [r["request_id"] for r in sorted(expected, key=lambda r: r["ts"])]
    window = list(
        read_records_s3(
            settings,
            route="billing",
            since=base + 3600 + 40 * 60 + 30,
            until=datetime.fromtimestamp(base + 3 * 3600 + 40 * 60 + 30, timezone.utc),
        )
    )
    assert [r["request_id"] for r in window] == ["west-1-billing", "east-2-billing", "west-2-billing", "east-3-billing"]
    assert list(read_records_s3(settings, route="no-such-route")) == []
    with pytest.raises(S3ReadError, match="cannot read the traffic log at s3://no-such-bucket/traffic"):
        list(read_records_s3({**settings, "bucket": "no-such-bucket"}))


async def test_a_spool_that_cannot_be_written_shows_in_readiness(moto_url, bucket, tmp_path):
    sink = sink_plugin(bucket, moto_url, tmp_path, "r3")
    await sink.startup(None)
    try:
        conn = sqlite3.connect(tmp_path / "spool-r3.db")
        conn.execute("DROP TABLE spool")
        conn.commit()
        conn.close()
        assert sink.offer(record("lost-1", "support-bot", time.time()))
        while not sink.spool_error:
            await asyncio.sleep(0.05)
        problem = sink.readiness(None)["log_sink_s3"]
        assert "the spool cannot be written" in problem and "no such table" in problem
        assert sink.admin_status(None)["log_sink_s3"]["dropped"] == 1
    finally:
        await sink.shutdown(None)


@pytest.mark.slow
def test_a_killed_replica_leaves_records_spooled_and_its_next_start_uploads_them(
    fake_openai, moto_url, bucket, tmp_path, aws_env
):
    port = free_port()  # nothing listens here yet: S3 refuses connections
    sink = sink_config(bucket, f"http://127.0.0.1:{port}", tmp_path, "crashy")
    config = gateway_config(fake_openai, tmp_path, "crashy", sink)
    gw = GatewayProcess(config, tmp_path).start()
    try:
        sent = [send(gw.url, "support-bot" if i % 2 else "sales bot/eu", f"before the crash {i}") for i in range(8)]
        wait_until(lambda: spooled_rows(tmp_path / "spool-crashy.db") == 8, what="all eight spooled")
        assert "S3 uploads failing" in wait_until(lambda: readyz(gw.url)["degraded"].get("log_sink_s3"))
    finally:
        gw.stop(signal.SIGKILL)
    assert gw.proc.returncode == -signal.SIGKILL
    assert spooled_rows(tmp_path / "spool-crashy.db") == 8

    with ServerThread(FlakyS3(moto_url).app, port=port):  # S3 is back, at the same address
        restarted = GatewayProcess(config, tmp_path).start()
        try:
            after = send(restarted.url, "support-bot", "after the restart")
            wait_until(lambda: admin_status(restarted.url)["log_sink_s3"]["uploaded"] == 9, what="all nine uploaded")
        finally:
            assert restarted.stop() == 0
    assert id_counts(moto_url, bucket) == Counter([*sent, after])
    assert spooled_rows(tmp_path / "spool-crashy.db") == 0
    assert all(KEY_PATTERN.match(k)["replica"] == "crashy" for k in objects(moto_url, bucket))
