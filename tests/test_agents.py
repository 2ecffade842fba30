"""The coding agents people point at gateways, run for real against llmgate on loopback: each completes a
turn in which the model asks for a tool, the agent runs it, and the result goes back, streamed, through
each backend kind. The fake upstreams call the agent's own tool when the prompt says `[call NAME {...}]`
and answer a tool result with "tool said: <result>", so the agent's final text proves the round trip.

`make test` installs the agents (npm packages that ship their binaries) under var/agents/.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from plugins.traffic_log.plugin import read_records
from tests.conftest import backend_config
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "var" / "agents" / "node_modules" / ".bin"
pytestmark = pytest.mark.slow


def agent(name: str) -> Path:
    binary = AGENTS / name
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `make test`, which installs the coding agents")
    return binary


def config(kind, fake, tmp_path) -> dict:
    return {
        "backends": {"up": backend_config(kind, fake)},
        "routes": {"coder": {"baseline": "up"}},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
    }


def test_claude_code_runs_a_tool_the_model_asks_for_through_every_backend_kind(upstream, make_gateway, tmp_path):
    kind, fake = upstream
    gw = make_gateway(config(kind, fake, tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    command = {"command": "echo llmgate-$((6*7))", "description": "print a number"}
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": gw.url,
        "ANTHROPIC_API_KEY": "sk-test-agent",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    done = subprocess.run(
        [
            str(agent("claude")),
            "-p",
            f"[call Bash {json.dumps(command)}]",
            "--model",
            "coder",
            "--output-format",
            "json",
            "--allowedTools",
            "Bash",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["is_error"] is False and "tool said: llmgate-42" in result["result"], result["result"]

    records = wait_until(
        lambda: r if len(r := list(read_records(str(tmp_path / "traffic.db")))) >= 2 else None,
        "the agent's two exchanges",
    )
    assert all(r["annotations"]["dialect"] == "messages" and r["stream"] for r in records)
    answered = [r for r in records if r["request"]["messages"][-1]["role"] == "tool"]
    assert answered and "llmgate-42" in json.dumps(answered[-1]["request"]["messages"][-1])
    # Claude Code's betas reach an Anthropic backend as it sent them, and no other kind
    betas = [h.get("anthropic-beta") or h.get("Anthropic-Beta") for h in fake.headers]
    assert all(betas) if kind == "anthropic" else not any(betas), betas


def test_codex_runs_a_tool_the_model_asks_for_through_every_backend_kind(upstream, make_gateway, tmp_path):
    kind, fake = upstream
    gw = make_gateway(config(kind, fake, tmp_path))
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(
        'model = "coder"\nmodel_provider = "gw"\n[model_providers.gw]\nname = "llmgate"\n'
        f'base_url = "{gw.url}/v1"\nenv_key = "GW_KEY"\nwire_api = "responses"\n'
    )
    command = {"cmd": "echo llmgate-$((6*7))"}
    env = {**os.environ, "CODEX_HOME": str(home), "HOME": str(home), "GW_KEY": "sk-test-agent"}
    done = subprocess.run(
        [str(agent("codex")), "exec", "--skip-git-repo-check", f"[call exec_command {json.dumps(command)}]"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "tool said:" in done.stdout and "llmgate-42" in done.stdout, done.stdout[-2000:]

    records = wait_until(
        lambda: r if len(r := list(read_records(str(tmp_path / "traffic.db")))) >= 2 else None,
        "the agent's two exchanges",
    )
    assert all(r["annotations"]["dialect"] == "responses" and r["stream"] for r in records)
    # Codex's hints are accepted and named: it keeps its own history (store: false) and offers web search.
    ignored = set(records[0]["annotations"]["ignored_params"])
    assert {"include", "client_metadata", "tools.web_search"} <= ignored
    # its prompt_cache_key is a chat-completions parameter too: an OpenAI backend gets it, the others name it
    assert ("prompt_cache_key" in ignored) == (kind != "openai")
    if kind == "openai":
        assert fake.requests[0]["prompt_cache_key"]
