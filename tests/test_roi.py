"""`llmgate roi`: the break-even from the traffic log's real token counts and the config's prices."""

import json
import time
from datetime import datetime, timezone

import pytest
import yaml

from gateway.cli import main
from tests.traffic_records import exchange, write_exchanges

DAY = 86400
PRICES = {"base": {"input": 3.0, "output": 15.0}, "ft": {"input": 0.8, "output": 4.0}}


@pytest.fixture
def logged(tmp_path):
    """200 answered exchanges of 50,000 prompt and 10,000 completion tokens over 10 days, plus noise."""
    end = time.time() // 3600 * 3600
    start = end - 10 * DAY
    contexts = [
        exchange(
            f"r{i}",
            start + i * (10 * DAY / 200),
            [{"role": "user", "content": "q"}],
            "a",
            prompt_tokens=50_000,
            completion_tokens=10_000,
            cost_usd=0.3,
        )
        for i in range(200)
    ]
    contexts += [exchange(f"e{i}", start + i, [{"role": "user", "content": "q"}], None, status=502) for i in range(10)]
    contexts += [
        exchange(
            f"o{i}",
            start + i,
            [{"role": "user", "content": "q"}],
            "a",
            route="other",
            prompt_tokens=10**7,
            completion_tokens=10**7,
        )
        for i in range(5)
    ]
    contexts += [exchange("late", end + 10, [{"role": "user", "content": "q"}], "a", prompt_tokens=10**7)]
    write_exchanges(tmp_path / "traffic.db", contexts)
    config = {
        "backends": {
            "base": {"kind": "openai", "model": "gpt-big", "api_key": "none"},
            "ft": {
                "kind": "bedrock",
                "model": "arn:aws:bedrock:us-east-1:1:provisioned-model/x",
                "region": "us-east-1",
            },
        },
        "routes": {"support-bot": {"baseline": "base", "candidates": {"ft": 0}}},
        "prices": PRICES,
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))

    def iso(ts):
        return datetime.fromtimestamp(ts, timezone.utc).isoformat()

    return str(path), iso(start), iso(end)


def roi(capsys, *args) -> tuple[int, dict | str]:
    capsys.readouterr()
    code = main(["roi", *args])
    out = capsys.readouterr()
    if code == 0 and "--json" in args:
        return code, json.loads(out.out)
    return code, out.out + out.err


def test_break_even_from_logged_tokens_and_configured_prices(logged, capsys):
    config, since, until = logged
    code, result = roi(
        capsys,
        "--config",
        config,
        "--route",
        "support-bot",
        "--candidate",
        "ft",
        "--since",
        since,
        "--until",
        until,
        "--training-cost",
        "500",
        "--fixed-monthly",
        "20",
        "--json",
    )
    assert code == 0
    # 10M prompt and 2M completion tokens in 10 days: base 10*3 + 2*15 = $60, ft 10*0.8 + 2*4 = $16
    assert result["requests"] == 200 and result["window_days"] == pytest.approx(10)
    assert result["current"] == "base"  # the route's baseline
    assert result["current_monthly_usd"] == pytest.approx(180)
    assert result["candidate_monthly_usd"] == pytest.approx(48 + 20)
    assert result["monthly_saving_usd"] == pytest.approx(112)
    assert result["break_even_days"] == pytest.approx(500 / (112 / 30))
    assert result["annual_roi"] == pytest.approx((12 * 112 - 500) / 500)
    assert result["logged_cost_usd"] == pytest.approx(60)

    code, result = roi(
        capsys,
        "--config",
        config,
        "--route",
        "support-bot",
        "--candidate",
        "ft",
        "--since",
        since,
        "--until",
        until,
        "--training-cost",
        "500",
        "--prompt-reduction",
        "50",
        "--json",
    )
    assert result["candidate_monthly_usd"] == pytest.approx((5 * 0.8 + 2 * 4) * 3)
    assert result["monthly_saving_usd"] == pytest.approx(180 - 36)

    code, text = roi(
        capsys,
        "--config",
        config,
        "--route",
        "support-bot",
        "--candidate",
        "ft",
        "--since",
        since,
        "--until",
        until,
        "--training-cost",
        "500",
        "--fixed-monthly",
        "20",
    )
    assert code == 0
    assert "monthly saving $112.00" in text and "break-even: 134 days" in text and "annual ROI: 169%" in text


def test_a_dearer_candidate_never_breaks_even(logged, capsys):
    config, since, until = logged
    code, result = roi(
        capsys,
        "--config",
        config,
        "--route",
        "support-bot",
        "--current",
        "ft",
        "--candidate",
        "base",
        "--since",
        since,
        "--until",
        until,
        "--training-cost",
        "100",
        "--json",
    )
    assert code == 0
    assert result["monthly_saving_usd"] == pytest.approx(48 - 180)
    assert result["break_even_days"] is None and result["annual_roi"] < -1
    code, text = roi(
        capsys,
        "--config",
        config,
        "--route",
        "support-bot",
        "--current",
        "ft",
        "--candidate",
        "base",
        "--since",
        since,
        "--until",
        until,
        "--training-cost",
        "100",
    )
    assert "break-even: never" in text


def test_training_cost_estimated_from_a_built_dataset(logged, tmp_path, capsys):
    config, since, until = logged
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"format": "openai"}))
    line = json.dumps(
        {"messages": [{"role": "user", "content": "u" * 400}, {"role": "assistant", "content": "a" * 400}]}
    )
    (dataset / "train.jsonl").write_text((line + "\n") * 10)
    code, result = roi(
        capsys,
        "--config",
        config,
        "--route",
        "support-bot",
        "--candidate",
        "ft",
        "--since",
        since,
        "--until",
        until,
        "--dataset",
        str(dataset),
        "--training-price",
        "8",
        "--epochs",
        "2",
        "--json",
    )
    assert code == 0
    assert result["training_tokens"] == 10 * 200 * 2  # 800 characters at 4 per token, twice
    assert result["one_off_usd"] == pytest.approx(4000 * 8 / 1e6)


def test_missing_inputs_are_named(logged, capsys):
    config, since, until = logged
    code, text = roi(
        capsys, "--config", config, "--route", "support-bot", "--candidate", "nope", "--training-cost", "1"
    )
    assert code == 1 and "no price for 'nope'" in text and "prices.nope" in text
    code, text = roi(capsys, "--config", config, "--route", "support-bot", "--candidate", "ft")
    assert code == 1 and "--training-cost" in text
    code, text = roi(
        capsys, "--config", config, "--route", "quiet", "--current", "base", "--candidate", "ft", "--training-cost", "1"
    )
    assert code == 1 and "no answered exchange" in text
