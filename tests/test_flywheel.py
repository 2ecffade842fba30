"""The flywheel end to end on loopback, nobody in the loop: traffic and feedback through a real
`llmgate serve`, then the pipeline alone takes a model from the traffic log to every user.

Upstreams: tests/fakes/openai_finetune_api.py is OpenAI (files, fine-tuning jobs that advance as
they are polled, chat for the base model and the fine-tuned ones: the Nth job's model answers
in the Nth of its `styles`), tests/fakes/judge_api.py the judge (an oracle preferring answers
marked "(thorough)"). The test only sends users' traffic and ratings, reads the admin API and
the command line, and (in the second test) makes a deployment degrade; it never calls a step.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from gateway.cli import main as cli
from tests.browser import screenshot
from tests.conftest import UPSTREAM_KEY
from tests.fakes.judge_api import FakeJudge
from tests.fakes.openai_finetune_api import FakeOpenAIFineTuning
from tests.support import GatewayProcess, serving, wait_until

pytestmark = pytest.mark.slow

ADMIN = "admin-token-for-flywheel-tests"
ORDERS = "parcel refund invoice courier warranty voucher battery jacket kettle lamp".split()


def call(url: str, method: str = "GET", body: dict | None = None, token: str | None = ADMIN):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body is not None else None, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def config_for(tmp_path, ft, judge, *, min_interval: float) -> dict:
    return {
        "server": {"admin_token": ADMIN},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": {
            "base": {"kind": "openai", "base_url": ft.url + "/v1", "model": "gpt-4o-mini", "api_key": UPSTREAM_KEY},
            "judge": {"kind": "openai", "base_url": judge.url + "/v1", "model": "judge-1", "api_key": "none"},
        },
        "routes": {"bot": {"baseline": "base", "retries": 0}},
        "plugins": {
            "traffic_log": {"path": str(tmp_path / "traffic.db"), "batch_wait_ms": 20},
            "shadow": {"path": str(tmp_path / "shadow.db")},
            "feedback": {"path": str(tmp_path / "feedback.db")},
            "judge": {
                "enabled": True,
                "backend": "judge",
                "sample_rate": 1.0,
                "daily_budget": 100000,
                "max_concurrent": 4,
            },
            "rollout": {"resync_interval": 1},
            "auto_rollback": {
                "interval_seconds": 0.2,
                "window_seconds": 2,
                "min_samples": 5,
                "failure_limit": 1,
                "rules": {
                    "p95_latency": None,
                    "p95_ttft": None,
                    "complaints": None,
                    "cost_per_request": None,
                    "scores": {},
                },
            },
            "retrain": {
                "enabled": True,
                "poll_interval": 0.2,
                "openai": {"backend": "base", "base_model": "gpt-4o-mini-2024-07-18"},
            },
            "flywheel": {
                "enabled": True,
                "check_interval": 0.2,
                "workdir": str(tmp_path / "flywheel"),
                "routes": {
                    "bot": {
                        "provider": "openai",
                        "hyperparameters": {"n_epochs": 2},
                        "min_rated": 40,
                        "min_interval_seconds": min_interval,
                        "min_examples": 20,
                        "dataset": {"feedback": "helpful"},
                        "cost": {"usd_per_million_tokens": 25.0, "max_usd": 5.0},
                        "gate": {"judge": "judge", "test_cases": 10, "replay_cases": 12, "margin": 0.5},
                        "shadow": {"min_judged": 5, "min_score": 0.5, "max_seconds": 120},
                        "rollout": {"steps": [50, 100], "hold_seconds": 2},
                    }
                },
            },
        },
    }


def rated_traffic(gw: GatewayProcess, start: int, n: int = 60) -> list[str]:
    """n users each ask once and rate the answer helpful; some questions carry an email address."""
    ids = []
    for i in range(start, start + n):
        email = f" write to me at user{i}@example.com" if i % 4 == 0 else ""
        body = {
            "model": "bot",
            "user": f"user-{i}",
            "messages": [
                {"role": "user", "content": f"where is my {ORDERS[i % 10]} number {i}, shipped on day {i * 7}?{email}"}
            ],
        }
        status, headers, _ = call(gw.url + "/v1/chat/completions", "POST", body, token="app-key")
        assert status == 200
        ids.append(headers["x-request-id"])
    for request_id in ids:
        status, _, _ = wait_until(
            lambda rid=request_id: (
                (r := call(gw.url + "/v1/feedback", "POST", {"request_id": rid, "rating": "helpful"}, token="app-key"))[
                    0
                ]
                != 404
                and r
            ),
            what="the exchange to be logged before it is rated",
        )
        assert status == 200
    return ids


class Background:
    """Users keep asking (about 10 a second) while the pipeline works: the shadow and the canary need traffic."""

    def __init__(self, gw: GatewayProcess):
        self.gw, self.stop_flag, self.sent = gw, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            i = self.sent
            body = {
                "model": "bot",
                "user": f"live-{i % 97}",
                "messages": [{"role": "user", "content": f"live question {i}"}],
            }
            try:
                call(self.gw.url + "/v1/chat/completions", "POST", body, token="app-key")
            except OSError:
                pass  # the gateway restarting
            self.sent += 1
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(10)


class Timeline:
    """The runs as the admin API shows them; `report` is each step from the runs' own history, timed."""

    def __init__(self, gw: GatewayProcess):
        self.gw, self.last = gw, []

    def runs(self) -> list[dict]:
        try:
            self.last = call(self.gw.url + "/admin/flywheel")[2]["runs"]
        except OSError:
            pass  # the gateway restarting
        return self.last

    def wait(self, predicate, what: str, timeout: float = 120.0) -> dict:
        return wait_until(lambda: next((r for r in self.runs() if predicate(r)), None), what=what, timeout=timeout)

    def report(self) -> str:
        steps = [(h["ts"], run["id"], h["state"], h.get("note") or "") for run in self.last for h in run["history"]]
        t0 = min(ts for ts, *_ in steps)
        return "\n".join(f"  +{ts - t0:6.2f}s  {run}  {state:<10} {note[:110]}" for ts, run, state, note in steps)


def states(run: dict) -> list[str]:
    return [h["state"] for h in run["history"]]


def model_record(gw: GatewayProcess, name: str) -> dict:
    return call(gw.url + "/admin/models")[2]["models"][name]


def console(browser, gw: GatewayProcess, models: dict[str, str], name: str) -> tuple[dict, dict]:
    """What the console's Models panel shows, once it shows `models` ({name: lifecycle}):
    ({model: its row's cells}, {run: its row's cells}); no error on the page."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(gw.url + "/console")
    page.fill("#login-token", ADMIN)
    page.click("#login-submit")
    for model, lifecycle in models.items():
        page.wait_for_selector(f'#models tr[data-model="{model}"][data-lifecycle="{lifecycle}"]', timeout=20000)
    page.wait_for_selector("#flywheel tr[data-run]", timeout=20000)

    def cells(selector: str, key: str) -> dict:
        return {
            row.get_attribute(key): [cell.inner_text() for cell in row.query_selector_all(":scope > td")]
            for row in page.query_selector_all(selector)
        }

    shown = cells("#models-rows tr[data-model]", "data-model"), cells("#flywheel-rows tr[data-run]", "data-run")
    screenshot(page, name)
    context.close()
    assert not problems, problems
    return shown


@pytest.fixture
def upstreams():
    ft = FakeOpenAIFineTuning(api_key=UPSTREAM_KEY, polls_per_step=1)
    judge = FakeJudge("oracle")
    with serving(ft), serving(judge):
        yield ft, judge


def test_a_better_model_goes_from_logged_traffic_to_every_user(tmp_path, upstreams, capsys, monkeypatch, browser):
    ft, judge = upstreams
    ft.styles = ["thorough"]  # the model this run trains answers better than the base model
    gw = GatewayProcess(config_for(tmp_path, ft, judge, min_interval=3600), tmp_path).start()
    timeline = Timeline(gw)
    try:
        rated_traffic(gw, 0)
        with Background(gw):
            run = timeline.wait(
                lambda r: r["state"] in ("shadow", "stopped", "promoted"), "the run to reach its shadow"
            )
            assert run["state"] == "shadow", run
            gw.stop()  # a restart mid-run: the next process picks the run up from the state store
            gw.start()
            run = timeline.wait(lambda r: r["state"] in ("stopped", "promoted"), "the run to end", timeout=180)
        with capsys.disabled():
            print(f"\nflywheel timeline (good model):\n{timeline.report()}")
        assert run["state"] == "promoted", (run.get("stop_reason"), gw.log()[-3000:])
        assert states(run) == ["triggered", "dataset", "training", "evaluating", "shadow", "canary", "promoted"]
        assert run["trigger"].startswith("rated: ") and ">= 40" in run["trigger"]

        # the dataset: rebuilt from the rated traffic, PII scrubbed, split
        dataset = run["dataset"]
        assert dataset["format"] == "openai" and dataset["counts"]["kept"] == 60  # the rated ones
        assert set(dataset["dropped"]) <= {"feedback_missing"}  # live questions nobody rated, if any came first
        assert dataset["counts"]["train"] + dataset["counts"]["validation"] + dataset["counts"]["test"] == 60
        train = (tmp_path / "flywheel" / "bot" / run["id"] / "dataset" / "train.jsonl").read_text()
        assert "[EMAIL]" in train and not re.search(r"user\d+@example\.com", train)
        # the job: its cost estimated before it started, the dataset uploaded as built
        [ft_job] = ft.jobs.values()
        assert ft.file_bodies[ft_job["training_file"]].decode() == train
        assert 0 < run["cost"]["usd"] < 5.0 and run["cost"]["epochs"] == 2
        # the offline gate: test split plus replayed questions, the judge preferring the new model
        gate = run["evaluation"]["gate"]
        assert gate["verdict"] == "pass" and gate["against"] == "base" and gate["losses"] == 0
        assert gate["cases"] >= 12 and gate["ci95"]["low"] > 0.5
        assert run["evaluation"]["shadow"]["judge"]["count"] >= 5
        assert run["canary"]["status"] == "done" and run["canary"]["percent"] == 100

        # the registry: lineage, lifecycle, evaluation; the rollout gives it every user
        model = run["model"]
        record = model_record(gw, model)
        details = record["details"]
        assert details["lifecycle"] == "serving" and record["candidate"] == ["bot"]
        assert [h["lifecycle"] for h in details["lifecycle_history"]] == [
            "evaluated",
            "shadow",
            "canary",
            "serving",
        ]
        assert details["lineage"]["run"] == run["id"] and details["lineage"]["dataset"]["counts"]["train"] > 20
        assert details["evaluation"]["gate"]["verdict"] == "pass" and details["job"] == run["job"]
        status = call(gw.url + "/admin/status")[2]
        assert status["rollout"]["routes"]["bot"]["percents"] == {model: 100.0}
        status, headers, answer = call(
            gw.url + "/v1/chat/completions",
            "POST",
            {"model": "bot", "user": "someone-new", "messages": [{"role": "user", "content": "hello"}]},
            token="app-key",
        )
        assert headers["x-llmgate-variant"] == model and answer["choices"][0]["message"]["content"].endswith(
            "(thorough)"
        )

        # every step is an audit event, and `llmgate models` shows the record
        events = call(gw.url + "/admin/events?kind=flywheel&limit=50")[2]["events"]
        assert [e["after"] for e in reversed(events)] == states(run)
        capsys.readouterr()
        monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", ADMIN)
        assert cli(["models", "--url", gw.url]) == 0
        out = capsys.readouterr().out
        assert f"{model}  serving" in out and "offline gate: pass against base" in out

        # and the console's Models panel: where the model is, where it came from, how it was judged
        models, runs = console(browser, gw, {model: "serving"}, "console-flywheel-promoted.png")
        name, lifecycle, traffic, upstream_model, lineage, gate_cell, shadow_cell, last = models[model]
        assert lifecycle == "serving" and traffic == "candidate of bot" and upstream_model == record["backend"]["model"]
        assert f"run {run['id']}" in lineage and "train " in lineage and f"job {run['job']}" in lineage
        assert gate_cell.startswith("pass") and f"{gate['win_rate']:.2f}" in gate_cell
        assert shadow_cell.startswith(f"{run['evaluation']['shadow']['judge']['mean']:.2f}")
        run_id, route, step, trigger, run_model, started, steps = runs[run["id"]]
        assert (route, step, run_model) == ("bot", "promoted", model) and trigger == run["trigger"]
        assert [line.split()[0] for line in steps.splitlines()] == states(run)
    finally:
        gw.stop()


def test_a_worse_model_stops_at_the_gate_and_one_that_degrades_in_canary_is_rolled_back(
    tmp_path, upstreams, capsys, browser
):
    ft, judge = upstreams
    ft.styles = ["plain", "thorough"]  # the first run's model is no better than the base model
    gw = GatewayProcess(config_for(tmp_path, ft, judge, min_interval=0), tmp_path).start()
    timeline = Timeline(gw)
    try:
        rated_traffic(gw, 0)
        first = timeline.wait(lambda r: r["state"] in ("stopped", "promoted"), "the first run to end")
        assert first["state"] == "stopped" and states(first)[-2:] == ["evaluating", "stopped"]
        assert (
            first["stop_reason"].startswith("offline gate failed (") and "win_rate_lower_bound" in first["stop_reason"]
        )
        assert first["evaluation"]["gate"]["wins"] == 0  # ties: the oracle sees no better answer
        record = model_record(gw, first["model"])
        assert record["details"]["lifecycle"] == "rejected" and record["shadow"] == []
        assert ft.answered.get(record["backend"]["model"], 0) == first["evaluation"]["gate"]["cases"]  # no live traffic

        rated_traffic(gw, 100)  # more rated traffic: the next run's trigger
        with Background(gw):
            second = timeline.wait(
                lambda r: r["id"] != first["id"] and r["state"] in ("canary", "stopped", "promoted"),
                "the second run to reach its canary",
                timeout=180,
            )
            assert second["state"] == "canary", second.get("stop_reason")
            ft.failing.add(model_record(gw, second["model"])["backend"]["model"])  # the deployment degrades
            second = timeline.wait(
                lambda r: r["id"] == second["id"] and r["state"] in ("stopped", "promoted"), "the rollback"
            )
        with capsys.disabled():
            print(f"\nflywheel timeline (worse model, then a degrading one):\n{timeline.report()}")
        assert second["state"] == "stopped" and second["canary"]["status"] == "aborted"
        # on its error rate against a clean baseline: all failures, or nearly (a canary request answered just
        # before the deployment degraded may sit in the same window)
        rolled_back = re.search(
            r"rolled back by auto_rollback: .*error_rate: ([\d.]+)% vs baseline 0\.00%", second["stop_reason"]
        )
        assert rolled_back and float(rolled_back[1]) >= 50, second["stop_reason"]
        assert states(second) == ["triggered", "dataset", "training", "evaluating", "shadow", "canary", "stopped"]
        assert second["window"]["since"] == first["window"]["until"]  # only the traffic since the last build
        record = model_record(gw, second["model"])
        assert record["details"]["lifecycle"] == "rolled_back"
        status = call(gw.url + "/admin/status")[2]
        assert status["rollout"]["routes"]["bot"]["percents"].get(second["model"], 0) == 0
        kinds = {e["kind"] for e in call(gw.url + "/admin/events?limit=200")[2]["events"]}
        assert {"flywheel", "register_model", "schedule", "rollback"} <= kinds

        # on-call opens the console: both models, each run stopped and why
        models, runs = console(
            browser, gw, {first["model"]: "rejected", second["model"]: "rolled_back"}, "console-flywheel-stopped.png"
        )
        assert models[first["model"]][2] == "no traffic" and models[first["model"]][5].startswith("fail")
        assert runs[first["id"]][2].startswith("stopped") and first["stop_reason"] in runs[first["id"]][2]
        assert second["stop_reason"] in runs[second["id"]][2]
    finally:
        gw.stop()
