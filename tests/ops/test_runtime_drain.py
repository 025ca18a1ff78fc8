"""SIGTERM with --drain-timeout-s: the runtime reports not ready at once and lets running requests finish (what the
Kubernetes grace period is sized for); without it, running requests are cut."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.runtime.procs import start_runtime

pytestmark = pytest.mark.slow

SLOW = ("--model", "drain-model", "--step-fixed-s", "0.04", "--time-scale", "1", "--eos-probability", "0")


async def stream_then_sigterm(tmp_path: Path, drain_s: float) -> tuple[list[str | None], list[int], int | None]:
    """Start a ~2.4 s stream, SIGTERM the runtime after its first chunk; the finish reasons seen, the /ready
    statuses seen while the stream ran (readiness; /health is liveness and stays 200), and the exit code."""
    proc = start_runtime(tmp_path, *SLOW, "--drain-timeout-s", str(drain_s))
    base = proc.addresses["http"]
    finishes: list[str | None] = []
    health: list[int] = []
    try:
        async with aiohttp.ClientSession() as s:
            body = {"model": "drain-model", "prompt": "drain me", "max_tokens": 60, "stream": True}
            async with s.post(base + "/v1/completions", json=body) as r:
                assert r.status == 200
                signalled = False
                try:
                    async for raw in r.content:
                        line = raw.decode().strip()
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        finishes.extend(c.get("finish_reason") for c in chunk.get("choices", []))
                        if not signalled:
                            os.kill(proc.pid, signal.SIGTERM)
                            signalled = True
                        if 503 not in health and len(health) < 40:  # the signal lands within a few chunks
                            try:
                                async with s.get(base + "/ready", timeout=aiohttp.ClientTimeout(total=1)) as h:
                                    health.append(h.status)
                            except (aiohttp.ClientError, TimeoutError):
                                health.append(-1)  # the listener is gone
                except aiohttp.ClientPayloadError:
                    finishes.append("cut")
    finally:
        code = await asyncio.to_thread(proc.stop, 15.0)  # already exiting: this waits for it (SIGKILL after 15 s)
    return finishes, health, code


async def test_drain_lets_the_running_stream_finish(tmp_path: Path) -> None:
    finishes, health, code = await stream_then_sigterm(tmp_path, 20.0)
    assert finishes[-1] == "length", finishes  # all 60 tokens, finished normally after the SIGTERM
    assert 503 in health, health  # routers are told to go elsewhere while the stream still runs
    assert code == 0


async def test_without_drain_the_running_stream_is_cut(tmp_path: Path) -> None:
    finishes, _, _ = await stream_then_sigterm(tmp_path, 0.0)
    assert "length" not in finishes, finishes
