"""The pod's outcome counters (what the leader judges a rollout's SLO on) and the sim's per-request error hook."""

from __future__ import annotations

import contextlib

import pytest

from runtime.engines.base import EngineError, EngineRequest
from runtime.engines.sim import SimConfig, SimEngine
from runtime.outcomes import CountedEngine
from sharder import codec
from sharder.assigner.rollouts import WindowCounter
from sharder.errors import LoadReportError
from sharder.load import TTFT_BUCKETS_MS, LoadReport, RequestOutcomes
from sharder.rollout import GreenWindow


async def _run(engine: CountedEngine, prompt: str) -> None:
    async for _ in engine.generate(EngineRequest(request_id=prompt, prompt=prompt)):
        pass


async def test_counted_engine_counts_finishes_server_errors_and_ttft_not_client_errors() -> None:
    sim = SimEngine(SimConfig(time_scale=1000.0, fault_marker="POISON", fault_mode="error"))
    counted = CountedEngine(sim)
    await counted.start()
    try:
        for i in range(4):
            await _run(counted, f"hello {i}")
        for i in range(2):
            with pytest.raises(EngineError) as e:
                await _run(counted, f"POISON {i}")
            assert e.value.status == 500
        with pytest.raises(EngineError) as e:
            await _run(counted, "")  # a client error: the engine is fine
        assert e.value.status == 400
        assert sim.ready, "the error hook leaves the engine up"
    finally:
        with contextlib.suppress(Exception):
            await counted.stop()
    o = counted.outcomes()
    assert (o.requests, o.errors) == (6, 2)
    assert sum(o.ttft_ms_buckets) == 4 and len(o.ttft_ms_buckets) == len(TTFT_BUCKETS_MS)


def test_outcomes_travel_in_the_load_report_and_are_validated() -> None:
    r = LoadReport("pod-1", "chat", outcomes=RequestOutcomes(10, 3, (1, 2, 0, 4)))
    back = codec.load_report_from_proto(codec.load_report_to_proto(r))
    assert back.outcomes == r.outcomes
    assert codec.load_report_from_proto(codec.load_report_to_proto(LoadReport("p", "t"))).outcomes is None
    with pytest.raises(LoadReportError):
        LoadReport("p", "t", outcomes=RequestOutcomes(1, 2)).validate()


def test_the_leaders_window_counts_increases_only_survives_restarts_and_forgets_old_ticks() -> None:
    w = WindowCounter()
    assert w.add(0, {"g0": RequestOutcomes(100, 50, (100,))}, 10.0) == GreenWindow(0, 0, (0,) * len(TTFT_BUCKETS_MS)), (
        "a pod's past before the rollout is not counted"
    )
    got = w.add(1_000, {"g0": RequestOutcomes(110, 52, (110,)), "g1": RequestOutcomes(5, 0)}, 10.0)
    assert (got.requests, got.errors, got.ttft_ms_buckets[0]) == (10, 2, 10)
    got = w.add(2_000, {"g0": RequestOutcomes(3, 1, (3,)), "g1": RequestOutcomes(9, 0)}, 10.0)
    assert (got.requests, got.errors) == (10 + 3 + 4, 2 + 1), "g0 restarted: its counters began again at 0"
    got = w.add(11_500, {"g0": RequestOutcomes(3, 1, (3,)), "g1": RequestOutcomes(9, 0)}, 10.0)
    assert (got.requests, got.errors) == (7, 1), "the tick 10.5 s ago left the window"
