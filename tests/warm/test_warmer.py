"""The pod's warmer, in process over real gRPC: it prefills a donor's hottest prompts one slice at a time within
its budget, reports every slice done (also when no donor answers), and fills the local engine's prefix cache."""

from __future__ import annotations

import asyncio

from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.sim import SimConfig, SimEngine
from runtime.grpc_service import GrpcServer, RuntimeService
from runtime.warm import WARM_PROMPTS, PromptLog, Warmer, WarmMetrics
from sharder.keyspace import Slice

SYSTEM = "You answer questions about the warm-up test in great detail. " * 30


async def _ttft_cached(engine: SimEngine, prompt: str) -> int:
    last = None
    async for c in engine.generate(EngineRequest("probe", prompt=prompt, sampling=SamplingParams(max_tokens=1))):
        last = c
    assert last is not None
    return last.cached_tokens


async def test_warmer_prefills_the_donors_prompts_and_reports_each_slice() -> None:
    donor_log = PromptLog()
    for i in range(WARM_PROMPTS + 3):  # more than the budget; key 5 is the hottest
        donor_log.record(i, SYSTEM + f"session {i} history", None)
    donor_log.record(5, SYSTEM + "session 5 history, turn 2", None)
    donor = GrpcServer(RuntimeService(SimEngine(SimConfig()), pod_id="donor", prompt_log=donor_log))
    await donor.start()
    local = SimEngine(SimConfig())
    await local.start()
    done: list[Slice] = []
    got = asyncio.Event()

    def finished(s: Slice) -> None:
        done.append(s)
        if len(done) == 2:
            got.set()

    metrics = WarmMetrics()
    warmer = Warmer(local, done=finished, metrics=metrics, timeout_s=10.0)
    try:
        hot, dead = Slice(0, 100), Slice(100, 200)
        warmer.want({hot: [donor.address], dead: ["127.0.0.1:1"]})  # nobody listens on port 1
        warmer.want({hot: [donor.address], dead: ["127.0.0.1:1"]})  # the next report asks again: not queued twice
        await asyncio.wait_for(got.wait(), 15)
        assert sorted(done) == [hot, dead]
        assert dict(warmer.warmed) == {hot: WARM_PROMPTS, dead: 0}
        value = metrics.registry.get_sample_value
        assert value("brunoise_runtime_warmup_requests_total") == WARM_PROMPTS
        assert value("brunoise_runtime_warmup_failed_total") == 1
        assert value("brunoise_runtime_warmup_completed_total") == 1
        # the hottest session's latest turn is in the local cache now: its next turn hits
        cached = await _ttft_cached(local, SYSTEM + "session 5 history, turn 2 and turn 3")
        assert cached >= 0.8 * len(await local.tokenize(SYSTEM))
    finally:
        await warmer.stop()
        await local.stop()
        await donor.stop(0.1)
