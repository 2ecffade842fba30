import os

import pytest

from tests.fakes.openai_api import FakeOpenAI
from tests.support import ServerThread, gateway_thread

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never probe the metadata address for credentials


@pytest.fixture
def fake_openai():
    fake = FakeOpenAI(api_key="sk-upstream-secret-0123456789")
    with ServerThread(fake.app) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def make_gateway(tmp_path):
    """Start gateways from config dicts; state and traffic log go to the test's own directory."""
    started = []

    def make(config: dict) -> ServerThread:
        config = {**config}
        config.setdefault("state", {"sqlite_path": str(tmp_path / "state.db")})
        plugins = {**config.get("plugins", {})}
        plugins.setdefault("traffic_log", {"path": str(tmp_path / "traffic.db")})
        config["plugins"] = plugins
        server = gateway_thread(config).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
