"""Stores keep rows for their stated number of days: the sweep deletes older ones, in batches, and
leaves the rest (the traffic log, the shadow comparisons, the feedback)."""

import sqlite3
import time

import pytest

from gateway.storage.retention import BATCH, Retention
from gateway.storage.sqlite import SqliteThread
from tests.support import wait_until

SCHEMA = "CREATE TABLE IF NOT EXISTS traffic (id INTEGER PRIMARY KEY, ts REAL NOT NULL, body TEXT);"


async def test_rows_older_than_the_retention_are_deleted_in_batches_and_the_rest_kept(tmp_path):
    path = tmp_path / "log.db"
    db = SqliteThread(str(path), SCHEMA)
    now = time.time()
    old, recent = BATCH * 2 + 7, 25  # more than one batch of old rows
    await db.run(
        lambda c: c.executemany(
            "INSERT INTO traffic (ts, body) VALUES (?, ?)",
            [(now - 40 * 86400 - i, "old") for i in range(old)] + [(now - i, "new") for i in range(recent)],
        )
    )
    retention = Retention(db, "traffic", days=30)
    assert await retention.sweep(now) == old
    assert await db.run(lambda c: c.execute("SELECT body, count(*) FROM traffic GROUP BY body").fetchall()) == [
        ("new", recent)
    ]
    assert await retention.sweep(now) == 0 and retention.summary()["deleted"] == old
    await db.close()


async def test_a_store_not_written_yet_is_not_made_by_the_sweep(tmp_path):
    path = tmp_path / "feedback.db"
    retention = Retention(SqliteThread(str(path), SCHEMA), "traffic", days=365)
    assert await retention.sweep() == 0 and not path.exists()


@pytest.mark.parametrize(
    "module, days", [("plugins.traffic_log.plugin", 30), ("plugins.shadow.plugin", 30), ("plugins.feedback", 365)]
)
def test_each_store_states_its_retention(module, days):
    import importlib

    assert importlib.import_module(module).Settings().retention_days == days


def test_the_traffic_log_sweeps_at_start_up(fake_openai, make_gateway, tmp_path):
    from gateway.gateway import GATEWAY
    from plugins.traffic_log.plugin import SCHEMA as TRAFFIC_SCHEMA

    path = tmp_path / "traffic.db"
    conn = sqlite3.connect(path)
    conn.executescript(TRAFFIC_SCHEMA)
    conn.execute(
        "INSERT INTO traffic (request_id, ts, route, status, stream) VALUES ('old', ?, 'bot', 200, 0)",
        (time.time() - 31 * 86400,),
    )
    conn.commit()
    conn.close()
    gw = make_gateway(
        {
            "backends": {"up": {"kind": "openai", "base_url": fake_openai.url + "/v1", "model": "m", "api_key": "k"}},
            "routes": {"bot": {"baseline": "up"}},
            "plugins": {"traffic_log": {"path": str(path)}},
        }
    )
    log = gw.app[GATEWAY].pm.get_plugin("traffic_log")
    wait_until(lambda: log.retention.deleted == 1, "the start-up sweep")
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM traffic").fetchone()[0]
    assert rows == 0
