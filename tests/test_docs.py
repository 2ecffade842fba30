"""The manual builds with `mkdocs build --strict`, and its generated references come from the code.

docs/hooks/reference.py writes the hook, plugin-option, config and CLI references into the pages at
build time; a broken link, an unknown marker, or a built-in plugin whose options no page shows is a
warning, which --strict makes a failed build.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def test_every_hookspec_is_in_the_hook_reference(site):
    from gateway import hookspecs

    tree = ast.parse((ROOT / "gateway" / "hookspecs.py").read_text(encoding="utf-8"))
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name != "spec"]
    assert functions == list(hookspecs.SPECS) and "before_route" in functions  # every function is a declared spec
    html = page(site, "plugins")
    for hook in functions:
        assert f'id="{hook}"' in html, hook
    called = html.split('id="before_route"', 1)[1].split("<h4", 1)[0]  # how the spec says it is called
    assert "the first answer wins" in called and "timeout_ms" in called


def test_plugin_options_come_from_the_settings_models(site):
    from plugins.semantic_cache.plugin import Settings

    html = page(site, "plugins/semantic_cache")
    assert "max_temperature" in Settings.model_fields
    assert "<code>max_temperature</code>" in html
    assert Settings.model_fields["max_temperature"].description in html
    assert "<code>guards.opposites</code>" in html  # a nested model, as dotted keys
    assert "<code>verify.below</code>" in html


def test_config_reference_lists_the_core_and_backend_keys(site):
    html = page(site, "configuration")
    for key in (
        "server.max_body_bytes",
        "state.redis_url",
        "routes.&lt;name&gt;.fallback",
        "routes.&lt;name&gt;.context_fallback",
        "backends.&lt;name&gt;.context_window",
        "prices.&lt;backend or model&gt;.cached_input",
        "backends.&lt;name&gt;.timeout.first_byte",
        "backends.&lt;name&gt;.anthropic_version",
        "plugins.&lt;name&gt;.fail_closed",
    ):
        assert f"<code>{key}</code>" in html, key


def test_pool_options_are_generated_on_their_page(site):
    html = page(site, "pools")
    for key in ("members[].weight", "balance", "affinity", "ejection.max_open_seconds", "latency_half_life"):
        assert f"<code>pools.&lt;name&gt;.{key}</code>" in html, key


def test_cli_reference_shows_the_parser(site):
    html = page(site, "cli")
    assert 'id="llmgate-serve"' in html
    assert "<code>--port PORT</code>" in html
    assert "port to listen on" in html


def test_no_marker_is_left_unreplaced(site):
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        for marker in ("<!-- options:", "<!-- config:", "<!-- cli -->", "<!-- hookspecs -->"):
            assert marker not in text, f"{html.relative_to(site)}: {marker}"
