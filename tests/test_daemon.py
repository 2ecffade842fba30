"""The daemon as a real process: drain on SIGTERM, state across restarts, reload on SIGHUP, the CLI."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import yaml

from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY
from tests.support import GatewayProcess, wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def config(fake, tmp_path, **extra):
    return {
        "server": {"shutdown_timeout": 20},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": {"up": {"kind": "openai", "base_url": fake.url + "/v1", "model": "m-one", "api_key": UPSTREAM_KEY}},
        "routes": {"bot": {"baseline": "up"}},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
        **extra,
    }


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_sigterm_under_load_drains_and_loses_no_logged_request(fake_openai, tmp_path, event_loop):
    gw = GatewayProcess(
        config(fake_openai, tmp_path, server={"shutdown_timeout": 20, "event_loop": event_loop}), tmp_path
    ).start()
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    n = 40

    async def one(i):
        stream = i % 2 == 0
        resp = await client.chat.completions.with_raw_response.create(
            model="bot", messages=[{"role": "user", "content": f"[sleep 1] request {i}"}], stream=stream
        )
        answer = resp.parse()
        text = (
            "".join([c.choices[0].delta.content or "" async for c in answer if c.choices])
            if stream
            else answer.choices[0].message.content
        )
        return resp.headers["x-request-id"], text

    async def load():
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.to_thread(wait_until, lambda: len(fake_openai.requests) == n)
        gw.proc.send_signal(signal.SIGTERM)  # every request is in flight upstream now
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(load())
    assert gw.proc.wait(30) == 0
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], f"in-flight requests must finish during the drain: {failures[:3]}"
    assert sorted(text for _, text in results) == sorted(f"echo: [sleep 1] request {i}" for i in range(n))
    logged = {r["request_id"]: r for r in read_records(str(tmp_path / "traffic.db"))}
    assert set(logged) == {request_id for request_id, _ in results}
    assert all(r["status"] == 200 for r in logged.values())
    assert "stopping: draining in-flight requests" in gw.log()
    assert f"event loop {event_loop})" in gw.log()


def test_a_restart_keeps_the_traffic_log_and_state(fake_openai, tmp_path):
    for round_ in range(2):
        gw = GatewayProcess(config(fake_openai, tmp_path), tmp_path).start()
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        client.chat.completions.create(model="bot", messages=[{"role": "user", "content": f"round {round_}"}])
        assert gw.stop() == 0
    records = list(read_records(str(tmp_path / "traffic.db")))
    assert [r["request"]["messages"][0]["content"] for r in records] == ["round 0", "round 1"]


def test_sighup_reloads_and_an_invalid_config_keeps_the_old_one(fake_openai, tmp_path):
    base = config(fake_openai, tmp_path)
    gw = GatewayProcess(base, tmp_path).start()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    try:
        slow = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        async def in_flight_across_reload():
            task = asyncio.create_task(
                slow.chat.completions.create(
                    model="bot", messages=[{"role": "user", "content": "[sleep 1] before reload"}]
                )
            )
            await asyncio.to_thread(wait_until, lambda: len(fake_openai.requests) >= 1)
            changed = {
                **base,
                "backends": {"up": {**base["backends"]["up"], "model": "m-two"}},
                "routes": {"bot": {"baseline": "up"}, "new-route": {"baseline": "up"}},
                "server": {**base["server"], "event_loop": "asyncio"},
            }
            gw.write_config(changed)
            gw.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(wait_until, lambda: "config reloaded" in gw.log())
            return await task

        answer = asyncio.run(in_flight_across_reload())
        assert answer.model == "m-one", "the request in flight finished on the backend it started with"
        assert "server.event_loop changed in the new config: that takes effect at the next restart" in gw.log()
        assert (
            client.chat.completions.create(model="new-route", messages=[{"role": "user", "content": "x"}]).model
            == "m-two"
        )

        gw.write_config({**base, "routes": {"bot": {"baseline": "missing-backend"}}})
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in gw.log())
        assert "routes.bot.baseline: unknown backend 'missing-backend'" in gw.log()
        assert (
            client.chat.completions.create(model="new-route", messages=[{"role": "user", "content": "x"}]).model
            == "m-two"
        ), "the previous config still serves"
    finally:
        assert gw.stop() == 0


def test_the_event_loop_is_uvloop_where_installed_and_asyncio_on_request(monkeypatch):
    import uvloop

    from gateway.config import Config, ConfigError, parse_config
    from gateway.server import loop_factory

    def chosen(event_loop: str) -> Config:
        return parse_config(
            {
                "server": {"event_loop": event_loop},
                "backends": {"up": {"kind": "openai"}},
                "routes": {"bot": {"baseline": "up"}},
            },
            "test.yaml",
        )

    assert loop_factory(chosen("auto")) is uvloop.new_event_loop
    assert loop_factory(chosen("uvloop")) is uvloop.new_event_loop
    assert loop_factory(chosen("asyncio")) is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed
    assert loop_factory(chosen("auto")) is None
    with pytest.raises(ConfigError, match="server.event_loop: uvloop is not installed"):
        loop_factory(chosen("uvloop"))


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_help_and_check_config(tmp_path):
    helped = run_cli("--help")
    assert helped.returncode == 0 and "serve" in helped.stdout and "check-config" in helped.stdout
    shipped = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "config/gateway.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")},
    )
    assert shipped.returncode == 0, shipped.stderr
    assert "valid: 4 backends, 2 routes" in shipped.stdout
    assert "set ANTHROPIC_API_KEY" in shipped.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "backends": {"a": {"kind": "openai"}, "b": {"kind": "teleport", "model": "x"}},
                "routes": {"r": {"baseline": "a", "candidates": {"zzz": 150}}},
            }
        )
    )
    checked = run_cli("check-config", str(bad))
    assert checked.returncode == 1
    assert "routes.r.candidates: percent for 'zzz' must be between 0 and 100" in checked.stderr
    bad.write_text(
        yaml.safe_dump(
            {
                "backends": {"a": {"kind": "openai"}, "b": {"kind": "teleport", "model": "x"}},
                "routes": {"r": {"baseline": "a"}},
            }
        )
    )
    checked = run_cli("check-config", str(bad))
    assert checked.returncode == 1
    assert "backends.a.model: Field required" in checked.stderr
    assert "backends.b.kind: unknown kind 'teleport' (known: anthropic, bedrock, openai)" in checked.stderr
    missing = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read the file" in missing.stderr


def test_shipped_config_serves_without_keys_and_names_what_is_missing(tmp_path):
    shipped = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    gw = GatewayProcess(shipped, tmp_path)
    gw.env = env
    gw.start()
    try:
        import json
        import urllib.request

        ready = json.loads(urllib.request.urlopen(gw.url + "/readyz").read())
        assert ready["missing_credentials"]["claude-base"] == ["ANTHROPIC_API_KEY"]
        assert ready["missing_credentials"]["gpt-base"] == ["OPENAI_API_KEY"]
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="general", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 503
        assert (
            "backend 'gpt-base' needs OPENAI_API_KEY; backend 'claude-base' needs ANTHROPIC_API_KEY"
            in err.value.message
        )
        assert (tmp_path / "var" / "llmgate.db").exists(), "embedded state lives under var/ by default"
    finally:
        gw.stop()
