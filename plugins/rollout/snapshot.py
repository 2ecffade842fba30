"""The rollout state last read from the shared store, kept in a local JSON file.

A replica that starts while Redis is unreachable routes with this copy (the operators' last
percents, canaries, kill switches and rollbacks) instead of falling back to the config's percents.
The file is written whenever the state the replica holds changes, atomically (write a file of its own, then rename),
on a worker thread; a missing or unreadable file is not an error, only a reason to use the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("llmgate.rollout")


class RolloutSnapshot:
    def __init__(self, path: str):
        self.path = Path(path)
        self._written: str | None = None  # what the file holds, so an unchanged state is not rewritten
        self._lock = asyncio.Lock()

    def load(self) -> tuple[dict[str, Any], float] | None:
        """({route: stored state}, saved_at), or None when there is no usable snapshot."""
        try:
            data = json.loads(self.path.read_text())
            return dict(data["routes"]), float(data["saved_at"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("rollout snapshot %s not used: %s", self.path, exc)
            return None

    async def save(self, routes: dict[str, Any]) -> None:
        content = json.dumps(routes, sort_keys=True)
        async with self._lock:
            if content == self._written:
                return
            try:
                await asyncio.to_thread(self._write, content)
            except OSError as exc:  # a full or read-only disk costs the snapshot, never the request path
                log.warning("rollout snapshot %s not written: %s", self.path, exc)
                return
            self._written = content

    def _write(self, routes_json: str) -> None:
        """Write a temporary file of this writer's own, then rename it over the snapshot: replicas on
        one host may share the path, and each rename is whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(f'{{"saved_at": {time.time()}, "routes": {routes_json}}}')
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
