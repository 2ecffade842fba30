"""POST /v1/embeddings through the official openai SDK: inputs of every shape, dimensions, base64, errors,
fallback, keys, and a traffic log that records the exchange without its vectors."""

import base64
import json
import struct

import openai
import pytest

from plugins.api_keys.plugin import hash_key
from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY, backend_config
from tests.fakes.openai_api import FakeOpenAI
from tests.support import serving, wait_until

TEAM_KEY = "sk-lg-embeddings-team-key-0123456789"


def config(fake, tmp_path, **extra) -> dict:
    return {
        "backends": {
            "embedder": {**backend_config("openai", fake), "model": "text-embed-test"},
            "spare": {**backend_config("openai", fake), "model": "text-embed-spare"},
            "chatty": {"kind": "anthropic", "base_url": fake.url, "model": "claude-x", "api_key": "none"},
        },
        "routes": {
            "vectors": {"baseline": "embedder", "fallback": ["spare"], "shadow": ["spare"]},
            "not-vectors": {"baseline": "chatty"},
        },
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}, **extra},
    }


def client(gw, key="k") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def test_every_input_shape_comes_back_as_vectors(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(config(fake_openai, tmp_path))
    one = client(gw).embeddings.create(model="vectors", input="hello there world")
    # The SDK asks for base64 by default and decodes it: the gateway passed the encoding through.
    assert fake_openai.requests[-1] == {
        "model": "text-embed-test",
        "input": "hello there world",
        "encoding_format": "base64",
    }
    assert one.data[0].embedding == [17.0, 3.0, 0.5, 0.5] and one.usage.prompt_tokens == 3
    many = client(gw).embeddings.create(model="vectors", input=["a b", "c"], dimensions=3, encoding_format="float")
    assert [d.embedding for d in many.data] == [[3.0, 2.0, 0.5], [1.0, 1.0, 0.5]]
    assert fake_openai.requests[-1]["dimensions"] == 3
    tokens = client(gw).embeddings.create(model="vectors", input=[[1, 2, 3], [4]], encoding_format="float")
    assert [d.index for d in tokens.data] == [0, 1] and tokens.usage.prompt_tokens == 4

    raw = client(gw).embeddings.with_raw_response.create(model="vectors", input="x", encoding_format="base64")
    packed = json.loads(raw.text)["data"][0]["embedding"]
    assert struct.unpack("<4f", base64.b64decode(packed)) == (1.0, 1.0, 0.5, 0.5)
    assert raw.headers["x-llmgate-variant"] == "embedder"

    records = wait_until(
        lambda: r if len(r := list(read_records(str(tmp_path / "traffic.db")))) == 4 else None, "four logged exchanges"
    )
    assert {r["route"] for r in records} == {"vectors"}
    assert all(r["annotations"]["dialect"] == "embeddings" for r in records)
    assert records[1]["response"] == {
        "object": "list",
        "model": "text-embed-test",
        "embeddings": 2,
        "dimensions": 3,
        "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
    }
    assert records[1]["prompt_tokens"] == 3 and records[1]["request"]["input"] == ["a b", "c"]
    # The route's shadow is not mirrored: vectors of two models cannot be compared as answers.
    assert all(r["model"] != "text-embed-spare" for r in fake_openai.requests)


@pytest.mark.parametrize(
    "bad, param",
    [
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": [1, "two"]}, "input"),
        ({"input": {"text": "x"}}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "user": 7}, "user"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(fake_openai, make_gateway, tmp_path, bad, param):
    gw = make_gateway(config(fake_openai, tmp_path))
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw).post("/embeddings", body={"model": "vectors", **bad}, cast_to=object)
    assert refused.value.body["param"] == param and refused.value.body["type"] == "invalid_request_error"
    assert fake_openai.requests == []


def test_a_backend_without_embeddings_refuses_by_name_and_a_failing_one_falls_back(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(config(fake_openai, tmp_path))
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw).embeddings.create(model="not-vectors", input="x")
    assert refused.value.body["code"] == "embeddings_not_supported" and "chatty" in refused.value.body["message"]

    fake_openai.fail_next(500, 500, 500)  # the baseline's attempt and its retries
    raw = client(gw).embeddings.with_raw_response.create(model="vectors", input="x")
    assert raw.headers["x-llmgate-variant"] == "spare"
    assert raw.headers["x-llmgate-tried"] == "embedder,spare"

    with pytest.raises(openai.NotFoundError):
        client(gw).embeddings.create(model="no-such-route", input="x")


def test_embeddings_need_a_key_like_any_request(make_gateway, tmp_path):
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    with serving(fake):
        gw = make_gateway(
            config(
                fake,
                tmp_path,
                api_keys={"enabled": True, "teams": {"rag": {"keys": [hash_key(TEAM_KEY)], "routes": ["vectors"]}}},
            )
        )
        with pytest.raises(openai.AuthenticationError):
            client(gw, "sk-lg-wrong").embeddings.create(model="vectors", input="x")
        with pytest.raises(openai.NotFoundError):  # another team's route: as if it did not exist
            client(gw, TEAM_KEY).embeddings.create(model="not-vectors", input="x")
        assert len(client(gw, TEAM_KEY).embeddings.create(model="vectors", input="x").data) == 1
        assert fake.headers[-1]["Authorization"] == f"Bearer {UPSTREAM_KEY}"


@pytest.mark.parametrize("model, tokens", [("amazon.titan-embed-text-v2:0", 3), ("cohere.embed-english-v3", 3)])
def test_bedrock_embedding_models_answer_through_invoke_model(
    fake_bedrock, make_gateway, tmp_path, aws_env, model, tokens
):
    gw = make_gateway(
        {
            "backends": {"titan": {**backend_config("bedrock", fake_bedrock), "model": model}},
            "routes": {"vectors": {"baseline": "titan"}},
            "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
        }
    )
    answer = client(gw).embeddings.create(model="vectors", input=["a b", "c"], encoding_format="float")
    assert [d.embedding[:2] for d in answer.data] == [[3.0, 2.0], [1.0, 1.0]] and answer.usage.prompt_tokens == tokens
    packed = json.loads(
        client(gw).embeddings.with_raw_response.create(model="vectors", input="x", encoding_format="base64").text
    )["data"][0]["embedding"]
    assert struct.unpack("<4f", base64.b64decode(packed))[:2] == (1.0, 1.0)
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw).embeddings.create(model="vectors", input=[[1, 2]])
    assert refused.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw).embeddings.create(model="vectors", input="x", dimensions=300)
    assert refused.value.body["param"] == "dimensions"
    if model.startswith("amazon"):
        sized = client(gw).embeddings.create(model="vectors", input="x", dimensions=256, encoding_format="float")
        assert len(sized.data[0].embedding) == 256
        assert fake_bedrock.requests[-1] == (model, {"inputText": "x", "dimensions": 256})
