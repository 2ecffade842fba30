"""Offline evaluation through the real gateway machinery: backends built from a config, fake upstreams
and a fake judge on 127.0.0.1, the report checked against figures computed here."""

import json
import math
import statistics
import subprocess
import sys
from contextlib import ExitStack

import pytest
import yaml
from aiohttp import web

from evaluators.metrics import (
    CostUsd,
    EmbeddingSimilarity,
    ExactMatch,
    Exchange,
    JsonSchemaValid,
    Keywords,
    LatencyMs,
    RegexMatch,
    Tokens,
)
from gateway.cli import main
from gateway.hookspecs import hookimpl
from tests.fakes.judge_api import QUALITY_MARK, FakeJudge
from tests.fakes.openai_api import FakeOpenAI
from tests.support import ServerThread

TOPICS = ["shipping", "refund", "password", "invoice", "warranty"]
PRICES = {"base": {"input": 1.0, "output": 2.0}, "cand": {"input": 0.5, "output": 1.0}}


class MarkedOpenAI(FakeOpenAI):
    """FakeOpenAI whose answers end with QUALITY_MARK (truly better: the oracle judge can tell), except to "[plain]"."""

    async def chat(self, request):
        response = await super().chat(request)
        if response.status != 200:
            return response
        data = json.loads(response.body)
        message = data["choices"][0]["message"]
        if "[plain]" not in message["content"]:
            message["content"] += " " + QUALITY_MARK
            data["usage"]["completion_tokens"] += 1
            data["usage"]["total_tokens"] += 1
        return web.json_response(data)


def make_cases(n: int) -> list[dict]:
    """Every tenth case is [plain] (the better side cannot mark it: a tie); keywords that hit, miss,
    or hit only a marked answer; a few cases for exact and regex match."""
    cases = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        text = f"Question {i} about {topic}" + (" [plain]" if i % 10 == 9 else "")
        case = (
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}
            if i % 3 == 0
            else {"prompt": text}
        )
        keywords = [["QUESTION", topic.upper()], [topic, "nowhere-to-be-found"], ["Thorough"], None][i % 4]
        if keywords:
            case["expected_keywords"] = keywords
        if i % 10 == 9:
            case["expected"] = f"echo: {text}"
        if i % 7 == 0:
            case["expected_regex"] = r"^echo: Question \d+"
        cases.append(case)
    return cases


def answer_of(case: dict, marked: bool) -> tuple[str, int, int]:
    """What a fake answers to a case: (text, prompt tokens, completion tokens)."""
    messages = case.get("messages") or [{"role": "user", "content": case["prompt"]}]
    text = "echo: " + messages[-1]["content"]
    if marked and "[plain]" not in text:
        text += " " + QUALITY_MARK
    return text, sum(len(m["content"].split()) for m in messages), len(text.split())


def wilson(successes: float, n: int) -> tuple[float, float]:
    z = statistics.NormalDist().inv_cdf(0.975)
    p = successes / n
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    return centre - half, centre + half


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


def with_arg(args: list[str], flag: str, value: str) -> list[str]:
    """The arguments with one flag's value replaced."""
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


class Eval:
    """Fake upstreams and judge on loopback, a config and a dataset in tmp_path, and `llmgate eval run`."""

    def __init__(self, tmp_path, stack: ExitStack, judge_mode: str = "oracle", better: bool = True):
        tmp_path.mkdir()
        self.tmp_path = tmp_path
        self.plain, self.marked, self.judge = FakeOpenAI(), MarkedOpenAI(), FakeJudge(judge_mode)
        for fake in (self.plain, self.marked, self.judge):
            fake.url = stack.enter_context(ServerThread(fake.app)).url
        self.baseline, self.candidate = (self.plain, self.marked) if better else (self.marked, self.plain)
        self.config = {
            "backends": {
                "base": self._backend(self.baseline, "base-model"),
                "cand": self._backend(self.candidate, "cand-model"),
                "judge": self._backend(self.judge, "judge-model"),
            },
            "routes": {"bot": {"baseline": "base", "candidates": {"cand": 0}, "retries": 0}},
            "prices": PRICES,
            "state": {"sqlite_path": str(tmp_path / "state.db")},
            "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
        }
        self.out = tmp_path / "report.json"

    @staticmethod
    def _backend(fake, model: str) -> dict:
        return {"kind": "openai", "base_url": fake.url + "/v1", "model": model, "api_key": "none"}

    def write(self, cases: list[dict]) -> list[str]:
        (self.tmp_path / "gateway.yaml").write_text(yaml.safe_dump(self.config))
        (self.tmp_path / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
        return [
            "eval",
            "run",
            "--config",
            str(self.tmp_path / "gateway.yaml"),
            "--route",
            "bot",
            "--candidate",
            "cand",
            "--judge",
            "judge",
            "--dataset",
            str(self.tmp_path / "cases.jsonl"),
            "--out",
            str(self.out),
        ]

    def run(self, cases: list[dict], *extra: str) -> int:
        return main(self.write(cases) + list(extra))

    def report(self) -> dict:
        return json.loads(self.out.read_text())

    def case_records(self) -> list[dict]:
        return [json.loads(line) for line in (self.tmp_path / "report.cases.jsonl").read_text().splitlines()]


@pytest.fixture
def make_eval(tmp_path):
    with ExitStack() as stack:
        made = []

        def make(**kw) -> Eval:
            made.append(Eval(tmp_path / f"eval{len(made)}", stack, **kw))
            return made[-1]

        yield make


def test_a_truly_better_candidate_passes_and_the_report_holds_the_computed_figures(make_eval, capsys, monkeypatch):
    monkeypatch.setattr(EmbeddingSimilarity, "MODULES", ("no_such_embeddings_module",))  # as without the extra
    ev = make_eval()
    cases = make_cases(50)
    assert ev.run(cases) == 0
    report = ev.report()

    wins, ties = sum(i % 10 != 9 for i in range(50)), sum(i % 10 == 9 for i in range(50))
    assert report["counts"] == {"cases": 50, "judged": 50, "judge_errors": 0, "run_errors": 0}
    judge = report["judge"]
    assert (judge["wins"], judge["losses"], judge["ties"]) == (wins, 0, ties) == (45, 0, 5)
    assert judge["win_rate"] == pytest.approx((wins + ties / 2) / 50) == pytest.approx(0.95)
    low, high = wilson(wins + ties / 2, 50)
    assert judge["ci95"]["low"] == pytest.approx(low) and judge["ci95"]["high"] == pytest.approx(high)
    assert judge["prompt_tokens"] > 0
    assert len(ev.judge.requests) == 100, "each case is judged in both orders"
    assert len(ev.baseline.requests) == len(ev.candidate.requests) == 50
    assert {r["model"] for r in ev.candidate.requests} == {"cand-model"}

    metrics = report["metrics"]
    for side, marked in (("baseline", False), ("candidate", True)):
        answers = [answer_of(c, marked) for c in cases]
        hits = [
            all(k.lower() in text.lower() for k in c["expected_keywords"])
            for c, (text, _, _) in zip(cases, answers)
            if "expected_keywords" in c
        ]
        assert metrics["keywords"][side] == pytest.approx(sum(hits) / len(hits))
        assert metrics["tokens"][side] == pytest.approx(statistics.mean(p + c for _, p, c in answers))
        price = PRICES["base" if side == "baseline" else "cand"]
        assert metrics["cost_usd"][side] == pytest.approx(
            statistics.mean((p * price["input"] + c * price["output"]) / 1e6 for _, p, c in answers)
        )
        exact = [text == c["expected"] for c, (text, _, _) in zip(cases, answers) if "expected" in c]
        assert metrics["exact_match"][side] == pytest.approx(sum(exact) / len(exact)) == 1.0
        assert metrics["regex_match"][side] == 1.0
    assert metrics["keywords"]["n"] == sum("expected_keywords" in c for c in cases) == 38
    assert metrics["keywords"]["baseline"] == pytest.approx(13 / 38)  # i % 4 == 0 hit; "Thorough" misses
    assert metrics["keywords"]["candidate"] == pytest.approx(25 / 38)  # and all 12 "Thorough" cases are marked
    assert metrics["json_schema"]["n"] == 0
    assert metrics["embedding_similarity"]["unavailable"].startswith("needs the embeddings extra")
    assert metrics["embedding_similarity"]["baseline"] is None

    records = ev.case_records()
    for side in ("baseline", "candidate"):
        latencies = [r[side]["latency_ms"] for r in records]
        assert report["latency_ms"][side] == {"p50": nearest_rank(latencies, 50), "p95": nearest_rank(latencies, 95)}
        assert 0 < report["latency_ms"][side]["p50"] <= report["latency_ms"][side]["p95"]

    assert report["verdict"] == "pass" and report["gate"]["passed"] and report["gate"]["failed"] == []
    assert [c["name"] for c in report["gate"]["conditions"]] == [
        "judged_share",
        "win_rate",
        "win_rate_lower_bound",
        "regression:keywords",
        "regression:exact_match",
        "regression:regex_match",
        "regression:tokens",
        "regression:cost_usd",
    ]
    out = capsys.readouterr()
    assert "45 wins, 0 losses, 5 ties" in out.out and "verdict: PASS" in out.out
    assert "embedding_similarity" in out.out and "unavailable: needs the embeddings extra" in out.out
    assert "50/50 cases" in out.err, "the progress bar"


def test_a_worse_candidate_fails_and_the_report_names_the_failed_conditions(make_eval, capsys):
    ev = make_eval(better=False)
    assert ev.run(make_cases(50)) == 1
    report = ev.report()
    assert (report["judge"]["wins"], report["judge"]["losses"], report["judge"]["ties"]) == (0, 45, 5)
    assert report["verdict"] == "fail"
    assert report["gate"]["failed"] == ["win_rate", "win_rate_lower_bound", "regression:keywords"]
    keywords = next(c for c in report["gate"]["conditions"] if c["name"] == "regression:keywords")
    assert keywords["value"] == pytest.approx(12 / 25) and keywords["threshold"] == 0.05  # 25 hits became 13
    assert "verdict: FAIL (win_rate, win_rate_lower_bound, regression:keywords)" in capsys.readouterr().out


def test_a_judge_that_always_prefers_the_first_position_yields_ties_not_wins(make_eval):
    ev = make_eval(judge_mode="first")
    assert ev.run(make_cases(20)) == 1
    report = ev.report()
    assert (report["judge"]["wins"], report["judge"]["losses"], report["judge"]["ties"]) == (0, 0, 20)
    assert report["judge"]["win_rate"] == 0.5
    assert report["gate"]["failed"] == ["win_rate", "win_rate_lower_bound"]


def test_a_judge_that_answers_garbage_yields_judge_errors_and_fails_the_judged_share(make_eval):
    ev = make_eval(judge_mode="garbage")
    assert ev.run(make_cases(20)) == 1
    report = ev.report()
    assert report["counts"] == {"cases": 20, "judged": 0, "judge_errors": 20, "run_errors": 0}
    assert report["judge"]["win_rate"] is None and report["judge"]["ci95"] is None
    assert report["gate"]["failed"] == ["judged_share", "win_rate", "win_rate_lower_bound"]
    assert "no JSON object" in report["errors"][0]["message"] and len(report["errors"]) == 20
    assert len(ev.judge.requests) == 40, "the first order, tried twice, then the judge gives up on the case"


def test_a_metric_beyond_its_tolerance_fails_the_gate_and_thresholds_are_flags(make_eval):
    ev = make_eval()
    ev.config["prices"] = {**PRICES, "cand": {"input": 10.0, "output": 10.0}}
    assert ev.run(make_cases(20)) == 1
    report = ev.report()
    assert report["gate"]["failed"] == ["regression:cost_usd"]
    cost = next(c for c in report["gate"]["conditions"] if c["name"] == "regression:cost_usd")
    assert cost["threshold"] == 0.25 and cost["value"] > 1
    judged = len(ev.judge.requests)
    assert ev.run(make_cases(20), "--tolerance", "cost_usd=off") == 0
    assert len(ev.judge.requests) == judged, "a new gate over the same cases re-judges nothing"
    assert ev.run(make_cases(20), "--tolerance", "cost_usd=off", "--min-win-rate", "0.99") == 1
    assert ev.report()["gate"]["failed"] == ["win_rate"]
    assert ev.run(make_cases(20), "--tolerance", "no_such_metric=0.1") == 2


def test_an_interrupted_run_resumes_and_ends_with_the_same_report(make_eval):
    ev = make_eval()
    cases = make_cases(50)
    ev.candidate.fail_next(*[500] * 15)  # the candidate's upstream fails 15 requests (retries: 0)
    assert ev.run(cases) == 1
    first = ev.report()
    assert first["counts"]["run_errors"] == 15 and first["counts"]["judged"] == 35
    assert first["gate"]["failed"] == ["judged_share"]
    assert "UpstreamError" in first["errors"][0]["message"]

    seen = {
        name: len(fake.requests) for name, fake in (("base", ev.baseline), ("cand", ev.candidate), ("judge", ev.judge))
    }
    assert ev.run(cases) == 0
    resumed = ev.report()
    assert len(ev.baseline.requests) - seen["base"] == len(ev.candidate.requests) - seen["cand"] == 15
    assert len(ev.judge.requests) - seen["judge"] == 30, "only the failed cases are judged again"
    assert resumed["counts"] == {"cases": 50, "judged": 50, "judge_errors": 0, "run_errors": 0}
    assert (resumed["judge"]["wins"], resumed["judge"]["ties"]) == (45, 5)

    judged = len(ev.judge.requests)
    assert ev.run(cases) == 0
    assert len(ev.judge.requests) == judged, "a finished run re-judges nothing"
    assert ev.report() == resumed

    # A run killed while writing leaves a line cut short: that case is run again, the rest kept.
    results = ev.tmp_path / "report.cases.jsonl"
    results.write_text(results.read_text()[:-40])
    assert ev.run(cases) == 0
    assert len(ev.judge.requests) == judged + 2
    again = ev.report()
    assert {k: again[k] for k in ("counts", "judge", "gate", "verdict")} == {
        k: resumed[k] for k in ("counts", "judge", "gate", "verdict")
    }

    # Another comparison (here: another judge) never reuses these results.
    ev.config["backends"]["judge2"] = ev.config["backends"]["judge"]
    assert main(with_arg(ev.write(cases), "--judge", "judge2")) == 0
    assert len(ev.judge.requests) == judged + 2 + 100


def test_bad_dataset_lines_are_reported_with_their_numbers(make_eval, capsys):
    ev = make_eval()
    args = ev.write([])
    (ev.tmp_path / "cases.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"prompt": "fine"}),
                "{not json",
                "",
                json.dumps({"prompt": "both", "messages": [{"role": "user", "content": "x"}]}),
                json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),
                json.dumps({"prompt": "x", "expected_keywords": "refund"}),
                json.dumps({"prompt": "x", "expected_regex": "(unclosed"}),
                json.dumps({"prompt": "x", "json_schema": {"type": "no-such-type"}}),
                json.dumps(["a list"]),
            ]
        )
        + "\n"
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    path = ev.tmp_path / "cases.jsonl"
    assert "7 bad line(s)" in err
    for number, message in [
        (2, "Expecting property name"),
        (4, "a test case needs 'messages' or 'prompt'"),
        (5, "messages[0].role must be one of"),
        (6, "'expected_keywords' must be a list"),
        (7, "'expected_regex' is not a valid regular expression"),
        (8, "'json_schema' is not a valid JSON schema"),
        (9, "a test case must be a JSON object"),
    ]:
        assert f"{path}:{number}: {message}" in err
    assert f"{path}:1:" not in err and f"{path}:3:" not in err
    assert ev.judge.requests == [] and ev.baseline.requests == []


class WordCount:
    """A third-party evaluator plugin: answer length in words, and one evaluator that always raises."""

    class Words:
        name, higher_is_better, tolerance = "words", False, None

        def evaluate(self, case, answer, exchange):
            return len(answer.split())

    class Broken:
        name, higher_is_better, tolerance = "broken", True, None

        def evaluate(self, case, answer, exchange):
            raise RuntimeError("this evaluator has a bug")

    @hookimpl
    def register_evaluators(self):
        return [self.Words(), self.Broken()]


def test_a_third_party_evaluator_plugin_shows_up_in_the_report(make_eval, capsys):
    ev = make_eval()
    ev.config["plugins"]["wordcount"] = {"module": "tests.test_eval:WordCount"}
    cases = make_cases(10)
    assert ev.run(cases, "--tolerance", "words=0.01") == 1
    report = ev.report()
    words = report["metrics"]["words"]
    assert words["baseline"] == pytest.approx(statistics.mean(len(answer_of(c, False)[0].split()) for c in cases))
    assert words["candidate"] == pytest.approx(statistics.mean(len(answer_of(c, True)[0].split()) for c in cases))
    assert report["gate"]["failed"] == ["regression:words"], "a third party's metric is gated like a built-in one"
    assert report["metrics"]["broken"]["errors"] == 20 and report["metrics"]["broken"]["n"] == 0
    assert report["counts"]["judged"] == 10, "a broken evaluator does not stop the run"
    assert "words" in capsys.readouterr().out


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_the_cli_exits_0_when_the_gate_passes_1_when_it_fails_2_when_it_cannot_run(make_eval, tmp_path):
    better = make_eval()
    passed = _cli(better.write(make_cases(10)))
    assert passed.returncode == 0, passed.stderr
    assert "verdict: PASS" in passed.stdout and "win rate 95.0%" in passed.stdout
    assert json.loads(better.out.read_text())["verdict"] == "pass"

    worse = make_eval(better=False)
    failed = _cli(worse.write(make_cases(10)))
    assert failed.returncode == 1, failed.stderr
    assert "verdict: FAIL (win_rate, win_rate_lower_bound, regression:keywords)" in failed.stdout

    unknown = _cli(with_arg(worse.write(make_cases(10)), "--route", "nope"))
    assert unknown.returncode == 2 and "unknown route 'nope' (routes: bot)" in unknown.stderr
    missing = _cli(with_arg(worse.write([]), "--dataset", str(tmp_path / "absent.jsonl")))
    assert missing.returncode == 2 and "cannot read the dataset" in missing.stderr
    usage = _cli(["eval", "run", "--route", "bot"])
    assert usage.returncode == 2 and "required" in usage.stderr


@pytest.mark.parametrize(
    "evaluator, case, answer, expected",
    [
        (Keywords(), {"expected_keywords": ["Reset", "EMAIL"]}, "reset it, then check your email", 1.0),
        (Keywords(), {"expected_keywords": ["reset", "sms"]}, "reset it, then check your email", 0.0),
        (Keywords(), {}, "anything", None),
        (ExactMatch(), {"expected": "42"}, " 42\n", 1.0),
        (ExactMatch(), {"expected": "42"}, "42.", 0.0),
        (RegexMatch(), {"expected_regex": r"order #\d+"}, "your order #123 ships today", 1.0),
        (RegexMatch(), {"expected_regex": r"^\d+$"}, "12 apples", 0.0),
        (JsonSchemaValid(), {"json_schema": {"type": "object", "required": ["id"]}}, '```json\n{"id": 1}\n```', 1.0),
        (JsonSchemaValid(), {"json_schema": {"type": "object", "required": ["id"]}}, '{"name": "x"}', 0.0),
        (JsonSchemaValid(), {"json_schema": {"type": "object"}}, "not json", 0.0),
        (Tokens(), {}, "", 12.0),
        (CostUsd(), {}, "", 0.25),
        (LatencyMs(), {}, "", 30.0),
    ],
)
def test_each_deterministic_evaluator(evaluator, case, answer, expected):
    exchange = Exchange("b", latency_ms=30.0, cost_usd=0.25, usage={"prompt_tokens": 5, "completion_tokens": 7})
    assert evaluator.evaluate(case, answer, exchange) == expected
