"""OpenTelemetry: a span per request (target, slice, pod, pick reason); W3C traceparent accepted and passed on."""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
TRACER_NAME = "axon_router"


def setup_tracing(service_name: str = "brunoise-router", console: bool = False, sample_ratio: float = 1.0) -> None:
    """Install an SDK tracer provider: spans of a sampled incoming trace are always recorded, other requests'
    with probability ``sample_ratio``; unsampled requests still pass a valid traceparent on. Export to stdout
    when ``console``."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "process.pid": os.getpid()}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    if console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    global _TRACER
    _TRACER = None


_TRACER: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The router's tracer, created once (``get_tracer`` per request costs tens of microseconds)."""
    global _TRACER
    if _TRACER is None:
        _TRACER = trace.get_tracer(TRACER_NAME)
    return _TRACER


def extract(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The parent context named by an incoming ``traceparent`` (None when absent or malformed)."""
    if not traceparent:
        return None
    carrier: dict[str, str] = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def start_span(name: str, parent: Context | None, attributes: Mapping[str, str | int | float | bool]) -> Span:
    return tracer().start_span(name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes))


def traceparent_of(span: Span, incoming: str | None = None) -> str | None:
    """The ``traceparent`` to send downstream: this span as the parent (or the incoming one when not recording)."""
    sc = span.get_span_context()
    if not sc.is_valid:
        return incoming
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
