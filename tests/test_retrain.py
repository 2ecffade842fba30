"""Retraining: launch a fine-tuning job, poll it to completion, register the model as a backend and a
shadow of the route at run time, and see the route's traffic reach it in shadow.

Bedrock: moto runs S3 and the model customization jobs as a real server on loopback
(ThreadedMotoServer), so every call goes through boto3. moto lacks CreateProvisionedModelThroughput
and GetProvisionedModelThroughput, so tests/fakes/bedrock_control.py answers those two and forwards
every other call to moto: the launcher's one `bedrock` client exercises the provisioned-throughput
path as it would against the service. moto keeps a job InProgress; a test moves it to Completed
through moto's backend (the server runs in this process). The trained model is served by the fake
Bedrock runtime (tests/fakes/bedrock_api.py). OpenAI: tests/fakes/openai_finetune_api.py (files,
fine-tuning jobs, and chat for the fine-tuned model), driven by the official SDK.
"""

import json
import sqlite3
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import boto3
import openai
import pytest
import yaml

from gateway.cli import main as cli
from gateway.config import StateSettings, parse_config
from gateway.gateway import GATEWAY
from gateway.state import open_state_store
from plugins.retrain.plugin import Launcher, Settings, providers_for
from plugins.retrain.providers import (
    OpenAIProvider,
    OpenAIProviderSettings,
    RetrainError,
    bedrock_bounds,
    check_hyperparameters,
)
from tests.conftest import UPSTREAM_KEY
from tests.fakes.bedrock_control import BedrockControlFront
from tests.fakes.openai_finetune_api import FakeOpenAIFineTuning
from tests.support import ServerThread, free_port, gateway_thread, serving, wait_until

ADMIN = "admin-token-for-retrain-tests"
BUCKET = "retrain-data"
ROLE = "arn:aws:iam::123456789012:role/bedrock-customization"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0:200k"


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url, aws_env):
    """A fresh moto (S3 bucket made), and the control-plane front before it."""
    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST"), timeout=10).read()
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    front = BedrockControlFront(moto_url)
    with ServerThread(front.app) as server:
        yield SimpleNamespace(moto=moto_url, front=front, front_url=server.url, s3=s3)


@pytest.fixture
def finetune_api():
    fake = FakeOpenAIFineTuning(api_key=UPSTREAM_KEY)
    with serving(fake):
        yield fake


@pytest.fixture
def admin_env(monkeypatch):
    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", ADMIN)


def moto_job(name: str):
    from moto.bedrock.models import bedrock_backends

    return bedrock_backends["123456789012"]["us-east-1"].model_customization_jobs[name]


def make_dataset(directory, fmt: str, examples: int = 12, validation: int = 3):
    directory.mkdir(parents=True, exist_ok=True)

    def line(i):
        if fmt == "bedrock":
            return {
                "system": "You are a support agent.",
                "messages": [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"answer {i}"},
                ],
            }
        return {
            "messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
        }

    (directory / "train.jsonl").write_text("".join(json.dumps(line(i)) + "\n" for i in range(examples)))
    (directory / "validation.jsonl").write_text("".join(json.dumps(line(i)) + "\n" for i in range(validation)))
    (directory / "test.jsonl").write_text("")
    (directory / "manifest.json").write_text(
        json.dumps({"format": fmt, "counts": {"train": examples, "validation": validation, "test": 0}})
    )
    return directory


def write_config(tmp_path, config: dict) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def base_config(tmp_path, backends: dict, retrain: dict, **plugins) -> dict:
    return {
        "server": {"admin_token": ADMIN},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": backends,
        "routes": {"bot": {"baseline": "base"}},
        "plugins": {
            "traffic_log": {"path": str(tmp_path / "traffic.db")},
            "shadow": {"path": str(tmp_path / "shadow.db")},
            "retrain": retrain,
            **plugins,
        },
    }


def bedrock_setup(tmp_path, aws, runtime, **retrain_extra) -> dict:
    backends = {
        "base": {
            "kind": "bedrock",
            "model": "anthropic.claude-3-haiku-20240307-v1:0",
            "region": "us-east-1",
            "endpoint_url": runtime.url,
        }
    }
    retrain = {
        "bedrock": {
            "region": "us-east-1",
            "endpoint_url": aws.front_url,
            "s3_endpoint_url": aws.moto,
            "role_arn": ROLE,
            "bucket": BUCKET,
            "base_model": HAIKU,
            "serve_like": "base",
        },
        **retrain_extra,
    }
    return base_config(tmp_path, backends, retrain)


def openai_setup(tmp_path, api, retrain_extra=None, **plugins) -> dict:
    backends = {
        "base": {"kind": "openai", "base_url": api.url + "/v1", "model": "gpt-4o-mini", "api_key": UPSTREAM_KEY}
    }
    retrain = {"openai": {"backend": "base", "base_model": "gpt-4o-mini-2024-07-18"}, **(retrain_extra or {})}
    return base_config(tmp_path, backends, retrain, **plugins)


def job_status(config_path: str, capsys, job_id: str | None = None) -> list[dict]:
    capsys.readouterr()
    assert cli(["retrain", "status", "--config", config_path, "--json", *([job_id] if job_id else [])]) == 0
    return json.loads(capsys.readouterr().out)


def launched_job_id(out: str) -> str:
    return next(word for word in out.split() if word.startswith("rt-"))


def shadow_rows(tmp_path, backend: str) -> list[dict]:
    path = tmp_path / "shadow.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM comparisons WHERE shadow_backend = ?", (backend,))]
        except sqlite3.OperationalError:
            return []


def ask(gw, content: str):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0, timeout=30)
    return client.chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": content}]
    )


def admin(gw, method: str, path: str, body: dict | None = None, token: str = ADMIN):
    request = urllib.request.Request(
        gw.url + path,
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# --- end to end ---------------------------------------------------------------------------------


def test_bedrock_launch_poll_register_then_shadow_traffic(tmp_path, aws, fake_bedrock, make_gateway, admin_env, capsys):
    config = bedrock_setup(tmp_path, aws, fake_bedrock)
    path = write_config(tmp_path, config)
    gw = make_gateway(config)
    dataset = make_dataset(tmp_path / "ds", "bedrock")

    code = cli(
        [
            "retrain",
            "launch",
            "--config",
            path,
            "--dataset",
            str(dataset),
            "--provider",
            "bedrock",
            "--route",
            "bot",
            "--name",
            "bot-ft1",
            "-p",
            "epochCount=3",
            "-p",
            "batchSize=8",
            "-p",
            "learningRateMultiplier=0.5",
            "-p",
            "earlyStoppingPatience=2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = launched_job_id(out)
    [job] = job_status(path, capsys, job_id)
    assert job["status"] == "training" and job["provider_job"] == f"llmgate-{job_id}"
    assert job["dataset"]["train_examples"] == 12 and len(job["dataset"]["sha256"]) == 64

    # What boto3 sent, as moto recorded it: the uploads and the job with the provider's hyperparameter names.
    created = moto_job(job["provider_job"])
    assert created.job_arn == job["provider_job_arn"]
    assert created.hyper_parameters == {
        "epochCount": "3",
        "batchSize": "8",
        "learningRateMultiplier": "0.5",
        "earlyStoppingPatience": "2",
    }
    assert created.base_model_identifier == HAIKU and created.role_arn == ROLE
    assert created.training_data_config["s3Uri"] == f"s3://{BUCKET}/llmgate/retrain/{job_id}/train.jsonl"
    uploaded = aws.s3.get_object(Bucket=BUCKET, Key=f"llmgate/retrain/{job_id}/train.jsonl")["Body"].read()
    assert uploaded == (dataset / "train.jsonl").read_bytes()
    assert aws.s3.head_object(Bucket=BUCKET, Key=f"llmgate/retrain/{job_id}/validation.jsonl")

    # Still training: a poll changes nothing.
    assert (
        cli(["retrain", "wait", job_id, "--config", path, "--url", gw.url, "--poll-interval", "0.05", "--timeout", "0"])
        == 1
    )
    assert job_status(path, capsys, job_id)[0]["status"] == "training"

    created.status = "Completed"  # moto keeps jobs InProgress; the service would finish it
    code = cli(
        ["retrain", "wait", job_id, "--config", path, "--url", gw.url, "--poll-interval", "0.05", "--timeout", "60"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    [job] = job_status(path, capsys, job_id)
    assert job["status"] == "registered", job
    assert job["result_model"] == created.output_model_arn
    [(arn, provisioned)] = aws.front.provisioned.items()
    assert provisioned["modelArn"] == created.output_model_arn and provisioned["status"] == "InService"
    assert job["serving_model"] == arn
    assert [h["status"] for h in job["history"]] == [
        "starting",
        "training",
        "trained",
        "deploying",
        "ready",
        "registered",
    ]

    # The gateway serves it now: a backend and a shadow of the route, registered through the admin API (audited).
    status, body = admin(gw, "GET", "/admin/status")
    assert body["routes"]["bot"]["shadow"] == ["bot-ft1"]
    status, models = admin(gw, "GET", "/admin/models")
    assert models["models"]["bot-ft1"]["serving"] is True
    assert models["models"]["bot-ft1"]["backend"] == {"like": "base", "model": arn}
    status, events = admin(gw, "GET", "/admin/events?kind=register_model")
    assert events["events"][0]["backend"] == "bot-ft1" and events["events"][0]["route"] == "bot"

    for i in range(3):
        raw = ask(gw, f"where is my order {i}?")
        assert raw.headers["x-llmgate-variant"] == "base"
        assert raw.parse().choices[0].message.content == f"echo: where is my order {i}?"
    rows = wait_until(
        lambda: len(shadow_rows(tmp_path, "bot-ft1")) >= 3 and shadow_rows(tmp_path, "bot-ft1"),
        what="three shadow comparisons with the new model",
    )
    assert all(r["shadow_status"] == 200 and r["primary_backend"] == "base" for r in rows)
    assert {r["shadow_answer"] for r in rows} == {f"echo: where is my order {i}?" for i in range(3)}
    assert arn in [model_id for model_id, _ in fake_bedrock.requests]  # the provisioned model answered


def test_openai_launch_polled_and_registered_by_the_daemon_then_shadow_traffic(
    tmp_path, finetune_api, make_gateway, admin_env, capsys
):
    finetune_api.polls_per_step = 2
    config = openai_setup(tmp_path, finetune_api, {"enabled": True, "poll_interval": 0.05})
    path = write_config(tmp_path, config)
    gw = make_gateway(config)
    dataset = make_dataset(tmp_path / "ds", "openai")

    code = cli(
        [
            "retrain",
            "launch",
            "--config",
            path,
            "--dataset",
            str(dataset),
            "--provider",
            "openai",
            "--route",
            "bot",
            "-p",
            "n_epochs=3",
            "-p",
            "batch_size=auto",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = launched_job_id(out)
    [ft_job] = finetune_api.jobs.values()
    assert ft_job["model"] == "gpt-4o-mini-2024-07-18"
    assert ft_job["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": "auto"}},
    }
    assert finetune_api.file_bodies[ft_job["training_file"]] == (dataset / "train.jsonl").read_bytes()
    assert finetune_api.file_bodies[ft_job["validation_file"]] == (dataset / "validation.jsonl").read_bytes()

    # The daemon's poller (the retrain plugin, enabled) takes it from here.
    job = wait_until(
        lambda: (j := job_status(path, capsys, job_id)[0])["status"] == "registered" and j,
        what="the daemon registering the fine-tuned model",
    )
    model = ft_job["fine_tuned_model"]
    assert job["result_model"] == model and job["serving_model"] == model
    name = f"bot-{job_id}"
    assert gw.app[GATEWAY].config.settings.routes["bot"].shadow == [name]

    for i in range(2):
        assert ask(gw, f"hello {i}").parse().choices[0].message.content == f"echo: hello {i}"
    rows = wait_until(
        lambda: len(shadow_rows(tmp_path, name)) >= 2 and shadow_rows(tmp_path, name),
        what="shadow comparisons with the fine-tuned model",
    )
    assert all(r["shadow_status"] == 200 for r in rows)
    asked = [body["model"] for body in finetune_api.requests if isinstance(body, dict) and "messages" in body]
    assert asked.count(model) >= 2 and asked.count("gpt-4o-mini") >= 2


# --- job state, cancel, refusals ------------------------------------------------------------------


async def test_job_state_survives_a_restart(tmp_path, finetune_api):
    """A job launched by one launcher (one process) is found and finished by a new one on the same store."""
    config_path = write_config(tmp_path, openai_setup(tmp_path, finetune_api))
    from gateway.config import load_config

    config = load_config(config_path)
    settings = Settings.model_validate(config.settings.plugins["retrain"].model_extra)
    registered = []

    async def register(job, backend):
        registered.append((job["backend_name"], backend))

    store = open_state_store(StateSettings(sqlite_path=str(tmp_path / "jobs.db")))
    await store.open()
    first = Launcher(store, providers_for(settings, config), register, "first")
    job = await first.launch("openai", str(make_dataset(tmp_path / "ds", "openai")), "bot")
    await store.close()

    store = open_state_store(StateSettings(sqlite_path=str(tmp_path / "jobs.db")))
    await store.open()
    try:
        second = Launcher(store, providers_for(settings, config), register, "second")
        [found] = await second.jobs()
        assert found["id"] == job["id"] and found["status"] == "training" and found["provider_job"]
        finetune_api.advance(found["provider_job"], "succeeded")
        done = await second.advance(job["id"])
        assert done["status"] == "registered" and done["last_polled"] is not None
        assert registered == [(f"bot-{job['id']}", {"like": "base", "model": done["result_model"]})]
    finally:
        await store.close()


def test_cancel_stops_the_provider_job(tmp_path, aws, fake_bedrock, finetune_api, capsys):
    config = bedrock_setup(tmp_path, aws, fake_bedrock)
    config["plugins"]["retrain"]["openai"] = {"backend": "openai-base", "base_model": "gpt-4o-mini"}
    config["backends"]["openai-base"] = {
        "kind": "openai",
        "base_url": finetune_api.url + "/v1",
        "model": "gpt-4o-mini",
        "api_key": UPSTREAM_KEY,
    }
    path = write_config(tmp_path, config)
    for provider, fmt in (("bedrock", "bedrock"), ("openai", "openai")):
        assert (
            cli(
                [
                    "retrain",
                    "launch",
                    "--config",
                    path,
                    "--dataset",
                    str(make_dataset(tmp_path / fmt, fmt)),
                    "--provider",
                    provider,
                    "--route",
                    "bot",
                ]
            )
            == 0
        )
        job_id = launched_job_id(capsys.readouterr().out)
        assert cli(["retrain", "cancel", job_id, "--config", path]) == 0
        [job] = job_status(path, capsys, job_id)
        assert job["status"] == "cancelled", job
        if provider == "bedrock":
            assert job["provider_status"] == "Stopped" and moto_job(job["provider_job"]).status == "Stopped"
        else:
            assert finetune_api.jobs[job["provider_job"]]["status"] == "cancelled"
        assert cli(["retrain", "cancel", job_id, "--config", path]) == 2
        assert "already cancelled" in capsys.readouterr().err


def test_hyperparameters_out_of_bounds_are_refused_before_anything_is_sent(tmp_path, aws, fake_bedrock, capsys):
    path = write_config(tmp_path, bedrock_setup(tmp_path, aws, fake_bedrock))
    dataset = make_dataset(tmp_path / "ds", "bedrock")
    code = cli(
        [
            "retrain",
            "launch",
            "--config",
            path,
            "--dataset",
            str(dataset),
            "--provider",
            "bedrock",
            "--route",
            "bot",
            "-p",
            "epochCount=20",
            "-p",
            "batchSize=2.5",
            "-p",
            "learningRate=0.1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"epochCount=20 is out of bounds for {HAIKU}: 1 to 10 (a whole number)" in err
    assert "batchSize=2.5: not a number (a whole number is needed)" in err
    assert "'learningRate' is not a hyperparameter of" in err and "learningRateMultiplier" in err
    assert job_status(path, capsys) == []
    from moto.bedrock.models import bedrock_backends

    assert bedrock_backends["123456789012"]["us-east-1"].model_customization_jobs == {}

    with pytest.raises(RetrainError, match=r"n_epochs=0 is out of bounds .*: 1 to 50"):
        OpenAIProvider(OpenAIProviderSettings()).check_hyperparameters("gpt-4o-mini", {"n_epochs": "0"})
    with pytest.raises(RetrainError, match="learning_rate_multiplier=0 is out of bounds .*more than 0"):
        OpenAIProvider(OpenAIProviderSettings()).check_hyperparameters("gpt-4o-mini", {"learning_rate_multiplier": 0})
    assert check_hyperparameters({"learningRate": "5e-5"}, bedrock_bounds("amazon.nova-lite-v1:0:300k"), "nova") == {
        "learningRate": 5e-5
    }


def test_provider_errors_are_recorded_without_secrets(tmp_path, finetune_api, monkeypatch, capsys):
    monkeypatch.setenv("FT_KEY", "sk-wrong-key-0123456789abcdef")
    config = openai_setup(tmp_path, finetune_api)
    config["plugins"]["retrain"]["openai"] = {
        "backend": "base",  # its key, overridden: the calls fail
        "base_url": finetune_api.url + "/v1",
        "api_key": "${FT_KEY}",
        "base_model": "gpt-4o-mini",
    }
    path = write_config(tmp_path, config)
    assert (
        cli(
            [
                "retrain",
                "launch",
                "--config",
                path,
                "--dataset",
                str(make_dataset(tmp_path / "ds", "openai")),
                "--provider",
                "openai",
                "--route",
                "bot",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "openai refused the job" in err and "Incorrect API key provided" in err
    [job] = job_status(path, capsys)
    assert job["status"] == "failed" and "Incorrect API key provided" in job["error"]
    assert "sk-wrong-key" not in err and "sk-wrong-key" not in json.dumps(job)


def test_datasets_that_cannot_train_are_refused(tmp_path, aws, fake_bedrock, capsys):
    path = write_config(tmp_path, bedrock_setup(tmp_path, aws, fake_bedrock))
    small = make_dataset(tmp_path / "small", "bedrock", examples=4)
    assert (
        cli(["retrain", "launch", "--config", path, "--dataset", str(small), "--provider", "bedrock", "--route", "bot"])
        == 2
    )
    assert "4 training examples, fewer than the 10 a job needs" in capsys.readouterr().err
    wrong = make_dataset(tmp_path / "wrong", "openai")
    assert (
        cli(["retrain", "launch", "--config", path, "--dataset", str(wrong), "--provider", "bedrock", "--route", "bot"])
        == 2
    )
    assert "the dataset is in openai format; bedrock needs bedrock" in capsys.readouterr().err
    assert (
        cli(
            [
                "retrain",
                "launch",
                "--config",
                path,
                "--dataset",
                str(tmp_path / "none"),
                "--provider",
                "bedrock",
                "--route",
                "bot",
            ]
        )
        == 2
    )
    assert "no manifest.json" in capsys.readouterr().err


# --- registering models at run time (the core mechanism) -------------------------------------------


def registry_config(tmp_path, api, state: dict | None = None) -> dict:
    config = openai_setup(tmp_path, api)
    config["plugins"].pop("retrain")
    if state:
        config["state"] = state
    return config


def test_registration_is_checked_audited_and_survives_a_restart(tmp_path, finetune_api):
    config = registry_config(tmp_path, finetune_api)
    gw = gateway_thread(config).start()
    try:
        model = {"name": "bot-ft", "backend": {"like": "base", "model": "ft:gpt-4o-mini:org::x1"}, "shadow": ["bot"]}
        assert admin(gw, "POST", "/admin/models", model, token="wrong")[0] == 401
        status, body = admin(gw, "POST", "/admin/models", {**model, "shadow": ["nope"]})
        assert status == 400 and "shadow: no route named 'nope'" in body["error"]["message"]
        status, body = admin(gw, "POST", "/admin/models", {**model, "name": "base"})
        assert status == 400 and "already a backend of the config file" in body["error"]["message"]
        secret = {"name": "x", "backend": {"kind": "openai", "model": "m", "api_key": "sk-literal-secret-value"}}
        status, body = admin(gw, "POST", "/admin/models", secret)
        assert status == 400 and "a registration carries no secret" in body["error"]["message"]
        assert "sk-literal-secret-value" not in json.dumps(body)

        status, body = admin(gw, "POST", "/admin/models", {**model, "reason": "nightly retrain"})
        assert status == 200 and body["serving"] is True
        assert ask(gw, "hi").parse().choices[0].message.content == "echo: hi"
        wait_until(
            lambda: any(
                isinstance(b, dict) and b.get("model") == "ft:gpt-4o-mini:org::x1" for b in finetune_api.requests
            ),
            what="a shadow call to the registered model",
        )
        [event] = admin(gw, "GET", "/admin/events?kind=register_model")[1]["events"]
        assert event["reason"] == "nightly retrain" and event["after"] == model["backend"]
        gw.call(gw.app[GATEWAY].reload(parse_config({**config, "prices": {"base": {"input": 1, "output": 2}}})))
        assert gw.app[GATEWAY].config.settings.routes["bot"].shadow == ["bot-ft"]  # a SIGHUP reload keeps it
        assert "bot-ft" in gw.app[GATEWAY].backends
    finally:
        gw.stop()

    gw = gateway_thread(config).start()  # a new process's view: only the state store remembers it
    try:
        assert admin(gw, "GET", "/admin/status")[1]["routes"]["bot"]["shadow"] == ["bot-ft"]
        status, body = admin(gw, "DELETE", "/admin/models/bot-ft")
        assert status == 200 and body["removed"]["backend"]["model"] == "ft:gpt-4o-mini:org::x1"
        assert admin(gw, "GET", "/admin/status")[1]["routes"]["bot"]["shadow"] == []
        assert "bot-ft" not in gw.app[GATEWAY].backends
    finally:
        gw.stop()


def test_a_registration_reaches_every_replica(tmp_path, finetune_api, redis_url):
    config = registry_config(tmp_path, finetune_api, state={"redis_url": redis_url})
    first, second = gateway_thread(config).start(), gateway_thread(config).start()
    try:
        model = {"name": "bot-ft", "backend": {"like": "base", "model": "ft:gpt-4o-mini:org::r1"}, "shadow": ["bot"]}
        assert admin(first, "POST", "/admin/models", model)[0] == 200
        wait_until(
            lambda: admin(second, "GET", "/admin/status")[1]["routes"]["bot"]["shadow"] == ["bot-ft"],
            what="the other replica adding the registered model",
        )
        assert "bot-ft" in second.app[GATEWAY].backends
    finally:
        first.stop()
        second.stop()


# --- the trigger ----------------------------------------------------------------------------------


def trigger_gateway(tmp_path, api, make_gateway, dataset, **rule):
    route_rule = {"dataset": str(dataset), "provider": "openai", "min_examples": 10, **rule}
    config = openai_setup(
        tmp_path,
        api,
        {"enabled": True, "poll_interval": 3600},
        retrain_trigger={"enabled": True, "check_interval": 3600, "routes": {"bot": route_rule}},
    )
    gw = make_gateway(config)
    return gw, gw.app[GATEWAY].pm.get_plugin("retrain_trigger")


def test_trigger_schedule_respects_minimum_dataset_and_interval(tmp_path, finetune_api, make_gateway):
    dataset = make_dataset(tmp_path / "ds", "openai", examples=5)
    gw, trigger = trigger_gateway(
        tmp_path, finetune_api, make_gateway, dataset, every_seconds=60, min_interval_seconds=3600
    )
    start = time.time()
    assert gw.call(trigger.check_once(start)) == {"bot": "not due"}
    decision = gw.call(trigger.check_once(start + 61))["bot"]
    assert "held: the dataset has 5 training examples, min_examples is 10" in decision
    assert finetune_api.jobs == {}

    make_dataset(tmp_path / "ds", "openai", examples=20)  # the dataset builder added examples
    decision = gw.call(trigger.check_once(start + 62))["bot"]
    assert decision.startswith("schedule: every 60s; started job rt-"), decision
    assert len(finetune_api.jobs) == 1

    [ft_job] = finetune_api.jobs.values()
    finetune_api.advance(ft_job["id"], "failed")  # the job ended; only the interval holds the next one now
    retrain = gw.app[GATEWAY].pm.get_plugin("retrain")
    gw.call(retrain.poll_once())
    decision = gw.call(trigger.check_once(start + 62 + 120))["bot"]
    assert "held: the last job started 120s ago, min_interval_seconds is 3600" in decision
    assert len(finetune_api.jobs) == 1
    decision = gw.call(trigger.check_once(start + 62 + 3601))["bot"]
    assert "started job" in decision and len(finetune_api.jobs) == 2


def test_trigger_starts_on_drift_below_a_fraction_of_the_baseline(tmp_path, finetune_api, make_gateway):
    dataset = make_dataset(tmp_path / "ds", "openai", examples=20)
    gw, trigger = trigger_gateway(
        tmp_path,
        finetune_api,
        make_gateway,
        dataset,
        min_interval_seconds=0,
        drift={"fraction": 0.8, "window_seconds": 600, "min_samples": 10},
    )
    hook = gw.app[GATEWAY].pm.hook

    def report(value, n):
        for _ in range(n):
            hook.record_score(route="bot", variant="base", name="judge_win_rate", value=value)

    report(0.9, 5)
    assert gw.call(trigger.check_once())["bot"] == "not due"  # too few scores to say anything
    report(0.9, 10)
    assert gw.call(trigger.check_once())["bot"] == "not due"  # the first full window is the baseline: 0.9
    hook.record_score(route="bot", variant="base", name="feedback", value=0.0)  # another score: not counted
    report(0.75, 30)  # mean over the window 0.79: above 0.8 x 0.9 = 0.72
    assert gw.call(trigger.check_once())["bot"] == "not due"
    assert finetune_api.jobs == {}
    report(0.3, 40)
    decision = gw.call(trigger.check_once())["bot"]
    assert decision.startswith("drift: judge_win_rate 0.") and "< 0.8 x baseline 0.900; started job" in decision
    assert len(finetune_api.jobs) == 1
    stored = gw.call(gw.app[GATEWAY].store.get("retrain_trigger:bot"))
    assert stored["last_job"] in decision and stored["reference"] is None  # the next baseline is measured afresh


# --- what a plain install carries ------------------------------------------------------------------


def test_a_plain_install_carries_what_retraining_imports():
    """`make run` installs the base dependencies only: the SDKs a job's provider imports are among them,
    and no test extra's package is imported by the shipped code."""
    import ast
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {
            r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
            for r in requirements
        }

    base, test_only = names(project["dependencies"]), names(project["optional-dependencies"]["test"])
    assert {"openai", "boto3"} <= base
    imported = set()
    for layer in ("gateway", "plugins", "evaluators", "flywheel"):
        for path in (root / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0].lower() for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0].lower())
    assert "openai" in imported
    test_modules = {name.replace("-", "_") for name in test_only} | {"agents", "moto"}
    assert imported & test_modules == set(), "shipped code imports a test-only package"


def test_each_bedrock_family_takes_its_own_dataset_format(tmp_path):
    from plugins.retrain.providers import BedrockProvider, BedrockSettings, Dataset, bedrock_format

    assert [
        bedrock_format(m)
        for m in (
            HAIKU,
            "amazon.nova-micro-v1:0:128k",
            "amazon.titan-text-express-v1",
            "meta.llama3-1-8b-instruct-v1:0",
        )
    ] == ["bedrock", "nova", "titan", "llama"]
    provider = BedrockProvider(BedrockSettings())
    nova = Dataset.read(make_dataset(tmp_path / "nova", "nova"))
    provider.check_dataset(nova, "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0:300k")
    with pytest.raises(RetrainError, match=f"the dataset is in nova format; bedrock needs bedrock for {HAIKU}"):
        provider.check_dataset(nova, HAIKU)
    with pytest.raises(RetrainError, match="'format' must be one of openai, bedrock, nova, titan, llama"):
        Dataset.read(make_dataset(tmp_path / "x", "claude"))


async def test_a_job_over_its_cost_cap_is_refused_before_anything_is_sent(tmp_path, finetune_api):
    from gateway.config import load_config
    from plugins.retrain.plugin import CostCap

    config = load_config(write_config(tmp_path, openai_setup(tmp_path, finetune_api)))
    settings = Settings.model_validate(config.settings.plugins["retrain"].model_extra)
    store = open_state_store(StateSettings(sqlite_path=str(tmp_path / "jobs.db")))
    await store.open()
    try:
        launcher = Launcher(store, providers_for(settings, config), None, "test")
        dataset = make_dataset(tmp_path / "ds", "openai", examples=400)
        size = (dataset / "train.jsonl").stat().st_size
        with pytest.raises(
            RetrainError,
            match=r"estimated cost \$\d+\.\d\d \([\d,]+ tokens x 4 epochs at \$25 a million\) "
            r"is over the cap \$0\.01: not started",
        ):
            await launcher.launch(
                "openai",
                str(dataset),
                "bot",
                hyperparameters={"n_epochs": 4},
                cost=CostCap(usd_per_million_tokens=25, max_usd=0.01),
            )
        assert finetune_api.files == {} and await launcher.jobs() == []
        job = await launcher.launch("openai", str(dataset), "bot", cost=CostCap(usd_per_million_tokens=25, max_usd=5))
        tokens = (size + 3) // 4
        assert job["estimated_cost"] == {
            "tokens": tokens,
            "epochs": 3,
            "usd": round(tokens * 3 * 25 / 1e6, 6),
            "cap_usd": 5,
        }
    finally:
        await store.close()
