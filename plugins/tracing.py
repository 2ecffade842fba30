"""tracing: OpenTelemetry spans for each request, exported over OTLP when an endpoint is configured.

This plugin only builds the tracer (its own TracerProvider per gateway, not the process-wide
one, so gateways in one process keep their spans apart) and flushes it on shutdown; where spans
start and end is the core's business (gateway/tracing.py). With no endpoint (neither
`otlp_endpoint` nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT) it hands out
no tracer, and tracing costs nothing. Spans are exported in batches by the SDK's own thread from
a bounded queue (`max_queue_size`; a full queue drops spans), never on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import os

from pydantic import BaseModel, ConfigDict, Field

from gateway.hookspecs import hookimpl

log = logging.getLogger("llmgate.tracing")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces")
    otlp_headers: dict[str, str] = Field({}, description="headers the collector needs (keep secrets in ${VAR})")
    service_name: str = "llmgate"
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces recorded; a caller's choice wins")
    max_queue_size: int = Field(2048, ge=1, description="finished spans waiting for export; more are dropped")
    in_memory: bool = Field(False, description="keep finished spans in memory (`.memory`), for tests and debugging")


def _endpoint(settings: Settings) -> str | None:
    if settings.otlp_endpoint:
        return settings.otlp_endpoint
    if traces := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return traces
    if base := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return base.rstrip("/") + "/v1/traces"
    return None


class Tracing:
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self.endpoint = _endpoint(settings)
        self.provider = None
        self.memory = None
        if self.endpoint or settings.in_memory:
            self._build()

    def _build(self) -> None:
        # start-up: the SDK and its exporter load only when the plugin exports spans
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        s = self.settings
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": s.service_name}),
            sampler=ParentBased(TraceIdRatioBased(s.sample_ratio)),
        )
        if self.endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=self.endpoint, headers=dict(s.otlp_headers) or None, timeout=10)
            self.provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=s.max_queue_size))
        if s.in_memory:
            self.memory = InMemorySpanExporter()
            self.provider.add_span_processor(SimpleSpanProcessor(self.memory))

    @hookimpl
    def register_tracer(self, gateway):
        if self.provider is None:
            return None
        return self.provider.get_tracer("llmgate")

    @hookimpl
    def startup(self, gateway):
        if self.endpoint:
            log.info("tracing: exporting spans over OTLP to %s", gateway.scrub(self.endpoint))

    @hookimpl
    async def shutdown(self, gateway):
        """Export what is still queued (the SDK waits on the collector: off the event loop)."""
        if self.provider is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.provider.shutdown)
