"""Every way a request can fail reaches the official SDK as its matching exception, with a clear message."""

import httpx2
import openai
import pytest

from tests.conftest import UPSTREAM_KEY


class RawBody(httpx2.HTTPTransport):
    """Sends `raw` instead of the body the SDK built: for inputs the SDK itself would never send."""

    def __init__(self, raw: bytes, content_type: str = "application/json"):
        super().__init__()
        self.raw, self.content_type = raw, content_type

    def handle_request(self, request):
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "content-type")}
        headers["content-type"] = self.content_type
        return super().handle_request(httpx2.Request(request.method, request.url, headers=headers, content=self.raw))


def client(gw, raw: bytes | None = None, **kw) -> openai.OpenAI:
    http = httpx2.Client(transport=RawBody(raw, **kw)) if raw is not None else None
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0, http_client=http)


def ask(c, content="hi", model="bot", **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


@pytest.fixture
def gw(fake_openai, make_gateway):
    return make_gateway(
        {
            "server": {"max_body_bytes": 4096},
            "backends": {
                "up": {
                    "kind": "openai",
                    "base_url": fake_openai.url + "/v1",
                    "model": "m",
                    "api_key": UPSTREAM_KEY,
                    "timeout": {"first_byte": 0.5},
                },
                "down": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "none"},
                "badkey": {
                    "kind": "openai",
                    "base_url": fake_openai.url + "/v1",
                    "model": "m",
                    "api_key": "sk-wrong-key-abcdefghijkl",
                },
                "nokey": {"kind": "openai", "model": "m", "api_key": "${LLMGATE_TEST_UNSET_KEY}"},
            },
            "routes": {
                "bot": {"baseline": "up", "retries": 0},
                "down": {"baseline": "down", "retries": 0},
                "badkey": {"baseline": "badkey", "retries": 0},
                "nokey": {"baseline": "nokey"},
            },
        }
    )


def test_malformed_json_is_400(gw):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client(gw, b'{"model": "bot", "messages": ['))
    assert err.value.type == "invalid_request_error"
    assert "not valid JSON" in err.value.message
    assert err.value.code == "invalid_json"


def test_body_that_is_not_an_object_is_400(gw):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client(gw, b'["model", "bot"]'))
    assert "must be a JSON object" in err.value.message


def test_missing_messages_is_400_naming_the_parameter(gw):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client(gw, b'{"model": "bot"}'))
    assert err.value.param == "messages"
    assert "'messages' is a required parameter" in err.value.message


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("temperature", 7, "temperature"),
        ("n", 0, "n"),
        ("max_tokens", -1, "max_tokens"),
        ("stop", ["a", "b", "c", "d", "e"], "stop"),
        ("stream", "yes", "stream"),
        ("tool_choice", "sometimes", "tool_choice"),
    ],
)
def test_wrongly_typed_parameters_are_400(gw, field, value, param):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client(gw), extra_body={field: value})
    assert err.value.param == param
    assert f"'{field}'" in err.value.message


def test_bad_message_role_is_400(gw):
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).chat.completions.create(model="bot", messages=[{"role": "wizard", "content": "hi"}])
    assert err.value.param == "messages[0].role"


def test_wrong_content_type_is_415(gw):
    with pytest.raises(openai.APIStatusError) as err:
        ask(client(gw, b"model=bot", content_type="application/x-www-form-urlencoded"))
    assert err.value.status_code == 415
    assert "application/json" in err.value.message


def test_unknown_route_is_404(gw):
    with pytest.raises(openai.NotFoundError) as err:
        ask(client(gw), model="no-such-route")
    assert err.value.code == "model_not_found"
    assert "The model `no-such-route` does not exist or you do not have access to it" in err.value.message
    assert "bot" in err.value.message  # says which routes exist


def test_oversized_body_is_413(gw):
    with pytest.raises(openai.APIStatusError) as err:
        ask(client(gw), content="x" * 10_000)
    assert err.value.status_code == 413
    assert err.value.code == "body_too_large"
    assert "4096 bytes" in err.value.message


def test_upstream_timeout_is_504(gw):
    with pytest.raises(openai.InternalServerError) as err:
        ask(client(gw), content="[sleep 2] slow")
    assert err.value.status_code == 504
    assert err.value.type == "timeout_error"
    assert "backend 'up' did not answer within its timeout" in err.value.message


def test_upstream_4xx_is_400_with_the_upstream_reason(gw, fake_openai):
    fake_openai.fail_next(422)
    with pytest.raises(openai.BadRequestError) as err:
        ask(client(gw))
    assert err.value.body["message"] == "backend 'up' answered 422: scripted failure"


def test_upstream_5xx_is_502(gw):
    with pytest.raises(openai.InternalServerError) as err:
        ask(client(gw), content="[status 503]")
    assert err.value.status_code == 502
    assert err.value.type == "upstream_error"
    assert "backend 'up' answered 503" in err.value.message


def test_upstream_429_is_429(gw):
    with pytest.raises(openai.RateLimitError) as err:
        ask(client(gw), content="[status 429]")
    assert "backend 'up' answered 429" in err.value.message


def test_unreachable_upstream_is_502(gw):
    with pytest.raises(openai.InternalServerError) as err:
        ask(client(gw), model="down")
    assert err.value.status_code == 502
    assert "could not connect to backend 'down'" in err.value.message


def test_provider_key_echoed_by_upstream_never_reaches_the_caller(gw):
    with pytest.raises(openai.InternalServerError) as err:
        ask(client(gw), model="badkey")
    assert err.value.status_code == 502
    assert "answered 401" in err.value.message
    assert "sk-wrong-key-abcdefghijkl" not in str(err.value.body)
    assert "***" in err.value.message


def test_missing_credentials_name_the_variable(gw):
    with pytest.raises(openai.InternalServerError) as err:
        ask(client(gw), model="nokey")
    assert err.value.status_code == 503
    assert err.value.code == "missing_credentials"
    assert "backend 'nokey' needs LLMGATE_TEST_UNSET_KEY set in the gateway's environment" in err.value.message


def test_stream_cut_midway_ends_with_an_error_event(gw):
    stream = ask(client(gw), content="[cut] one two three", stream=True)
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert received, "the stream started before it broke"
    assert "backend 'up' broke the connection" in err.value.message


def test_unknown_path_and_method_get_the_error_shape(gw):
    c = client(gw)
    with pytest.raises(openai.NotFoundError) as err:
        c.post("/no/such/thing", cast_to=object, body={})
    assert "no such endpoint" in err.value.message
    with pytest.raises(openai.APIStatusError) as err:
        c.get("/chat/completions", cast_to=object)
    assert err.value.status_code == 405


def test_every_error_carries_the_request_id(gw):
    with pytest.raises(openai.NotFoundError) as err:
        ask(client(gw), model="nope")
    assert err.value.request_id and len(err.value.request_id) >= 16


def _sdk_with_retries(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=2)


def test_errors_a_retry_cannot_fix_tell_the_sdk_not_to_retry(gw, fake_openai):
    """x-should-retry: false on a permanent failure: the SDK raises at once instead of trying twice more."""
    before = len(fake_openai.requests)
    with pytest.raises(openai.InternalServerError) as err:
        ask(_sdk_with_retries(gw), model="badkey")  # the provider refuses our key: the operator's to fix
    assert err.value.status_code == 502 and err.value.response.headers["x-should-retry"] == "false"
    assert len(fake_openai.requests) == before + 1
    assert err.value.response.headers["x-llmgate-tried"] == "badkey"
    assert "x-llmgate-variant" not in err.value.response.headers

    with pytest.raises(openai.InternalServerError) as err:
        ask(_sdk_with_retries(gw), model="nokey")
    assert err.value.status_code == 503 and err.value.response.headers["x-should-retry"] == "false"
    assert "LLMGATE_TEST_UNSET_KEY" in err.value.message and "make demo" in err.value.message


def test_errors_that_may_pass_leave_the_retry_to_the_sdk(gw, fake_openai):
    fake_openai.fail_next(503, 503)  # fails twice, then answers: the SDK's own retry gets through
    answer = _sdk_with_retries(gw).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.headers["x-llmgate-variant"] == "up" and answer.headers["x-llmgate-tried"] == "up"
    with pytest.raises(openai.InternalServerError) as err:
        ask(client(gw), content="[status 503]")
    assert "x-should-retry" not in err.value.response.headers
