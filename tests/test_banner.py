"""The start-up banner: which routes can answer, whether the admin surfaces are on, what to do with no keys."""

from gateway.banner import banner
from gateway.config import parse_config
from gateway.gateway import Gateway

BACKENDS = {
    "claude": {"kind": "anthropic", "model": "c", "api_key": "${BANNER_TEST_ANTHROPIC_KEY}"},
    "local": {"kind": "openai", "model": "l", "api_key": "none", "base_url": "http://127.0.0.1:9/v1"},
}


def _banner(config: dict, monkeypatch, admin: str | None = None) -> list[str]:
    monkeypatch.delenv("BANNER_TEST_ANTHROPIC_KEY", raising=False)
    if admin is None:
        monkeypatch.delenv("LLMGATE_ADMIN_TOKEN", raising=False)
    else:
        monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", admin)
    return banner(Gateway(parse_config(config, "test.yaml")), "http://127.0.0.1:8080", "uvloop")


def test_each_route_says_what_answers_it_and_what_is_missing(monkeypatch):
    lines = _banner(
        {
            "backends": BACKENDS,
            "routes": {"mixed": {"baseline": "claude", "fallback": ["local"]}, "blocked": {"baseline": "claude"}},
        },
        monkeypatch,
    )
    assert lines[0] == "llmgate serving on http://127.0.0.1:8080 (config test.yaml, event loop uvloop)"
    assert "  route mixed: answers via local (claude needs BANNER_TEST_ANTHROPIC_KEY)" in lines
    assert "  route blocked: cannot answer: claude needs BANNER_TEST_ANTHROPIC_KEY" in lines
    assert not any("make demo" in line for line in lines)  # one route can answer: no newcomer's hint
    assert any(line.startswith("  admin API and console: off (set LLMGATE_ADMIN_TOKEN") for line in lines)


def test_with_no_route_able_to_answer_it_names_the_variables_and_the_demo(monkeypatch):
    lines = _banner({"backends": BACKENDS, "routes": {"r": {"baseline": "claude"}}}, monkeypatch, admin="t0ken-x")
    assert lines[-1].startswith("  no route can answer yet: set BANNER_TEST_ANTHROPIC_KEY and restart.")
    assert "make demo" in lines[-1]
    on = [line for line in lines if "admin API" in line]
    assert on == [
        "  admin API and console: on (http://127.0.0.1:8080/admin/status, http://127.0.0.1:8080/console; "
        "Authorization: Bearer <admin token>)"
    ]
    assert not any("t0ken-x" in line for line in lines)  # the token itself is never printed
