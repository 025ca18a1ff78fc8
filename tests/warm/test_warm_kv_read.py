"""Warm-up by KV read, in process over real gRPC: where both engines have a KV connector, the donor's engine holds
its hottest prompts' KV (vLLM's do_remote_decode) and the warmer's engine reads it instead of prefilling; where the
donor's has none, the warmer prefills as before."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import AsyncIterator

import pytest

from runtime.engines.base import Engine, EngineChunk, EngineProxy, EngineRequest, SamplingParams
from runtime.engines.sim import SimConfig, SimEngine
from runtime.grpc_service import GrpcServer, RuntimeService
from runtime.warm import (
    WARM_PIECE_BYTES,
    PromptLog,
    RecordingEngine,
    Warmer,
    WarmMetrics,
    names_its_own_host,
    warm_pieces,
)
from sharder.keyspace import Slice

SYSTEM = "You answer questions about the warm-up-by-read test in great detail. " * 40


def sim(gbps: float) -> SimEngine:
    return SimEngine(SimConfig(time_scale=100, max_model_len=8192, kv_blocks=2048, kv_transfer_gb_per_s=gbps))


async def one(engine: SimEngine | RecordingEngine, prompt: str, key: int | None = None) -> int:
    """Serve ``prompt`` (keyed: the donor's prompt log records it); its cached tokens."""
    last = None
    req = EngineRequest(f"r{key}", prompt=prompt, sampling=SamplingParams(max_tokens=1), slice_key=key)
    async for c in engine.generate(req):
        last = c
    assert last is not None
    return last.cached_tokens


class NamesHost(EngineProxy):
    """A donor's engine whose KV connector names ``host`` as where to read its blocks (``remote_host``)."""

    def __init__(self, inner: Engine, host: str) -> None:
        super().__init__(inner)
        self.host = host

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        async for c in self.inner.generate(request):
            if c.kv_transfer_params:
                c = dataclasses.replace(c, kv_transfer_params={**c.kv_transfer_params, "remote_host": self.host})
            yield c


async def warm(
    donor_gbps: float, evict: bool = False, names: str | None = None
) -> tuple[SimEngine, WarmMetrics, WarmMetrics, list[str]]:
    """A donor that served three long sessions (``evict``: and lost them from its cache since; ``names``: its
    connector names that host for the read), and a warmer (with a connector) warming their slice from it."""
    donor_engine = sim(donor_gbps)
    await donor_engine.start()
    donor_metrics = WarmMetrics()
    log_ = PromptLog()
    inner: Engine = donor_engine if names is None else NamesHost(donor_engine, names)
    recording = RecordingEngine(inner, log_, donor_metrics)
    prompts = [SYSTEM + f"session {i}: " + f"tool output {i} " * 300 for i in range(3)]
    for i, p in enumerate(prompts):
        await one(recording, p, key=10 + i)
    if evict:
        assert donor_engine.reset_prefix_cache()
    donor = GrpcServer(RuntimeService(recording, pod_id="donor", prompt_log=log_, warm_metrics=donor_metrics))
    await donor.start()
    local = sim(10.0)
    await local.start()
    done = asyncio.Event()
    metrics = WarmMetrics()
    warmer = Warmer(local, done=lambda s: done.set(), metrics=metrics, timeout_s=20.0)
    try:
        warmer.want({Slice(0, 100): [donor.address]})
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await warmer.stop()
        await donor.stop(0.1)
        await donor_engine.stop()
    return local, metrics, donor_metrics, prompts


async def test_the_warmer_reads_the_donors_kv_instead_of_prefilling() -> None:
    local, metrics, donor_metrics, prompts = await warm(10.0)
    try:
        value = metrics.registry.get_sample_value
        assert value("brunoise_runtime_warmup_kv_read_total") == 3
        assert value("brunoise_runtime_warmup_requests_total") == 3  # one request each: no prefill pieces
        # read, not computed: every full block of every prompt arrived cached
        assert (
            value("brunoise_runtime_warmup_prefix_cache_hits_total")
            >= 0.99 * value("brunoise_runtime_warmup_prefix_cache_queries_total") - 3 * 16
        )
        assert donor_metrics.registry.get_sample_value("brunoise_runtime_warmup_kv_held_total") == 3
        # the donor's holds are warm-up traffic (a reader takes them out of vLLM's counters)
        assert donor_metrics.registry.get_sample_value("brunoise_runtime_warmup_prefix_cache_queries_total") > 0
        # each session's next turn hits on the warmed pod
        for p in prompts:
            assert await one(local, p + " next turn") >= len(await local.tokenize(p)) - 16
    finally:
        await local.stop()


async def test_a_donor_without_a_connector_gets_its_prompts_prefilled() -> None:
    local, metrics, donor_metrics, prompts = await warm(0.0)
    try:
        value = metrics.registry.get_sample_value
        assert value("brunoise_runtime_warmup_kv_read_total") == 0
        pieces = len(warm_pieces(prompts[0], None, WARM_PIECE_BYTES))
        assert donor_metrics.registry.get_sample_value("brunoise_runtime_warmup_kv_held_total") == 0
        # prefilled in pieces, within the prefill budget: two of the three (the most recent first), and those hit
        assert value("brunoise_runtime_warmup_requests_total") == 2 * pieces > 2
        for p in prompts[1:]:
            assert await one(local, p + " next turn") >= len(await local.tokenize(p)) - 16
    finally:
        await local.stop()


async def test_a_donor_holds_only_what_its_cache_still_holds() -> None:
    """A hold of an evicted prompt would prefill it on the donor (a serving pod, often one being drained): the
    donor answers it without params, and the warmer prefills within its prefill budget instead."""
    local, metrics, donor_metrics, prompts = await warm(10.0, evict=True)
    try:
        assert donor_metrics.registry.get_sample_value("brunoise_runtime_warmup_kv_held_total") == 0
        assert donor_metrics.registry.get_sample_value("brunoise_runtime_warmup_prefix_cache_queries_total") == 0
        value = metrics.registry.get_sample_value
        assert value("brunoise_runtime_warmup_kv_read_total") == 0
        assert value("brunoise_runtime_warmup_requests_total") == 2 * len(
            warm_pieces(prompts[0], None, WARM_PIECE_BYTES)
        )
    finally:
        await local.stop()


async def test_a_donor_naming_another_host_for_its_kv_is_not_read_from() -> None:
    """Failure mode: the warmer sent its engine whatever ``kv_transfer_params`` a donor answered, and a KV connector
    connects to the ``remote_host`` they name: a pod could point every warming peer's engine at any host. The read
    is refused and the prompts are prefilled as from a donor without a connector; a loopback donor naming
    ``localhost`` (vLLM's default side-channel host) is still read from."""
    local, metrics, donor_metrics, prompts = await warm(10.0, names="10.9.8.7")
    try:
        value = metrics.registry.get_sample_value
        assert donor_metrics.registry.get_sample_value("brunoise_runtime_warmup_kv_held_total") == 3
        assert value("brunoise_runtime_warmup_kv_read_total") == 0
        assert value("brunoise_runtime_warmup_kv_read_refused_total") == 3
        assert value("brunoise_runtime_warmup_requests_total") == 2 * len(
            warm_pieces(prompts[0], None, WARM_PIECE_BYTES)
        )
        for p in prompts[1:]:  # prefilled: the sessions still hit
            assert await one(local, p + " next turn") >= len(await local.tokenize(p)) - 16
    finally:
        await local.stop()
    local, metrics, _, _ = await warm(10.0, names="localhost")
    try:
        assert metrics.registry.get_sample_value("brunoise_runtime_warmup_kv_read_total") == 3
        assert metrics.registry.get_sample_value("brunoise_runtime_warmup_kv_read_refused_total") == 0
    finally:
        await local.stop()


async def test_which_hosts_a_donor_may_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def params(host: object) -> str:
        return json.dumps({"do_remote_prefill": True, "remote_host": host, "remote_port": 5600})

    assert await names_its_own_host(params("10.0.0.7"), "10.0.0.7:50051")
    assert await names_its_own_host(params("::1"), "[::1]:50051")
    assert await names_its_own_host(params("localhost"), "127.0.0.1:50051")  # one host, loopback either way
    assert await names_its_own_host(params("127.0.0.1"), "[::1]:50051")
    assert not await names_its_own_host(params("10.0.0.8"), "10.0.0.7:50051")
    assert not await names_its_own_host(params("localhost"), "10.0.0.7:50051")  # vLLM's default on a real pod
    assert not await names_its_own_host(params("127.0.0.1"), "10.0.0.7:50051")
    assert not await names_its_own_host(params(None), "10.0.0.7:50051")
    assert not await names_its_own_host(params(7), "10.0.0.7:50051")
    assert not await names_its_own_host(json.dumps({"do_remote_prefill": True}), "127.0.0.1:50051")
    assert not await names_its_own_host("not json", "127.0.0.1:50051")
    # a name other than the registered one is refused without a lookup (it could resolve otherwise later)
    assert not await names_its_own_host(params("pod-0.example"), "10.0.0.7:50051")
    # an address the registered name resolves to is the donor's own (the resolver answers for a cluster DNS name)
    asked: list[str] = []

    async def resolve(host: str, port: object, **_: object) -> list[tuple[object, ...]]:
        asked.append(host)
        if host != "pod-0.pods.ns.svc":
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::7", 0, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 0))]  # fmt: skip

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolve)
    assert await names_its_own_host(params("10.0.0.7"), "pod-0.pods.ns.svc:50051")
    assert await names_its_own_host(params("fd00::7"), "pod-0.pods.ns.svc:50051")
    assert not await names_its_own_host(params("10.0.0.8"), "pod-0.pods.ns.svc:50051")
    assert not await names_its_own_host(params("pod-1.pods.ns.svc"), "pod-0.pods.ns.svc:50051")
    assert not await names_its_own_host(params("10.0.0.7"), "gone.pods.ns.svc:50051")  # does not resolve
    assert set(asked) == {"pod-0.pods.ns.svc", "gone.pods.ns.svc"}  # never a name the donor sent
