"""One route reached by all three conversational dialects: the same user lands on the same variant
whichever dialect it speaks, every exchange is mirrored to the shadow and logged, with its dialect."""

import sqlite3

import anthropic
import openai

from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY
from tests.support import wait_until

USERS = [f"user-{i}" for i in range(24)]


def config(fake, tmp_path) -> dict:
    def backend(model):
        return {"kind": "openai", "base_url": fake.url + "/v1", "model": model, "api_key": UPSTREAM_KEY}

    return {
        "backends": {"base": backend("m-base"), "cand": backend("m-cand"), "cheap": backend("m-cheap")},
        "routes": {"bot": {"baseline": "base", "candidates": {"cand": 50}, "shadow": ["cheap"]}},
        "plugins": {
            "traffic_log": {"path": str(tmp_path / "traffic.db")},
            "shadow": {"path": str(tmp_path / "shadow.db"), "sample_rate": 1.0},
        },
    }


def test_a_user_gets_one_variant_in_every_dialect_and_every_exchange_is_mirrored_and_logged(
    fake_openai, make_gateway, tmp_path
):
    gw = make_gateway(config(fake_openai, tmp_path))
    chat = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    messages = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
    seen: dict[str, set[str]] = {}
    for user in USERS:
        served = {
            chat.chat.completions.with_raw_response.create(
                model="bot", user=user, messages=[{"role": "user", "content": "hi"}]
            ).headers["x-llmgate-variant"],
            messages.messages.with_raw_response.create(
                model="bot", max_tokens=20, metadata={"user_id": user}, messages=[{"role": "user", "content": "hi"}]
            ).headers["x-llmgate-variant"],
            chat.responses.with_raw_response.create(model="bot", input="hi", safety_identifier=user).headers[
                "x-llmgate-variant"
            ],
        }
        seen[user] = served
    assert all(len(variants) == 1 for variants in seen.values()), seen  # sticky across dialects
    split = [next(iter(v)) for v in seen.values()]
    assert 4 <= split.count("cand") <= 20  # a 50% split of 24 users, both variants in use

    records = wait_until(
        lambda: r if len(r := list(read_records(str(tmp_path / "traffic.db")))) == 72 else None, "72 logged exchanges"
    )
    dialects = [r["annotations"].get("dialect", "chat") for r in records]
    assert {d: dialects.count(d) for d in set(dialects)} == {"chat": 24, "messages": 24, "responses": 24}

    def mirrored():
        with sqlite3.connect(tmp_path / "shadow.db") as conn:
            return conn.execute("SELECT count(*) FROM comparisons WHERE shadow_status = 200").fetchone()[0]

    wait_until(lambda: mirrored() == 72, "72 shadow comparisons")
