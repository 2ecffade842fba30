"""Which Redis the config's URL names, and clients for it: one node, a Redis Cluster, or a Sentinel service.

The URL's scheme chooses the mode:

- `redis://[user:password@]host:port[/db]`, `rediss://...` (TLS), `unix:///path/to/socket[?db=N]`: one
  node, as redis-py's `from_url` reads it (its query options included).
- `redis+cluster://[user:password@]host:port,host:port,...` (`rediss+cluster://` for TLS): a Redis
  Cluster, the listed nodes being where discovery starts (any reachable one is enough; list a few).
- `redis+sentinel://[user:password@]host:port,host:port,.../service_name[/db]` (`rediss+sentinel://`):
  the master that the Sentinels at those addresses name for `service_name`, followed through failovers.
  The user and password are the master's; the Sentinels are reached without.

Parsing imports nothing of redis-py, so that the config check stays light; `open_client` imports it.

On a cluster, the keys that one Lua script or one MULTI touches must share a hash slot: `hash_tag`
wraps the part of a key that decides its slot in braces there, and leaves it bare on one node or a
Sentinel master, so that those keys keep the names they always had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
ACCEPTED = (
    "redis://host:port[/db] or rediss://... (one node), unix:///path/to/socket, "
    "redis+cluster://host:port,host:port (a Redis Cluster), "
    "redis+sentinel://host:port,host:port/service_name[/db] (a Sentinel service)"
)


@dataclass(frozen=True)
class RedisTarget:
    mode: str  # "single", "cluster" or "sentinel"
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # cluster seeds or sentinels
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """What `url` names; a ValueError that lists the accepted forms when it names nothing usable."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise ValueError(f"{_shown(text)} is not a Redis URL; use {ACCEPTED}")
    if scheme == "unix":
        if not urlsplit(text).path:
            raise ValueError(f"{_shown(text)} names no socket path; use {ACCEPTED}")
        return RedisTarget("single", text)
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    hosts, _, path = hostpart.partition("/")
    hosts = hosts.split("?", 1)[0]
    path = path.split("?", 1)[0]
    nodes = tuple(_node(part, text) for part in hosts.split(",") if part.strip())
    if not nodes:
        raise ValueError(f"{_shown(text)} names no host; use {ACCEPTED}")
    username, _, password = userinfo.partition(":")
    auth = {"username": unquote(username) or None, "password": unquote(password) or None}
    tls = scheme.startswith("rediss")
    segments = [s for s in path.split("/") if s]
    if scheme in SINGLE_SCHEMES:
        if len(nodes) > 1:
            raise ValueError(
                f"{_shown(text)} lists {len(nodes)} hosts: one node takes one; for several use "
                f"redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/service_name"
            )
        return RedisTarget("single", text, nodes, db=_db(segments, text), tls=tls, **auth)
    if scheme in CLUSTER_SCHEMES:
        if _db(segments, text) != 0:
            raise ValueError(f"{_shown(text)}: a Redis Cluster has only database 0; use {ACCEPTED}")
        return RedisTarget("cluster", text, nodes, tls=tls, **auth)
    if not segments:
        raise ValueError(f"{_shown(text)} names no Sentinel service; use {ACCEPTED}")
    service, db = unquote(segments[0]), _db(segments[1:], text)
    return RedisTarget("sentinel", text, nodes, service=service, db=db, tls=tls, **auth)


def _shown(url: str) -> str:
    """The URL for a message, its password left out."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = userinfo.split(":", 1)[0] + ":***@" + hosts
    return repr(scheme + sep + rest)


def _node(part: str, url: str) -> tuple[str, int]:
    host, colon, port = part.strip().rpartition(":")
    if not colon:
        host, port = port, "6379"
    host = host.strip("[]")  # an IPv6 address in brackets
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{_shown(url)}: {part.strip()!r} is not host:port; use {ACCEPTED}")
    return host, int(port)


def _db(segments: list[str], url: str) -> int:
    if not segments:
        return 0
    if len(segments) > 1 or not segments[0].isdigit():
        raise ValueError(f"{_shown(url)}: the path must be a database number; use {ACCEPTED}")
    return int(segments[0])


def is_cluster(client) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def hash_tag(client, text: str) -> str:
    """`{text}` on a cluster (keys holding it share a slot), `text` elsewhere (names as they always were)."""
    return "{" + (text or "_") + "}" if is_cluster(client) else text


def tagged_prefix(client, prefix: str) -> str:
    """`llmgate:spend:` as `{llmgate:spend}:` on a cluster: every key under it in one slot."""
    return hash_tag(client, prefix.rstrip(":")) + ":"


async def mget(client, keys: list[str]) -> list[Any]:
    """Several keys' values; on a cluster one MGET per slot (they need not move together)."""
    if is_cluster(client):
        return await client.mget_nonatomic(keys)
    return await client.mget(keys)


class RedisClient:
    """A client for the URL's Redis, and what closing it takes (a Sentinel's own connections too)."""

    def __init__(
        self,
        url: str,
        *,
        decode_responses: bool,
        max_connections: int,
        socket_timeout: float = 5,
        health_check_interval: float = 0,
        attempt: int = 0,
        single_node: bool = False,
    ):
        """`single_node`: on a cluster, a plain client to one of the listed nodes (`attempt` picks which),
        for pub/sub: a PUBLISH on any node of a cluster reaches the subscribers on every node."""
        import redis.asyncio as aioredis

        self.target = parse_redis_url(url)
        self.mode = self.target.mode
        self._sentinel = None
        common = {
            "decode_responses": decode_responses,
            "socket_connect_timeout": 2,
            "socket_timeout": socket_timeout,
            "health_check_interval": health_check_interval,
        }
        target = self.target
        if target.mode == "single":
            # A blocking pool waits for a free connection under load instead of raising.
            pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5, **common)
            self.client = aioredis.Redis.from_pool(pool)
        elif target.mode == "cluster" and single_node:
            host, port = target.nodes[attempt % len(target.nodes)]
            auth = {"username": target.username, "password": target.password, "ssl": target.tls}
            self.client = aioredis.Redis(host=host, port=port, **auth, **common)
        elif target.mode == "cluster":
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            self.client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
                username=target.username,
                password=target.password,
                ssl=target.tls,
                max_connections=max_connections,
                **common,
            )
        else:
            from redis.asyncio.sentinel import Sentinel

            self._sentinel = Sentinel(
                list(target.nodes),
                sentinel_kwargs={"socket_connect_timeout": 2, "socket_timeout": 2},
                ssl=target.tls,
            )
            self.client = self._sentinel.master_for(
                target.service,
                db=target.db,
                username=target.username,
                password=target.password,
                **common,  # no max_connections: a Sentinel's pool would raise at it, not wait
            )

    async def aclose(self) -> None:
        await self.client.aclose()
        for sentinel in self._sentinel.sentinels if self._sentinel is not None else ():
            await sentinel.aclose()
