"""Client API keys: the team a key names, the routes it may use, the key command, and no secret in any output."""

import json
import re
import sqlite3
import time
import urllib.error
import urllib.request

import openai
import pytest

from gateway.cli import main as cli_main
from gateway.config import ConfigError, parse_config
from gateway.gateway import Gateway
from plugins.api_keys.plugin import hash_key, new_key
from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY, backend_config

SUPPORT_KEY = "sk-lg-support-team-key-0123456789abcdef"
SALES_KEY = "sales-team-plain-key-5f0c1d2e3a4b"  # not shaped like a provider key: no pattern would hide it


def tenancy_config(fake, tmp_path, **plugins) -> dict:
    return {
        "backends": {"up": backend_config("openai", fake)},
        "routes": {"support-bot": {"baseline": "up"}, "sales-bot": {"baseline": "up"}},
        "plugins": {
            "api_keys": {
                "enabled": True,
                "teams": {
                    "support": {"keys": [hash_key(SUPPORT_KEY)], "routes": ["support-bot"]},
                    "sales": {"keys": [hash_key(SALES_KEY)]},  # no routes: every route
                },
            },
            "traffic_log": {"path": str(tmp_path / "traffic.db")},
            **plugins,
        },
    }


def client(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def ask(gw, key: str, route: str = "support-bot", text: str = "hello"):
    return client(gw, key).chat.completions.create(model=route, messages=[{"role": "user", "content": text}])


def wait_for_records(path, count: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(read_records(str(path)))
        except sqlite3.Error:
            records = []
        if len(records) >= count:
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(records)} traffic records, expected {count}")
        time.sleep(0.05)


def test_unknown_or_missing_key_is_refused_in_the_openai_shape(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(tenancy_config(fake_openai, tmp_path))
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(gw, "sk-lg-not-a-key-of-this-gateway-000000")
    assert refused.value.status_code == 401
    assert refused.value.body["type"] == "authentication_error"
    assert refused.value.body["code"] == "invalid_api_key"

    request = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    )
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=10)
    assert missing.value.code == 401
    body = json.loads(missing.value.read())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "missing_api_key"
    assert fake_openai.requests == []  # refused before any backend was called


@pytest.mark.parametrize(
    "header, says",
    [
        ({"Authorization": "Basic c3VwcG9ydDpodW50ZXIy"}, "scheme is 'Basic'"),
        ({"Authorization": "Bearer"}, "says 'Bearer' but no key follows it"),
        ({"Authorization": SUPPORT_KEY}, "no 'Bearer ' before the key"),
        ({"Authorization": "Bearer " + SUPPORT_KEY + " extra"}, "printable characters without spaces"),
        ({"x-api-key": "sk-lg-" + "x" * 600}, "at most 512"),
    ],
)
def test_a_malformed_key_is_told_how_to_send_one_and_never_quoted(fake_openai, make_gateway, tmp_path, header, says):
    gw = make_gateway(tenancy_config(fake_openai, tmp_path))
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        method="POST",
        headers={"Content-Type": "application/json", **header},
        data=json.dumps({"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == "malformed_api_key" and says in error["message"]
    assert (
        "c3VwcG9y" not in error["message"]
        and "0123456789abcdef" not in error["message"]
        and "xxxx" not in error["message"]
    )


def test_a_route_outside_the_team_is_as_unknown_as_one_that_does_not_exist(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(tenancy_config(fake_openai, tmp_path))
    with pytest.raises(openai.NotFoundError) as refused:
        ask(gw, SUPPORT_KEY, route="sales-bot")
    assert refused.value.status_code == 404
    assert refused.value.body["code"] == "model_not_found"
    assert refused.value.body["param"] == "model"
    assert fake_openai.requests == []


def test_a_known_key_is_served_as_its_team(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(tenancy_config(fake_openai, tmp_path))
    assert ask(gw, SUPPORT_KEY, text="where is my order").choices[0].message.content == "echo: where is my order"
    assert ask(gw, SALES_KEY, route="support-bot").choices[0].message.content == "echo: hello"
    assert ask(gw, SALES_KEY, route="sales-bot").choices[0].message.content == "echo: hello"
    records = wait_for_records(tmp_path / "traffic.db", 3)
    assert [(r["route"], r["tenant"]) for r in records] == [
        ("support-bot", "support"),
        ("support-bot", "sales"),
        ("sales-bot", "sales"),
    ]
    # The upstream sees the gateway's provider key, never the caller's.
    assert {h["Authorization"] for h in fake_openai.headers} == {f"Bearer {UPSTREAM_KEY}"}


def test_without_the_plugin_any_key_passes_as_before(fake_openai, make_gateway, tmp_path):
    config = tenancy_config(fake_openai, tmp_path)
    del config["plugins"]["api_keys"]
    gw = make_gateway(config)
    assert ask(gw, "any-key-at-all").choices[0].message.content == "echo: hello"
    assert wait_for_records(tmp_path / "traffic.db", 1)[0]["tenant"] is None


def test_the_keys_command_makes_a_key_the_gateway_accepts(fake_openai, make_gateway, tmp_path, capsys):
    assert cli_main(["keys", "new", "--team", "support"]) == 0
    printed = capsys.readouterr().out
    key = re.search(r"^\s+(sk-lg-\S+)$", printed, re.MULTILINE).group(1)
    hashed = re.search(r'"(sha256:[0-9a-f]{64})"', printed).group(1)
    assert hashed == hash_key(key)
    assert key != new_key()  # random each time

    assert cli_main(["keys", "hash", key]) == 0
    assert capsys.readouterr().out.strip() == hashed

    config = tenancy_config(fake_openai, tmp_path)
    config["plugins"]["api_keys"]["teams"]["support"]["keys"] = [hashed]
    gw = make_gateway(config)
    assert ask(gw, key).choices[0].message.content == "echo: hello"


def _problems(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as invalid:
        Gateway(parse_config(config, "<test>"))
    return invalid.value.problems


def test_config_problems_are_named_without_echoing_a_key(fake_openai, tmp_path):
    pasted = tenancy_config(fake_openai, tmp_path)
    pasted["plugins"]["api_keys"]["teams"]["support"]["keys"] = [SUPPORT_KEY]  # a key instead of its hash
    problems = _problems(pasted)
    assert any("plugins.api_keys.teams.support.keys" in p and "sha256" in p for p in problems)
    assert SUPPORT_KEY not in "\n".join(problems)

    unknown_route = tenancy_config(fake_openai, tmp_path)
    unknown_route["plugins"]["api_keys"]["teams"]["support"]["routes"] = ["no-such-route"]
    assert any("teams.support.routes: unknown route 'no-such-route'" in p for p in _problems(unknown_route))

    quotas_alone = tenancy_config(fake_openai, tmp_path)
    del quotas_alone["plugins"]["api_keys"]
    quotas_alone["plugins"]["quotas"] = {"enabled": True}
    assert any(p.startswith("plugins.quotas: needs the api_keys plugin") for p in _problems(quotas_alone))


def test_a_plugin_listed_before_api_keys_cannot_answer_an_unknown_key_or_a_forbidden_route(
    fake_openai, make_gateway, tmp_path
):
    config = tenancy_config(fake_openai, tmp_path)
    config["plugins"] = {"answerer": {"module": "tests.plugins_for_tests:Answerer"}, **config["plugins"]}
    gw = make_gateway(config)  # the answerer's before_route is listed first: authentication still comes first
    assert ask(gw, SUPPORT_KEY, text="cached?").choices[0].message.content == "from the plugin"
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(gw, "sk-lg-not-a-key-of-this-gateway-000000", text="cached?")
    assert refused.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as forbidden:
        ask(gw, SUPPORT_KEY, route="sales-bot", text="cached?")
    assert forbidden.value.body["code"] == "model_not_found"

    # An unknown key is refused on its headers: the body is never read (here: not valid JSON at all).
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        method="POST",
        data=b"{not json",
        headers={"Content-Type": "application/json", "x-api-key": "sk-lg-not-a-key-of-this-gateway-000000"},
    )
    with pytest.raises(urllib.error.HTTPError) as unread:
        urllib.request.urlopen(request, timeout=10)
    assert unread.value.code == 401 and json.loads(unread.value.read())["error"]["code"] == "invalid_api_key"
    request.remove_header("X-api-key")
    request.add_header("x-api-key", SUPPORT_KEY)  # the Anthropic SDK's header is a key too
    with pytest.raises(urllib.error.HTTPError) as read:
        urllib.request.urlopen(request, timeout=10)
    assert read.value.code == 400 and json.loads(read.value.read())["error"]["code"] == "invalid_json"


def test_too_many_messages_are_refused(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(tenancy_config(fake_openai, tmp_path))
    messages = [{"role": "user", "content": "hi"}] * 2049
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw, SUPPORT_KEY).chat.completions.create(model="support-bot", messages=messages)
    assert refused.value.body["param"] == "messages"
    assert "limit of 2048" in refused.value.body["message"]
    assert fake_openai.requests == []


@pytest.mark.slow
def test_no_secret_reaches_the_logs_the_hook_traces_or_the_files(tmp_path):
    """A real gateway process with a provider key, client keys and the admin token, through good and failing
    requests (an upstream that echoes the key it was sent included): none of them in any output."""
    import secrets as random_secrets

    from tests.fakes.openai_api import FakeOpenAI
    from tests.support import GatewayProcess, ServerThread

    provider_key = f"provider-key-{random_secrets.token_hex(12)}"  # shaped like nothing a pattern knows
    wrong_provider_key = f"stale-provider-key-{random_secrets.token_hex(12)}"
    admin_token = f"admin-token-{random_secrets.token_hex(12)}"
    support_key = new_key()
    sales_key = f"sales-plain-key-{random_secrets.token_hex(12)}"
    guessed_key = f"guessed-key-{random_secrets.token_hex(12)}"
    wrong_admin = f"wrong-admin-{random_secrets.token_hex(12)}"
    all_secrets = [provider_key, wrong_provider_key, admin_token, support_key, sales_key, guessed_key, wrong_admin]

    fake = FakeOpenAI(api_key=provider_key)  # answers 401 echoing the key it was sent, as providers do
    with ServerThread(fake.app) as upstream:
        config = {
            "server": {"admin_token": "${TEST_ADMIN_TOKEN}"},
            "state": {"sqlite_path": str(tmp_path / "state.db")},
            "backends": {
                "up": {
                    "kind": "openai",
                    "base_url": upstream.url + "/v1",
                    "model": "m",
                    "api_key": "${TEST_PROVIDER_KEY}",
                },
                "stale": {
                    "kind": "openai",
                    "base_url": upstream.url + "/v1",
                    "model": "m",
                    "api_key": "${TEST_STALE_PROVIDER_KEY}",
                },
            },
            "routes": {
                "support-bot": {"baseline": "up", "retries": 0},
                "stale-bot": {"baseline": "stale", "retries": 0},
            },
            "plugins": {
                "api_keys": {
                    "enabled": True,
                    "teams": {
                        "support": {"keys": [hash_key(support_key)], "routes": ["support-bot"]},
                        "sales": {"keys": [hash_key(sales_key)], "requests_per_minute": 4},
                    },
                },
                "quotas": {"enabled": True},
                "traffic_log": {"path": str(tmp_path / "traffic.db")},
            },
        }
        env = {
            "TEST_PROVIDER_KEY": provider_key,
            "TEST_STALE_PROVIDER_KEY": wrong_provider_key,
            "TEST_ADMIN_TOKEN": admin_token,
            "LLMGATE_TRACE_HOOKS": "1",
            "LLMGATE_LOG_LEVEL": "DEBUG",
        }
        gw = GatewayProcess(config, tmp_path, env=env).start()
        answers = []
        try:
            answers.append(ask(gw, support_key).model_dump_json())
            stream = client(gw, support_key).chat.completions.create(
                model="support-bot", messages=[{"role": "user", "content": "stream it"}], stream=True
            )
            answers.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
            failures = [
                lambda: ask(gw, sales_key, route="stale-bot"),  # upstream 401 echoing the stale key
                lambda: ask(gw, sales_key, text="[status 500]"),  # upstream failure
                lambda: ask(gw, guessed_key),  # unknown key
                lambda: ask(gw, support_key, route="stale-bot"),  # route outside the team: as if unknown
                *[lambda: ask(gw, sales_key)] * 3,  # past the team's quota
            ]
            for fail in failures:
                try:
                    answers.append(fail().model_dump_json())
                except openai.APIStatusError as err:
                    answers.append(f"{err.status_code} {err.response.text} {dict(err.response.headers)}")
            statuses = [a.split(" ", 1)[0] for a in answers[2:]]
            assert statuses[:4] == ["502", "502", "401", "404"] and statuses[-1] == "429"
            for token, path in (
                (sales_key, "/v1/usage"),
                (guessed_key, "/v1/usage"),
                (admin_token, "/admin/status"),
                (wrong_admin, "/admin/status"),
            ):
                request = urllib.request.Request(gw.url + path, headers={"Authorization": f"Bearer {token}"})
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        answers.append(f"{response.status} {response.read().decode()}")
                except urllib.error.HTTPError as err:
                    answers.append(f"{err.code} {err.read().decode()}")
            assert [a.split(" ", 1)[0] for a in answers[-4:]] == ["200", "401", "200", "401"]
            # all but the unknown key's (refused before its body was read) and the other team's route's (refused as an
            # unknown route is, before an exchange starts)
            wait_for_records(tmp_path / "traffic.db", 7)
        finally:
            assert gw.stop() == 0
    assert fake.headers[0]["Authorization"] == f"Bearer {provider_key}"  # the provider did get its key

    outputs = {"the caller's answers": "\n".join(answers), "the process's stdout and stderr": gw.log()}
    for path in tmp_path.rglob("*"):  # the traffic log, the state store, the config file
        if path.is_file():
            outputs[str(path.relative_to(tmp_path))] = path.read_bytes().decode("latin-1")
    assert "api_keys.authenticate" in outputs["the process's stdout and stderr"]  # hook tracing was on
    assert "traffic.db" in outputs
    for where, text in outputs.items():
        for secret in all_secrets:
            assert secret not in text, f"a secret ({secret[:8]}...) reached {where}"


# --- what a team may learn: routes in 404s and GET /v1/models, feedback on its own requests ----------

AUDIT_KEY = "audit-team-plain-key-77aa01bc9d"  # a team that may use no route at all


def isolation_config(fake, tmp_path) -> dict:
    config = tenancy_config(fake, tmp_path, feedback={"path": str(tmp_path / "feedback.db")})
    config["plugins"]["api_keys"]["teams"]["audit"] = {"keys": [hash_key(AUDIT_KEY)], "routes": []}
    return config


def raw_request(gw, path: str, key: str | None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(
        gw.url + path,
        headers=headers,
        method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_an_unknown_model_names_only_the_callers_routes(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(isolation_config(fake_openai, tmp_path))
    with pytest.raises(openai.NotFoundError) as support_404:
        ask(gw, SUPPORT_KEY, route="no-such-bot")
    message = support_404.value.body["message"]
    assert support_404.value.body["code"] == "model_not_found" and support_404.value.body["param"] == "model"
    assert "no-such-bot" in message and "support-bot" in message
    assert "sales-bot" not in message

    with pytest.raises(openai.NotFoundError) as sales_404:  # a team without a route list sees every route
        ask(gw, SALES_KEY, route="no-such-bot")
    assert "support-bot" in sales_404.value.body["message"] and "sales-bot" in sales_404.value.body["message"]

    with pytest.raises(openai.NotFoundError) as audit_404:
        ask(gw, AUDIT_KEY, route="no-such-bot")
    assert "available to you: none" in audit_404.value.body["message"]
    assert "support-bot" not in audit_404.value.body["message"] and "sales-bot" not in audit_404.value.body["message"]

    # A route that exists but is another team's answers the same 404 as one that does not exist.
    with pytest.raises(openai.NotFoundError) as forbidden:
        ask(gw, SUPPORT_KEY, route="sales-bot")
    assert forbidden.value.body == {**support_404.value.body, "message": message.replace("no-such-bot", "sales-bot")}

    # Without a valid key an unknown model is a 401 like any other request: no route names at all.
    with pytest.raises(openai.AuthenticationError) as guessed:
        ask(gw, "sk-lg-guessed-key-000000000000000000", route="no-such-bot")
    assert guessed.value.body["code"] == "invalid_api_key"
    status, missing = raw_request(
        gw, "/v1/chat/completions", None, {"model": "no-such-bot", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 401 and missing["error"]["code"] == "missing_api_key"
    for refused in (guessed.value.body["message"], missing["error"]["message"]):
        assert "support-bot" not in refused and "sales-bot" not in refused

    # GET /v1/models/{model}: another team's route answers as if it did not exist.
    with pytest.raises(openai.NotFoundError) as hidden:
        client(gw, SUPPORT_KEY).models.retrieve("sales-bot")
    assert hidden.value.body["message"].endswith("(routes available to you: support-bot)")
    assert client(gw, SUPPORT_KEY).models.retrieve("support-bot").id == "support-bot"
    assert fake_openai.requests == []


def test_without_the_plugin_an_unknown_model_names_every_route(fake_openai, make_gateway, tmp_path):
    config = tenancy_config(fake_openai, tmp_path)
    del config["plugins"]["api_keys"]
    gw = make_gateway(config)
    with pytest.raises(openai.NotFoundError) as unknown:
        ask(gw, "any-key-at-all", route="no-such-bot")
    assert unknown.value.body["message"] == (
        "The model `no-such-bot` does not exist or you do not have access to it (routes: sales-bot, support-bot)"
    )
    assert [m.id for m in client(gw, "any-key-at-all").models.list()] == ["support-bot", "sales-bot"]
    assert raw_request(gw, "/v1/models", None)[0] == 200


def test_the_model_list_holds_only_the_callers_routes(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(isolation_config(fake_openai, tmp_path))
    assert [m.id for m in client(gw, SUPPORT_KEY).models.list()] == ["support-bot"]
    assert [m.id for m in client(gw, SALES_KEY).models.list()] == ["support-bot", "sales-bot"]
    assert [m.id for m in client(gw, AUDIT_KEY).models.list()] == []

    with pytest.raises(openai.AuthenticationError) as guessed:
        client(gw, "sk-lg-guessed-key-000000000000000000").models.list()
    assert guessed.value.status_code == 401 and guessed.value.body["code"] == "invalid_api_key"
    status, missing = raw_request(gw, "/v1/models", None)
    assert status == 401 and missing["error"]["code"] == "missing_api_key"
    assert set(missing["error"]) == {"message", "type", "param", "code"}
    assert "sales-bot" not in json.dumps(missing) and "support-bot" not in json.dumps(missing)


def _ask_for_id(gw, key: str, route: str, request_id: str | None = None) -> str:
    raw = client(gw, key).chat.completions.with_raw_response.create(
        model=route,
        messages=[{"role": "user", "content": "rate me"}],
        extra_headers={"x-request-id": request_id} if request_id else None,
    )
    raw.parse()
    return raw.headers["x-request-id"]


def _stored_ratings(path) -> list[tuple]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT request_id, route FROM feedback ORDER BY id").fetchall()
    finally:
        conn.close()


def test_a_team_rates_only_its_own_requests(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(isolation_config(fake_openai, tmp_path))
    support_id = _ask_for_id(gw, SUPPORT_KEY, "support-bot")
    sales_id = _ask_for_id(gw, SALES_KEY, "sales-bot")

    status, foreign = raw_request(gw, "/v1/feedback", SALES_KEY, {"request_id": support_id, "rating": 1})
    status_unknown, unknown = raw_request(gw, "/v1/feedback", SALES_KEY, {"request_id": "never-seen", "rating": 1})
    assert (status, status_unknown) == (404, 404)
    assert foreign["error"]["message"].replace(support_id, "ID") == unknown["error"]["message"].replace(
        "never-seen", "ID"
    )
    assert (
        {k: v for k, v in foreign["error"].items() if k != "message"}
        == {k: v for k, v in unknown["error"].items() if k != "message"}
        == {"type": "invalid_request_error", "param": "request_id", "code": "request_not_found"}
    )
    for key in (None, "sk-lg-guessed-key-000000000000000000"):
        status, refused = raw_request(gw, "/v1/feedback", key, {"request_id": support_id, "rating": 1})
        assert status == 401 and refused["error"]["type"] == "authentication_error"
    assert _stored_ratings(tmp_path / "feedback.db") == [], "a refused rating records nothing"

    rated = client(gw, SUPPORT_KEY).post(
        "/feedback", body={"request_id": support_id, "rating": "helpful"}, cast_to=object
    )
    assert (rated["route"], rated["variant"], rated["score"]) == ("support-bot", "up", 1.0)
    status, own = raw_request(gw, "/v1/feedback", SALES_KEY, {"request_id": sales_id, "rating": 2})
    assert status == 200 and own["route"] == "sales-bot"
    assert _stored_ratings(tmp_path / "feedback.db") == [(support_id, "support-bot"), (sales_id, "sales-bot")]


def test_a_request_id_two_teams_chose_is_no_exchange_id(fake_openai, make_gateway, tmp_path):
    """Callers may name their requests (x-request-id), but the name is only theirs to correlate: each exchange
    gets the gateway's own id, so a shared name reaches no one's exchange and rates nothing."""
    gw = make_gateway(isolation_config(fake_openai, tmp_path))
    support_id = _ask_for_id(gw, SUPPORT_KEY, "support-bot", "order-1234")
    sales_id = _ask_for_id(gw, SALES_KEY, "sales-bot", "order-1234")
    assert len({support_id, sales_id, "order-1234"}) == 3
    wait_for_records(tmp_path / "traffic.db", 2)
    status, by_name = raw_request(gw, "/v1/feedback", SUPPORT_KEY, {"request_id": "order-1234", "rating": 5})
    assert status == 404 and by_name["error"]["code"] == "request_not_found"
    status, rated = raw_request(gw, "/v1/feedback", SUPPORT_KEY, {"request_id": support_id, "rating": 5})
    assert status == 200 and rated["route"] == "support-bot"
    assert _stored_ratings(tmp_path / "feedback.db") == [(support_id, "support-bot")]
    status, audit = raw_request(gw, "/v1/feedback", AUDIT_KEY, {"request_id": support_id, "rating": 5})
    assert status == 404 and audit["error"]["code"] == "request_not_found"
