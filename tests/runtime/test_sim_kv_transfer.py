"""The simulated engine's KV connector (vLLM NixlConnector's request protocol): a producer holds a prompt's KV and
says where, a consumer reads it instead of computing it, at the configured bandwidth, off the batch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import pytest

from runtime.engines.base import EngineChunk, EngineError, EngineRequest, SamplingParams
from runtime.engines.sim import BLOCK_TOKENS, SimConfig, SimEngine
from tests.runtime.test_sim_engine import text_blocks
from tests.waiting import until

EXPORT = {"do_remote_decode": True, "do_remote_prefill": False}


async def gen(e: SimEngine, prompt: str, params: Mapping[str, Any] | None = None, max_tokens: int = 8,
              rid: str = "r") -> list[EngineChunk]:  # fmt: skip
    req = EngineRequest(rid, prompt=prompt, sampling=SamplingParams(max_tokens=max_tokens), kv_transfer_params=params)
    return [c async for c in e.generate(req)]


async def engine(gbps: float = 10.0, time_scale: float = 1000) -> SimEngine:
    e = SimEngine(SimConfig(time_scale=time_scale, max_model_len=2048, kv_blocks=256, kv_transfer_gb_per_s=gbps))
    await e.start()
    return e


async def test_producer_holds_and_consumer_reads_instead_of_computing() -> None:
    a, b = await engine(), await engine()
    try:
        prompt = text_blocks("d", 40) + "tail"  # 40 full blocks and a partial one
        out = await gen(a, prompt, EXPORT)
        last = out[-1]
        assert last.completion_tokens == 1  # the connector cuts a producer's request to its prefill
        params = dict(last.kv_transfer_params or {})
        assert params["do_remote_prefill"] is True and params["remote_engine_id"] == a.engine_id
        assert len(params["remote_block_ids"]) == 40

        got = await gen(b, prompt, params)
        assert got[-1].cached_tokens == 40 * BLOCK_TOKENS  # read, not computed
        assert b.prefix_hits == 40 * BLOCK_TOKENS
        # the read blocks are in b's prefix cache now: an ordinary request hits them
        again = await gen(b, prompt + " and more", rid="r2")
        assert again[-1].cached_tokens == 40 * BLOCK_TOKENS
    finally:
        await a.stop()
        await b.stop()


async def test_read_waits_off_the_batch_for_the_modelled_time() -> None:
    # time runs 1000x slower than the wall clock here, so the read is still in flight when looked at
    b = await engine(gbps=2.0, time_scale=0.001)
    try:
        params = {"do_remote_prefill": True, "remote_engine_id": "peer", "remote_block_ids": list(range(40))}
        req = EngineRequest("r", prompt=text_blocks("e", 41), sampling=SamplingParams(max_tokens=1),
                            kv_transfer_params=params)  # fmt: skip

        async def consume() -> list[EngineChunk]:
            return [c async for c in b.generate(req)]

        task = asyncio.create_task(consume())
        await until(lambda: bool(b._loading), what="the read to start")
        (r,) = b._loading
        assert r.remote_tokens == 40 * BLOCK_TOKENS
        assert r.ready_t == pytest.approx(40 * BLOCK_TOKENS * b.config.kv_bytes_per_token / 2e9, rel=0.05)
        assert b.load().waiting == 1 and b.load().running == 0  # counted as waiting, as vLLM counts it
        assert b.kv.num_used >= 40  # its blocks are allocated for the read
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not b._loading and b.kv.num_used == 0  # an abort frees them
    finally:
        await b.stop()


async def test_without_a_connector_the_params_are_ignored() -> None:
    a, plain = await engine(), await engine(gbps=0.0)
    try:
        prompt = text_blocks("f", 20) + "x"
        params = dict((await gen(a, prompt, EXPORT))[-1].kv_transfer_params or {})
        assert not plain.kv_transfer
        out = await gen(plain, prompt, params)
        assert out[-1].cached_tokens == 0 and out[-1].kv_transfer_params is None
        assert out[-1].completion_tokens == 8  # nothing cut either
    finally:
        await a.stop()
        await plain.stop()


async def test_a_read_from_itself_or_of_what_is_cached_moves_nothing() -> None:
    a = await engine()
    try:
        prompt = text_blocks("g", 12) + "x"
        params = dict((await gen(a, prompt, EXPORT))[-1].kv_transfer_params or {})
        hits = a.prefix_hits
        out = await gen(a, prompt, params, rid="again")
        assert out[-1].cached_tokens == 12 * BLOCK_TOKENS  # its own cache, an ordinary hit
        assert a.prefix_hits - hits == 12 * BLOCK_TOKENS
    finally:
        await a.stop()


@pytest.mark.parametrize(
    "params",
    [
        {"do_remote_prefill": True, "remote_engine_id": "peer"},
        {"do_remote_prefill": True, "remote_engine_id": "", "remote_block_ids": [1]},
        {"do_remote_prefill": True, "remote_engine_id": "peer", "remote_block_ids": ["1"]},
        {"do_remote_prefill": True, "remote_engine_id": "peer", "remote_block_ids": "1,2"},
    ],
)
async def test_bad_params_get_a_clear_400(params: dict[str, Any]) -> None:
    b = await engine()
    try:
        with pytest.raises(EngineError) as exc:
            await gen(b, "hello", params)
        assert exc.value.status == 400 and exc.value.param == "kv_transfer_params"
        assert (await gen(b, "hello"))[-1].finish_reason == "length"  # the engine serves on
    finally:
        await b.stop()
