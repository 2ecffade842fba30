"""The state store keeps values and events, the same on SQLite and on a real Redis, across restarts."""

import openai

from gateway.config import StateSettings
from gateway.state import open_state_store
from tests.conftest import UPSTREAM_KEY


async def test_values_and_events(state_settings):
    store = open_state_store(state_settings)
    await store.open()
    try:
        assert await store.ping()
        assert await store.get("rollout:bot") is None
        await store.set("rollout:bot", {"ft-v2": 10})
        await store.set("rollout:bot", {"ft-v2": 25})
        await store.set("rollout:other", {"x": 1})
        await store.set("kill:bot", True)
        assert await store.get("rollout:bot") == {"ft-v2": 25}
        assert await store.items("rollout:") == {"rollout:bot": {"ft-v2": 25}, "rollout:other": {"x": 1}}
        assert await store.items("rollout_") == {}, "prefixes are literal, not patterns"
        await store.delete("rollout:other")
        assert list(await store.items("rollout:")) == ["rollout:bot"]
        for i in range(5):
            await store.append_event({"kind": "rollout", "route": "bot" if i % 2 == 0 else "x", "n": i})
        events = await store.events(limit=2, route="bot")
        assert [e["n"] for e in events] == [4, 2]
        assert all(e["id"] and e["ts"] for e in events)
        assert [e["n"] for e in await store.events()] == [4, 3, 2, 1, 0]
    finally:
        await store.close()


async def test_expiring_values_are_gone_after_their_ttl_and_apart_from_the_others(state_settings):
    import asyncio

    store = open_state_store(state_settings)
    await store.open()
    try:
        await store.put_expiring("resp:a", {"messages": [1, 2]}, ttl_seconds=0.2)
        await store.put_expiring("resp:b", {"messages": [3]}, ttl_seconds=60)
        assert await store.get_expiring("resp:a") == {"messages": [1, 2]}
        assert await store.get_expiring("resp:none") is None
        assert await store.get("resp:a") is None and await store.items("resp:") == {}  # not among the state values
        await asyncio.sleep(0.3)
        assert await store.get_expiring("resp:a") is None
        assert await store.get_expiring("resp:b") == {"messages": [3]}
    finally:
        await store.close()


async def test_expiring_values_put_together_are_committed_together_and_each_put_returns_once_kept(state_settings):
    """The turns a busy gateway stores (a Responses request each) go in one transaction per batch."""
    import asyncio

    store = open_state_store(state_settings)
    await store.open()
    try:
        await asyncio.gather(*(store.put_expiring(f"resp:{i}", {"n": i}, ttl_seconds=60) for i in range(200)))
        assert [await store.get_expiring(f"resp:{i}") for i in range(200)] == [{"n": i} for i in range(200)]
        await asyncio.gather(
            store.put_expiring("resp:same", {"n": 1}, ttl_seconds=60),
            store.put_expiring("resp:same", {"n": 2}, ttl_seconds=60),
        )
        assert await store.get_expiring("resp:same") == {"n": 2}  # the later put wins, as it did alone
        if state_settings.redis_url is None:  # the embedded engine batches its writes
            commits = []
            run = store._db.run
            store._db.run = lambda fn: commits.append(fn) or run(fn)
            await asyncio.gather(*(store.put_expiring(f"resp:b{i}", {"n": i}, ttl_seconds=60) for i in range(100)))
            assert 1 <= len(commits) <= 2, "at most the batch begun and the one behind it"
            pending = asyncio.ensure_future(store.put_expiring("resp:late", {"n": 0}, ttl_seconds=60))
            await asyncio.sleep(0)
            pending.cancel()  # its caller went away: the row is still written, before the store closes
    finally:
        await store.close()
    again = open_state_store(state_settings)
    await again.open()
    try:
        assert await again.get_expiring("resp:199") == {"n": 199}
        if state_settings.redis_url is None:  # the embedded engine batches its writes
            assert await again.get_expiring("resp:late") == {"n": 0}
    finally:
        await again.close()


async def test_state_survives_a_restart(state_settings):
    first = open_state_store(state_settings)
    await first.open()
    await first.set("rollout:bot", {"ft-v2": 40})
    await first.append_event({"kind": "rollback", "route": "bot"})
    await first.close()
    second = open_state_store(state_settings)
    await second.open()
    try:
        assert await second.get("rollout:bot") == {"ft-v2": 40}
        assert (await second.events(route="bot"))[0]["kind"] == "rollback"
    finally:
        await second.close()


async def test_unreachable_redis_is_reported_not_raised():
    store = open_state_store(StateSettings(redis_url="redis://127.0.0.1:9/0"))
    try:
        assert await store.ping() is False
    finally:
        await store.close()


def test_gateway_readiness_reports_its_state_engine(fake_openai, make_gateway, redis_url):
    from tests.test_routing import get_json

    gw = make_gateway(
        {
            "state": {"redis_url": redis_url},
            "backends": {
                "up": {"kind": "openai", "base_url": fake_openai.url + "/v1", "model": "m", "api_key": UPSTREAM_KEY}
            },
            "routes": {"bot": {"baseline": "up"}},
        }
    )
    status, ready = get_json(gw.url + "/readyz")
    assert status == 200 and ready["state_store"] == {"engine": "redis", "reachable": True}
    answer = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "echo: hi"


async def test_concurrent_updates_are_atomic(state_settings):
    import asyncio

    stores = [open_state_store(state_settings) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        await asyncio.gather(
            *(store.update("counter", lambda old: (old or 0) + 1) for store in stores for _ in range(20))
        )
        assert await stores[0].get("counter") == 60
        old, new = await stores[1].update("counter", lambda old: old * 2)
        assert (old, new) == (60, 120)
    finally:
        for store in stores:
            await store.close()


async def test_change_notices_reach_every_store_sharing_the_engine(state_settings):
    import asyncio

    stores = [open_state_store(state_settings) for _ in range(2 if state_settings.redis_url else 1)]
    received = [[] for _ in stores]
    for store, inbox in zip(stores, received):
        store.subscribe(inbox.append)
        await store.open()
    try:
        await asyncio.sleep(0.2)  # let the listeners subscribe
        await stores[0].publish({"kind": "rollout", "route": "bot"})
        for _ in range(100):
            if all(inbox for inbox in received):
                break
            await asyncio.sleep(0.02)
        assert all(inbox == [{"kind": "rollout", "route": "bot"}] for inbox in received)
    finally:
        for store in stores:
            await store.close()
