"""The PII scrubber: each kind found and replaced by its placeholder, look-alikes left alone."""

from collections import Counter

import pytest

from gateway.text.pii import KINDS, luhn_valid, scrub, scrub_value


@pytest.mark.parametrize(
    "kind, text, value",
    [
        ("EMAIL", "write to {} today", "jane.doe+orders@mail.example.co.uk"),
        ("PHONE", "call {} after noon", "(415) 555-0132"),
        ("PHONE", "call {} after noon", "415-555-0132"),
        ("PHONE", "call {} after noon", "+1 415 555 0132"),
        ("PHONE", "call {} after noon", "+44 20 7946 0958"),
        ("SSN", "my ssn is {}.", "123-45-6789"),
        ("CREDIT_CARD", "card {} expires soon", "4111 1111 1111 1111"),
        ("CREDIT_CARD", "card {} expires soon", "5500-0000-0000-0004"),
        ("CREDIT_CARD", "card {} expires soon", "378282246310005"),
        ("IPV4", "from {}, blocked", "192.168.10.254"),
        ("IPV6", "from {} blocked", "2001:db8:85a3::8a2e:370:7334"),
        ("IPV6", "loopback {} works", "::1"),
        ("IPV6", "mapped {} here", "::ffff:192.0.2.128"),
        ("AWS_ACCESS_KEY", "key {} leaked", "AKIAIOSFODNN7EXAMPLE"),
    ],
)
def test_each_kind_is_replaced_by_its_placeholder(kind, text, value):
    scrubbed, counts = scrub(text.format(value))
    assert scrubbed == text.format(f"[{kind}]")
    assert counts == Counter({kind: 1})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("password: hunter2 please", "password: [PASSWORD] please"),
        ("Password = 'correct horse battery'", "Password = [PASSWORD]"),
        ('my pwd="s3cr3t:x" ok', "my pwd=[PASSWORD] ok"),
        ("PASSWORD:Tr0ub4dor&3, then", "PASSWORD:[PASSWORD], then"),
    ],
)
def test_a_password_value_is_replaced_and_its_label_kept(text, expected):
    scrubbed, counts = scrub(text)
    assert scrubbed == expected
    assert counts == Counter({"PASSWORD": 1})


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails the Luhn check",
        "order 1234567 shipped on 2024-05-01 at 10:30:15",
        "version 1.2.3.4.5 and 999.1.1.1 are not addresses",
        "std::vector and a::b are code, 12:30:45 is a time",
        "ssn-like 000-12-3456 and 666-12-3456 were never issued",
        "tracking 1Z999AA10123456784, price 19.99, year 2025",
        "the word passport: is not a password label",
    ],
)
def test_look_alikes_are_left_alone(text):
    assert scrub(text) == (text, Counter())


def test_several_kinds_in_one_text_are_all_counted():
    text = (
        "mail a@b.io or c@d.org, card 4242424242424242, host 10.0.0.7 and fe80::1%eth0, "
        "ssn 078-05-1120, call 212-555-0199, key ASIAJEXAMPLEXEG2JICE, password: x1"
    )
    scrubbed, counts = scrub(text)
    assert counts == Counter(
        {"EMAIL": 2, "CREDIT_CARD": 1, "IPV4": 1, "IPV6": 1, "SSN": 1, "PHONE": 1, "AWS_ACCESS_KEY": 1, "PASSWORD": 1}
    )
    assert not any(ch.isdigit() for ch in scrubbed.replace("[IPV4]", "").replace("[IPV6]", "")), scrubbed
    assert "@" not in scrubbed


def test_scrubbing_twice_changes_nothing_more():
    once, counts = scrub("reach me at 415-555-0132 or bob@example.com from 8.8.8.8")
    assert scrub(once) == (once, Counter())
    assert sum(counts.values()) == 3


def test_scrub_value_walks_json_and_adds_to_a_running_count():
    counts = Counter({"EMAIL": 5})
    body = {
        "messages": [
            {"role": "user", "content": "I am x@y.com"},
            {"role": "user", "content": [{"type": "text", "text": "from 1.2.3.4"}]},
        ],
        "temperature": 0.5,
        "n": 1,
    }
    scrubbed = scrub_value(body, counts)
    assert scrubbed == {
        "messages": [
            {"role": "user", "content": "I am [EMAIL]"},
            {"role": "user", "content": [{"type": "text", "text": "from [IPV4]"}]},
        ],
        "temperature": 0.5,
        "n": 1,
    }
    assert body["messages"][0]["content"] == "I am x@y.com"  # the original is untouched
    assert counts == Counter({"EMAIL": 6, "IPV4": 1})


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")


def test_every_kind_has_a_placeholder_name():
    assert set(KINDS) == {"EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IPV4", "IPV6", "AWS_ACCESS_KEY", "PASSWORD"}


def test_the_traffic_log_can_store_bodies_with_pii_redacted(fake_openai, make_gateway, tmp_path):
    """`traffic_log.redact_pii`: the stored request and answer carry placeholders, never the values."""
    import openai

    from plugins.traffic_log.plugin import read_records
    from tests.conftest import UPSTREAM_KEY
    from tests.support import wait_until

    path = tmp_path / "redacted.db"
    gw = make_gateway(
        {
            "backends": {
                "up": {"kind": "openai", "base_url": fake_openai.url + "/v1", "model": "m", "api_key": UPSTREAM_KEY}
            },
            "routes": {"bot": {"baseline": "up"}},
            "plugins": {"traffic_log": {"path": str(path), "redact_pii": True}},
        }
    )
    secret = "mail jane.doe@example.com, card 4111 1111 1111 1111, from 203.0.113.9"
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    client.chat.completions.create(model="bot", messages=[{"role": "user", "content": secret}])
    record = wait_until(lambda: next(iter(read_records(str(path))), None) if path.exists() else None, "the record")
    stored = str(record["request"]) + str(record["response"])
    for value in ("jane.doe@example.com", "4111 1111 1111 1111", "203.0.113.9"):
        assert value not in stored
    assert "[EMAIL]" in stored and "[CREDIT_CARD]" in stored and "[IPV4]" in stored
