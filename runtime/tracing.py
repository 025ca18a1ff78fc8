"""OpenTelemetry in the runtime: a server span per request and a child span for the engine's work, joined to the
caller's trace by its W3C traceparent, which goes on to the engine (vLLM continues it with its own spans)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from runtime.engines.base import Engine, EngineChunk, EngineProxy, EngineRequest
from sharder.telemetry import extract, traceparent_of

TRACER_NAME = "runtime"


class TracedEngine(EngineProxy):
    """``engine`` behind the same interface, with ``generate`` traced: span ``runtime.generate`` (server, child of
    the request's traceparent) around span ``engine.<kind>.generate`` (the engine's work, first chunk to last),
    whose context is the traceparent the engine receives."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._tracer = trace.get_tracer(TRACER_NAME)
        self._engine_tracer = trace.get_tracer(type(engine).__module__)
        self._engine_span = f"engine.{type(engine).__module__.rsplit('.', 1)[-1]}.generate"  # "sim", "vllm"

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        attrs: dict[str, str | int] = {"brunoise.request_id": request.request_id, "gen_ai.request.model": self.model}
        if request.slice_key is not None:
            attrs["brunoise.slice_key"] = f"{request.slice_key:016x}"
        server = self._tracer.start_span(
            "runtime.generate", context=extract(request.traceparent), kind=SpanKind.SERVER, attributes=attrs
        )
        work = self._engine_tracer.start_span(self._engine_span, context=trace.set_span_in_context(server))
        forwarded = dataclasses.replace(request, traceparent=traceparent_of(work, request.traceparent))
        chunks = 0
        last: EngineChunk | None = None
        try:
            async for chunk in self.inner.generate(forwarded):
                chunks += 1
                last = chunk
                yield chunk
        except BaseException as exc:
            for span in (work, server):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            raise
        finally:
            if last is not None:
                work.set_attributes({
                    "gen_ai.usage.input_tokens": last.prompt_tokens,
                    "gen_ai.usage.output_tokens": last.completion_tokens,
                    "brunoise.cached_tokens": last.cached_tokens,
                    "brunoise.finish_reason": last.finish_reason or "",
                    "brunoise.chunks": chunks,
                })  # fmt: skip
            work.end()
            server.end()
