"""A request's KV pull, in process over real gRPC: the picked pod's warmer has the named peer hold its latest prompt
among the hint's keys and reads its KV, so the request that follows finds its prefix cached; every failure leaves
the request to compute it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from runtime.engines.base import Engine, EngineChunk, EngineProxy, EngineRequest
from runtime.engines.sim import SimConfig, SimEngine
from runtime.grpc_service import GrpcServer, RuntimeService
from runtime.warm import PromptLog, RecordingEngine, Warmer, WarmMetrics, warm_priority
from sharder.keyspace import Slice
from tests.waiting import until
from tests.warm.test_warm_kv_read import one, sim

SYSTEM = "You run the KV pull test's agent loop and keep every tool output in mind. " * 30
GROUP = 0xABCD << 32


class Peer:
    """A donor runtime (its engine, prompt log and metrics) that served ``prompts`` by SliceKey, in that order."""

    def __init__(self, gbps: float) -> None:
        self.engine = sim(gbps)
        self.metrics = WarmMetrics()
        self.log = PromptLog()
        self.recording = RecordingEngine(self.engine, self.log, self.metrics)
        self.server = GrpcServer(
            RuntimeService(self.recording, pod_id="peer", prompt_log=self.log, warm_metrics=self.metrics)
        )

    async def serve(self, prompts: dict[int, str]) -> None:
        for key, p in prompts.items():
            await one(self.recording, p, key=key)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer(10.0)
    await p.engine.start()
    await p.server.start()
    try:
        yield p
    finally:
        await p.server.stop(0.1)
        await p.engine.stop()


async def _local(gbps: float = 10.0) -> tuple[SimEngine, Warmer, WarmMetrics]:
    engine = SimEngine(SimConfig(time_scale=100, max_model_len=8192, kv_blocks=2048, kv_transfer_gb_per_s=gbps))
    await engine.start()
    metrics = WarmMetrics()
    return engine, Warmer(engine, done=lambda s: None, metrics=metrics), metrics


def _outcome(m: WarmMetrics, outcome: str) -> float:
    return m.registry.get_sample_value("brunoise_runtime_kv_pulls_total", {"outcome": outcome}) or 0.0


async def test_a_pull_reads_the_sessions_latest_turn_so_its_next_turn_hits(peer: Peer) -> None:
    history = SYSTEM + "turn 1: " + "tool output " * 400
    await peer.serve({GROUP | 7: history, GROUP | 8: SYSTEM + "another session"})
    engine, warmer, m = await _local()
    try:
        assert await warmer.pull(peer.server.address, Slice(GROUP | 7, (GROUP | 7) + 1), 10.0)
        assert _outcome(m, "read") == 1
        assert m.registry.get_sample_value("brunoise_runtime_warmup_kv_read_total") == 1
        # the peer held it for the read (warm-up traffic there, taken out of its hit rate)
        assert peer.metrics.registry.get_sample_value("brunoise_runtime_warmup_kv_held_total") == 1
        # the request that follows: its whole history cached here, none of it computed here before the pull
        n_history = len(await engine.tokenize(history))
        assert await one(engine, history + " turn 2: more output") >= n_history - 16
    finally:
        await engine.stop()


async def test_a_group_range_reads_the_groups_latest_prompt(peer: Peer) -> None:
    doc = "A shared document: " + "clause and subclause " * 300
    await peer.serve({GROUP | 1: SYSTEM + "old", GROUP | 2: doc + " question one?"})
    engine, warmer, _ = await _local()
    try:
        assert await warmer.pull(peer.server.address, Slice(GROUP, GROUP + (1 << 32)), 10.0)
        assert await one(engine, doc + " a new question?") >= len(await engine.tokenize(doc)) - 16
    finally:
        await engine.stop()


async def test_nothing_held_nothing_read(peer: Peer) -> None:
    await peer.serve({GROUP | 7: SYSTEM + "turn 1"})
    assert peer.engine.reset_prefix_cache()  # the peer evicted it since
    engine, warmer, m = await _local()
    try:
        assert not await warmer.pull(peer.server.address, Slice(GROUP | 7, (GROUP | 7) + 1), 10.0)
        assert not await warmer.pull(peer.server.address, Slice(GROUP | 9, (GROUP | 9) + 1), 10.0)  # never served
        assert _outcome(m, "none") == 2 and _outcome(m, "read") == 0
    finally:
        await engine.stop()


async def test_an_engine_without_a_connector_asks_nobody(peer: Peer) -> None:
    await peer.serve({GROUP | 7: SYSTEM + "turn 1"})
    engine, warmer, m = await _local(gbps=0.0)
    try:
        assert not await warmer.pull(peer.server.address, Slice(GROUP | 7, (GROUP | 7) + 1), 10.0)
        assert _outcome(m, "no_connector") == 1
        assert (peer.metrics.registry.get_sample_value("brunoise_runtime_warmup_prompts_served_total") or 0.0) == 0
    finally:
        await engine.stop()


async def test_a_peer_that_does_not_answer_is_a_failed_pull_not_a_failed_request() -> None:
    engine, warmer, m = await _local()
    try:
        assert not await warmer.pull("127.0.0.1:1", Slice(GROUP | 7, (GROUP | 7) + 1), 5.0)
        assert _outcome(m, "failed") + _outcome(m, "timeout") == 1
        assert await one(engine, SYSTEM + "turn 1") >= 0  # the engine serves on
    finally:
        await engine.stop()


class Priorities(EngineProxy):
    """The donor's engine, recording the priority of each hold it is asked for."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.holds: list[int] = []

    def generate(self, req: EngineRequest) -> AsyncIterator[EngineChunk]:
        if req.request_id.startswith("hold-"):
            self.holds.append(req.priority)
        return self.inner.generate(req)


async def test_a_pulls_hold_queues_at_the_clients_priority_and_a_warm_ups_after_them() -> None:
    """Failure mode (stop 29): the donor held a request's pull as it holds a warm-up's reads, at the warm-up priority
    (after every live request waiting there, new arrivals included), while a client request waited on it; on a busy
    donor the pull ran into its 2 s bound (two of ~20 pulls per agentic bench run). A pull is now held at the
    clients' priority (HotPromptsRequest.for_request); a warm-up's hold still yields to live requests."""
    donor = sim(10.0)
    assert donor.priority_scheduling
    rec = Priorities(donor)
    metrics, log = WarmMetrics(), PromptLog()
    server = GrpcServer(RuntimeService(RecordingEngine(rec, log, metrics), pod_id="peer", prompt_log=log,
                                       warm_metrics=metrics))  # fmt: skip
    await donor.start()
    await server.start()
    engine, warmer, _ = await _local()
    try:
        for key in (GROUP | 7, GROUP | 8):
            await one(RecordingEngine(rec, log, metrics), SYSTEM + f"session {key}: " + "tool output " * 200, key=key)
        assert await warmer.pull(server.address, Slice(GROUP | 7, (GROUP | 7) + 1), 10.0)
        assert rec.holds == [0]
        # a warm-up's reads of the same donor: held after the clients' requests
        warmer.want({Slice(GROUP | 8, (GROUP | 8) + 1): [server.address]})
        await until(lambda: len(rec.holds) > 1, 10.0, "the warm-up's hold")
        assert rec.holds[1] == warm_priority(donor) > 0
    finally:
        await engine.stop()
        await server.stop(0.1)
        await donor.stop()
