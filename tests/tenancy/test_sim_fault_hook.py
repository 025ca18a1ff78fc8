"""The simulated engine's fault hook: off by default; a marked prompt hangs the engine (crash: see the cluster test)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.sim import SimConfig, SimEngine


async def _finish(e: SimEngine, rid: str, prompt: str) -> int:
    n = 0
    async for _ in e.generate(EngineRequest(rid, prompt=prompt, sampling=SamplingParams(max_tokens=4))):
        n += 1
    return n


async def test_marker_is_ignored_unless_the_hook_is_on() -> None:
    e = SimEngine(SimConfig(time_scale=1000))
    await e.start()
    try:
        assert await asyncio.wait_for(_finish(e, "a", "POISON please"), 10) >= 1
    finally:
        await e.stop()


async def test_a_marked_prompt_hangs_the_whole_engine() -> None:
    e = SimEngine(SimConfig(time_scale=1000, fault_marker="POISON", fault_mode="hang"))
    await e.start()
    try:
        assert await asyncio.wait_for(_finish(e, "ok", "hello"), 10) >= 1, "unmarked prompts run"
        bad = asyncio.create_task(_finish(e, "bad", "x POISON y"))
        other = asyncio.create_task(_finish(e, "other", "hello again"))
        done, _ = await asyncio.wait({bad, other}, timeout=1.0)
        assert not done, "a hung engine finishes nothing, the marked request nor any other"
        assert e.hung
        bad.cancel()
        other.cancel()
    finally:
        await e.stop()


def test_fault_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="fault_mode"):
        SimConfig(fault_marker="x", fault_mode="explode").validate()
