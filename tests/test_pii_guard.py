"""The PII guard on the request path, with the official SDKs against fake upstreams that record what
they were sent: a redacted request reaches the upstream without the values, a blocked one never
reaches it, tool arguments and tool results are guarded, every dialect and embeddings are, and a
streamed answer never sends a value, even one split across chunks."""

import json
import random
import sqlite3

import anthropic
import openai
import pytest

from gateway.config import ConfigError, parse_config
from gateway.gateway import Gateway
from gateway.text.pii import KINDS, scrub
from plugins.pii_guard.stream import StreamRedactor
from tests.conftest import backend_config
from tests.support import wait_until

EMAIL, PHONE, CARD = "jane.roe@example.org", "+44 20 7946 0958", "4111 1111 1111 1111"
VALUES = (EMAIL, PHONE, CARD, "123-45-6789", "10.20.30.40")


def gateway_config(fake, tmp_path, kind="openai", **guard):
    return {
        "backends": {"up": backend_config(kind, fake)},
        "routes": {"bot": {"baseline": "up"}, "open": {"baseline": "up"}},
        "plugins": {
            "pii_guard": {"enabled": True, **guard},
            "traffic_log": {"path": str(tmp_path / "traffic.db"), "batch_wait_ms": 0},
        },
    }


def sent_upstream(fake) -> str:
    return json.dumps(fake.requests)


def logged(tmp_path, column: str) -> tuple:
    def row():
        conn = sqlite3.connect(tmp_path / "traffic.db")
        try:
            return conn.execute(f"SELECT {column} FROM traffic ORDER BY id DESC").fetchone()
        except sqlite3.OperationalError:  # the table is not made yet
            return None
        finally:
            conn.close()

    return wait_until(row, "the exchange logged")


def assert_no_values(text: str) -> None:
    for value in VALUES:
        assert value not in text


# --- the stream redactor, alone ------------------------------------------------------------------


TEXT = f"Write to {EMAIL} or call {PHONE}; the card is {CARD} and the host 10.20.30.40, thanks."


def run_stream(pieces: list[str], field: str = "content", holdback: int = 48) -> tuple[str, list[str], list]:
    found = []
    redactor = StreamRedactor(frozenset(KINDS), holdback, found.extend)
    sent = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if field == "content":
            delta = {"content": piece}
        else:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}]}
        out = redactor.chunk(chunk)["choices"][0]["delta"]
        if field == "content":
            sent.append(out.get("content", ""))
        else:
            sent += [c["function"].get("arguments", "") for c in out.get("tool_calls", ())]
    assert redactor.finish() is None
    return "".join(sent), sent, found


@pytest.mark.parametrize("field", ["content", "tool"])
def test_every_split_of_a_stream_sends_what_the_whole_text_would(field):
    expected = scrub(TEXT)[0]
    for cut in range(1, len(TEXT)):
        joined, pieces, found = run_stream([TEXT[:cut], TEXT[cut:]], field)
        assert joined == expected, cut
        assert [kind for _, _, kind in found] == ["EMAIL", "PHONE", "CREDIT_CARD", "IPV4"]
        for piece in pieces:
            assert_no_values(piece)
    rng = random.Random(7)
    for _ in range(200):  # many small chunks, as models stream
        cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(2, 40)))
        pieces = [TEXT[a:b] for a, b in zip([0, *cuts], [*cuts, len(TEXT)])]
        assert run_stream(pieces, field)[0] == expected


def test_no_piece_sent_ever_holds_part_of_a_value_longer_than_a_word():
    text = "x " * 100 + EMAIL + " y" * 100
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    joined, sent, _ = run_stream(pieces)
    assert joined == scrub(text)[0]
    assert not any("jane" in p or "example" in p for p in sent)


def test_held_text_goes_out_before_another_field_begins_and_at_the_end():
    redactor = StreamRedactor(frozenset(KINDS), 48, lambda spans: None)
    first = redactor.chunk({"choices": [{"index": 0, "delta": {"content": "mail me at " + EMAIL[:6]}}]})
    assert first["choices"][0]["delta"] == {}  # all held: it may be the start of a value
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "send", "arguments": '{"to": "'}}
    second = redactor.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    delta = second["choices"][0]["delta"]
    assert delta["content"] == "mail me at jane.r"  # released, whole: no value was in it
    assert delta["tool_calls"][0]["id"] == "call_1" and "arguments" not in delta["tool_calls"][0]["function"]
    last = redactor.finish()
    assert last["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"to": "'


# --- through the gateway, with the SDKs -----------------------------------------------------------


def openai_client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def test_a_redacted_request_reaches_the_upstream_without_the_values(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(gateway_config(fake_openai, tmp_path))
    messages = [
        {"role": "system", "content": f"The user's card is {CARD}."},
        {"role": "user", "content": [{"type": "text", "text": f"Email {EMAIL} about the refund."}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": json.dumps({"phone": PHONE, "n": 3})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "customer SSN 123-45-6789, host 10.20.30.40"},
        {"role": "user", "content": "and now?"},
    ]
    answer = openai_client(gw).chat.completions.with_raw_response.create(model="bot", messages=messages)
    assert answer.http_response.status_code == 200
    upstream = sent_upstream(fake_openai)
    assert_no_values(upstream)
    for placeholder in ("[CREDIT_CARD]", "[EMAIL]", "[PHONE]", "[SSN]", "[IPV4]"):
        assert placeholder in upstream
    arguments = fake_openai.requests[-1]["messages"][2]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"phone": "[PHONE]", "n": 3}  # still JSON
    request, annotations = logged(tmp_path, "request, annotations")
    assert_no_values(request)
    counts = json.loads(annotations)["pii_guard"]["request"]
    assert counts == {"CREDIT_CARD": 1, "EMAIL": 1, "PHONE": 1, "SSN": 1, "IPV4": 1}


def test_a_blocked_request_never_reaches_the_upstream_and_the_error_names_kinds_not_values(
    fake_openai, make_gateway, tmp_path
):
    gw = make_gateway(gateway_config(fake_openai, tmp_path, mode="redact", routes={"bot": {"mode": "block"}}))
    client = openai_client(gw)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": f"hi, I am {EMAIL}, call {PHONE}"}]
        )
    error = refused.value.body
    assert error["code"] == "pii_detected" and error["param"] == "messages[0].content"
    assert "EMAIL" in error["message"] and "PHONE" in error["message"]
    assert_no_values(json.dumps(error))
    assert fake_openai.requests == []
    # the other route only redacts
    client.chat.completions.create(model="open", messages=[{"role": "user", "content": f"I am {EMAIL}"}])
    assert "[EMAIL]" in sent_upstream(fake_openai)


def test_messages_and_responses_callers_are_guarded_too(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(gateway_config(fake_openai, tmp_path))
    claude = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    reply = claude.messages.create(
        model="bot", max_tokens=64, system=f"Card {CARD}", messages=[{"role": "user", "content": f"I am {EMAIL}"}]
    )
    assert "[EMAIL]" in reply.content[0].text
    openai_client(gw).responses.create(model="bot", input=f"My phone is {PHONE}", instructions=f"Mail {EMAIL}")
    upstream = sent_upstream(fake_openai)
    assert_no_values(upstream)
    assert upstream.count("[EMAIL]") == 2 and "[PHONE]" in upstream and "[CREDIT_CARD]" in upstream


def test_embeddings_inputs_are_guarded(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(gateway_config(fake_openai, tmp_path))
    openai_client(gw).embeddings.create(model="bot", input=[f"contact {EMAIL}", "nothing here"])
    assert fake_openai.requests[-1]["input"] == ["contact [EMAIL]", "nothing here"]


def test_a_streamed_answer_never_sends_a_value_split_across_chunks(fake_openai, make_gateway, tmp_path):
    # The request is let through (input: false) so the fake echoes the values back, word by word:
    # the phone number arrives in four chunks.
    gw = make_gateway(gateway_config(fake_openai, tmp_path, input=False, output=True))
    stream = openai_client(gw).chat.completions.create(
        model="bot", stream=True, messages=[{"role": "user", "content": f"say {PHONE} and {EMAIL} please"}]
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert PHONE in sent_upstream(fake_openai)
    text = "".join(pieces)
    assert "[PHONE]" in text and "[EMAIL]" in text and text.endswith("please")
    for piece in pieces:
        assert not any(part in piece for part in ("7946", "0958", "jane"))
    whole = openai_client(gw).chat.completions.create(model="bot", messages=[{"role": "user", "content": EMAIL}])
    assert "[EMAIL]" in whole.choices[0].message.content
    assert "jane" not in logged(tmp_path, "response")[0]  # the log holds what the caller got


def test_block_on_output_ends_a_stream_with_an_error_and_sends_no_value(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(gateway_config(fake_openai, tmp_path, mode="block", input=False, output=True))
    stream = openai_client(gw).chat.completions.create(
        model="bot", stream=True, messages=[{"role": "user", "content": f"say {PHONE} now"}]
    )
    received = []
    with pytest.raises(openai.APIError) as ended:
        for chunk in stream:
            received.append(chunk.model_dump_json())
    assert "personal data" in str(ended.value) and "7946" not in str(ended.value)
    assert not any("7946" in r for r in received)
    with pytest.raises(openai.APIStatusError) as refused:
        openai_client(gw).chat.completions.create(model="bot", messages=[{"role": "user", "content": EMAIL}])
    assert refused.value.status_code == 502 and refused.value.body["code"] == "pii_detected"
    assert refused.value.response.headers["x-should-retry"] == "false"


def test_a_failing_guard_refuses_when_fail_closed(fake_openai, make_gateway, tmp_path, monkeypatch):
    import plugins.pii_guard.plugin as guard

    def broken(text, kinds=None):
        raise RuntimeError("detector broke")

    monkeypatch.setattr(guard, "find", broken)
    closed = make_gateway(gateway_config(fake_openai, tmp_path, fail_closed=True))
    with pytest.raises(openai.APIStatusError) as refused:
        openai_client(closed).chat.completions.create(model="bot", messages=[{"role": "user", "content": EMAIL}])
    assert refused.value.status_code >= 500 and fake_openai.requests == []
    opened = make_gateway(gateway_config(fake_openai, tmp_path))
    openai_client(opened).chat.completions.create(model="bot", messages=[{"role": "user", "content": "hello"}])
    assert len(fake_openai.requests) == 1  # fail-open: served unguarded, the fault counted


def test_config_errors_name_what_to_fix(fake_openai, tmp_path):
    with pytest.raises(ConfigError) as bad:
        Gateway(parse_config(gateway_config(fake_openai, tmp_path, kinds=["EMAIL", "NAME"])))
    assert "unknown PII kind 'NAME'" in str(bad.value) and "PHONE" in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        Gateway(parse_config(gateway_config(fake_openai, tmp_path, routes={"bott": {"mode": "block"}})))
    assert "'bott'" in str(bad.value) and "bot" in str(bad.value)


def test_a_messages_stream_and_a_responses_stream_are_guarded_on_output(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(gateway_config(fake_openai, tmp_path, input=False, output=True))
    claude = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    with claude.messages.stream(
        model="bot", max_tokens=64, messages=[{"role": "user", "content": f"repeat {PHONE} and {CARD}"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "[PHONE]" in "".join(pieces) and "[CREDIT_CARD]" in final.content[0].text
    assert not any("7946" in p or "1111" in p for p in pieces)
    events = list(openai_client(gw).responses.create(model="bot", input=f"repeat {EMAIL}", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "[EMAIL]" in text and "jane" not in json.dumps([e.model_dump() for e in events])
