"""The Bedrock control plane for tests: moto, plus the provisioned-throughput calls moto lacks.

moto implements model customization jobs but not CreateProvisionedModelThroughput (nor
GetProvisionedModelThroughput). This front answers those two (and the delete) itself, in the REST
shapes boto3 sends and parses, and forwards every other request unchanged to the moto server, so
one boto3 `bedrock` client with one endpoint_url exercises the real code path for every call.
A provisioned model is `Creating` until it has been read `creating_polls` times, then `InService`.
"""

from __future__ import annotations

import re
import time
import uuid
from urllib.parse import unquote

from aiohttp import ClientSession, web

_THROUGHPUT = re.compile(r"^/provisioned-model-throughput(?:/(?P<id>[^/?]+))?$")
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class BedrockControlFront:
    def __init__(
        self, moto_url: str, region: str = "us-east-1", account: str = "123456789012", creating_polls: int = 1
    ):
        self.moto_url = moto_url.rstrip("/")
        self.region, self.account = region, account
        self.creating_polls = creating_polls
        self.provisioned: dict[str, dict] = {}  # ARN -> the GetProvisionedModelThroughput answer
        self.deleted: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, forwarded or not
        self._polls: dict[str, int] = {}
        self._session: ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()

        async def session(app):
            self._session = ClientSession()
            yield
            await self._session.close()

        app.cleanup_ctx.append(session)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?")[0]
        self.requests.append((request.method, path))
        m = _THROUGHPUT.match(path)
        if m is None:
            return await self._forward(request)
        if request.method == "POST" and m.group("id") is None:
            return await self._create(request)
        found = self._find(unquote(m.group("id") or ""))
        if found is None:
            return web.json_response(
                {"message": f"provisioned model {m.group('id')} not found"},
                status=404,
                headers={"x-amzn-ErrorType": "ResourceNotFoundException"},
            )
        if request.method == "DELETE":
            self.provisioned.pop(found["provisionedModelArn"])
            self.deleted.append(found["provisionedModelArn"])
            return web.json_response({})
        arn = found["provisionedModelArn"]
        self._polls[arn] = self._polls.get(arn, 0) + 1
        if found["status"] == "Creating" and self._polls[arn] >= self.creating_polls:
            found["status"] = "InService"
            found["lastModifiedTime"] = time.time()
        return web.json_response(found)

    def _find(self, identifier: str) -> dict | None:
        return self.provisioned.get(identifier) or next(
            (p for p in self.provisioned.values() if p["provisionedModelName"] == identifier), None
        )

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        missing = [k for k in ("modelUnits", "provisionedModelName", "modelId") if k not in body]
        if missing:
            return web.json_response(
                {"message": f"missing {', '.join(missing)}"},
                status=400,
                headers={"x-amzn-ErrorType": "ValidationException"},
            )
        token = body.get("clientRequestToken")
        for existing in self.provisioned.values():  # idempotent per client request token, as the service is
            if token and existing["_token"] == token:
                return web.json_response({"provisionedModelArn": existing["provisionedModelArn"]}, status=201)
        arn = f"arn:aws:bedrock:{self.region}:{self.account}:provisioned-model/{uuid.uuid4().hex[:12]}"
        now = time.time()
        self.provisioned[arn] = {
            "_token": token,
            "modelUnits": body["modelUnits"],
            "desiredModelUnits": body["modelUnits"],
            "provisionedModelName": body["provisionedModelName"],
            "provisionedModelArn": arn,
            "modelArn": body["modelId"],
            "desiredModelArn": body["modelId"],
            "foundationModelArn": f"arn:aws:bedrock:{self.region}::foundation-model/base",
            "status": "Creating",
            "creationTime": now,
            "lastModifiedTime": now,
        }
        return web.json_response({"provisionedModelArn": arn}, status=201)

    async def _forward(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.moto_url + request.raw_path,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
            return web.Response(status=answer.status, body=body, headers=kept)
