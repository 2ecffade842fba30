"""Log set-up: plain or JSON lines, with every configured secret scrubbed from every record.

Lines are formatted where they are logged and written to stderr by a thread of their own, through
a bounded queue: a slow or stalled stderr (a full pipe, a busy terminal) never blocks the event
loop; when the queue is full lines are dropped and counted, and the next line written says so.
The writer rests a moment after each write, so the lines logged meanwhile go out in one write and
the event loop's thread is not made to wake it (and hand it the GIL) once a line.

Each request's id lives in a context variable for the request's task (and tasks it starts), so
every line logged while serving it carries `request_id` without the code passing it around. One
access line per request (logger `llmgate.access`, INFO) says what the request became: method,
path, status, latency and, for chat requests, route, variant, backend and the gateway's overhead.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sys
import threading
import time
import weakref
from contextvars import ContextVar
from typing import Any, Mapping, TextIO

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

from .errors import Scrubber

current_request_id: ContextVar[str | None] = ContextVar("llmgate_request_id", default=None)
access_log = logging.getLogger("llmgate.access")

# Fields a record may carry (`extra=`) that a JSON line keeps.
FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "latency_ms",
    "route",
    "variant",
    "served_by",
    "overhead_ms",
    "upstream_ms",
    "ttft_ms",
    "error_type",
)
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: DEBUG, not INFO
LOG_QUEUE_LINES = 10_000  # lines waiting for stderr before new ones are dropped (and counted)
LOG_WRITE_LINES = 256  # lines joined into one write
LOG_WRITE_PAUSE = 0.05  # seconds the writer rests after a write that did not fill LOG_WRITE_LINES
LOG_CLOSE_SECONDS = 5.0  # how long closing waits for the queued lines to be written


# What a caller could put in a path, a header, a model or team name to forge a log line or drive a terminal:
# C0 and C1 controls (newlines, ESC), DEL, the Unicode line and paragraph separators and the bidi overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_TRACEBACK = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escaped(text: str, unsafe: re.Pattern = _UNSAFE) -> str:
    """`text` with every character that could end a log line or reach a terminal written as an escape (\\x0a)."""
    return unsafe.sub(_escape_char, text) if unsafe.search(text) else text


class ScrubbingFormatter(logging.Formatter):
    """Formats a record, then removes secrets from the whole text (message, arguments and traceback)."""

    def __init__(self, scrub: Scrubber, as_json: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.scrub = scrub
        self.as_json = as_json
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text (one tuple: threads)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created, record.msecs)

    def stamp(self, created: float, msecs: float | None = None) -> str:
        """logging's own stamp (`2026-12-04 18:49:00,123`), its date and time formatted once a second rather
        than once a line: the access log writes a line a request. `msecs`: a record's own (Python 3.13
        counts them from the clock's nanoseconds), else counted from `created`."""
        second = int(created)
        known, text = self._second
        if second != known:
            text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created))
            self._second = (second, text)
        return f"{text},{int((created - second) * 1000 if msecs is None else msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        request_id = getattr(record, "request_id", None) or current_request_id.get()
        fields = record.__dict__
        return self.line(record.name, record.levelname, record.created, record.getMessage(), request_id, fields)

    def line(
        self,
        name: str,
        level: str,
        created: float,
        message: str,
        request_id: str | None,
        fields: Mapping[str, Any],
    ) -> str:
        """One record's line, from its parts (a LogRecord's, or the access line's own: log_access): the
        message escaped whole; a traceback (`exc_text`) on the lines after it, escaped but for its
        newlines, each of them indented, so no line it holds reads as a record of its own."""
        traceback = fields.get("exc_text")
        if not self.as_json:
            text = f"{self.stamp(created, fields.get('msecs'))} {level} {name}: {escaped(message)}"
            if traceback:
                text += "\n  " + escaped(traceback, _UNSAFE_IN_TRACEBACK).replace("\n", "\n  ")
            return self.scrub(f"{text} [request {request_id}]" if request_id and name != access_log.name else text)
        msecs = fields.get("msecs")
        msecs = (created - int(created)) * 1000 if msecs is None else msecs
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z",
            "level": level.lower(),
            "logger": name,
            "message": message,
        }
        if request_id:
            entry["request_id"] = request_id
        for key in FIELDS[1:]:
            value = fields.get(key)
            if value is not None:
                entry[key] = value
        if traceback:
            entry["exception"] = traceback
        return self.scrub(json.dumps(entry, default=str))


class MalformedRequestLine(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (bad framing, a header too long) at ERROR with a
    traceback; the caller already has its 400, so one INFO line says it, and a hostile client cannot flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError):  # the body's own refusal, met again while draining it
            exc = exc.__cause__
        if isinstance(exc, HttpProcessingError):
            reason = (exc.message or type(exc).__name__).strip().splitlines()[0][:200]
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "a client"
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused a malformed request from %s: %s", (remote, reason)
            record.exc_info = record.exc_text = None
        return True


_MALFORMED_REQUEST_LINE = MalformedRequestLine()


def _restart(handler: "BackgroundWriter | None") -> None:
    if handler is not None and handler in logging.getLogger().handlers:  # one in use, not one replaced
        handler._start()


class BackgroundWriter(logging.Handler):
    """Formats each record on the caller's thread (its arguments are read as they are now, and the
    secrets scrubbed), then queues the line for a writer thread that joins what has queued into one
    write and rests `pause` seconds before the next: a line waits at most that long, and a busy
    process wakes the writer a few times a second, not once a line. Flushing cuts the rest short;
    closing (which `logging.shutdown` does at exit) writes what is queued first."""

    def __init__(self, stream: TextIO, capacity: int = LOG_QUEUE_LINES, pause: float = LOG_WRITE_PAUSE):
        super().__init__()
        self.stream = stream
        self.capacity = capacity
        self.pause = pause
        self.dropped = 0
        self._lines: queue.SimpleQueue[str | None]  # bounded by `capacity` in emit
        self._hurry = threading.Event()  # set by flush and close: no rest before the next write
        self._queued = self._written = 0  # each counted by one thread: emit holds the handler's lock
        self._start()
        # A forked worker (server.workers) has no writer thread: it starts its own, with a queue of its own.
        mine = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart(mine()))

    def _start(self) -> None:
        self._lines = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_forever, name="llmgate-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._put(line)

    def put(self, line: str) -> None:
        """Queue a line made without a LogRecord (log_access), under the lock that `emit` runs under."""
        with self.lock:
            self._put(line)

    def _put(self, line: str) -> None:
        if self._lines.qsize() >= self.capacity:
            self.dropped += 1
            return
        self._lines.put(line)
        self._queued += 1

    def _write_forever(self) -> None:
        reported = 0
        while True:
            lines = [self._lines.get()]
            while len(lines) < LOG_WRITE_LINES and not self._lines.empty():
                lines.append(self._lines.get())
            text = [line for line in lines if line is not None]
            if self.dropped != reported:
                text.append(f"{self.dropped - reported} log lines dropped: stderr was not keeping up")
                reported = self.dropped
            try:
                if text:
                    self.stream.write("\n".join(text) + "\n")
                    self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing left to tell
                pass
            self._written += len(lines) - lines.count(None)
            if None in lines:
                return
            if len(lines) < LOG_WRITE_LINES and self._hurry.wait(self.pause):  # after a full write, no rest: more wait
                self._hurry.clear()

    def flush(self) -> None:
        """Wait until every line queued so far is written (at most LOG_CLOSE_SECONDS)."""
        queued, deadline = self._queued, time.monotonic() + LOG_CLOSE_SECONDS
        while self._written < queued and self._thread.is_alive() and time.monotonic() < deadline:
            self._hurry.set()
            time.sleep(0.005)

    def close(self) -> None:
        if self._thread.is_alive():
            self._lines.put(None)
            self._hurry.set()
            self._thread.join(LOG_CLOSE_SECONDS)
        super().close()


def setup_logging(scrub: Scrubber, level: str = "INFO", as_json: bool = False) -> None:
    handler = BackgroundWriter(sys.stderr)
    handler.setFormatter(ScrubbingFormatter(scrub, as_json))
    # fields no format here shows, each a lookup per record: off, as the logging HOWTO's "Optimization" says
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no caller's file and line either: no stack walk per record
    root = logging.getLogger()
    for replaced in root.handlers:
        if isinstance(replaced, BackgroundWriter):
            replaced.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUEST_LINE)


def _sole_writer(level: int) -> BackgroundWriter | None:
    """The gateway's own writer when it is the one handler an access line reaches, with no filter on the way:
    the line is then made and queued without a LogRecord, as the same text, for the line every request
    writes. Anything else set up (a test's capture, an embedding application's handler) gets the record."""
    logger: logging.Logger | None = access_log
    if access_log.filters:
        return None
    handlers: list[logging.Handler] = []
    while logger is not None:
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    if len(handlers) != 1:
        return None
    writer = handlers[0]
    if type(writer) is not BackgroundWriter or writer.filters or level < writer.level:
        return None
    return writer if isinstance(writer.formatter, ScrubbingFormatter) else None


def log_access(method: str, path: str, status: int, latency_ms: float, ctx=None) -> None:
    """The request's access line; `ctx` (a chat request's RequestContext) adds what the gateway decided."""
    level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    fields = {"method": method, "path": path, "status": status, "latency_ms": round(latency_ms, 3)}
    text = f"{method} {path} {status} {latency_ms:.1f}ms"
    if ctx is not None:
        fields.update(
            route=ctx.route_name,
            variant=ctx.variant,
            served_by=ctx.served_by,
            overhead_ms=None if ctx.overhead_ms is None else round(ctx.overhead_ms, 3),
            upstream_ms=round(ctx.upstream_ms, 3),
            ttft_ms=None if ctx.ttft_ms is None else round(ctx.ttft_ms, 3),
            error_type=ctx.error.type if ctx.error else None,
        )
        text += (
            f" route={ctx.route_name} variant={ctx.variant} served_by={ctx.served_by}"
            f" overhead={fields['overhead_ms']}ms"
        )
    writer = _sole_writer(level)
    if writer is not None:
        try:
            name = logging.getLevelName(level)
            writer.put(
                writer.formatter.line(access_log.name, name, time.time(), text, current_request_id.get(), fields)
            )
            return
        except Exception:  # never the request's failure: the record's way reports it as logging does
            pass
    access_log.log(level, text, extra=fields)
