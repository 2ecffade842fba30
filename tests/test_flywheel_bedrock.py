"""The flywheel on Bedrock: the dataset in Claude's Bedrock format, the job on moto's model
customization (through tests/fakes/bedrock_control.py, which adds provisioned throughput), the
trained model served by the fake Bedrock runtime, then the offline gate. The fake runtime echoes
for every model, so the new model is no better than the base one and the gate stops the run: the
Bedrock half of the loop, up to the gate's verdict, with the states and the registry record.

moto keeps a customization job InProgress; the test completes it (as tests/test_retrain.py does)
and otherwise only calls the plugin's own `tick`, the step its background loop takes.
"""

from __future__ import annotations

import json
import time

from flywheel.pipeline.plugin import Flywheel
from gateway.gateway import GATEWAY
from tests import test_retrain
from tests.fakes.judge_api import FakeJudge
from tests.support import serving
from tests.test_retrain import HAIKU, bedrock_setup, moto_job
from tests.traffic_records import exchange, write_exchanges

aws, moto_url = test_retrain.aws, test_retrain.moto_url  # its moto and control-plane fixtures, shared


def test_a_bedrock_run_builds_claudes_format_trains_deploys_and_meets_the_gate(
    tmp_path, aws, fake_bedrock, make_gateway
):
    now = time.time()
    write_exchanges(
        tmp_path / "traffic.db",
        [
            exchange(
                f"r{i}",
                now - 600 + i,
                [{"role": "user", "content": f"is the {i}th parcel late?"}],
                f"no {i}",
                route="bot",
            )
            for i in range(120)
        ],
    )
    judge = FakeJudge("oracle")
    with serving(judge):
        config = bedrock_setup(tmp_path, aws, fake_bedrock, enabled=True, poll_interval=3600)
        config["backends"]["judge"] = {"kind": "openai", "base_url": judge.url + "/v1", "model": "j", "api_key": "none"}
        config["routes"]["bot"]["retries"] = 0
        config["plugins"].update(
            {
                "judge": {"enabled": True, "backend": "judge"},
                "flywheel": {
                    "enabled": True,
                    "check_interval": 3600,
                    "workdir": str(tmp_path / "fw"),
                    "routes": {
                        "bot": {
                            "provider": "bedrock",
                            "every_seconds": 1,
                            "min_examples": 32,
                            "dataset": {"split": [50, 30, 20]},
                            "hyperparameters": {"epochCount": 2},
                            "cost": {"usd_per_million_tokens": 8.0, "max_usd": 10},
                            "gate": {"judge": "judge", "test_cases": 6, "replay_cases": 10},
                        }
                    },
                },
            }
        )
        gw = make_gateway(config)
        flywheel = gw.app[GATEWAY].plugin(Flywheel)
        assert gw.call(flywheel.tick(now))["bot"] == "not due"  # the schedule counts from the first look
        assert gw.call(flywheel.tick(now + 2))["bot"].startswith("schedule: every 1s; started run fw-")
        [run] = gw.call(flywheel.runs())
        assert gw.call(flywheel.tick())["bot"] == f"run {run['id']}: training", gw.call(flywheel.runs())[0][
            "stop_reason"
        ]
        [run] = gw.call(flywheel.runs())
        assert run["dataset"]["format"] == "bedrock" and run["dataset"]["counts"]["train"] == 60
        record = json.loads(
            (tmp_path / "fw" / "bot" / run["id"] / "dataset" / "train.jsonl").read_text().splitlines()[0]
        )
        assert set(record) == {"messages"} and [m["role"] for m in record["messages"]] == ["user", "assistant"]
        assert run["cost"]["epochs"] == 2 and run["base_model"] == HAIKU

        job = gw.call(gw.app[GATEWAY].store.get("retrain:job:" + run["job"]))
        moto_job(job["provider_job"]).status = "Completed"  # the service would finish it
        while (step := gw.call(flywheel.tick(), timeout=120)["bot"]).endswith(("training", "deploying")):
            time.sleep(0.05)
        [run] = gw.call(flywheel.runs())
        assert [h["state"] for h in run["history"]] == [
            "triggered",
            "dataset",
            "training",
            "deploying",
            "evaluating",
            "stopped",
        ], step
        [(arn, provisioned)] = aws.front.provisioned.items()
        assert provisioned["status"] == "InService"
        assert run["stop_reason"].startswith("offline gate failed") and run["evaluation"]["gate"]["against"] == "base"
        assert run["evaluation"]["gate"]["cases"] == 16 and run["evaluation"]["gate"]["wins"] == 0
        assert arn in {model for model, _ in fake_bedrock.requests}  # the provisioned model answered the gate
        registered = gw.call(gw.app[GATEWAY].store.get("models:" + run["model"]))
        assert registered["backend"] == {"like": "base", "model": arn} and registered["shadow"] == []
        assert registered["details"]["lifecycle"] == "rejected"
        assert registered["details"]["lineage"]["dataset"]["format"] == "bedrock"
