"""Spans leave the box over OTLP: one trace joins the client, the router, the runtime and the sim engine, and the
assigner's rounds are spans (real processes exporting to an OTLP receiver the test runs). The same request shows
in the router's metrics under its model and target."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.conftest import scrape
from tests.ops.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.router.conftest import MODEL, TARGET, Cluster, post
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    try:
        yield r
    finally:
        r.stop()


def test_one_trace_spans_router_runtime_and_sim_engine(
    receiver: OtlpReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what an operator sets; every child process inherits it (and nothing else tells them where to export)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s rather than 5 s
    for var in ("OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(var, raising=False)
    cl = Cluster(tmp_path, n_routers=1)
    try:
        cl.start()
        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        status, _, _ = post(
            cl.http(0) + "/v1/completions",
            {"model": MODEL, "prompt": "trace me through every hop", "max_tokens": 4},
            {"traceparent": f"00-{trace_id}-{client_span}-01", "x-session-id": "otlp-session"},
        )
        assert status == 200
        m = scrape(cl.http(0) + "/metrics")  # the router's request and TTFT metrics name the model and target
        labels = (("code", "200"), ("frontend", "http"), ("model", MODEL), ("target", TARGET))
        assert m[("brunoise_router_requests_total", labels)] >= 1
        assert m[("brunoise_router_ttft_seconds_count", (("model", MODEL), ("target", TARGET)))] >= 1

        def whole_trace() -> list[ReceivedSpan] | None:
            mine = [s for s in receiver.spans() if s.trace_id == trace_id]
            names = {(s.service, s.name) for s in mine}
            want = {("brunoise-runtime", "runtime.generate"), ("brunoise-runtime", "engine.sim.generate")}
            if want <= names and any(s.service == "brunoise-router" for s in mine):
                return mine
            return None

        spans = wait_until(whole_trace, 30, "the router's, the runtime's and the sim engine's spans of one trace")
        (router_span,) = [s for s in spans if s.service == "brunoise-router"]
        (runtime_span,) = [s for s in spans if s.name == "runtime.generate"]
        (engine_span,) = [s for s in spans if s.name == "engine.sim.generate"]
        # one chain: client -> router -> runtime -> engine, each the parent of the next
        assert router_span.parent_span_id == client_span
        assert runtime_span.parent_span_id == router_span.span_id
        assert engine_span.parent_span_id == runtime_span.span_id
        assert engine_span.scope == "runtime.engines.sim"
        assert engine_span.attributes["gen_ai.usage.output_tokens"] >= 1
        assert router_span.attributes["brunoise.pod"] in cl.runtimes

        rounds = wait_until(
            lambda: [s for s in receiver.spans() if s.service == "brunoise-assigner" and s.name == "assigner.round"],
            30, "the assigner's round spans",
        )
        assert rounds and all(s.parent_span_id == "" for s in rounds)
        per_target = [s for s in receiver.spans() if s.name == "assigner.round.target"]
        assert any(s.parent_span_id in {r.span_id for r in rounds} for s in per_target)
    finally:
        cl.close()
    assert not [p.name for p in cl.group.procs if p.alive()], "a child outlived close()"
