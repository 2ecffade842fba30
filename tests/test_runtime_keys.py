"""Team keys made at run time: two replicas sharing a real redis-server, the official SDKs, the CLI.

A key created on one replica works on the other at once; a revoked one fails on both (through the
store's change notice: the periodic reload is set far off, so nothing else could deliver it); a
rotated key overlaps its successor, then expires; a key's own routes and limits hold; the config's
keys keep working; no key appears in an answer, a log line or an event.
"""

import json
import logging
import time
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from gateway.cli import main as cli_main
from plugins.api_keys.plugin import hash_key
from tests.conftest import backend_config
from tests.support import wait_until

ADMIN = "admin-token-for-runtime-keys-0123"
CONFIG_KEY = "sk-lg-config-team-key-0123456789abcdef"


def replica(make_gateway, fake, redis_url, tmp_path, name):
    return make_gateway(
        {
            "server": {"admin_token": ADMIN},
            "state": {"redis_url": redis_url, "sqlite_path": str(tmp_path / f"{name}.db")},
            "backends": {"up": backend_config("openai", fake)},
            "routes": {"support-bot": {"baseline": "up"}, "sales-bot": {"baseline": "up"}},
            "plugins": {
                "api_keys": {
                    "enabled": True,
                    "resync_seconds": 3600,  # only the change notice can carry a change within the test
                    "teams": {"support": {"keys": [hash_key(CONFIG_KEY)], "routes": ["support-bot"]}},
                },
                "quotas": {"enabled": True},  # a key's own limits
                "traffic_log": {"path": str(tmp_path / f"{name}-traffic.db")},
            },
        }
    )


def admin(gw, method, path, body=None, token=ADMIN):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        gw.url + path,
        method=method,
        data=data,
        headers={"Authorization": f"Bearer {token}", **({"Content-Type": "application/json"} if data else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def status_of(gw, key, route="support-bot"):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    try:
        client.chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as err:
        return err.status_code


def test_a_key_made_on_one_replica_works_on_the_other_and_a_revoked_one_fails_on_both(
    fake_openai, make_gateway, redis_url, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    one = replica(make_gateway, fake_openai, redis_url, tmp_path, "one")
    two = replica(make_gateway, fake_openai, redis_url, tmp_path, "two")
    code, made = admin(one, "POST", "/admin/keys", {"team": "support", "name": "ci", "reason": "the CI job"})
    assert code == 200, made
    key = made["key"]
    assert key.startswith("sk-lg-") and made["team"] == "support" and made["shown"] == key[:10]
    started = time.monotonic()
    wait_until(lambda: status_of(two, key) == 200, "the other replica to take the new key")
    took = time.monotonic() - started
    assert status_of(one, key) == 200 and status_of(one, CONFIG_KEY) == 200  # the config's key still works
    assert status_of(two, key, route="sales-bot") == 404  # within its team's routes: another is unknown to it
    # the Anthropic SDK sends it as x-api-key
    messages = anthropic.Anthropic(base_url=two.url, api_key=key, max_retries=0).messages.create(
        model="support-bot", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert messages.content[0].text

    code, revoked = admin(one, "POST", f"/admin/keys/{made['id']}/revoke", {"reason": "leaked"})
    assert code == 200 and revoked["revoked_at"] is not None
    started = time.monotonic()
    wait_until(lambda: status_of(two, key) == 401, "the other replica to refuse the revoked key")
    refused_after = time.monotonic() - started
    assert status_of(one, key) == 401
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=two.url + "/v1", api_key=key, max_retries=0).models.list()
    assert refused.value.body["code"] == "revoked_api_key" and key not in str(refused.value.body)
    print(f"new key taken by the other replica after {took * 1000:.0f} ms; refused after {refused_after * 1000:.0f} ms")

    code, listed = admin(two, "GET", "/admin/keys?team=support")
    assert code == 200 and [k["id"] for k in listed["keys"]] == [made["id"]]
    assert all(key not in json.dumps(k) and hash_key(key)[7:] not in json.dumps(k) for k in listed["keys"])
    events = admin(one, "GET", "/admin/events?limit=10")[1]["events"]
    assert {"key_create", "key_revoke"} <= {e["kind"] for e in events}
    assert key not in json.dumps(events)
    assert key not in caplog.text and key[10:] not in caplog.text


def test_rotation_overlaps_then_the_old_key_expires_and_a_keys_own_limits_hold(
    fake_openai, make_gateway, redis_url, tmp_path
):
    gw = replica(make_gateway, fake_openai, redis_url, tmp_path, "one")
    code, made = admin(
        gw,
        "POST",
        "/admin/keys",
        {"team": "partners", "name": "acme", "routes": ["sales-bot"], "requests_per_minute": 3},
    )
    assert code == 200, made
    old = made["key"]
    assert status_of(gw, old, route="sales-bot") == 200  # a team the config lacks: the key's routes
    assert status_of(gw, old, route="support-bot") == 404
    code, rotated = admin(gw, "POST", f"/admin/keys/{made['id']}/rotate", {"overlap_seconds": 1})
    assert code == 200 and rotated["previous"]["rotated_to"] == rotated["id"]
    new = rotated["key"]
    assert new != old and rotated["routes"] == ["sales-bot"] and rotated["requests_per_minute"] == 3
    assert status_of(gw, new, route="sales-bot") == 200 and status_of(gw, old, route="sales-bot") == 200
    wait_until(lambda: status_of(gw, old, route="sales-bot") == 401, "the old key to expire after the overlap")
    assert status_of(gw, new, route="sales-bot") == 200
    assert status_of(gw, new, route="sales-bot") == 200
    with pytest.raises(openai.RateLimitError) as limited:  # the new key's fourth request this minute
        openai.OpenAI(base_url=gw.url + "/v1", api_key=new, max_retries=0).chat.completions.create(
            model="sales-bot", messages=[{"role": "user", "content": "hi"}]
        )
    assert f"key '{rotated['id']}' has reached its limit of 3 requests per minute" in limited.value.message


def test_key_requests_are_checked_and_need_the_admin_token(fake_openai, make_gateway, redis_url, tmp_path):
    gw = replica(make_gateway, fake_openai, redis_url, tmp_path, "one")
    code, body = admin(gw, "POST", "/admin/keys", {"team": "support", "name": "x", "routes": ["nowhere"]})
    assert code == 400 and "unknown route 'nowhere'" in body["error"]["message"]
    code, body = admin(gw, "POST", "/admin/keys", {"team": "bad team!", "name": "x"})
    assert code == 400 and "team" in body["error"]["message"]
    code, body = admin(gw, "POST", "/admin/keys", {"team": "support", "name": "x", "color": "red"})
    assert code == 400 and "color" in body["error"]["message"]
    code, body = admin(gw, "POST", "/admin/keys/key_0000000000000000/revoke", {})
    assert code == 404 and body["error"]["code"] == "key_not_found"
    code, _ = admin(gw, "POST", "/admin/keys", {"team": "support", "name": "x"}, token="wrong")
    assert code == 401


def test_the_cli_creates_lists_rotates_and_revokes(fake_openai, make_gateway, redis_url, tmp_path, capsys, monkeypatch):
    gw = replica(make_gateway, fake_openai, redis_url, tmp_path, "one")
    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", ADMIN)
    assert (
        cli_main(["keys", "create", "--team", "support", "--name", "laptop", "--expires", "30d", "--url", gw.url]) == 0
    )
    out = capsys.readouterr().out
    key = out.split("\n")[1].strip()
    assert key.startswith("sk-lg-") and status_of(gw, key) == 200
    key_id = out.split("\n")[2].split()[0]
    assert cli_main(["keys", "list", "--url", gw.url]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "live" in listed and key not in listed
    assert cli_main(["keys", "rotate", key_id, "--overlap", "10m", "--url", gw.url]) == 0
    rotated = capsys.readouterr().out
    assert f"the old key {key_id} works until" in rotated
    assert cli_main(["keys", "revoke", key_id, "--reason", "moved", "--url", gw.url]) == 0
    assert "revoked" in capsys.readouterr().out and status_of(gw, key) == 401
