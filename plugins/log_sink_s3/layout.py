"""Where the S3 log sink puts records, and how they are read back: one layout for writer and readers.

Objects live under `{prefix}/route={route}/dt={YYYY-MM-DD}/hour={HH}/{replica}-{first_id}-{last_id}.jsonl.gz`
(UTC hours of each record's `ts`; the route percent-encoded), each a gzip of JSON lines. Hive-style
partitions let a reader list only the routes and hours a window can touch, and let Athena or
Spark read the same tree. Objects are byte-for-byte reproducible (gzip without a timestamp), so
re-uploading the same rows rewrites an identical object.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from typing import Any, Callable, Iterator
from urllib.parse import quote

import boto3
from botocore.config import Config

from gateway.context import stable_hash

SUFFIX = ".jsonl.gz"


def _clean_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def hour_of(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc).replace(minute=0, second=0, microsecond=0)


def route_prefix(prefix: str, route: str) -> str:
    return f"{_clean_prefix(prefix)}route={quote(route, safe='')}/"


def hour_prefix(prefix: str, route: str, hour: datetime) -> str:
    return f"{route_prefix(prefix, route)}dt={hour:%Y-%m-%d}/hour={hour:%H}/"


class Layout:
    """Names partitions and objects for one replica (the spool's `Naming`)."""

    def __init__(self, prefix: str, replica: str):
        self.prefix, self.replica = prefix, replica

    def partition(self, route: str, ts: float) -> str:
        return hour_prefix(self.prefix, route, hour_of(ts))

    def object_key(self, partition: str, first_id: int, last_id: int) -> str:
        return f"{partition}{self.replica}-{first_id}-{last_id}{SUFFIX}"


def encode_object(record_lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(record_lines) + "\n").encode(), mtime=0)


def decode_object(data: bytes) -> Iterator[dict[str, Any]]:
    for line in gzip.decompress(data).decode().splitlines():
        if line:
            yield json.loads(line)


def make_client(settings: Any):
    """A boto3 S3 client from the sink's settings; explicit keys if given, else the standard AWS chain.

    botocore's own retries are off: the sink retries with its own backoff and keeps the records meanwhile.
    """
    keys = {}
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        keys = {
            "aws_access_key_id": settings.aws_access_key_id,
            "aws_secret_access_key": settings.aws_secret_access_key.get_secret_value(),
            "aws_session_token": settings.aws_session_token.get_secret_value() if settings.aws_session_token else None,
        }
    session = boto3.Session(profile_name=settings.profile, region_name=settings.region, **keys)
    config = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def _common_prefixes(client, bucket: str, prefix: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for entry in page.get("CommonPrefixes", ()):
            yield entry["Prefix"]


def _value(part: str, name: str) -> str | None:
    """`dt=2026-11-21/` -> `2026-11-21` when the segment is `name`'s."""
    segment = part.rstrip("/").rsplit("/", 1)[-1]
    return segment[len(name) + 1 :] if segment.startswith(f"{name}=") else None


def partitions(
    client, bucket: str, prefix: str, route: str | None, first_hour: datetime | None, last_hour: datetime | None
) -> dict[datetime, list[str]]:
    """{hour: [partition prefix of each route]} for the hours in [first_hour, last_hour] (either end open)."""
    if route is not None:
        routes = [route_prefix(prefix, route)]
    else:
        routes = [
            p
            for p in _common_prefixes(client, bucket, f"{_clean_prefix(prefix)}route=")
            if _value(p, "route") is not None
        ]
    first_day = first_hour.date() if first_hour else None
    last_day = last_hour.date() if last_hour else None
    found: dict[datetime, list[str]] = {}
    for route_part in routes:
        for day_part in _common_prefixes(client, bucket, f"{route_part}dt="):
            try:
                day = datetime.strptime(_value(day_part, "dt") or "", "%Y-%m-%d").date()
            except ValueError:
                continue  # not ours
            if (first_day and day < first_day) or (last_day and day > last_day):
                continue
            for hour_part in _common_prefixes(client, bucket, f"{day_part}hour="):
                try:
                    hour = datetime(
                        day.year, day.month, day.day, int(_value(hour_part, "hour") or ""), tzinfo=timezone.utc
                    )
                except ValueError:
                    continue
                if (first_hour and hour < first_hour) or (last_hour and hour > last_hour):
                    continue
                found.setdefault(hour, []).append(hour_part)
    return dict(sorted(found.items()))


def of_user(user: str, request_ids: set[str], team: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """Whether a stored record belongs to an end user being erased: one of the exchanges found, or one
    whose sticky user is theirs (kept longer here than in the traffic log, so matched by hash too), of
    `team` when one is named (another team's user of the same id is someone else)."""
    hashes: dict[str, str] = {}

    def erased(record: dict[str, Any]) -> bool:
        if record.get("request_id") in request_ids:
            return True
        route = record.get("route") or ""
        if route not in hashes:
            hashes[route] = stable_hash(route, f"user:{user}")[:16]
        return record.get("sticky_hash") == hashes[route] and (team is None or record.get("tenant") == team)

    return erased


def erase_objects(client, bucket: str, prefix: str, erased: Callable[[dict[str, Any]], bool]) -> tuple[int, int]:
    """Rewrite every object holding records `erased` picks, without them (delete it when none is left);
    (records removed, objects rewritten). Reads the whole tree under `prefix`: erasures are rare."""
    removed = rewritten = 0
    for parts in partitions(client, bucket, prefix, None, None, None).values():
        for part in parts:
            for key in object_keys(client, bucket, part):
                records = list(decode_object(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
                kept = [r for r in records if not erased(r)]
                if len(kept) == len(records):
                    continue
                if kept:
                    lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in kept]
                    client.put_object(
                        Bucket=bucket, Key=key, Body=encode_object(lines), ContentType="application/x-ndjson"
                    )
                else:
                    client.delete_object(Bucket=bucket, Key=key)
                removed += len(records) - len(kept)
                rewritten += 1
    return removed, rewritten


def object_keys(client, bucket: str, partition: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=partition):
        keys.extend(o["Key"] for o in page.get("Contents", ()) if o["Key"].endswith(SUFFIX))
    return keys
