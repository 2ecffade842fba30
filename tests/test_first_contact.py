"""A newcomer's first minutes, on a fresh clone: `make run` with no extras, the first request with no keys,
the mistakes people make (a busy port, a misspelled key), one exchange looked up by its id, and the demo's tour.

The clone is of what is committed (CI runs on a clean clone, where that is everything). `make run` there
builds its own plain venv, as a newcomer's would: the test proves the install the README promises, not
the test venv with every extra.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.support import free_port, wait_for_http, wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "first-contact-admin-token"
pytestmark = pytest.mark.slow


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group `make` started (make, then llmgate under it)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# A newcomer with no keys at all (and no config chosen elsewhere).
NO_KEYS = (
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "LLMGATE_CONFIG",
)


def _environment(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in NO_KEYS}
    return {**env, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent", **(extra or {})}


def _make(clone: Path, *args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["make", *args],
            cwd=clone,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_environment(env),
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("git and make are needed to clone and run the checkout")
    target = tmp_path_factory.mktemp("fresh") / "llmgate"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    return target


@pytest.fixture(scope="module")
def running(clone, tmp_path_factory):
    """`make run PORT=...` on the fresh clone: it makes .venv, installs the plain package and serves."""
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "make-run.log"
    proc = _make(clone, "run", f"PORT={port}", log=log, env={"LLMGATE_ADMIN_TOKEN": TOKEN})
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=300)  # the first install takes a minute
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "log": log, "proc": proc, "clone": clone}
    finally:
        _stop(proc)


def _llmgate(clone: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(clone / ".venv" / "bin" / "llmgate"), *args],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=60,
        env=_environment(env),
    )


def test_make_run_serves_a_plain_install_and_says_what_to_do(running):
    clone = running["clone"]
    installed = subprocess.run(
        [
            str(clone / ".venv" / "bin" / "python"),
            "-c",
            "import importlib.util as u; print(u.find_spec('numpy'), u.find_spec('torch'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert installed == ["None", "None"]  # no extras: the plain install the README promises
    banner = wait_until(
        lambda: "admin API" in running["log"].read_text() and running["log"].read_text(), "the start-up banner"
    )
    assert f"llmgate serving on http://127.0.0.1:{running['port']}" in banner
    assert "route support-bot: cannot answer: claude-base needs ANTHROPIC_API_KEY" in banner
    assert "admin API and console: on" in banner
    assert "make demo" in banner
    assert "Traceback" not in banner

    for command in (
        ["--help"],
        ["check-config", "config/gateway.yaml"],
        ["check", "config/demo.yaml"],
        ["status", "--help"],
        ["traffic", "show", "--help"],
    ):
        result = _llmgate(clone, *command)
        assert result.returncode == 0, (command, result.stderr)


def test_the_first_request_with_no_keys_fails_at_once_and_points_to_the_demo(running):
    client = openai.OpenAI(base_url=running["url"] + "/v1", api_key="your-app-key")  # the SDK's own retries
    log = running["log"]
    before = log.read_text().count("POST /v1/chat/completions")
    started = time.perf_counter()
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="support-bot", messages=[{"role": "user", "content": "hi"}])
    elapsed = time.perf_counter() - started
    response = caught.value.response
    assert response.status_code == 503
    assert response.headers["x-should-retry"] == "false"
    assert "x-llmgate-variant" not in response.headers  # no backend answered
    # the caller's variant (this key's users may be in ft-v2's 10%), then the baseline, then the fallback
    assert response.headers["x-llmgate-tried"].split(",")[-2:] == ["claude-base", "gpt-base"]
    message = caught.value.body["message"]
    assert "ANTHROPIC_API_KEY" in message and "OPENAI_API_KEY" in message and "make demo" in message
    wait_until(lambda: log.read_text().count("POST /v1/chat/completions") > before, "the access log line")
    time.sleep(0.5)
    assert log.read_text().count("POST /v1/chat/completions") == before + 1, "the SDK retried"
    print(f"first request with no keys: error after {elapsed * 1000:.0f} ms, not retried")

    # The exchange it names by x-request-id can be looked up.
    request_id = response.headers["x-request-id"]
    shown = wait_until(
        lambda: (
            (
                r := _llmgate(
                    running["clone"],
                    "traffic",
                    "show",
                    request_id,
                    "--url",
                    running["url"],
                    env={"LLMGATE_ADMIN_TOKEN": TOKEN},
                )
            ).returncode
            == 0
            and r
        ),
        "the exchange in the traffic log",
    )
    assert request_id in shown.stdout and "support-bot" in shown.stdout and "503" in shown.stdout
    unknown = _llmgate(
        running["clone"], "traffic", "show", "0" * 32, "--url", running["url"], env={"LLMGATE_ADMIN_TOKEN": TOKEN}
    )
    assert unknown.returncode == 1 and "0" * 32 in unknown.stderr


def test_the_tours_route_under_make_run_points_to_the_demo_and_readiness_says_why(running):
    chat = {"model": "demo", "user": "alice", "messages": [{"role": "user", "content": "hi"}]}
    client = openai.OpenAI(base_url=running["url"] + "/v1", api_key="demo", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(**chat)
    assert "'demo' is the route `make demo` serves" in caught.value.body["message"]
    guessed = urllib.request.Request(running["url"] + "/admin/status", headers={"Authorization": "Bearer guess-0000"})
    with pytest.raises(urllib.error.HTTPError) as refused:  # a guessed token: where the real one comes from
        urllib.request.urlopen(guessed, timeout=10)
    said = json.loads(refused.value.read())["error"]["message"]
    assert refused.value.code == 401 and "LLMGATE_ADMIN_TOKEN" in said and "make demo" in said
    assert "guess-0000" not in said and TOKEN not in said
    with urllib.request.urlopen(running["url"] + "/readyz", timeout=10) as answered:
        ready = json.loads(answered.read())
    assert ready["status"] == "degraded" and ready["degraded"]["routes"].startswith("no route can answer")
    assert "route support-bot: cannot answer: claude-base needs ANTHROPIC_API_KEY" in ready["degraded"]["routes"]


def _readme_blocks(kind: str) -> list[str]:
    parts = (ROOT / "README.md").read_text().split("```")
    return [part.removeprefix(kind).strip() for part in parts[1::2] if part.startswith(kind + "\n")]


def test_the_readme_asks_make_run_for_a_route_it_serves_and_installs_what_it_uses():
    routes = _llmgate_routes(ROOT / "config" / "gateway.yaml")
    shell = _readme_blocks("sh")
    first_curl = next(block for block in shell if "curl" in block)
    assert json.loads(first_curl.split("-d '", 1)[1].split("'", 1)[0])["model"] in routes
    commands = [line.strip() for block in shell for line in block.splitlines()]
    assert not [line for line in commands if line.startswith("llmgate ")], "llmgate is .venv/bin/llmgate"
    readme = (ROOT / "README.md").read_text()
    assert readme.index(".venv/bin/pip install openai") < readme.index("from openai import OpenAI")
    assert "about 8 minutes on 2 cores" in readme  # the cold llama.cpp build, as measured


def _llmgate_routes(path: Path) -> set[str]:
    import yaml

    return set(yaml.safe_load(path.read_text())["routes"])


def test_a_busy_port_is_one_line_that_says_how_to_choose_another(running, tmp_path):
    log = tmp_path / "second.log"
    second = _make(running["clone"], "run", f"PORT={running['port']}", log=log)
    try:
        assert second.wait(120) != 0
    finally:
        _stop(second)
    said = [line for line in log.read_text().splitlines() if line.startswith("llmgate:")]
    assert said == [
        f"llmgate: cannot listen on 127.0.0.1:{running['port']}: port {running['port']} is in use "
        f"(another llmgate, or another server); choose another with `llmgate serve --port "
        f"{running['port'] + 1}` or `make run PORT={running['port'] + 1}`"
    ]
    assert "Traceback" not in log.read_text()


def test_a_misspelled_key_gets_the_key_it_meant(running, tmp_path):
    config = (running["clone"] / "config" / "gateway.yaml").read_text().replace("candidates:", "candidate:", 1)
    (tmp_path / "typo.yaml").write_text(config)
    result = _llmgate(running["clone"], "check-config", str(tmp_path / "typo.yaml"))
    assert result.returncode == 1
    assert "routes.support-bot.candidate: unknown key (did you mean 'candidates'?" in result.stderr


# --- the demo is the tour -------------------------------------------------------------------------------


def _chat(url: str, user: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="demo", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model="demo", user=user, max_tokens=4, messages=[{"role": "user", "content": "Say hi."}]
    )
    return raw.headers["x-llmgate-variant"]


def test_make_demo_is_the_tour(clone, tmp_path):
    pytest.importorskip("llama_cpp", reason="make demo's model server (make test installs it)")
    port = free_port()
    log = tmp_path / "demo.log"
    # What `make demo PORT=...` runs once its venv holds the demo's packages (the test venv does; a make target
    # pointed at it would reinstall the clone into it). PORT is in make's environment too, so it is here.
    with open(log, "ab") as out:
        demo = subprocess.Popen(
            [sys.executable, "scripts/demo.py", "--port", str(port)],
            cwd=clone,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=_environment({"PORT": str(port)}),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "Admin token for this run:" in log.read_text(), "the demo's tour text", timeout=120)
        text = log.read_text()
        token = text.split("Admin token for this run:", 1)[1].split()[0]
        assert f"Console: {url}/console" in text
        env = {"LLMGATE_ADMIN_TOKEN": token, "LLMGATE_URL": url}
        users = [f"user-{i}" for i in range(60)]
        first = {user: _chat(url, user) for user in users}
        assert set(first.values()) == {"smollm2-terse", "smollm2-chatty"}, first

        llmgate = Path(sys.executable).with_name("llmgate")

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(llmgate), *args], capture_output=True, text=True, timeout=60, env=_environment(env)
            )

        rollout = run("rollout", "demo", "smollm2-chatty", "25", "--reason", "tour")
        assert rollout.returncode == 0, rollout.stderr
        second = {user: _chat(url, user) for user in users}
        moved = [u for u in users if first[u] != second[u]]
        assert moved and all(second[u] == "smollm2-chatty" for u in moved)  # raising only adds users
        assert sum(v == "smollm2-chatty" for v in second.values()) > sum(v == "smollm2-chatty" for v in first.values())

        status = run("status")
        assert status.returncode == 0 and "25.00%" in status.stdout

        def compared() -> int:
            return json.loads(run("shadow", "report", "demo", "--json").stdout)["shadows"]["smollm2-chatty"]["count"]

        assert wait_until(compared, "shadow comparisons of the baseline's answers with the candidate's", timeout=120)

        rollback = run("rollback", "demo", "--reason", "tour over")
        assert rollback.returncode == 0, rollback.stderr
        assert {_chat(url, user) for user in users[:10]} == {"smollm2-terse"}
        events = run("events")
        assert "tour over" in events.stdout and "tour" in events.stdout
    finally:
        _stop(demo)
