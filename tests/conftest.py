import contextlib
import os

import pytest

from tests.fakes.openai_api import FakeOpenAI
from tests.support import ServerThread, gateway_thread, serving

pytest_plugins = ["tests.browser"]  # the `browser` fixture, for every test that looks at the console

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never probe the metadata address for credentials


@pytest.fixture
def fake_openai():
    fake = FakeOpenAI(api_key="sk-upstream-secret-0123456789")
    with serving(fake):
        yield fake


@pytest.fixture
def openai_fakes():
    """Start keyless fake OpenAI servers, as many as a test asks for (`openai_fakes()` serves one more)."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(serving(FakeOpenAI()))


@pytest.fixture
def make_gateway(tmp_path):
    """Start gateways from config dicts; state and traffic log go to the test's own directory."""
    started = []

    def make(config: dict) -> ServerThread:
        config = {**config}
        config["state"] = {"sqlite_path": str(tmp_path / "state.db"), **config.get("state", {})}
        plugins = {**config.get("plugins", {})}
        plugins.setdefault("traffic_log", {"path": str(tmp_path / "traffic.db")})
        config["plugins"] = plugins
        server = gateway_thread(config).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


UPSTREAM_KEY = "sk-upstream-secret-0123456789"
BEDROCK_MODEL = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123"


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials the standard AWS chain finds; the fakes and moto accept any."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-aws-secret-key-for-tests-only")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def fake_anthropic():
    from tests.fakes.anthropic_api import FakeAnthropic

    fake = FakeAnthropic(api_key=UPSTREAM_KEY)
    with serving(fake):
        yield fake


@pytest.fixture
def fake_bedrock(aws_env):
    from tests.fakes.bedrock_api import FakeBedrock

    fake = FakeBedrock()
    with serving(fake):
        yield fake


def backend_config(kind: str, fake) -> dict:
    """A backend entry of `kind` pointed at its fake upstream."""
    if kind == "openai":
        return {"kind": "openai", "base_url": fake.url + "/v1", "model": "gpt-test", "api_key": UPSTREAM_KEY}
    if kind == "anthropic":
        return {"kind": "anthropic", "base_url": fake.url, "model": "claude-test", "api_key": UPSTREAM_KEY}
    if kind == "bedrock":
        return {"kind": "bedrock", "model": BEDROCK_MODEL, "region": "us-east-1", "endpoint_url": fake.url}
    raise ValueError(kind)


@pytest.fixture(params=["openai", "anthropic", "bedrock"])
def upstream(request):
    """(kind, fake) for each backend kind in turn."""
    fake = request.getfixturevalue(f"fake_{request.param}")
    return request.param, fake


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for the whole session (installed by `make test`)."""
    import shutil
    import subprocess

    from tests.support import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            import time

            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server):
    import redis

    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(params=["sqlite", "redis"])
def state_settings(request, tmp_path):
    """State-store settings for each engine in turn: the embedded SQLite file, then the real Redis."""
    from gateway.config import StateSettings

    if request.param == "redis":
        return StateSettings(redis_url=request.getfixturevalue("redis_url"))
    return StateSettings(sqlite_path=str(tmp_path / "state.db"))
