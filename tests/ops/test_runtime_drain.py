"""SIGTERM with --drain-timeout-s: the runtime reports not ready at once and lets running requests finish (what the
Kubernetes grace period is sized for); without it, running requests are cut."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc
from tests.runtime.procs import start_assigner, start_runtime
from tests.waiting import wait_until

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


def test_the_last_pod_does_not_wait_for_slices_nothing_can_take(tmp_path: Path) -> None:
    """A drain waits (up to half its budget) for the assigner to move the pod's slices; the only pod of a target
    has nowhere to move them, so the assigner says so (``ReportResponse.stranded``) and the pod goes on to stop
    well inside its 60 s budget, rather than being killed at the end of Kubernetes' grace period."""
    assigner = start_assigner(tmp_path, round_interval_s=0.2)
    runtime = None
    try:
        addr = assigner.wait_ready(30)["grpc"]
        runtime = start_runtime(
            tmp_path, "--pod-id", "only", "--target", "chat", "--model", "m", "--assigner", addr,
            "--report-interval", "0.2", "--drain-timeout-s", "60",
        )  # fmt: skip

        def holds() -> bool:
            with grpc.insecure_channel(addr) as ch:
                pods = assigner_pb2_grpc.AssignerStub(ch).ListPods(assigner_pb2.ListPodsRequest(target="chat"))
            return any(p.pod.id == "only" and p.slices_held > 0 for p in pods.pods)

        wait_until(holds, 20, "the pod to hold the target's slices")
        os.kill(runtime.pid, signal.SIGTERM)
        code = runtime.stop(10.0)  # SIGKILL (-9) after 10 s, a third of the drain's half budget
        assert code == 0, (code, runtime.log_tail())
        assert "nothing can take" in runtime.log_path.read_text()
    finally:
        if runtime is not None:
            runtime.stop()
        assigner.stop()
