"""console: the SRE console, a web page served by the daemon at /console to watch and steer rollouts.

The page is static (plain HTML, CSS and JavaScript modules from plugins/console/static/, no build
step, nothing fetched from elsewhere) and holds no data. It asks for the admin token, keeps it in
the tab's sessionStorage and calls the admin API with the usual `Authorization: Bearer` header, so
every figure and every action passes `require_admin` exactly as the CLI's do. A bearer header rather
than a login cookie: the admin API keeps one door with one check, and an API that accepts no cookie
gives a forged cross-site request nothing to ride on. What could steal a token from the page is
injected script, so the page is served with a Content-Security-Policy that allows only the
gateway's own scripts (no inline code) and renders every value as text, never as markup.

Assets are served under a path holding a hash of their contents: cached for a year, and a changed
console is a new path. The page itself is revalidated on each load (ETag), and everything goes out
gzipped when the browser accepts it.

Two read-only endpoints add what the admin API lacks (plugins/console/series.py and
plugins/console/pairs.py): GET /admin/console/series, recent per-variant figures for the charts,
and GET /admin/console/shadow/pairs, paired answers of a route's shadow comparisons. The spend panel
reads GET /v1/usage (the usage plugin's) with the admin token, like any operator's client.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import mimetypes
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.background import stop_tasks
from gateway.errors import InvalidRequest, NotFound
from gateway.gateway import GATEWAY
from gateway.hookspecs import hookimpl
from plugins.auto_rollback.plugin import AutoRollback
from plugins.shadow.plugin import Shadow

from .pairs import MAX_CHARS, MAX_PAIRS, read_pairs
from .series import SeriesRing

log = logging.getLogger("llmgate.console")
STATIC = Path(__file__).with_name("static")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_seconds: float = Field(5.0, ge=1, le=60, description="seconds between two points of the console's charts")
    history: int = Field(180, ge=10, le=2000, description="points kept per chart (the ring's length)")


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


def load_assets(folder: Path = STATIC) -> tuple[str, dict[str, Asset]]:
    """Every file of the console, in memory, and the version (a hash of them all) that names their path."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}
    version = hashlib.sha256(
        b"".join(hashlib.sha256(n.encode() + b"\0" + b).digest() for n, b in sorted(files.items()))
    ).hexdigest()[:12]
    assets = {}
    for name, body in files.items():
        if name == "index.html":
            body = body.replace(b"{{version}}", version.encode())
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".js"):
            content_type = "text/javascript"  # whatever the platform's mime table says: modules need it
        assets[name] = Asset(
            body, gzip.compress(body, 9, mtime=0), content_type, 'W/"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        )
    return version, assets


def _send(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {"Cache-Control": cache_control, "ETag": asset.etag, "Vary": "Accept-Encoding", **SECURITY_HEADERS}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body, headers["Content-Encoding"] = asset.gzipped, "gzip"
    charset = "utf-8" if asset.content_type.startswith("text/") or asset.content_type.endswith("json") else None
    return web.Response(body=body, headers=headers, content_type=asset.content_type, charset=charset)


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer", param=name) from None
    return min(max(value, low), high)


class Console:
    Settings = Settings
    uses = ("auto_rollback", "shadow")  # their windows and comparisons, shown when they are on

    def __init__(self, settings: Settings):
        self.settings = settings
        self.version, self.assets = load_assets()
        self.series = SeriesRing(settings.sample_seconds, settings.history)
        self.gateway = None
        self._task: asyncio.Task | None = None
        self._problem: str | None = None
        self._window_seconds: dict[str, float] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console pairs")  # one read at a time

    # --- lifetime -------------------------------------------------------------------------------

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        self._task = asyncio.create_task(self._sample_forever(), name="console sampler")

    @hookimpl
    async def shutdown(self, gateway):
        await stop_tasks([self._task])
        self._reader.shutdown(wait=False, cancel_futures=True)

    def _windows(self):
        auto_rollback = self.gateway.plugin(AutoRollback) if self.gateway else None
        return getattr(auto_rollback, "windows", None)

    async def _sample_forever(self) -> None:
        while True:
            windows = self._windows()
            if windows is not None:
                try:
                    auto_rollback = self.gateway.plugin(AutoRollback)
                    routes = {r: auto_rollback.policy(r).window_seconds for r in self.gateway.config.settings.routes}
                    await self.series.sample(windows, routes)
                    self._window_seconds = routes
                    self._problem = None
                except Exception as exc:  # the state store is away: the charts show a gap, sampling goes on
                    if self._problem is None:
                        log.warning("console: could not sample the windows: %s", exc)
                    self._problem = str(exc)
            await asyncio.sleep(self.settings.sample_seconds)

    # --- operator surface -----------------------------------------------------------------------

    @hookimpl
    def readiness(self, gateway):
        return {"console": f"charts not sampled: {self._problem}" if self._problem else None}

    @hookimpl
    def register_routes(self, gateway):
        async def page(request: web.Request) -> web.Response:
            return _send(request, self.assets["index.html"], "no-cache")

        async def asset(request: web.Request) -> web.Response:
            found = self.assets.get(request.match_info["name"])
            if found is None or request.match_info["name"] == "index.html":
                raise NotFound(f"no console file '{request.match_info['name']}'")
            current = request.match_info["version"] == self.version
            return _send(request, found, "public, max-age=31536000, immutable" if current else "no-cache")

        async def series(request: web.Request) -> web.Response:
            request.app[GATEWAY].require_admin(request)
            try:
                after = float(request.query.get("after", "0"))
            except ValueError:
                raise InvalidRequest("'after' must be a time in seconds since the epoch", param="after") from None
            return web.json_response(
                {
                    "interval_seconds": self.settings.sample_seconds,
                    "capacity": self.settings.history,
                    "sampling": self._windows() is not None,
                    "problem": self._problem,
                    "window_seconds": self._window_seconds,
                    "window": self.series.current,
                    "samples": self.series.since(after),
                }
            )

        async def pairs(request: web.Request) -> web.Response:
            gw = request.app[GATEWAY]
            gw.require_admin(request)
            name = request.query.get("route")
            if not name:
                raise InvalidRequest("name the route: ?route=NAME", param="route")
            gw.route(name)
            limit = _int(request, "limit", 5, 1, MAX_PAIRS)
            chars = _int(request, "chars", 800, 1, MAX_CHARS)
            shadow = gw.plugin(Shadow)
            if shadow is None:
                return web.json_response({"route": name, "pairs": [], "enabled": False})
            found = await asyncio.get_running_loop().run_in_executor(
                self._reader, read_pairs, shadow.settings.path, name, request.query.get("shadow"), limit, chars
            )
            return web.json_response({"route": name, "pairs": found, "enabled": True})

        return [
            web.get("/console", page),
            web.get("/console/", page),
            web.get("/console/static/{version}/{name}", asset),
            web.get("/admin/console/series", series),
            web.get("/admin/console/shadow/pairs", pairs),
        ]
