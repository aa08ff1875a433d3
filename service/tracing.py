"""Traces, opt-in: each answered request as OpenTelemetry spans, exported over OTLP (docs/observability.md).

With ``FASHION_OTLP_ENDPOINT`` set (an OTLP/HTTP traces URL, ``http://collector:4318/v1/traces``), every request a
model answered becomes a ``request`` span with four children, ``decode``, ``queue``, ``model`` and ``encode``, timed
as service.telemetry times its stages; a request with a W3C ``traceparent`` joins the caller's trace. The spans
are built once the answer is sent, from the times telemetry already took, so the stages carry no tracing code;
a batch span processor exports them from its own thread.

Off (the default) nothing here is imported, and the cost per request is telemetry's one test of ``None``.
BentoML's own per-request spans stay off (service.service: ``tracing.excluded_urls``): they are built for every
request, traced or not.
"""

from __future__ import annotations

import time
from typing import Any

from service.telemetry import STAGES, RequestContext


class Tracer:
    """Builds the spans of answered requests and hands them to an OpenTelemetry span processor."""

    def __init__(self, processor: Any, service_name: str = "fashion-classifier") -> None:
        """
        Args:
            processor: an OpenTelemetry span processor (a ``BatchSpanProcessor`` around the OTLP exporter; tests pass
                a simple one around an in-memory exporter).
            service_name: the ``service.name`` resource attribute.
        """
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("fashion_serve")
        self.propagator = TraceContextTextMapPropagator()
        # perf_counter seconds to epoch nanoseconds, fixed once: spans are stamped from the stages' perf_counter times.
        self.offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)

    def export(self, ctx: RequestContext, status: int, ended: float) -> None:
        """The spans of a request that a model answered (others have no stages and are not traced)."""
        if not ctx.backend:
            return
        from opentelemetry import trace

        parent = self.propagator.extract({"traceparent": ctx.traceparent.decode()}) if ctx.traceparent else None
        ns = self.ns
        root = self.tracer.start_span("request", context=parent, start_time=ns(ctx.started), attributes={
            "fashion.request_id": ctx.id, "fashion.backend": ctx.backend, "fashion.model_version": ctx.version,
            "http.response.status_code": status})
        child = trace.set_span_in_context(root)
        model_start = ctx.answered - ctx.compute_s
        bounds = ((ctx.started, ctx.decoded), (model_start - ctx.queue_s, model_start),
                  (model_start, ctx.answered), (ctx.answered, ended))
        for name, (start, end) in zip(STAGES, bounds, strict=True):
            self.tracer.start_span(name, context=child, start_time=ns(start)).end(end_time=ns(end))
        root.end(end_time=ns(ended))

    def ns(self, seconds: float) -> int:
        return self.offset_ns + int(seconds * 1e9)

    def close(self) -> None:
        """Export what is buffered and stop."""
        self.provider.shutdown()


def otlp_tracer(endpoint: str) -> Tracer:
    """A :class:`Tracer` exporting over OTLP/HTTP to ``endpoint`` in batches, from the processor's thread."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return Tracer(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
