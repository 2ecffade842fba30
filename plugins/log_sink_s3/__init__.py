"""log_sink_s3: every replica ships its traffic-log records to one S3 bucket, and readers read them all.

The request path only puts the record on a bounded in-memory queue (full: dropped and counted).
A writer commits queued records to a local SQLite spool; from that commit on a record is
*accepted* and is never lost: it stays in the spool, through crashes and restarts, until S3 has
confirmed the object holding it. An uploader task takes spooled records in order, groups them by
route and UTC hour into gzip JSONL objects (see plugins/log_sink_s3/layout.py), puts them with boto3 on its
own thread, and only then deletes their rows. Failures are retried with jittered exponential
backoff; shutdown uploads what it can within `shutdown_seconds` and leaves the rest for the next
start. `read_records_s3` reads every replica's records back for the dataset builder and reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timezone
from functools import partial
from typing import Any, Iterator

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.errors import Scrubber
from gateway.hookspecs import hookimpl

from .layout import (
    Layout,
    decode_object,
    encode_object,
    erase_objects,
    hour_of,
    make_client,
    object_keys,
    of_user,
    partitions,
)
from .spool import Spool, SpoolWriter

log = logging.getLogger("llmgate.log_sink_s3")

READ_CONCURRENCY = 8  # objects fetched at once by read_records_s3


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bucket: str = Field(min_length=3)
    prefix: str = Field("llmgate/traffic", description="key prefix under which partitions start")
    region: str | None = None
    endpoint_url: str | None = Field(None, description="an S3-compatible store (MinIO, a test server)")
    profile: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    replica: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="this replica's name in object keys; default: the spool's, else host-pid",
    )
    spool_path: str = "var/s3_spool.db"
    bodies: bool = Field(True, description="ship request and response bodies")
    queue_size: int = Field(10_000, ge=1, description="records waiting for the spool; more are dropped and counted")
    batch_size: int = Field(1000, ge=1, description="records per upload round (and at most per object)")
    max_batch_age: float = Field(60.0, ge=0, description="seconds a spooled record waits for a fuller batch")
    retry_min_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    shutdown_seconds: float = Field(10.0, ge=0, description="on shutdown, how long to keep uploading")
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)

    def secret_values(self) -> list[str]:
        """What must never appear in a log line or an error (the access key id too: it names the account)."""
        return [
            self.aws_access_key_id or "",
            *(s.get_secret_value() for s in (self.aws_secret_access_key, self.aws_session_token) if s),
        ]

    @model_validator(mode="after")
    def _retry_bounds(self):
        if self.retry_max_seconds < self.retry_min_seconds:
            raise ValueError("retry_max_seconds must not be below retry_min_seconds")
        return self


def default_replica() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{socket.gethostname()}-{os.getpid()}")


class LogSinkS3:
    """Off by default: enable it with a bucket (`plugins: {log_sink_s3: {enabled: true, bucket: ...}}`)."""

    DEFAULT_ENABLED = False
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self.replica: str | None = None
        self.dropped = 0  # never accepted: the queue was full or the spool refused them
        self.spooled = 0  # accepted, waiting for S3
        self.uploaded = 0
        self.objects = 0
        self.failures = 0  # consecutive failed upload attempts
        self.last_error: str | None = None
        self.last_upload_at: float | None = None
        self.spool_error: str | None = None
        self._scrub = Scrubber(settings.secret_values())
        self._spool = Spool(settings.spool_path)
        self._writer: SpoolWriter | None = None
        self._uploader: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._client = None
        self._layout: Layout | None = None
        self._wake = asyncio.Event()
        self._pending_since: float | None = None  # monotonic time the oldest waiting batch began to wait
        self._accepting = False  # offers are taken (between startup and shutdown)
        self._closing = False  # the uploader's final flush

    @hookimpl
    async def startup(self, gateway):
        await self._spool.open()
        self.replica = await self._spool.replica_id(self.settings.replica, default_replica())
        self._layout = Layout(self.settings.prefix, self.replica)
        self.spooled, planned = await self._spool.count()
        if self.spooled:  # left by the previous process: due at once
            self._pending_since = time.monotonic() - self.settings.max_batch_age
            log.info(
                "s3 log sink: %d records from a previous run wait in %s (%d in objects already named)",
                self.spooled,
                self.settings.spool_path,
                planned,
            )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-log-sink")
        self._client = await asyncio.get_running_loop().run_in_executor(
            self._executor, partial(make_client, self.settings)
        )
        self._writer = self._spool.writer(
            queue_size=self.settings.queue_size,
            batch_size=self.settings.batch_size,
            on_commit=self._committed,
            on_failure=self._spool_failed,
        )
        self._writer.start()
        self._accepting = True
        self._uploader = asyncio.create_task(self._upload_forever(), name="s3 log uploader")

    @hookimpl
    def after_response(self, ctx):
        self.offer(ctx.record(bodies=self.settings.bodies))

    def offer(self, record: dict[str, Any]) -> bool:
        """Queue one record for the spool without waiting; False (and counted) when it cannot be taken."""
        if not self._accepting:
            self._drop(1, "the sink is not running")
            return False
        try:
            self._writer.put_nowait(record)
        except asyncio.QueueFull:
            self._drop(1, "queue full")
            return False
        return True

    @hookimpl
    async def erase_user(self, user, request_ids, team):
        """The user's records waiting in the spool and in every object of the bucket (rewritten without them)."""
        erased = of_user(user, set(request_ids), team)
        spooled = await self._spool.forget(erased)
        self.spooled -= spooled
        removed, rewritten = await asyncio.get_running_loop().run_in_executor(
            self._executor, erase_objects, self._client, self.settings.bucket, self.settings.prefix, erased
        )
        return {"log_sink_s3": removed + spooled, "log_sink_s3_objects_rewritten": rewritten}

    @hookimpl
    def admin_status(self, gateway):
        return {
            "log_sink_s3": {
                "replica": self.replica,
                "bucket": self.settings.bucket,
                "prefix": self.settings.prefix,
                "queued": self._writer.qsize() if self._writer else 0,
                "spooled": self.spooled,
                "uploaded": self.uploaded,
                "objects": self.objects,
                "dropped": self.dropped,
                "failing_attempts": self.failures,
                "last_error": self.last_error,
                "last_upload_at": self.last_upload_at,
                "spool_error": self.spool_error,
            }
        }

    @hookimpl
    def readiness(self, gateway):
        problems = []
        if self.spool_error:
            problems.append(f"the spool cannot be written: {self.spool_error}")
        if self.failures:
            problems.append(
                f"S3 uploads failing ({self.failures} attempts, {self.spooled} records spooled): {self.last_error}"
            )
        if self.dropped:
            problems.append(f"{self.dropped} records dropped before the spool")
        return {"log_sink_s3": "; ".join(problems) or None}

    @hookimpl
    async def shutdown(self, gateway):
        """Spool what is queued, upload for up to `shutdown_seconds`, leave the rest in the spool."""
        self._accepting = False
        if self._writer is not None:
            await self._writer.close()
        self._closing = True
        self._wake.set()
        if self._uploader is not None:
            _, pending = await asyncio.wait({self._uploader}, timeout=self.settings.shutdown_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(self._uploader, return_exceptions=True)
        if self.spooled:
            log.warning("s3 log sink: %d records stay in %s for the next start", self.spooled, self.settings.spool_path)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        await self._spool.close()

    def _drop(self, n: int, why: str) -> None:
        before, self.dropped = self.dropped, self.dropped + n
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning("s3 log sink: %d records dropped so far (%s)", self.dropped, why)

    def _committed(self, n: int) -> None:
        self.spooled += n
        self.spool_error = None
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._wake.set()

    def _spool_failed(self, n: int, exc: Exception) -> None:
        self.spool_error = self._scrub(f"{type(exc).__name__}: {exc}")
        log.error("s3 log sink: the spool refused %d records: %s", n, self.spool_error)
        self._drop(n, "spool write failed")

    async def _due(self) -> None:
        """Return when a batch should go: full, old enough, a retry, or shutdown's final flush."""
        while not self._closing:
            if self.failures or self.spooled >= self.settings.batch_size:
                return
            timeout = None
            if self.spooled:
                timeout = self._pending_since + self.settings.max_batch_age - time.monotonic()
                if timeout <= 0:
                    return
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _upload_forever(self) -> None:
        while True:
            await self._due()
            if not self.spooled:
                return  # closing, and nothing is left
            try:
                await self._upload_next()
            except Exception as exc:
                self.failures += 1
                self.last_error = self._scrub(f"{type(exc).__name__}: {exc}")
                delay = self._backoff()
                log.warning(
                    "s3 log sink: upload failed (attempt %d, %d records spooled), retrying in %.1fs: %s",
                    self.failures,
                    self.spooled,
                    delay,
                    self.last_error,
                )
                await asyncio.sleep(delay)
                continue
            if self.failures:
                log.info("s3 log sink: uploads resumed after %d failed attempts", self.failures)
            self.failures = 0

    def _backoff(self) -> float:
        cap = min(self.settings.retry_max_seconds, self.settings.retry_min_seconds * 2 ** (self.failures - 1))
        return random.uniform(self.settings.retry_min_seconds, max(cap, self.settings.retry_min_seconds))

    def _put(self, key: str, record_lines: list[str]) -> None:
        """On the upload thread: compressing a batch would stall the event loop for milliseconds."""
        self._client.put_object(
            Bucket=self.settings.bucket, Key=key, Body=encode_object(record_lines), ContentType="application/x-ndjson"
        )

    async def _upload_next(self) -> None:
        objects = await self._spool.next_objects(self.settings.batch_size, self._layout)
        loop = asyncio.get_running_loop()
        for key, rows in objects.items():
            await loop.run_in_executor(self._executor, self._put, key, [record for _, record in rows])
            await self._spool.remove([row_id for row_id, _ in rows])
            self.spooled -= len(rows)
            self.uploaded += len(rows)
            self.objects += 1
            self.last_upload_at = time.time()
        self._pending_since = time.monotonic() if self.spooled else None


class S3ReadError(Exception):
    """The sink's bucket cannot be read (missing, unreachable, refused); the message names it, never a key."""


def _epoch(moment: float | int | datetime | str | None) -> float | None:
    if moment is None or isinstance(moment, (int, float)):
        return moment
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def read_records_s3(
    settings: dict,
    *,
    route: str | None = None,
    since: float | datetime | str | None = None,
    until: float | datetime | str | None = None,
) -> Iterator[dict[str, Any]]:
    """Every replica's records with `since <= ts < until` (epoch seconds or datetimes; naive means UTC), oldest first.

    `settings` is the plugin's config section (core keys such as `enabled` are ignored). Only the
    partitions of `route` (all routes when None) and of the window's hours are listed; each hour's
    objects are merged across replicas, deduplicated by request_id (an object re-uploaded under
    another name after a crash) and sorted by time, so memory holds one hour at a time.
    """
    options = Settings.model_validate({k: v for k, v in settings.items() if k in Settings.model_fields})
    where = f"s3://{options.bucket}/{options.prefix.strip('/')}"
    try:
        yield from _read(options, route, _epoch(since), _epoch(until))
    except (BotoCoreError, ClientError) as exc:
        raise S3ReadError(Scrubber(options.secret_values())(f"cannot read the traffic log at {where}: {exc}")) from None


def _read(options: Settings, route: str | None, start: float | None, end: float | None) -> Iterator[dict[str, Any]]:
    client = make_client(options)
    hours = partitions(
        client,
        options.bucket,
        options.prefix,
        route,
        hour_of(start) if start is not None else None,
        hour_of(end) if end is not None else None,
    )

    def fetch(key: str) -> bytes:
        return client.get_object(Bucket=options.bucket, Key=key)["Body"].read()

    with ThreadPoolExecutor(READ_CONCURRENCY, thread_name_prefix="s3-log-read") as pool:
        for parts in hours.values():
            keys = [key for part in parts for key in object_keys(client, options.bucket, part)]
            records: dict[str, dict[str, Any]] = {}
            for data in pool.map(fetch, keys):
                for record in decode_object(data):
                    ts = record.get("ts", 0)
                    if (start is None or ts >= start) and (end is None or ts < end):
                        records.setdefault(record["request_id"], record)
            yield from sorted(records.values(), key=lambda r: (r["ts"], r["request_id"]))
