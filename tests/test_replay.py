"""`llmgate replay`: a route's logged questions asked again of a candidate, off the request path.

The traffic log is written by the traffic_log plugin's own writer (tests/traffic_records.py),
with PII and exchanges that used tools; the candidate and the baseline are fake OpenAI models
(tests/fakes/openai_finetune_api.py: `model_styles` makes one answer better), the judge the
oracle of tests/fakes/judge_api.py. The command runs as a user would run it, through the CLI.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from gateway.cli import main
from tests.conftest import UPSTREAM_KEY
from tests.fakes.judge_api import FakeJudge
from tests.fakes.openai_finetune_api import FakeOpenAIFineTuning
from tests.support import serving
from tests.traffic_records import exchange, write_exchanges

TOOL = {"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}


@pytest.fixture
def setup(tmp_path):
    api, judge = FakeOpenAIFineTuning(api_key=UPSTREAM_KEY), FakeJudge("oracle")
    api.model_styles = {"better-model": "thorough"}
    with serving(api), serving(judge):
        now, contexts = time.time(), []
        for i in range(30):
            question = f"when does parcel {i} arrive? mail me at buyer{i}@example.com"
            contexts.append(exchange(f"q-{i}", now - 3600 + i, [{"role": "user", "content": question}], f"soon {i}"))
        for i in range(6):  # a refund done through a tool: never asked again unless --include-tools
            call = {"id": f"c{i}", "type": "function", "function": {"name": "refund", "arguments": "{}"}}
            contexts.append(
                exchange(
                    f"tool-{i}",
                    now - 1800 + i,
                    [{"role": "user", "content": f"refund order {i}"}],
                    None,
                    finish="tool_calls",
                    tool_calls=[call],
                    tools=[TOOL],
                )
            )
        contexts.append(exchange("old", now - 10 * 86400, [{"role": "user", "content": "old question"}], "old"))
        contexts.append(exchange("failed", now - 60, [{"role": "user", "content": "x"}], None, status=502))
        write_exchanges(tmp_path / "traffic.db", contexts)

        def backend(model: str, url: str = api.url) -> dict:
            return {"kind": "openai", "base_url": url + "/v1", "model": model, "api_key": UPSTREAM_KEY}

        config = {
            "backends": {
                "base": backend("gpt-4o-mini"),
                "better": backend("better-model"),
                "same": backend("same-model"),
                "judge": {**backend("judge-1", judge.url), "api_key": "none"},
            },
            "routes": {"support-bot": {"baseline": "base"}},
            "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        yield str(path), api


def replay(config_path: str, out, *extra: str) -> int:
    return main(
        ["replay", "--config", config_path, "--route", "support-bot", "--judge", "judge", "--out", str(out), *extra]
    )


def test_replay_asks_last_weeks_questions_again_scrubbed_paced_and_judged(setup, tmp_path, capsys):
    config_path, api = setup
    started = time.monotonic()
    code = replay(config_path, tmp_path / "r.json", "--candidate", "better", "--since", "7d", "--rate", "10")
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 0, out + err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["replay"]["sampled"] == 30
    assert report["replay"]["skipped"] == {"tool_side_effects": 6, "not_answered": 1}  # the old one is out of range
    assert report["judge"]["wins"] == 30 and report["judge"]["ci95"]["low"] > 0.5
    assert report["counts"]["run_errors"] == 0 and report["verdict"] == "pass"
    assert set(report["latency_ms"]) == {"baseline", "candidate"} and "cost_usd" in report["metrics"]
    assert elapsed >= 2.8  # 30 questions at 10 a second
    assert "eval [" in err and "30/30 cases" in err  # the progress bar
    assert "skipped 6: the exchange offered tools or carried tool results" in err
    assert "win rate 100.0% (95% CI" in out and "verdict: PASS" in out

    asked = [b for b in api.requests if isinstance(b, dict) and b.get("model") == "better-model"]
    assert len(asked) == 30
    sent = json.dumps(asked)
    assert "[EMAIL]" in sent and "@example.com" not in sent  # PII never leaves in a replay
    assert "refund order" not in sent

    again = replay(config_path, tmp_path / "r.json", "--candidate", "better", "--rate", "100")
    assert again == 0 and len([b for b in api.requests if b.get("model") == "better-model"]) == 30  # resumed: all done


def test_replay_fails_a_candidate_no_better_and_can_include_tools(setup, tmp_path, capsys):
    config_path, api = setup
    code = replay(config_path, tmp_path / "same.json", "--candidate", "same", "--rate", "100", "--include-tools")
    capsys.readouterr()
    assert code == 1
    report = json.loads((tmp_path / "same.json").read_text())
    assert report["replay"]["sampled"] == 36 and "tool_side_effects" not in report["replay"]["skipped"]
    assert report["judge"]["ties"] == report["counts"]["judged"] and "win_rate_lower_bound" in report["gate"]["failed"]
    assert replay(config_path, tmp_path / "x.json", "--candidate", "nosuch") == 2
    assert "unknown backend 'nosuch'" in capsys.readouterr().err
