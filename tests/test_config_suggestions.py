"""A misspelt key is named with the nearest valid key and every key its section allows, in every section."""

from __future__ import annotations

import copy

import pytest
import yaml

from gateway.cli import main
from gateway.config import ConfigError, ServerSettings, load_config, parse_config

BASE = {
    "backends": {"base": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key": "none"}},
    "routes": {"support-bot": {"baseline": "base"}},
    "plugins": {"traffic_log": {"enabled": False}},
}
ROUTE_KEYS = "baseline, candidates, context_fallback, deadline, description, fallback, retries, shadow"


def config_with(**sections) -> dict:
    raw = copy.deepcopy(BASE)
    for section, value in sections.items():
        raw[section] = value
    return raw


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    return err.value.problems


def check_config(tmp_path, capsys, raw: dict) -> tuple[int, str]:
    """`llmgate check-config FILE` on `raw`: its exit status and what it wrote to stderr."""
    status = main(["check-config", str(_written(tmp_path, raw))])
    return status, capsys.readouterr().err


def _written(tmp_path, raw: dict):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_misspelt_route_key_names_the_nearest_and_every_allowed_key():
    raw = config_with(routes={"support-bot": {"baseline": "base", "candidate": {"base": 10}}})
    assert problems_of(raw) == [
        f"routes.support-bot.candidate: unknown key (did you mean 'candidates'? allowed: {ROUTE_KEYS})"
    ]


def test_a_misspelt_server_key():
    allowed = ", ".join(sorted(ServerSettings.model_fields))  # every key the section has, whatever it grows to
    assert "max_body_bytes" in allowed and "workers" in allowed
    assert problems_of(config_with(server={"max_body_byte": 1024})) == [
        f"server.max_body_byte: unknown key (did you mean 'max_body_bytes'? allowed: {allowed})"
    ]


def test_a_misspelt_top_level_key():
    raw = copy.deepcopy(BASE)
    raw["route"] = raw.pop("routes")
    assert problems_of(raw) == [
        "route: unknown key (did you mean 'routes'? "
        "allowed: backends, deadline, plugins, pools, prices, routes, server, state)"
    ]


def test_a_key_nothing_is_close_to_lists_the_allowed_keys_without_a_guess():
    assert problems_of(config_with(state={"zebra": 1})) == [
        "state.zebra: unknown key (allowed: redis_url, sqlite_path)"
    ]
    assert problems_of(config_with(prices={"m": {"input": 1, "output": 2, "xyzzy": 3}})) == [
        "prices.m.xyzzy: unknown key (allowed: cache_write, cached_input, input, output)"
    ]


def test_load_config_reads_a_file_and_suggests_the_same(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config_with(server={"prot": 8080})))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.source == str(path)
    assert err.value.problems[0].startswith("server.prot: unknown key (did you mean 'port'? allowed: admin_token,")


def test_an_unknown_backend_reference_suggests_the_defined_one():
    raw = config_with(routes={"support-bot": {"baseline": "bsae"}})
    assert problems_of(raw) == [
        "routes.support-bot.baseline: unknown backend 'bsae' (did you mean 'base'? defined: base)"
    ]


def test_a_misspelt_key_under_a_backends_timeout(tmp_path, capsys):
    raw = config_with()
    raw["backends"]["base"]["timeout"] = {"conect": 2}
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    assert (
        "backends.base.timeout.conect: unknown key (did you mean 'connect'? allowed: connect, first_byte, total)" in err
    )


def test_a_misspelt_key_of_a_backend_kind_and_its_breaker(tmp_path, capsys):
    raw = config_with()
    raw["backends"]["base"]["base_ulr"] = raw["backends"]["base"].pop("base_url")
    raw["backends"]["base"]["breaker"] = {"failure": 3}
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    assert "backends.base.base_ulr: unknown key (did you mean 'base_url'? allowed: api_key, base_url, breaker," in err
    assert (
        "backends.base.breaker.failure: unknown key (did you mean 'failures'? allowed: enabled, failures, "
        "max_open_seconds, open_seconds)" in err
    )


def test_an_unknown_backend_kind_suggests_the_nearest(tmp_path, capsys):
    raw = config_with()
    raw["backends"]["base"]["kind"] = "opneai"
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    assert "backends.base.kind: unknown kind 'opneai' (did you mean 'openai'? known: anthropic, bedrock, openai)" in err


def test_a_misspelt_option_of_a_plugin_names_its_settings_and_the_core_keys(tmp_path, capsys):
    raw = config_with(
        plugins={
            "traffic_log": {"enabled": False},
            "semantic_cache": {"enabled": True, "semantic": False, "threshhold": 0.9},
        }
    )
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    line = next(line for line in err.splitlines() if "threshhold" in line)
    assert line.startswith("  - plugins.semantic_cache.threshhold: unknown key (did you mean 'threshold'? allowed: ")
    allowed = line.split("allowed: ", 1)[1].rstrip(")").split(", ")
    assert allowed == sorted(allowed)
    assert {"threshold", "ttl_seconds", "verify", "enabled", "fail_closed", "timeout_ms", "module"} <= set(allowed)


def test_a_misspelt_core_key_of_a_plugin(tmp_path, capsys):
    raw = config_with(plugins={"traffic_log": {"path": str(tmp_path / "traffic.db"), "timeout_m": 50}})
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    assert "plugins.traffic_log.timeout_m: unknown key (did you mean 'timeout_ms'? allowed: " in err
    assert f"{tmp_path / 'gateway.yaml'}: invalid config" in err


def test_a_misspelt_enabled_of_an_opt_in_plugin_is_not_silently_ignored(tmp_path, capsys):
    """`enable: true` would leave the plugin off: its section is checked for unknown keys even so."""
    raw = config_with(plugins={"traffic_log": {"enabled": False}, "judge": {"enable": True, "backend": "base"}})
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    assert "plugins.judge.enable: unknown key (did you mean 'enabled'? allowed: " in err


def test_a_disabled_plugin_is_not_asked_for_its_required_options(tmp_path, capsys):
    raw = config_with(plugins={"traffic_log": {"enabled": False}, "judge": {"enabled": False}})
    status, _ = check_config(tmp_path, capsys, raw)
    assert status == 0


def test_a_misspelt_key_nested_in_a_plugins_settings(tmp_path, capsys):
    key = "sha256:" + "0" * 64
    team = {"keys": [key], "rutes": ["support-bot"]}
    raw = config_with(plugins={"traffic_log": {"enabled": False}, "api_keys": {"enabled": True, "teams": {"t": team}}})
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    assert (
        "plugins.api_keys.teams.t.rutes: unknown key (did you mean 'routes'? allowed: keys, requests_per_minute, "
        "routes, tokens_per_day)" in err
    )


def test_an_unknown_plugin_suggests_the_nearest(tmp_path, capsys):
    raw = config_with(plugins={"trafic_log": {}})
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    assert "plugins.trafic_log: no such plugin (did you mean 'traffic_log'? known: api_keys, " in err


def test_a_valid_config_still_passes(tmp_path):
    """The checks add no problem to a config that has none."""
    assert main(["check-config", str(_written(tmp_path, config_with()))]) == 0


# --- one run names every problem it can find ----------------------------------------------------------


def test_check_config_reports_every_phase_in_one_run(tmp_path, capsys):
    """A misspelt key (schema), an unknown backend (references), two plugins' bad options, an unknown plugin
    and an unknown kind (backends): each phase runs on what the ones before left usable."""
    raw = config_with(
        server={"max_body_byte": 1024},
        routes={"support-bot": {"baseline": "base", "candidate": {"base": 5}}, "other": {"baseline": "nope"}},
        plugins={
            "traffic_log": {"path": str(tmp_path / "t.db"), "bodys": True},
            "shadow": {"pathh": "x"},
            "nosuch": {},
        },
    )
    raw["backends"]["odd"] = {"kind": "teleport", "model": "x"}
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    problems = [line.removeprefix("  - ") for line in err.splitlines()[1:]]
    assert [p.split(":")[0] for p in problems] == [
        "server.max_body_byte",
        "routes.support-bot.candidate",
        "routes.other.baseline",
        "plugins.nosuch",
        "plugins.traffic_log.bodys",
        "plugins.shadow.pathh",
        "backends.odd.kind",
    ]
    assert "did you mean 'candidates'?" in problems[1] and "did you mean 'bodies'?" in problems[4]
    assert "not checked" not in err  # every phase could run


def test_a_route_without_a_baseline_leaves_the_other_routes_checked(tmp_path, capsys):
    raw = config_with(routes={"a": {"candidates": {"base": 5}}, "b": {"baseline": "base", "fallback": ["zz"]}})
    raw["plugins"]["judge"] = {"enabled": True, "bogus": 1}
    status, err = check_config(tmp_path, capsys, raw)
    assert status == 1
    assert "routes.a.baseline: Field required" in err
    assert "routes.b.fallback[0]: unknown backend 'zz'" in err
    assert "plugins.judge.bogus: unknown key" in err and "plugins.judge.backend: Field required" in err


def test_a_file_that_is_not_a_config_says_what_was_not_checked(tmp_path, capsys):
    path = tmp_path / "gateway.yaml"
    for text in ("routes: [", "- 1\n"):
        path.write_text(text)
        assert main(["check-config", str(path)]) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("  - not checked: the keys and values, the references between sections, the plugins")
        assert last.endswith("the file could not be read as a config")


def test_a_valid_config_is_still_one_line_and_the_missing_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SUGGEST_TEST_KEY", raising=False)
    raw = config_with()
    raw["backends"]["keyed"] = {"kind": "anthropic", "model": "c", "api_key": "${SUGGEST_TEST_KEY}"}
    assert main(["check-config", str(_written(tmp_path, raw))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "valid: 2 backends, 1 routes, plugins: " in out[0]
    assert out[1:] == ["  backend keyed: set SUGGEST_TEST_KEY before it can serve"]
