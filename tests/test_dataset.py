"""The dataset builder end to end: a seeded traffic log in, cleaned and validated JSONL out.

The traffic log is written by the traffic_log plugin's own writer (and a few exchanges go through
a real gateway and fake upstream first), with PII of every kind, exact and near duplicates, and
each kind of record the builder must leave out. The assertions compare the manifest with what
was seeded, scan the output for PII with the test's own patterns, and run the validator CLI.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
import yaml

from flywheel.dataset.formats import make_format, validate_lines
from gateway.cli import main
from tests.conftest import backend_config
from tests.traffic_records import exchange, write_exchanges

DAY = 86400
WORDS = """account address answer arrive basket battery billing bright button cancel carrier change charge
cheap city clear coffee color count courier credit damage deliver desk detail device discount door
early email empty extra faster field filter garden gift green handle heavy help holiday invoice item
jacket kitchen label large late leather letter light limit local lucky manual market metal monthly
morning number office online orange order package paper parcel pocket policy portal price quick
quiet receipt refund region repair replace return river route screen second service ship shoe
simple small soft spare status store summer support table ticket travel update upgrade value
voucher warehouse warranty water weekly window winter wooden yellow""".split()
PII_KINDS = ("EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IPV4", "IPV6", "AWS_ACCESS_KEY", "PASSWORD")


def luhn_complete(digits: str) -> str:
    """`digits` plus the check digit that makes the whole pass the Luhn check."""
    for check in "0123456789":
        number = digits + check
        total = sum(
            int(d) if i % 2 == 0 else (int(d) * 2 - 9 if int(d) > 4 else int(d) * 2)
            for i, d in enumerate(reversed(number))
        )
        if total % 10 == 0:
            return number
    raise AssertionError("unreachable")


class SeededLog:
    """Builds the exchanges of the log and remembers what the builder should make of each."""

    def __init__(self, now: float, seed: int = 7):
        self.rng = random.Random(seed)
        self.now = now
        self.contexts = []  # written with bodies
        self.bodyless = []  # written by a traffic log with `bodies: false`
        self.expected_dropped = Counter()
        self.expected_pii = Counter()
        self.pii_values: list[str] = []
        self.unique: list[tuple[list[dict], str]] = []  # (messages, answer) of every example kept
        self.plain: list[int] = []  # indexes into unique of examples without PII (near-duplicate sources)
        self._n = 0

    def sentence(self, low=14, high=22) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(low, high)))

    def pii_value(self, kind: str, i: int) -> str:
        rng = self.rng
        if kind == "EMAIL":
            return f"{rng.choice(WORDS)}.{rng.choice(WORDS)}{i}@example.com"
        if kind == "PHONE":
            return f"(415) 555-{1000 + i:04d}"
        if kind == "SSN":
            return f"{100 + i % 500:03d}-{10 + i % 80:02d}-{1000 + i:04d}"
        if kind == "CREDIT_CARD":
            number = luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14)))
            return " ".join(number[j : j + 4] for j in range(0, 16, 4))
        if kind == "IPV4":
            return f"10.{i % 250}.{(i * 7) % 250}.{(i * 13) % 250 + 1}"
        if kind == "IPV6":
            return f"2001:db8:{i:x}::{(i * 3) % 65535 + 1:x}"
        if kind == "AWS_ACCESS_KEY":
            return "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        return f"password: {rng.choice(WORDS)}{i}!x"

    def _ts(self) -> float:
        self._n += 1
        return self.now - 29 * DAY + self._n * 60

    def add(self, messages, answer, **kw):
        ctx = exchange(
            f"req-{len(self.contexts) + len(self.bodyless):05d}",
            kw.pop("ts", None) or self._ts(),
            messages,
            answer,
            **kw,
        )
        self.contexts.append(ctx)
        return ctx

    def unique_example(self, i: int, pii_kind: str | None = None) -> None:
        messages = []
        if self.rng.random() < 0.3:
            messages.append({"role": "system", "content": f"You are the {self.rng.choice(WORDS)} support assistant."})
        if self.rng.random() < 0.2:
            messages += [
                {"role": "user", "content": self.sentence(6, 10)},
                {"role": "assistant", "content": self.sentence(6, 10)},
            ]
        user, answer = self.sentence(), self.sentence()
        if pii_kind:
            value = self.pii_value(pii_kind, i)
            self.pii_values.append(value.removeprefix("password: "))
            self.expected_pii[pii_kind] += 1
            if i % 2:
                answer = f"{answer} noted {value} for you"
            else:
                user = f"{user} my detail is {value} thanks"
        messages.append({"role": "user", "content": user})
        self.add(messages, answer)
        if not pii_kind:
            self.plain.append(len(self.unique))
        self.unique.append((messages, answer))

    def build(self, n_unique: int = 1000) -> "SeededLog":
        pii_examples = {i: PII_KINDS[i % len(PII_KINDS)] for i in range(0, 12 * len(PII_KINDS) * 3, 3)}
        for i in range(n_unique):
            self.unique_example(i, pii_examples.get(i))
        # exact duplicates: 50 copies, and 10 copies of PII examples whose PII differs (equal once scrubbed)
        for j in self.rng.sample(range(n_unique), 50):
            self.add(*self.unique[j])
        pii_sources = [i for i in sorted(pii_examples) if pii_examples[i] not in ("PASSWORD",)][:10]
        for n, j in enumerate(pii_sources):
            messages, answer = self.unique[j]
            kind = pii_examples[j]
            old = next(v for v in self.pii_values if v in json.dumps([messages, answer]))
            new = self.pii_value(kind, 5000 + n)
            self.pii_values.append(new)

            def swap(text):
                return text.replace(old, new)

            self.add([{**m, "content": swap(m["content"])} for m in messages], swap(answer))
        self.expected_dropped["duplicate_exact"] = 60
        # near duplicates: 20 differing in case, spacing and punctuation, 20 in one word of the answer
        sources = self.rng.sample(self.plain, 40)
        for j in sources[:20]:
            messages, answer = self.unique[j]
            self.add(
                messages[:-1] + [{"role": "user", "content": "  " + messages[-1]["content"].upper() + " !!"}], answer
            )
        for j in sources[20:]:
            messages, answer = self.unique[j]
            words = answer.split()
            k = len(words) // 2
            words[k] = "zebra" if words[k] != "zebra" else "yak"
            self.add(messages, " ".join(words))
        self.expected_dropped["duplicate_near"] = 40
        # what must be left out, and why
        for _ in range(30):
            self.add([{"role": "user", "content": self.sentence()}], None, status=502)
        self.expected_dropped["status"] = 30
        for _ in range(10):
            self.add([{"role": "user", "content": self.sentence()}], self.sentence(), finish="length")
        for _ in range(5):
            self.add([{"role": "user", "content": self.sentence()}], "")
        for _ in range(5):
            self.add(
                [{"role": "assistant", "content": self.sentence()}, {"role": "user", "content": self.sentence()}],
                self.sentence(),
            )
        self.expected_dropped["incomplete"] = 20
        call = [{"id": "call_1", "type": "function", "function": {"name": "track", "arguments": "{}"}}]
        for _ in range(8):
            self.add([{"role": "user", "content": self.sentence()}], None, finish="tool_calls", tool_calls=call)
        for _ in range(4):
            self.add(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": self.sentence()},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        ],
                    }
                ],
                self.sentence(),
            )
        self.expected_dropped["unsupported_content"] = 12
        for _ in range(5):
            self.add([{"role": "user", "content": self.sentence(400, 420)}], self.sentence())
        self.expected_dropped["too_long"] = 5
        for _ in range(5):
            self.add([{"role": "user", "content": "?"}], self.sentence())
        self.expected_dropped["too_short"] = 5
        for _ in range(6):
            self.bodyless.append(
                exchange(
                    f"req-nobody-{len(self.bodyless)}",
                    self._ts(),
                    [{"role": "user", "content": self.sentence()}],
                    self.sentence(),
                )
            )
        self.expected_dropped["no_bodies"] = 6
        # never read: another route, and traffic older than --since
        for _ in range(40):
            self.add([{"role": "user", "content": self.sentence()}], self.sentence(), route="billing-bot")
        for _ in range(20):
            self.add([{"role": "user", "content": self.sentence()}], self.sentence(), ts=self.now - 40 * DAY)
        return self

    @property
    def read(self) -> int:
        """Records of the route within the window: everything but the other route and the old ones."""
        return len(self.contexts) + len(self.bodyless) - 60


def write_config(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# The test's own PII patterns: simpler and broader than the scrubber's, written separately.
INDEPENDENT_PII = {
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"),
    "long digit run": re.compile(r"\d(?:[ ()./-]{0,2}\d){8,}"),
    "ipv4": re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b"),
    "ipv6": re.compile(r"\b[0-9a-fA-F]{1,4}:[0-9a-fA-F:]*:[0-9a-fA-F]{0,4}"),
    "aws key": re.compile(r"A[KS]IA[A-Z0-9]{12,}"),
    "password": re.compile(r"(?i)password\s*[:=]\s*(?!\[PASSWORD\])\S"),
}


def assert_no_pii(text: str, seeded_values: list[str]) -> None:
    for name, pattern in INDEPENDENT_PII.items():
        found = pattern.findall(text)
        assert not found, f"{name} survived: {found[:3]}"
    survived = [value for value in seeded_values if value in text]
    assert not survived, f"seeded values survived: {survived[:3]}"


@pytest.fixture
def seeded(tmp_path, make_gateway, fake_openai):
    """A config and its traffic log: 5 exchanges through a real gateway, then the seeded 1,300."""
    log_path = tmp_path / "traffic.db"
    config = {
        "backends": {"base": backend_config("openai", fake_openai)},
        "routes": {"support-bot": {"baseline": "base"}},
        "prices": {"base": {"input": 3.0, "output": 15.0}},
        "plugins": {
            "traffic_log": {"path": str(log_path)},
            "feedback": {"path": str(tmp_path / "feedback.db")},
            "shadow": {"path": str(tmp_path / "shadow.db")},
        },
    }
    gateway = make_gateway(config)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="app-key", max_retries=0)
    through_gateway = [
        f"gateway question {w} about my {v} and the {x} please"
        for w, v, x in zip(WORDS[:5], WORDS[10:15], WORDS[20:25])
    ]
    for text in through_gateway:
        client.chat.completions.create(model="support-bot", messages=[{"role": "user", "content": text}])
    deadline = time.monotonic() + 30
    while _count(log_path) < len(through_gateway):
        assert time.monotonic() < deadline, "the gateway's traffic log did not record the exchanges"
        time.sleep(0.05)
    log = SeededLog(time.time()).build()
    write_exchanges(log_path, log.contexts)
    write_exchanges(log_path, log.bodyless, bodies=False)
    log.through_gateway = through_gateway
    return write_config(tmp_path, config), log


def _count(path: Path) -> int:
    try:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT count(*) FROM traffic").fetchone()[0]
    except sqlite3.Error:
        return 0


def build(config_path: str, out: Path, *extra: str) -> dict:
    code = main(
        [
            "dataset",
            "build",
            "--config",
            config_path,
            "--route",
            "support-bot",
            "--since",
            "30d",
            "--min-chars",
            "2",
            "--max-chars",
            "2000",
            "--out",
            str(out),
            *extra,
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert code == 0, manifest["problems"]
    return manifest


def test_a_dataset_from_a_seeded_log_matches_what_was_seeded(seeded, tmp_path, capsys):
    config_path, log = seeded
    out = tmp_path / "openai"
    manifest = build(config_path, out, "--format", "openai")

    kept = len(log.unique) + len(log.through_gateway)
    assert log.read + len(log.through_gateway) >= 1000
    counts = manifest["counts"]
    assert counts["read"] == log.read + len(log.through_gateway)
    assert manifest["dropped"] == dict(log.expected_dropped)
    assert counts["kept"] == kept == counts["read"] - counts["dropped"]
    assert counts["validation"] == counts["test"] == round(kept * 0.1)
    assert counts["train"] + counts["validation"] + counts["test"] == kept
    assert manifest["pii_replaced"] == {kind: log.expected_pii[kind] for kind in PII_KINDS}
    assert all(log.expected_pii[kind] == 12 for kind in PII_KINDS)

    files = {name: out / f"{name}.jsonl" for name in ("train", "validation", "test")}
    text = "".join(path.read_text(encoding="utf-8") for path in files.values())
    for name, path in files.items():
        entry = manifest["files"][f"{name}.jsonl"]
        assert entry["records"] == len(lines_of(path)) == counts[name]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # the placeholders in the files are the PII the manifest counts, kind by kind
    assert {kind: text.count(f"[{kind}]") for kind in PII_KINDS} == manifest["pii_replaced"]
    assert_no_pii(text, log.pii_values)
    # every example written is one of the unique ones, once; the gateway's own exchanges among them
    records = [json.loads(line) for path in files.values() for line in lines_of(path)]
    users = Counter(r["messages"][-2]["content"] for r in records)
    assert max(users.values()) == 1
    for question in log.through_gateway:
        assert users[question] == 1
    assert manifest["source"]["kind"] == "sqlite" and manifest["source"]["time_range"]["first"] is not None
    assert manifest["filters"]["route"] == "support-bot" and manifest["filters"]["since"] is not None

    capsys.readouterr()
    for path in files.values():
        assert main(["dataset", "validate", str(path), "--format", "openai"]) == 0
        assert "valid" in capsys.readouterr().out

    # the same log as Bedrock's conversation format for Anthropic models
    bedrock_out = tmp_path / "bedrock"
    bedrock = build(config_path, bedrock_out, "--format", "bedrock")
    assert bedrock["counts"] == counts and bedrock["dropped"] == manifest["dropped"]
    assert bedrock["pii_replaced"] == manifest["pii_replaced"]
    with_system = 0
    for name in ("train", "validation", "test"):
        path = bedrock_out / f"{name}.jsonl"
        assert main(["dataset", "validate", str(path), "--format", "bedrock"]) == 0
        for line in lines_of(path):
            record = json.loads(line)
            assert set(record) <= {"system", "messages"}
            roles = [m["role"] for m in record["messages"]]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
            with_system += "system" in record
    assert with_system > 0
    assert_no_pii(
        "".join((bedrock_out / f"{n}.jsonl").read_text() for n in ("train", "validation", "test")), log.pii_values
    )


def _small_log(tmp_path: Path, n: int = 60) -> tuple[str, list[str]]:
    log_path = tmp_path / "traffic.db"
    rng = random.Random(3)
    now = time.time()
    contexts = [
        exchange(
            f"small-{i}",
            now - DAY + i,
            [{"role": "user", "content": " ".join(rng.choices(WORDS, k=15))}],
            " ".join(rng.choices(WORDS, k=15)),
            served_by="base" if i % 4 else "ft",
        )
        for i in range(n)
    ]
    write_exchanges(log_path, contexts)
    config = {
        "backends": {
            "base": {"kind": "openai", "model": "m", "api_key": "none"},
            "ft": {"kind": "openai", "model": "m-ft", "api_key": "none"},
        },
        "routes": {"support-bot": {"baseline": "base", "candidates": {"ft": 10}}},
        "plugins": {
            "traffic_log": {"path": str(log_path)},
            "feedback": {"path": str(tmp_path / "feedback.db")},
            "shadow": {"path": str(tmp_path / "shadow.db")},
        },
    }
    return write_config(tmp_path, config), [c.request_id for c in contexts]


def test_the_split_is_deterministic_for_a_seed(tmp_path):
    config_path, _ = _small_log(tmp_path)
    first = build(config_path, tmp_path / "a", "--format", "openai")
    again = build(config_path, tmp_path / "b", "--format", "openai")
    other = build(config_path, tmp_path / "c", "--format", "openai", "--seed", "1")
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert first["files"][name]["sha256"] == again["files"][name]["sha256"]
    assert first["files"]["train.jsonl"]["sha256"] != other["files"]["train.jsonl"]["sha256"]

    def everything(d):
        return sorted(line for n in ("train", "validation", "test") for line in lines_of(tmp_path / d / f"{n}.jsonl"))

    assert everything("a") == everything("c")  # another seed: the same examples, split otherwise
    assert (first["counts"]["train"], first["counts"]["validation"], first["counts"]["test"]) == (48, 6, 6)


def test_judge_and_feedback_filters_join_by_request_id(tmp_path):
    from plugins.feedback import SCHEMA as FEEDBACK_SCHEMA
    from plugins.shadow.plugin import SCHEMA as SHADOW_SCHEMA

    config_path, ids = _small_log(tmp_path)
    with sqlite3.connect(tmp_path / "feedback.db") as conn:
        conn.executescript(FEEDBACK_SCHEMA)
        ratings = {ids[i]: ("helpful", 1.0) for i in range(0, 30)}
        ratings.update({ids[i]: ("not_helpful", 0.0) for i in range(30, 40)})
        ratings.update({ids[i]: (5, 1.0) for i in range(40, 45)})
        conn.executemany(
            "INSERT INTO feedback (ts, request_id, route, variant, rating, score) VALUES (?, ?, ?, ?, ?, ?)",
            [(time.time(), rid, "support-bot", "base", r, s) for rid, (r, s) in ratings.items()],
        )
    with sqlite3.connect(tmp_path / "shadow.db") as conn:
        conn.executescript(SHADOW_SCHEMA)
        # the judge scores from the shadow's side: 0 means the logged (primary) answer won
        shadow_scores = {ids[i]: (0.0 if i % 3 else 1.0) for i in range(0, 50)}
        conn.executemany(
            "INSERT INTO comparisons (ts, request_id, route, primary_backend, shadow_backend, "
            "primary_status, shadow_status, judge_score) "
            "VALUES (?, ?, 'support-bot', 'base', 'sh', 200, 200, ?)",
            [(time.time(), rid, s) for rid, s in shadow_scores.items()],
        )
    manifest = build(
        config_path, tmp_path / "out", "--format", "openai", "--min-judge-score", "0.5", "--feedback", "helpful"
    )
    judged_well = {ids[i] for i in range(50) if i % 3}
    helpful = {ids[i] for i in list(range(30)) + list(range(40, 45))}
    assert manifest["dropped"] == {
        "judge_unscored": 10,
        "judge_below_min": 17,
        "feedback_missing": len(judged_well - set(ids[:45])),
        "feedback_mismatch": len(judged_well & set(ids[30:40])),
    }
    assert manifest["counts"]["kept"] == len(judged_well & helpful)
    assert manifest["filters"]["min_judge_score"] == 0.5 and manifest["filters"]["feedback"] == "helpful"
    assert manifest["source"]["feedback"].endswith("feedback.db")

    by_variant = build(config_path, tmp_path / "ft", "--format", "openai", "--variant", "ft", "--split", "70/15/15")
    assert by_variant["counts"]["kept"] == 15 and by_variant["dropped"] == {"variant": 45}
    # a split that leaves OpenAI fewer than 10 training examples is written, but reported and refused
    assert (
        main(
            [
                "dataset",
                "build",
                "--config",
                config_path,
                "--route",
                "support-bot",
                "--format",
                "openai",
                "--variant",
                "ft",
                "--split",
                "50/25/25",
                "--out",
                str(tmp_path / "few"),
            ]
        )
        == 1
    )
    assert json.loads((tmp_path / "few" / "manifest.json").read_text())["problems"] == [
        "train.jsonl: file: 7 records: a openai train file needs at least 10"
    ]


def test_the_validator_reports_every_bad_line(tmp_path, capsys):
    good = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    bad = {
        3: "{not json",
        5: json.dumps({"messages": [{"role": "user", "content": "hi"}]}),  # no assistant
        6: json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        8: json.dumps({"prompt": "hi", "completion": "there"}),  # legacy shape
        9: json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}),
        11: json.dumps(
            {"messages": [{"role": "user", "content": "x" * 300_000}, {"role": "assistant", "content": "y"}]}
        ),
    }
    lines = [bad.get(n, json.dumps(good)) for n in range(1, 13)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["dataset", "validate", str(path), "--format", "openai"]) == 1
    out = capsys.readouterr().out
    reported = sorted(int(n) for n in re.findall(r": line (\d+): ", out))
    assert reported == sorted(bad)
    assert "line 5: no assistant message" in out and "unknown role 'robot'" in out
    assert "line 11: about 75001 tokens" in out
    assert "6 bad lines" in out

    bedrock_lines = [
        json.dumps(
            {"system": "s", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
        ),
        json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "id": 1}),
        json.dumps({"messages": [{"role": "user", "content": "a"}]}),
        json.dumps(
            {
                "system": "s",
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ],
            }
        ),
    ]
    path = tmp_path / "validation.jsonl"
    path.write_text("\n".join(bedrock_lines) + "\n")
    assert main(["dataset", "validate", str(path), "--format", "bedrock"]) == 1
    out = capsys.readouterr().out
    assert sorted(int(n) for n in re.findall(r": line (\d+): ", out)) == [2, 3, 4, 5]
    assert "file: 5 records: a bedrock validation file needs at least 32" in out
    assert main(["dataset", "validate", str(path), "--format", "bedrock", "--split", "test"]) == 1
    assert "file:" not in capsys.readouterr().out


def test_bedrock_record_limits_are_the_documented_ones():
    fmt = make_format("bedrock")
    record = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert validate_lines([record] * 32, fmt, "train").ok
    assert not validate_lines([record] * 31, fmt, "train").ok
    assert validate_lines([record] * 10_000, fmt, "train").ok
    assert not validate_lines([record] * 10_001, fmt, "train").ok
    assert not validate_lines([record] * 1_001, fmt, "validation").ok
    long = json.dumps(
        {"messages": [{"role": "user", "content": "q" * (32_000 * 6)}, {"role": "assistant", "content": "a"}]}
    )
    assert validate_lines([long], fmt).problems == ["line 1: about 32001 tokens, more than the 32000 a record may hold"]
    assert validate_lines([record] * 9, make_format("openai"), "train").problems == [
        "file: 9 records: a openai train file needs at least 10"
    ]


def test_a_missing_traffic_log_is_a_clear_error(tmp_path, capsys):
    config_path = write_config(
        tmp_path,
        {
            "backends": {"b": {"kind": "openai", "model": "m", "api_key": "none"}},
            "routes": {"r": {"baseline": "b"}},
            "plugins": {"traffic_log": {"path": str(tmp_path / "none.db")}},
        },
    )
    assert (
        main(
            [
                "dataset",
                "build",
                "--config",
                config_path,
                "--route",
                "r",
                "--format",
                "openai",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "no traffic log at" in capsys.readouterr().err


@pytest.fixture(scope="module")
def moto_url():
    import logging

    from moto.server import ThreadedMotoServer

    from tests.support import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_the_builder_reads_the_s3_sink_when_the_config_enables_it(
    tmp_path, make_gateway, fake_openai, moto_url, aws_env
):
    import gzip

    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    s3.create_bucket(Bucket="dataset-logs")
    sink = {
        "enabled": True,
        "bucket": "dataset-logs",
        "prefix": "traffic",
        "endpoint_url": moto_url,
        "region": "us-east-1",
        "replica": "r1",
        "spool_path": str(tmp_path / "spool.db"),
        "max_batch_age": 0.1,
    }
    config = {
        "backends": {"base": backend_config("openai", fake_openai)},
        "routes": {"support-bot": {"baseline": "base"}},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}, "log_sink_s3": sink},
    }
    gateway = make_gateway(config)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="app-key", max_retries=0)
    questions = [f"question {a} on {b} for the {c} desk" for a, b, c in zip(WORDS[:15], WORDS[30:45], WORDS[60:75])]
    for text in questions:
        client.chat.completions.create(model="support-bot", messages=[{"role": "user", "content": text}])

    def shipped() -> int:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dataset-logs").get("Contents", [])]
        return sum(
            len(gzip.decompress(s3.get_object(Bucket="dataset-logs", Key=k)["Body"].read()).splitlines()) for k in keys
        )

    deadline = time.monotonic() + 60
    while shipped() < len(questions):
        assert time.monotonic() < deadline, "the S3 sink did not ship the exchanges"
        time.sleep(0.1)
    # the local traffic log is pointed elsewhere: only S3 can supply the records
    config["plugins"]["traffic_log"]["path"] = str(tmp_path / "absent.db")
    manifest = build(write_config(tmp_path, config), tmp_path / "out", "--format", "openai")
    assert manifest["source"]["kind"] == "s3" and manifest["source"]["bucket"] == "dataset-logs"
    assert manifest["counts"]["read"] == manifest["counts"]["kept"] == len(questions)
    written = [
        json.loads(line) for n in ("train", "validation", "test") for line in lines_of(tmp_path / "out" / f"{n}.jsonl")
    ]
    assert sorted(r["messages"][0]["content"] for r in written) == sorted(questions)
    assert all(r["messages"][1]["content"] == "echo: " + r["messages"][0]["content"] for r in written)


# --- tool use, and the formats of every model family Bedrock customizes ------------------------------

TRACK_TOOL = {
    "type": "function",
    "function": {
        "name": "track_order",
        "description": "where an order is",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}, "email": {"type": "string"}}},
    },
}


def _tool_log(tmp_path: Path, n: int = 40) -> str:
    """n tool-use exchanges (a call, then the tool's answer answered), n plain ones, n two-turn ones."""
    rng, now, contexts = random.Random(3), time.time(), []

    def words(k=12):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    for i in range(n):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "track_order", "arguments": json.dumps({"order": f"A{i}", "email": f"u{i}@shop.io"})},
        }
        question = f"where is order A{i}: {words()}"
        contexts.append(
            exchange(
                f"tool-call-{i}",
                now - 3000 + i,
                [{"role": "user", "content": question}],
                None,
                finish="tool_calls",
                tool_calls=[call],
                tools=[TRACK_TOOL],
            )
        )
        answered = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": f"order A{i} left the {words(4)}"},
        ]
        contexts.append(
            exchange(f"tool-answer-{i}", now - 2000 + i, answered, f"It is on its way: {words()}", tools=[TRACK_TOOL])
        )
        contexts.append(exchange(f"plain-{i}", now - 1000 + i, [{"role": "user", "content": words()}], words()))
        two_turns = [
            {"role": "user", "content": words()},
            {"role": "assistant", "content": words()},
            {"role": "user", "content": words()},
        ]
        contexts.append(exchange(f"turns-{i}", now - 500 + i, two_turns, words()))
    log_path = tmp_path / "traffic.db"
    write_exchanges(log_path, contexts)
    config = {
        "backends": {"base": {"kind": "openai", "model": "m", "api_key": "none", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": {"support-bot": {"baseline": "base"}},
        "plugins": {"traffic_log": {"path": str(log_path)}},
    }
    return write_config(tmp_path, config)


def test_tool_use_exchanges_are_training_examples_where_the_format_takes_them(tmp_path):
    config_path = _tool_log(tmp_path)
    manifest = build(config_path, tmp_path / "openai", "--format", "openai", "--split", "100/0/0")
    assert manifest["counts"]["kept"] == 160 and manifest["counts"]["tool_use"] == 80
    records = [json.loads(line) for line in lines_of(tmp_path / "openai" / "train.jsonl")]
    calls = [r for r in records if r["messages"][-1].get("tool_calls")]
    answers = [r for r in records if any(m["role"] == "tool" for m in r["messages"])]
    assert len(calls) == len(answers) == 40
    call = calls[0]
    assert call["tools"] == [TRACK_TOOL]
    assert call["messages"][-1]["role"] == "assistant" and "content" not in call["messages"][-1]
    arguments = json.loads(call["messages"][-1]["tool_calls"][0]["function"]["arguments"])
    assert arguments["email"] == "[EMAIL]" and arguments["order"].startswith("A")  # scrubbed inside the arguments
    assert manifest["pii_replaced"]["EMAIL"] == 80
    answer = answers[0]["messages"]
    assert [m["role"] for m in answer] == ["user", "assistant", "tool", "assistant"]
    assert answer[2]["tool_call_id"] == answer[1]["tool_calls"][0]["id"]
    assert validate_lines(lines_of(tmp_path / "openai" / "train.jsonl"), make_format("openai"), "train").ok

    for fmt in ("bedrock", "nova"):
        manifest = build(config_path, tmp_path / fmt, "--format", fmt, "--split", "50/50/0")
        assert manifest["dropped"] == {"tools_unsupported_by_format": 80}, fmt
        assert manifest["counts"]["kept"] == 80 and manifest["counts"]["tool_use"] == 0
        assert "only openai does" in manifest["drop_reasons"]["tools_unsupported_by_format"]
    for fmt in ("titan", "llama"):
        manifest = build(config_path, tmp_path / fmt, "--format", fmt, "--split", "100/0/0")
        assert manifest["dropped"] == {"tools_unsupported_by_format": 80, "multi_turn_unsupported_by_format": 40}
        assert manifest["counts"]["kept"] == 40


def test_each_family_gets_its_documented_record_shape(tmp_path):
    config_path = _tool_log(tmp_path, n=10)
    build(config_path, tmp_path / "nova", "--format", "nova", "--split", "100/0/0")
    nova = [json.loads(line) for line in lines_of(tmp_path / "nova" / "train.jsonl")]
    assert all(r["schemaVersion"] == "bedrock-conversation-2024" for r in nova)
    assert {len(r["messages"]) for r in nova} == {2, 4}  # Nova keeps several turns
    assert all(set(block) == {"text"} for r in nova for m in r["messages"] for block in m["content"])
    build(config_path, tmp_path / "titan", "--format", "titan", "--split", "100/0/0")
    titan = [json.loads(line) for line in lines_of(tmp_path / "titan" / "train.jsonl")]
    assert all(set(r) == {"prompt", "completion"} for r in titan) and len(titan) == 10

    nova_fmt, good = make_format("nova"), nova[0]
    assert nova_fmt.record_problems(good) == []
    reserved = {**good, "messages": [{"role": "user", "content": [{"text": "User: hi [EOS]"}]}, good["messages"][-1]]}
    assert nova_fmt.record_problems(reserved) == ["messages[0]: holds the reserved words User:, [EOS]"]
    assert nova_fmt.file_problems(7, "train") == ["7 records: a nova train file needs at least 8"]
    assert nova_fmt.file_problems(20_001, "train") == ["20001 records: a nova train file may hold at most 20000"]
    titan_fmt = make_format("titan")
    assert titan_fmt.record_problems({"prompt": "q", "completion": ""}) == ["'completion' must be non-empty text"]
    assert titan_fmt.record_problems({"prompt": "q" * 4096 * 6, "completion": "a"}) == [
        "about 4097 tokens, more than the 4096 a record may hold"
    ]
    openai_fmt = make_format("openai")
    stray = {
        "tools": [TRACK_TOOL],
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "refund", "arguments": "{"}}],
            },
            {"role": "tool", "tool_call_id": "c2", "content": "done"},
            {"role": "assistant", "content": "ok"},
        ],
    }
    assert openai_fmt.record_problems(stray) == [
        "messages[1].tool_calls[0]: calls 'refund', which 'tools' does not offer",
        "messages[1].tool_calls[0]: 'arguments' must be a JSON text",
        "messages[2]: a tool message must answer an earlier tool call by its 'tool_call_id'",
    ]
