"""The hook contract: short-circuit, variant choice, isolation of faulty plugins, order, discovery."""

import textwrap

import openai
import pytest

from gateway.config import ConfigError, parse_config
from gateway.gateway import Gateway
from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY
from tests.plugins_for_tests import Lifecycle, Observer, Recorder, Stateful
from tests.support import wait_until
from tests.test_routing import get_json


def config(fake, plugins, **routes):
    return {
        "backends": {
            "up": {"kind": "openai", "base_url": fake.url + "/v1", "model": "m-up", "api_key": UPSTREAM_KEY},
            "alt": {"kind": "openai", "base_url": fake.url + "/v1", "model": "m-alt", "api_key": UPSTREAM_KEY},
        },
        "routes": {"bot": {"baseline": "up", **routes}},
        "plugins": plugins,
    }


def ask(gw, content="hi", **kw):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    return c.chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": content}], **kw
    )


def test_a_plugin_can_answer_before_routing(fake_openai, make_gateway):
    gw = make_gateway(
        config(fake_openai, {"answerer": {"module": "tests.plugins_for_tests:Answerer", "reply": "hit!"}})
    )
    raw = ask(gw, "cached?")
    assert raw.parse().choices[0].message.content == "hit!"
    assert raw.headers["x-llmgate-variant"] == "answerer"
    assert fake_openai.requests == []
    raw = ask(gw, "cached?", stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hit!"
    assert chunks[-1].usage.completion_tokens == 3
    assert ask(gw, "not cached").parse().choices[0].message.content == "echo: not cached"


def test_a_plugin_chooses_the_variant(fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, {"chooser": {"module": "tests.plugins_for_tests:Chooser", "backend": "alt"}}))
    assert ask(gw, user="carol").headers["x-llmgate-variant"] == "alt"
    assert ask(gw, user="bob").headers["x-llmgate-variant"] == "up"
    assert [r["model"] for r in fake_openai.requests] == ["m-alt", "m-up"]


def test_a_raising_plugin_is_isolated_and_counted(fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, {"raiser": {"module": "tests.plugins_for_tests:Raiser"}}))
    assert ask(gw).parse().choices[0].message.content == "echo: hi"
    _, ready = get_json(gw.url + "/readyz")
    assert ready["plugin_faults"] == {"raiser": 3}


def test_a_slow_plugin_is_cut_off_at_its_budget(fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, {"sleeper": {"module": "tests.plugins_for_tests:Sleeper", "timeout_ms": 50}}))
    assert ask(gw).parse().choices[0].message.content == "echo: hi"
    assert get_json(gw.url + "/readyz")[1]["plugin_faults"] == {"sleeper": 1}


def test_a_fail_closed_plugin_fails_the_request_clearly(fake_openai, make_gateway):
    gw = make_gateway(
        config(fake_openai, {"raiser": {"module": "tests.plugins_for_tests:Raiser", "fail_closed": True}})
    )
    with pytest.raises(openai.InternalServerError) as err:
        ask(gw)
    assert err.value.status_code == 503
    assert err.value.type == "plugin_error"
    assert "plugin 'raiser' failed" in err.value.message
    assert fake_openai.requests == []


@pytest.mark.parametrize("hook", ["authenticate", "authorize"])
def test_a_guard_that_crashes_refuses_even_when_not_fail_closed(fake_openai, make_gateway, hook):
    gw = make_gateway(config(fake_openai, {"guard": {"module": "tests.plugins_for_tests:BrokenGuard"}}))
    assert ask(gw).status_code == 200  # healthy: requests pass
    with pytest.raises(openai.InternalServerError) as err:
        ask(gw, extra_headers={"x-break": hook})
    assert err.value.status_code == 503 and "failed checking access" in err.value.message
    assert len(fake_openai.requests) == 1, "the refused request never reached the backend"


def test_a_plugin_refuses_with_its_own_error(fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, {"refuser": {"module": "tests.plugins_for_tests:Refuser"}}))
    with pytest.raises(openai.RateLimitError) as err:
        ask(gw, user="over-quota")
    assert err.value.message.endswith("team quota exhausted")
    assert err.value.response.headers["retry-after"] == "7"


def test_after_response_sees_the_assembled_stream(fake_openai, make_gateway):
    Observer.seen.clear()
    gw = make_gateway(config(fake_openai, {"observer": {"module": "tests.plugins_for_tests:Observer"}}))
    raw = ask(gw, "a b c", stream=True)
    list(raw.parse())  # after_response runs once the last byte is out: the caller may get it first
    request_id, served_by, status, response = wait_until(lambda: Observer.seen, "after_response")[-1]
    assert request_id == raw.headers["x-request-id"] and served_by == "up" and status == 200
    assert response["choices"][0]["message"]["content"] == "echo: a b c"
    assert response["usage"]["completion_tokens"] == 4


def test_plugins_run_in_the_order_the_config_lists_them(fake_openai, make_gateway):
    Recorder.calls.clear()
    gw = make_gateway(
        config(
            fake_openai,
            {
                "second": {"module": "tests.plugins_for_tests:Recorder", "name": "second"},
                "first": {"module": "tests.plugins_for_tests:Recorder", "name": "first"},
            },
        )
    )
    ask(gw)
    assert Recorder.calls == ["second", "first"]


def test_third_party_plugins_arrive_through_the_entry_point_group(fake_openai, make_gateway, tmp_path, monkeypatch):
    (tmp_path / "third_party_plugin.py").write_text(
        textwrap.dedent("""
        from gateway.hookspecs import hookimpl

        class Plugin:
            DEFAULT_ENABLED = False

            def __init__(self, settings):
                self.reply = settings.get("reply", "third party")

            @hookimpl
            def before_route(self, ctx):
                from gateway.chat import completion
                return completion("x", "tp", {"role": "assistant", "content": self.reply}, "stop", None)
    """)
    )
    dist = tmp_path / "third_party_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[llmgate]\nthird_party = third_party_plugin:Plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    off = make_gateway(config(fake_openai, {}))
    assert ask(off).parse().choices[0].message.content == "echo: hi", "DEFAULT_ENABLED = False keeps it off"
    on = make_gateway(config(fake_openai, {"third_party": {"enabled": True, "reply": "configured"}}))
    assert ask(on).parse().choices[0].message.content == "configured"


def test_unknown_plugins_and_bad_plugin_settings_are_config_errors(tmp_path):
    base = {"backends": {}, "routes": {}, "state": {"sqlite_path": str(tmp_path / "s.db")}}
    with pytest.raises(ConfigError) as err:
        Gateway(parse_config({**base, "plugins": {"nope": {}}}))
    assert "plugins.nope: no such plugin" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Gateway(parse_config({**base, "plugins": {"traffic_log": {"queue_size": 0}}}))
    assert "plugins.traffic_log.queue_size" in str(err.value)


def test_plugins_check_the_config_they_refer_to(tmp_path):
    base = {
        "backends": {"b": {"kind": "openai", "model": "m", "api_key": "none"}},
        "routes": {"bot": {"baseline": "b"}},
        "state": {"sqlite_path": str(tmp_path / "s.db")},
    }
    with pytest.raises(ConfigError) as err:
        Gateway(
            parse_config(
                {
                    **base,
                    "plugins": {
                        "rollout": {"canary": {"nope": {"x": ["u"]}}},
                        "auto_rollback": {"routes": {"ghost": {}}},
                    },
                }
            )
        )
    assert "plugins.rollout.canary.nope: unknown route" in str(err.value)
    assert "plugins.auto_rollback.routes.ghost: unknown route (defined: bot)" in str(err.value)


def test_a_plugin_starts_after_what_it_requires_and_stops_before_it(fake_openai, make_gateway):
    Lifecycle.calls.clear()
    gw = make_gateway(
        config(
            fake_openai,
            {  # listed first, yet it starts second: it requires "base"
                "needy": {"module": "tests.plugins_for_tests:Lifecycle", "name": "needy", "requires": ["base"]},
                "base": {"module": "tests.plugins_for_tests:Lifecycle", "name": "base"},
            },
        )
    )
    assert Lifecycle.calls == [("startup", "base"), ("startup", "needy")]
    gw.stop()
    assert Lifecycle.calls[2:] == [("shutdown", "needy"), ("shutdown", "base")]


def test_a_plugin_whose_requirement_is_off_is_a_config_problem(fake_openai):
    lonely = config(
        fake_openai,
        {
            "needy": {"module": "tests.plugins_for_tests:Lifecycle", "name": "needy", "requires": ["base"]},
            "base": {"module": "tests.plugins_for_tests:Lifecycle", "name": "base", "enabled": False},
        },
    )
    with pytest.raises(ConfigError) as refused:
        Gateway(parse_config(lonely, "<test>"))
    assert refused.value.problems == [
        "plugins.needy: needs the base plugin: enable it too (plugins.base.enabled: true)"
    ]


def test_ctx_state_is_the_plugins_working_data_and_is_never_logged(fake_openai, make_gateway, tmp_path):
    Stateful.seen.clear()
    gw = make_gateway(config(fake_openai, {"stateful": {"module": "tests.plugins_for_tests:Stateful"}}))
    ask(gw)
    wait_until(lambda: Stateful.seen, "after_response")
    assert Stateful.seen == [({"secret-ish": "working data"}, True)]  # the same ctx, and its generation
    records = wait_until(lambda: list(read_records(str(tmp_path / "traffic.db"))) or None, "the traffic record")
    assert records[0]["annotations"]["stateful"] == "a note for the log"
    assert "working data" not in repr(records)
