"""Telemetry setup shared by the three binaries: JSON logs with trace ids, an OTel tracer provider with OTLP export."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

LOG_LEVEL_ENV = "BRUNOISE_LOG_LEVEL"

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}
_PROPAGATOR = TraceContextTextMapPropagator()


def log_level(flag: str | None = None) -> str:
    """The log level: the flag when given, else ``$BRUNOISE_LOG_LEVEL``, else INFO (upper case)."""
    return (flag or os.environ.get(LOG_LEVEL_ENV) or "INFO").upper()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, every ``extra`` field, and the ``trace_id`` /
    ``span_id`` of the current span (or of a span passed as ``extra={"span": span}``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = record.__dict__.get("span")
        ctx = (span if isinstance(span, Span) else trace.get_current_span()).get_span_context()
        if ctx.is_valid:
            out["trace_id"] = f"{ctx.trace_id:032x}"
            out["span_id"] = f"{ctx.span_id:016x}"
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_") and k != "span":
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None) -> None:
    """JSON lines on stderr at ``log_level(level)`` for the whole process."""
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    want = log_level(level)
    try:
        root.setLevel(want)
    except ValueError:
        root.setLevel(logging.INFO)
        logging.getLogger(__name__).warning("unknown log level %r: using INFO", want)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _env(*names: str) -> str:
    for n in names:
        v = os.environ.get(n, "").strip()
        if v:
            return v
    return ""


def otlp_exporter() -> SpanExporter | None:
    """An OTLP span exporter when ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set (gRPC unless
    ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` says http/protobuf); it reads the other OTEL_EXPORTER_OTLP_* itself."""
    if not _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    protocol = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


def make_tracer_provider(service_name: str, *, console: bool = False, sample_ratio: float = 1.0) -> TracerProvider:
    """A tracer provider where standard variables win over these defaults: ``OTEL_SERVICE_NAME`` /
    ``OTEL_RESOURCE_ATTRIBUTES`` over ``service_name``, ``OTEL_TRACES_SAMPLER(_ARG)`` over parent-based
    ``sample_ratio``, ``OTEL_TRACES_EXPORTER=none|console``. Spans go to OTLP through a batch processor
    (``OTEL_BSP_*`` tune it) when an endpoint is set, and to stdout when ``console``."""
    return _tracer_provider(service_name, console=console, sample_ratio=sample_ratio)[0]


def _tracer_provider(service_name: str, *, console: bool, sample_ratio: float) -> tuple[TracerProvider, bool]:
    """``make_tracer_provider``'s work, and whether any span leaves the process (an exporter is attached)."""
    attrs: dict[str, str | int] = {"process.pid": os.getpid()}
    named = _env("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not named:
        attrs[SERVICE_NAME] = service_name
    sampler = None if _env("OTEL_TRACES_SAMPLER") else ParentBased(TraceIdRatioBased(sample_ratio))
    provider = TracerProvider(resource=Resource.create(attrs), sampler=sampler)
    exporters = {e.strip() for e in _env("OTEL_TRACES_EXPORTER").lower().split(",") if e.strip()}
    exporting = False
    if "none" not in exporters:
        exporter = otlp_exporter()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
            exporting = True
    if console or "console" in exporters:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        exporting = True
    return provider, exporting


def setup_tracing(
    service_name: str, *, console: bool = False, sample_ratio: float = 1.0, only_when_exporting: bool = False
) -> TracerProvider | None:
    """Install ``make_tracer_provider(...)`` as the process's provider; ``OTEL_SDK_DISABLED=true`` installs nothing
    (spans are no-ops; traceparent still passes through unchanged), nor does ``only_when_exporting`` when no span
    would leave the process (a runtime then pays nothing per request for spans nobody reads)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    provider, exporting = _tracer_provider(service_name, console=console, sample_ratio=sample_ratio)
    if only_when_exporting and not exporting:
        return None
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing() -> None:
    """Flush and stop the installed provider (batched spans are exported before the process exits)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def extract(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The parent context named by an incoming W3C ``traceparent`` (None when absent or malformed)."""
    if not traceparent:
        return None
    carrier: dict[str, str] = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def traceparent_of(span: Span, incoming: str | None = None) -> str | None:
    """The ``traceparent`` to send downstream: this span as the parent (or the incoming one when not recording)."""
    sc = span.get_span_context()
    if not sc.is_valid:
        return incoming
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def span_attributes(attrs: Mapping[str, str | int | float | bool | None]) -> dict[str, str | int | float | bool]:
    """``attrs`` without the None values (OTel rejects them)."""
    return {k: v for k, v in attrs.items() if v is not None}
