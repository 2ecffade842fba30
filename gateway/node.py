"""What the worker processes of one node (`server.workers`) know of each other: how many they are, and
one /metrics for all of them, each worker's figures summed.

Each worker writes its own exposition to a file in a folder the arbiter names
(`LLMGATE_WORKERS_DIR`) every SNAPSHOT_SECONDS and when it is scraped; whichever worker answers
a scrape adds them up. Counters and histograms are summed over every worker that ever ran under
this arbiter (a replaced worker's last figures stay, so a sum never goes down and `rate()` sees
no false reset); gauges are a worker's own state, so each live worker's keeps a `worker` label.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

WORKERS_DIR_ENV = "LLMGATE_WORKERS_DIR"
WORKERS_ENV = "LLMGATE_WORKERS"


def node_workers() -> int:
    """How many worker processes serve this node (1 outside a prefork server)."""
    return int(os.environ.get(WORKERS_ENV) or 1)


SNAPSHOT_SECONDS = 1.0  # how stale another worker's figures may be in a scrape
SUMMED = frozenset({"counter", "histogram", "summary"})


class WorkerSnapshots:
    def __init__(self, folder: Path, pid: int | None = None):
        self.folder = folder
        self.pid = pid or os.getpid()

    @classmethod
    def from_env(cls) -> "WorkerSnapshots | None":
        """The snapshots of this node's workers, or None when this process is not a worker."""
        folder = os.environ.get(WORKERS_DIR_ENV)
        return cls(Path(folder)) if folder else None

    def write(self, exposition: bytes) -> None:
        """This worker's figures now (written whole, then renamed: a reader never sees half a file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        part = self.folder / f"{self.pid}.prom.part"
        part.write_bytes(exposition)
        part.replace(self.folder / f"{self.pid}.prom")

    def merged(self, mine: bytes) -> bytes:
        """Every worker's figures as one exposition, `mine` (this worker's, just made) included."""
        self.write(mine)
        families: dict[str, tuple[str, str]] = {}  # name -> (type, documentation)
        samples: dict[tuple[str, str, tuple], float] = {}  # (family, sample name, labels) -> value
        for path in sorted(self.folder.glob("*.prom")):
            pid = int(path.stem)
            live = pid == self.pid or _alive(pid)
            text = ""
            with contextlib.suppress(OSError):  # a worker's file replaced as it is read: the next scrape has it
                text = path.read_text()
            for family in text_string_to_metric_families(text):
                summed = family.type in SUMMED
                if not summed and not live:
                    continue
                families.setdefault(family.name, (family.type, family.documentation))
                for sample in family.samples:
                    labels = dict(sample.labels)
                    if not summed:
                        labels["worker"] = str(pid)
                    key = (family.name, sample.name, tuple(sorted(labels.items())))
                    samples[key] = samples.get(key, 0.0) + sample.value if summed else sample.value
        return _render(families, samples).encode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _order(sample: tuple[str, tuple, float]) -> tuple:
    name, labels, _ = sample
    le = dict(labels).get("le")
    rest = tuple(item for item in labels if item[0] != "le")
    return rest, name.endswith(("_count", "_sum")), name, float(le) if le is not None else 0.0


def _render(families: dict[str, tuple[str, str]], samples: dict[tuple[str, str, tuple], float]) -> str:
    lines: list[str] = []
    by_family: dict[str, list] = {}
    for (family, name, labels), value in samples.items():
        by_family.setdefault(family, []).append((name, labels, value))
    for found in by_family.values():  # a histogram's series together, its buckets in order
        found.sort(key=_order)
    for family, (kind, documentation) in families.items():
        lines.append(f"# HELP {family} {documentation.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        lines.append(f"# TYPE {family} {kind}")
        for name, labels, value in by_family.get(family, ()):
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"
