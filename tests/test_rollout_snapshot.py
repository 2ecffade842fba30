"""The local rollout snapshot: replicas on one host may share its path."""

import asyncio
import json
import threading

from plugins.rollout.snapshot import RolloutSnapshot


def test_replicas_writing_one_snapshot_path_at_once_never_fail_and_leave_a_whole_file(tmp_path, caplog):
    path = tmp_path / "var" / "rollout-snapshot.json"
    errors, start = [], threading.Barrier(4)

    def replica(n):
        snapshot = RolloutSnapshot(str(path))
        start.wait()

        async def writes():
            for i in range(50):
                await snapshot.save({"bot": {"percents": {"cand": n * 100 + i}}})

        try:
            asyncio.run(writes())
        except Exception as exc:  # pragma: no cover - the failure this test is about
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and "not written" not in caplog.text
    routes, saved_at = RolloutSnapshot(str(path)).load()
    assert saved_at > 0 and routes["bot"]["percents"]["cand"] % 100 == 49, "some replica's last write, whole"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left behind"
    json.loads(path.read_text())
