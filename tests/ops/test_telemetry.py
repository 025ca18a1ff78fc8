"""sharder.telemetry: standard OTEL_* variables win over code defaults; JSON logs carry trace_id / span_id."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased

from sharder import telemetry

OTEL_VARS = ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
             "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in OTEL_VARS:
        monkeypatch.delenv(v, raising=False)


def batch_processors(provider: object) -> list[object]:
    procs = provider._active_span_processor._span_processors  # type: ignore[attr-defined]
    return [p for p in procs if isinstance(p, BatchSpanProcessor)]


def test_code_defaults_without_variables() -> None:
    p = telemetry.make_tracer_provider("brunoise-x", sample_ratio=0.25)
    assert p.resource.attributes["service.name"] == "brunoise-x"
    assert isinstance(p.sampler, ParentBased) and "0.25" in p.sampler.get_description()
    assert batch_processors(p) == []  # no endpoint, no export


def test_standard_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-router-7")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    p = telemetry.make_tracer_provider("brunoise-x", sample_ratio=1.0)
    assert p.resource.attributes["service.name"] == "edge-router-7"
    assert p.sampler.get_description() == "AlwaysOffSampler"
    assert len(batch_processors(p)) == 1  # OTLP through a batch processor
    p.shutdown()


def test_resource_attributes_name_the_service_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,deployment.environment=prod")
    p = telemetry.make_tracer_provider("brunoise-x")
    assert p.resource.attributes["service.name"] == "from-attrs"
    assert p.resource.attributes["deployment.environment"] == "prod"


def test_exporter_none_and_empty_endpoint_export_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")  # what compose passes when the variable is unset
    assert batch_processors(telemetry.make_tracer_provider("x")) == []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert batch_processors(telemetry.make_tracer_provider("x")) == []


def test_log_level_flag_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(telemetry.LOG_LEVEL_ENV, raising=False)
    assert telemetry.log_level(None) == "INFO"
    monkeypatch.setenv(telemetry.LOG_LEVEL_ENV, "debug")
    assert telemetry.log_level(None) == "DEBUG"
    assert telemetry.log_level("warning") == "WARNING"


def test_json_log_lines_carry_the_current_span() -> None:
    provider = telemetry.make_tracer_provider("x")
    fmt = telemetry.JsonFormatter()

    def line(**extra: object) -> dict[str, object]:
        rec = logging.LogRecord("brunoise.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
        rec.__dict__.update(extra)
        out: dict[str, object] = json.loads(fmt.format(rec))
        return out

    assert "trace_id" not in line()
    with provider.get_tracer("t").start_as_current_span("op") as span:
        sc = span.get_span_context()
        got = line(pod="p1")
    assert got["msg"] == "hello world" and got["pod"] == "p1" and got["level"] == "info"
    assert got["trace_id"] == f"{sc.trace_id:032x}" and got["span_id"] == f"{sc.span_id:016x}"
    other = provider.get_tracer("t").start_span("explicit")
    got = line(span=other)  # a span handed in as extra (the router's request span is not made current)
    assert got["span_id"] == f"{other.get_span_context().span_id:016x}" and "span" not in got
    other.end()


def test_unknown_log_level_falls_back_to_info(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        monkeypatch.setenv(telemetry.LOG_LEVEL_ENV, "chatty")
        telemetry.setup_logging(None)
        assert root.level == logging.INFO
        telemetry.setup_logging("debug")
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
