"""The runtime pod in-process: readiness gating (HTTP 503, gRPC NOT_SERVING), client disconnects, slicelet wiring."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.engines.base import EngineChunk
from runtime.engines.sim import SimConfig, SimEngine
from runtime.pod import RuntimePod
from sharder import kv_pull
from sharder.headers import DEADLINE_HEADER, KV_PULL_HEADER
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)


class GatedSim(SimEngine):
    """A simulated engine whose start waits for a gate (a slow model load)."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.gate.wait()
        await super().start()


async def grpc_health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(resp.status)


@pytest.fixture
async def gated_pod() -> AsyncIterator[tuple[RuntimePod, GatedSim, asyncio.Task[dict[str, str]]]]:
    engine = GatedSim(SimConfig(time_scale=20, kv_blocks=1024, max_model_len=1024))
    pod = RuntimePod(engine, pod_id="gated")
    task = asyncio.create_task(pod.start())
    try:
        await until(lambda: bool(pod.addresses) or task.done())
        yield pod, engine, task
    finally:
        engine.gate.set()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pod.stop()


async def test_not_ready_until_engine_started(
    gated_pod: tuple[RuntimePod, GatedSim, asyncio.Task[dict[str, str]]],
) -> None:
    pod, engine, task = gated_pod
    base = pod.addresses["http"]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/health") as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == 503
        async with s.post(f"{base}/v1/completions", json={"prompt": "early", "max_tokens": 2}) as r:
            assert r.status == 503
        assert await grpc_health(pod.addresses["grpc"]) == health_pb2.HealthCheckResponse.NOT_SERVING
        engine.gate.set()
        await task
        async with s.get(f"{base}/health") as r:
            assert r.status == 200
        assert await grpc_health(pod.addresses["grpc"]) == health_pb2.HealthCheckResponse.SERVING


async def test_client_disconnect_aborts_the_request() -> None:
    engine = SimEngine(SimConfig(time_scale=5, kv_blocks=1024, max_model_len=4096))
    pod = RuntimePod(engine, pod_id="disconnect")
    await pod.start()
    try:
        base = pod.addresses["http"]
        body = {"prompt": "long " * 100, "max_tokens": 3000, "stream": True}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{base}/v1/completions", json=body) as r:
                assert r.status == 200
                line = await r.content.readline()
                assert line.startswith(b"data: ")
                assert engine.num_running == 1
            # the response is closed before the end: the engine drops the request and frees its blocks
            await until(lambda: engine.num_running == 0 and engine.kv.num_used == 0)
        assert 'vllm:request_success_total{finished_reason="abort",model_name="sim-llama-3.1-8b"} 1.0' in (
            await engine.metrics_text()
        )
    finally:
        await pod.stop()


async def test_slicelet_wiring_records_finished_work(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sharder.slicelet")
    engine = SimEngine(SimConfig(time_scale=50, kv_blocks=1024, max_model_len=1024))
    # an assigner that is not there: the slicelet retries in the background; the pod serves regardless
    pod = RuntimePod(engine, pod_id="sliced", target="t1", assigners=["127.0.0.1:9"], report_interval_s=0.2)
    await pod.start()
    try:
        assert pod.slicelet is not None and pod.slicelet.pod.address == pod.addresses["grpc"]
        assert pod.slicelet.pod.labels["model"] == engine.model
        recorded: list[tuple[int, float]] = []
        monkeypatch.setattr(pod.slicelet, "record", lambda k, w=1.0: recorded.append((k, w)))
        async with aiohttp.ClientSession() as s:
            hdrs = {"x-brunoise-slice-key": "12345"}
            async with s.post(
                f"{pod.addresses['http']}/v1/completions", json={"prompt": "abcd" * 20, "max_tokens": 3}, headers=hdrs
            ) as r:
                assert r.status == 200
            async with s.post(f"{pod.addresses['http']}/v1/completions", json={"prompt": "no key"}) as r:
                assert r.status == 200
        assert recorded == [(12345, 20.0 + 3.0)]  # uncached prompt tokens + generated tokens
    finally:
        await pod.stop()


def test_on_finish_without_slicelet_is_a_no_op() -> None:
    pod = RuntimePod(SimEngine(SimConfig()), pod_id="p")
    pod.on_finish(1, EngineChunk(text="", finish_reason="stop", prompt_tokens=3, completion_tokens=1))


async def test_a_pull_waits_at_most_half_the_time_its_request_has_left() -> None:
    """Failure mode (stop 29): a pod waited up to 2 s for a request's KV pull whatever the request's deadline (the
    router's x-brunoise-deadline-ms), so a request with a second left could spend it all on a read and then compute
    its prefix anyway. Now the pull gets at most half of what is left, and none (nothing sent) when none is left."""
    engine = SimEngine(SimConfig(time_scale=20, kv_blocks=1024, max_model_len=4096))
    pod = RuntimePod(engine, pod_id="budget")
    await pod.start()
    budgets: list[float] = []

    async def record(hint: kv_pull.PullHint, budget_s: float) -> bool:
        budgets.append(budget_s)
        return False

    assert pod.api is not None
    pod.api.pull = record
    try:
        base = pod.addresses["http"]
        body = {"prompt": "hello", "max_tokens": 1}
        hint = {KV_PULL_HEADER: "peer 1 2"}
        async with aiohttp.ClientSession() as s:
            for extra in ({}, {DEADLINE_HEADER: str(int((time.time() + 1.0) * 1000))},
                          {DEADLINE_HEADER: "not-a-number"}):  # fmt: skip
                async with s.post(f"{base}/v1/completions", json=body, headers={**hint, **extra}) as r:
                    assert r.status == 200
        assert budgets[0] == kv_pull.MAX_WAIT_S
        assert 0.3 < budgets[1] <= 0.5
        assert budgets[2] == kv_pull.MAX_WAIT_S
    finally:
        await pod.stop()
