"""An installed llmgate works outside a checkout: the starter config and the console ship inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.cli import main
from gateway.config import DEFAULT_CONFIG_PATH, PACKAGED_CONFIG, ConfigError, config_path, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory with no config/ and no $LLMGATE_CONFIG, as on a machine with only the package."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMGATE_CONFIG", raising=False)
    return tmp_path


def test_the_checkouts_config_is_the_packaged_one():
    """config/gateway.yaml (what `make run` serves) links to the packaged file: one text, nothing to keep in step."""
    assert (ROOT / DEFAULT_CONFIG_PATH).read_bytes() == PACKAGED_CONFIG.read_bytes()
    assert PACKAGED_CONFIG.parent == ROOT / "gateway" / "defaults"


def test_the_lookup_order(elsewhere, monkeypatch):
    assert config_path() == PACKAGED_CONFIG
    (elsewhere / "config").mkdir()
    (elsewhere / "config" / "gateway.yaml").write_text("{}\n")
    assert config_path() == Path(DEFAULT_CONFIG_PATH)
    monkeypatch.setenv("LLMGATE_CONFIG", "from-env.yaml")
    assert config_path() == Path("from-env.yaml")
    assert config_path("given.yaml") == Path("given.yaml")


def test_without_any_config_the_error_names_what_was_tried(elsewhere, monkeypatch):
    missing = elsewhere / "not-installed" / "gateway.yaml"
    monkeypatch.setattr(config_module, "PACKAGED_CONFIG", missing)
    with pytest.raises(ConfigError) as err:
        load_config()
    assert err.value.problems == [
        f"no config file: no --config, no $LLMGATE_CONFIG, and none of config/gateway.yaml, {missing}; "
        "pass --config FILE, set LLMGATE_CONFIG, or write one with `llmgate init FILE`"
    ]


def test_init_writes_the_starter_config_and_says_what_to_run_next(elsewhere, capsys):
    assert main(["init"]) == 0
    assert (elsewhere / "llmgate.yaml").read_text() == PACKAGED_CONFIG.read_text()
    out = capsys.readouterr().out
    assert "llmgate check-config llmgate.yaml\n" in out
    assert "llmgate serve --config llmgate.yaml\n" in out
    assert main(["check-config", "llmgate.yaml"]) == 0


def test_init_refuses_to_overwrite_without_force(elsewhere, capsys):
    target = elsewhere / "mine" / "gw.yaml"
    target.parent.mkdir()
    target.write_text("# edited by hand\n")
    assert main(["init", str(target)]) == 1
    assert capsys.readouterr().err == f"llmgate: {target} exists; pass --force to overwrite it\n"
    assert target.read_text() == "# edited by hand\n"
    assert main(["init", str(target), "--force"]) == 0
    assert target.read_text() == PACKAGED_CONFIG.read_text()


def test_init_makes_the_folder_and_quotes_the_path_it_prints(elsewhere, capsys):
    assert main(["init", "new dir/gw.yaml"]) == 0
    assert (elsewhere / "new dir" / "gw.yaml").is_file()
    assert "llmgate serve --config 'new dir/gw.yaml'" in capsys.readouterr().out


def test_check_config_without_a_file_checks_the_packaged_default(elsewhere, capsys):
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith(f"{PACKAGED_CONFIG}: valid: ")


def _run(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_built_wheel_installs_a_working_llmgate_with_its_config_and_console(tmp_path):
    # The build: a copy of the source, so the shared checkout gets no build/ or egg-info (and no stale file from
    # an old build/ reaches the wheel), built without isolation by this environment's setuptools: nothing is
    # downloaded. This is what `pip install .` builds from a clone.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "var", "__pycache__", ".pytest_cache", ".demo", "artifacts"
        ),
    )
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source],
        tmp_path,
        dict(os.environ),
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("llmgate-*.whl")

    # The install: a fresh venv holding only the wheel. Its dependencies come from this environment's
    # site-packages, named by a .pth file: that puts them after the venv's own site-packages (so `gateway`
    # is the wheel's), and does not run the .pth files found there (so this checkout's editable install
    # stays out). Installing the dependencies from the index would take minutes and a network.
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, dict(os.environ))
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        tmp_path,
        dict(os.environ),
    )
    assert installed.returncode == 0, installed.stderr
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, dict(os.environ)
        ).stdout.strip()
    )
    (site / "llmgate_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # The commands, from a folder outside the checkout, with nothing pointing back at it.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLMGATE_CONFIG", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run(
        [python, "-c", "import gateway, plugins; print(gateway.__file__); print(plugins.__file__)"], outside, env
    )
    assert where.stdout.splitlines() == [str(site / "gateway" / "__init__.py"), str(site / "plugins" / "__init__.py")]

    llmgate = venv / "bin" / "llmgate"
    helped = _run([llmgate, "--help"], outside, env)
    assert helped.returncode == 0, helped.stderr
    assert "init" in helped.stdout and "check-config" in helped.stdout

    wrote = _run([llmgate, "init", "x.yaml"], outside, env)
    assert wrote.returncode == 0, wrote.stderr
    assert "llmgate check-config x.yaml" in wrote.stdout
    assert (outside / "x.yaml").read_bytes() == PACKAGED_CONFIG.read_bytes()
    again = _run([llmgate, "init", "x.yaml"], outside, env)
    assert again.returncode == 1 and "pass --force" in again.stderr

    checked = _run([llmgate, "check-config", "x.yaml"], outside, env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("x.yaml: valid: 4 backends, 2 routes")

    default = _run([llmgate, "check-config"], outside, env)
    assert default.returncode == 0, default.stderr
    assert default.stdout.startswith(f"{site / 'gateway' / 'defaults' / 'gateway.yaml'}: valid: ")

    shipped = {p.name for p in (ROOT / "plugins" / "console" / "static").iterdir() if p.is_file()}
    assert "index.html" in shipped
    assert {p.name for p in (site / "plugins" / "console" / "static").iterdir()} == shipped
