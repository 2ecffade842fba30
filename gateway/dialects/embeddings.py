"""POST /v1/embeddings: the OpenAI embeddings API, to any backend kind that serves embeddings.

Not a conversation, so not the conversational pipeline: the caller is authenticated and authorized
like any other, the route's `baseline` serves, then its `fallback`s on the backend's failure, and
`after_response` plugins see the exchange (the traffic log records it, with the vectors' count and
size rather than the vectors; metrics count it). A route's `candidates`, shadows and the semantic
cache are not used: vectors from two models live in two spaces, and an index filled from a mix of
them finds nothing, so an embeddings route changes model all at once, on purpose.
"""

from __future__ import annotations

from aiohttp import web

from ..bodies import check_encodable
from ..checks import bad, is_int
from ..context import RequestContext
from ..errors import GatewayError, InvalidRequest
from ..proxy import STRICT_JSON, call_chain, serve, write_json
from .base import Endpoint

MAX_INPUTS = 2048  # OpenAI's own limit on the items of one request
ENCODINGS = ("float", "base64")


def validate_embeddings_request(body: dict, encodable: bool = False) -> dict:
    """Check an embeddings body; raise InvalidRequest naming the parameter that is wrong (`encodable`: as
    validate_chat_request's)."""
    given = body.get("input")
    if given is None:
        raise InvalidRequest(
            "'input' is a required parameter: a string, an array of strings, or token arrays",
            param="input",
            code="missing_input",
        )
    if isinstance(given, str):
        if given == "":
            raise bad("'input' must not be an empty string", "input")
    elif isinstance(given, list):
        if not 0 < len(given) <= MAX_INPUTS:
            raise bad(f"'input' must hold 1 to {MAX_INPUTS} items", "input")
        if all(isinstance(item, str) for item in given):
            for i, item in enumerate(given):
                if item == "":
                    raise bad(f"input[{i}] must not be an empty string", f"input[{i}]")
        elif not (
            all(is_int(t) for t in given)
            or all(isinstance(item, list) and item and all(is_int(t) for t in item) for item in given)
        ):
            raise InvalidRequest(
                "'input' must be a string, an array of strings, an array of token ids, or an "
                "array of non-empty token-id arrays",
                param="input",
                code="invalid_value",
            )
    else:
        raise InvalidRequest("'input' must be a string or an array", param="input", code="invalid_value")
    encoding = body.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise bad(f"'encoding_format' must be one of {', '.join(ENCODINGS)}", "encoding_format")
    dimensions = body.get("dimensions")
    if not (dimensions is None or (is_int(dimensions) and dimensions > 0)):
        raise bad("'dimensions' must be a positive integer", "dimensions")
    user = body.get("user")
    if not (user is None or isinstance(user, str)):
        raise bad("'user' must be a string", "user")
    if not encodable:  # parsed as strict JSON, it holds nothing unencodable: no walk to look for it
        check_encodable(body)
    return body


def summary(answer: dict) -> dict:
    """What the traffic log keeps of an embeddings answer: its shape and usage, never the vectors."""
    data = answer.get("data") or []
    first = data[0].get("embedding") if data and isinstance(data[0], dict) else None
    return {
        "object": "list",
        "model": answer.get("model"),
        "embeddings": len(data),
        "dimensions": len(first) if isinstance(first, list) else None,
        "usage": answer.get("usage") or {},
    }


class Embeddings(Endpoint):
    name = "embeddings"

    def error_body(self, error: GatewayError) -> dict:
        return error.body()


async def _exchange(
    request: web.Request, gateway, generation, ctx: RequestContext, endpoint: Endpoint
) -> web.StreamResponse:
    validate_embeddings_request(ctx.body, encodable=request.get(STRICT_JSON, False))
    await gateway.hooks.call("authorize", ctx=ctx)
    await gateway.hooks.call("guard_request", ctx=ctx)
    ctx.variant = ctx.route.baseline
    answer = await call_chain(ctx, generation, lambda backend: backend.embed(ctx.body))
    usage = answer.get("usage") or {}
    ctx.response = {
        **summary(answer),
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": 0,
            "total_tokens": usage.get("total_tokens"),
        },
    }
    return await write_json(request, ctx, answer)


EMBEDDINGS = Embeddings()


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await serve(request, EMBEDDINGS, exchange=_exchange)
