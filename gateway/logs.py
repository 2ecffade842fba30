"""Log set-up: plain or JSON lines, with every configured secret scrubbed from every record."""
from __future__ import annotations

import json
import logging
import sys
import time

from .errors import Scrubber


class ScrubbingFormatter(logging.Formatter):
    """Formats a record, then removes secrets from the whole text (message, arguments and traceback)."""

    def __init__(self, scrub: Scrubber, as_json: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.scrub = scrub
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if not self.as_json:
            return self.scrub(super().format(record))
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for key in ("request_id", "route", "variant"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.scrub(json.dumps(entry))


def setup_logging(scrub: Scrubber, level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter(scrub, as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
