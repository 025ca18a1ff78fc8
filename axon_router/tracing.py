"""OpenTelemetry in the router: a span per request (target, slice, pod, pick reason); W3C traceparent accepted and
passed on. Provider setup (OTLP export, standard OTEL_* variables) lives in ``sharder.telemetry``."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind

from sharder import telemetry
from sharder.telemetry import extract, traceparent_of

__all__ = ["extract", "setup_tracing", "start_span", "traceparent_of", "tracer"]

TRACER_NAME = "axon_router"


def setup_tracing(service_name: str = "brunoise-router", console: bool = False, sample_ratio: float = 1.0) -> None:
    """Install the tracer provider (``sharder.telemetry.setup_tracing``): spans of a sampled incoming trace are
    always recorded, other requests' with probability ``sample_ratio`` unless ``OTEL_TRACES_SAMPLER`` says
    otherwise; unsampled requests still pass a valid traceparent on."""
    telemetry.setup_tracing(service_name, console=console, sample_ratio=sample_ratio)
    global _TRACER
    _TRACER = None


_TRACER: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The router's tracer, created once (``get_tracer`` per request costs tens of microseconds)."""
    global _TRACER
    if _TRACER is None:
        _TRACER = trace.get_tracer(TRACER_NAME)
    return _TRACER


def start_span(name: str, parent: Context | None, attributes: Mapping[str, str | int | float | bool]) -> Span:
    return tracer().start_span(name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes))
