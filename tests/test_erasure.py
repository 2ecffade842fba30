"""A data-protection request: `llmgate traffic erase --user ID` removes every stored row of one end user, in
the traffic log, the shadow comparisons, the feedback, the S3 copies (objects rewritten, the spool too)
and the semantic cache, reports the counts, and leaves everyone else's rows; the audit event holds a
hash of the id, never the id."""

# ruff: noqa: F811 (the S3 fixtures imported from test_log_sink_s3 are parameters here)
import json
import sqlite3

import openai

from gateway.cli import main as cli_main
from plugins.log_sink_s3.layout import decode_object
from tests.conftest import backend_config
from tests.support import wait_until
from tests.test_log_sink_s3 import bucket, moto_url, s3_client, sink_config  # noqa: F401 (fixtures)

ADMIN = "admin-token-for-erasure-tests-0123"


def ask(gw, user: str, text: str) -> str:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="bot", user=user, messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-request-id"]


def rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def admin_get(gw, path):
    import urllib.request

    request = urllib.request.Request(gw.url + path, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def stored_objects(url, name):
    client = s3_client(url)
    records = []
    for item in client.list_objects_v2(Bucket=name).get("Contents", []):
        records.extend(decode_object(client.get_object(Bucket=name, Key=item["Key"])["Body"].read()))
    return records


def test_erasing_one_user_removes_their_rows_everywhere_and_leaves_the_rest(
    fake_openai,
    make_gateway,
    tmp_path,
    moto_url,
    bucket,
    capsys,
    monkeypatch,
):
    up = backend_config("openai", fake_openai)
    gw = make_gateway(
        {
            "server": {"admin_token": ADMIN},
            "backends": {"up": up, "shadow-x": {**up, "model": "m-shadow"}},
            "routes": {"bot": {"baseline": "up", "shadow": ["shadow-x"]}},
            "plugins": {
                "traffic_log": {"path": str(tmp_path / "traffic.db")},
                "shadow": {"path": str(tmp_path / "shadow.db")},
                "feedback": {"path": str(tmp_path / "feedback.db")},
                "log_sink_s3": sink_config(bucket, moto_url, tmp_path, "one"),
            },
        }
    )
    alice = [ask(gw, "alice@example.com", f"alice question {i}") for i in range(3)]
    bob = [ask(gw, "bob", f"bob question {i}") for i in range(2)]
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)
    for request_id in (alice[0], bob[0]):
        client.post("/feedback", body={"request_id": request_id, "rating": "helpful"}, cast_to=object)
    wait_until(lambda: len(rows(tmp_path / "shadow.db", "SELECT id FROM comparisons")) == 5, "five comparisons")
    wait_until(lambda: len(stored_objects(moto_url, bucket)) == 5, "five records in S3")

    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", ADMIN)
    assert cli_main(["traffic", "erase", "--user", "alice@example.com", "--reason", "DSR-42", "--url", gw.url]) == 0
    out = capsys.readouterr().out
    assert "3 exchanges" in out and "traffic_log 3" in out and "shadow 3" in out and "feedback 1" in out
    assert "log_sink_s3 3" in out

    assert sorted(r[0] for r in rows(tmp_path / "traffic.db", "SELECT request_id FROM traffic")) == sorted(bob)
    assert sorted(r[0] for r in rows(tmp_path / "shadow.db", "SELECT request_id FROM comparisons")) == sorted(bob)
    assert [r[0] for r in rows(tmp_path / "feedback.db", "SELECT request_id FROM feedback")] == [bob[0]]
    kept = stored_objects(moto_url, bucket)
    assert sorted(r["request_id"] for r in kept) == sorted(bob)
    assert "alice" not in json.dumps(kept)

    event = next(e for e in admin_get(gw, "/admin/events?kind=erase_user")["events"])
    assert event["reason"] == "DSR-42" and len(event["user_hash"]) == 16
    assert "alice" not in json.dumps(event)
    assert cli_main(["traffic", "erase", "--user", "alice@example.com", "--url", gw.url]) == 0
    assert "0 exchanges" in capsys.readouterr().out  # nothing left to find


def test_the_semantic_cache_forgets_the_answers_of_erased_exchanges():
    import numpy as np

    from plugins.semantic_cache.index import CacheIndex

    index = CacheIndex(4, max_entries=10, ann=False)
    vec = np.array([1, 0, 0, 0], np.float32)
    for request_id in ("alice-1", "bob-1", "alice-2"):
        index.add(
            scope="s",
            route="r",
            exact_key=request_id,
            text=request_id,
            facts=None,
            answer={},
            ttl=60,
            vector=vec,
            request_id=request_id,
        )
    assert index.forget({"alice-1", "alice-2"}) == 2
    assert index.exact("bob-1") is not None and index.exact("alice-1") is None and len(index) == 1
