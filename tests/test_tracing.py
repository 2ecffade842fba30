"""Tracing: one trace per request continuing the caller's traceparent, hook and upstream child spans,
traceparent passed upstream, shadow calls linked to their request, OTLP export, nothing when off.

Spans are read from the tracing plugin's in-memory exporter (`in_memory: true`), or, for export,
from a real OTLP/HTTP endpoint on loopback that decodes what the SDK's exporter sends.
"""

from __future__ import annotations

import threading

import openai
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind

from gateway.gateway import GATEWAY
from tests.conftest import UPSTREAM_KEY, backend_config
from tests.support import ServerThread, wait_until

CALLER_KEY = "sk-caller-key-for-tracing-tests-77"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01"


def config(fake, plugins: dict | None = None, **route) -> dict:
    cheap = {**backend_config("openai", fake), "model": "gpt-cheap"}
    return {
        "backends": {"base": backend_config("openai", fake), "cheap": cheap},
        "routes": {"bot": {"baseline": "base", **route}},
        "prices": {"gpt-test": {"input": 1.0, "output": 1.0}},
        "plugins": {"tracing": {"in_memory": True}, **(plugins or {})},
    }


def spans_of(gw) -> list:
    return list(gw.app[GATEWAY].pm.get_plugin("tracing").memory.get_finished_spans())


def sdk(gw, traceparent: str | None = TRACEPARENT) -> openai.OpenAI:
    headers = {"traceparent": traceparent} if traceparent else None
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=CALLER_KEY, max_retries=0, default_headers=headers)


def header(headers: dict, name: str) -> str | None:
    """A header the fake upstream recorded, whatever its case."""
    return next((v for k, v in headers.items() if k.lower() == name), None)


def server_span(spans):
    [span] = [s for s in spans if s.kind == SpanKind.SERVER]
    return span


def test_one_trace_from_the_caller_through_hooks_to_the_upstream(fake_openai, make_gateway):
    gw = make_gateway(
        config(
            fake_openai,
            plugins={
                "chooser": {"module": "tests.plugins_for_tests:Chooser", "backend": "base"},
                "raiser": {"module": "tests.plugins_for_tests:Raiser"},
            },
        )
    )
    answer = sdk(gw).chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "hello there"}], user="carol"
    )
    spans = wait_until(lambda: (s := spans_of(gw)) and any(x.kind == SpanKind.SERVER for x in s) and s)

    root = server_span(spans)
    assert root.context.trace_id == TRACE_ID
    assert root.parent is not None and root.parent.span_id == CALLER_SPAN and root.parent.is_remote
    assert all(s.context.trace_id == TRACE_ID for s in spans)
    assert root.attributes["llmgate.route"] == "bot"
    assert root.attributes["llmgate.served_by"] == "base"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens

    [client] = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert client.parent.span_id == root.context.span_id
    assert client.attributes["llmgate.backend"] == "base"
    assert client.attributes["gen_ai.request.model"] == "gpt-test"
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens

    # hook implementations that did work: the chooser answered (so the raiser's choose_variant was not
    # called), the raiser failed in the other hooks (and was skipped)
    hooks = {s.name: s for s in spans if "llmgate.hook" in s.attributes}
    assert {"choose_variant chooser", "before_route raiser", "after_response raiser"} <= set(hooks)
    assert "choose_variant raiser" not in hooks
    assert all(s.parent.span_id == root.context.span_id for s in hooks.values())
    assert hooks["choose_variant chooser"].attributes["llmgate.hook.answered"] is True
    assert hooks["choose_variant chooser"].status.is_ok
    assert not hooks["before_route raiser"].status.is_ok
    assert hooks["before_route raiser"].attributes["error.type"] == "plugin_fault"

    # the upstream got a traceparent of the same trace, whose parent is the attempt's span
    upstream = header(fake_openai.headers[-1], "traceparent").split("-")
    assert int(upstream[1], 16) == TRACE_ID
    assert int(upstream[2], 16) == client.context.span_id


def test_stream_attempt_span_covers_the_stream_and_failed_attempts_are_spans(fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, fallback=["cheap"], retries=0))
    fake_openai.fail_next(503)
    stream = sdk(gw).chat.completions.create(
        model="bot",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage][-1]
    spans = wait_until(lambda: (s := spans_of(gw)) and any(x.kind == SpanKind.SERVER for x in s) and s)
    failed, served = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert failed.attributes["llmgate.backend"] == "base"
    assert failed.attributes["http.response.status_code"] == 503
    assert not failed.status.is_ok
    assert served.attributes["llmgate.backend"] == "cheap"
    assert served.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert served.end_time >= failed.end_time
    assert server_span(spans).attributes["llmgate.served_by"] == "cheap"


def test_shadow_call_is_a_span_linked_to_its_request(fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai, shadow=["cheap"]))
    sdk(gw).chat.completions.create(model="bot", messages=[{"role": "user", "content": "mirror me"}])
    spans = wait_until(lambda: (s := spans_of(gw)) and any(x.name == "shadow cheap" for x in s) and s)
    root = server_span(spans)
    [shadow] = [s for s in spans if s.name == "shadow cheap"]
    assert shadow.parent is None  # off the request path: its own trace ...
    # ... linked to the request's span
    assert [(link.context.trace_id, link.context.span_id) for link in shadow.links] == [
        (TRACE_ID, root.context.span_id)
    ]
    assert shadow.attributes["http.response.status_code"] == 200
    # the shadow's own upstream call carried the shadow span's trace
    shadow_request = next(
        h for h, body in zip(fake_openai.headers, fake_openai.requests) if body["model"] == "gpt-cheap"
    )
    assert int(header(shadow_request, "traceparent").split("-")[1], 16) == shadow.context.trace_id


def test_no_secret_in_any_span(fake_openai, make_gateway):
    gw = make_gateway(config(fake_openai))
    client = sdk(gw)
    client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}])
    try:
        client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "[status 401]"}])
    except openai.APIStatusError:
        pass
    spans = wait_until(lambda: (s := spans_of(gw)) and len([x for x in s if x.kind == SpanKind.SERVER]) == 2 and s)
    text = " ".join(f"{s.name} {dict(s.attributes)} {s.status.description} {s.events}" for s in spans)
    assert UPSTREAM_KEY not in text and CALLER_KEY not in text and "Bearer" not in text


def test_no_tracer_and_no_traceparent_when_off(fake_openai, make_gateway):
    cfg = config(fake_openai)
    cfg["plugins"] = {}
    gw = make_gateway(cfg)
    sdk(gw, traceparent=None).chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}])
    assert gw.app[GATEWAY].hooks.tracer is None
    assert header(fake_openai.headers[-1], "traceparent") is None


class FakeCollector:
    """An OTLP/HTTP traces endpoint: decodes each export request the SDK's exporter sends."""

    def __init__(self):
        self.spans: list = []
        self.got = threading.Event()

    def app(self) -> web.Application:
        async def traces(request: web.Request) -> web.Response:
            export = ExportTraceServiceRequest()
            export.ParseFromString(await request.read())
            for resource in export.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                for scope in resource.scope_spans:
                    self.spans += [(service, s) for s in scope.spans]
            self.got.set()
            return web.Response(body=b"", content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        return app


def test_spans_are_exported_over_otlp_when_configured(fake_openai, make_gateway):
    collector = FakeCollector()
    with ServerThread(collector.app) as endpoint:
        cfg = config(fake_openai)
        cfg["plugins"] = {"tracing": {"otlp_endpoint": endpoint.url + "/v1/traces", "service_name": "gw-test"}}
        gw = make_gateway(cfg)
        sdk(gw).chat.completions.create(model="bot", messages=[{"role": "user", "content": "export me"}])
        gw.stop()  # shutdown flushes the batch
        assert collector.got.wait(20)
    names = {span.name for _, span in collector.spans}
    assert "POST /v1/chat/completions" in names and "chat gpt-test" in names
    assert {service for service, _ in collector.spans} == {"gw-test"}
    assert all(int.from_bytes(span.trace_id, "big") == TRACE_ID for _, span in collector.spans)


def test_bedrock_calls_carry_the_traceparent_too(fake_bedrock, make_gateway):
    gw = make_gateway(
        {
            "backends": {"ft": backend_config("bedrock", fake_bedrock)},
            "routes": {"bot": {"baseline": "ft"}},
            "plugins": {"tracing": {"in_memory": True}},
        }
    )
    client = sdk(gw)
    client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}])
    list(client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}], stream=True))
    spans = wait_until(lambda: (s := spans_of(gw)) and len([x for x in s if x.kind == SpanKind.CLIENT]) == 2 and s)
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    sent = [header(h, "traceparent") for h in fake_bedrock.headers]
    assert [int(t.split("-")[2], 16) for t in sent] == [a.context.span_id for a in attempts]
    assert all(int(t.split("-")[1], 16) == TRACE_ID for t in sent)
