"""A runtime that stops leaves the assigner at once: the next process of its pod id, on a new address, registers
without waiting out the old lease (a rolling restart's pod serves again at once, and no one undrains a dead one)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc
from sharder.launch import ManagedProcess
from tests.runtime.procs import start_assigner, start_runtime
from tests.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: Far longer than the test may take: only leaving at shutdown lets the restart register in time.
LEASE_S = 60


async def test_a_restarted_runtime_registers_at_once_on_its_new_address(tmp_path: Path) -> None:
    assigner = start_assigner(tmp_path)
    procs: list[ManagedProcess] = []

    def start(name: str) -> ManagedProcess:
        procs.append(start_runtime(
            tmp_path, "--pod-id", "pod-a", "--target", "chat", "--model", "m", "--assigner", addr,
            "--report-interval", "0.2", "--lease-ttl", str(LEASE_S), "--drain-timeout-s", "1", "--time-scale", "20",
            name=name,
        ))  # fmt: skip
        return procs[-1]

    try:
        addr = assigner.wait_ready(30)["grpc"]
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]

            async def registered_as(address: str) -> bool:
                """pod-a's registration has this gRPC address ("": it has none)."""
                pods = await stub.ListPods(assigner_pb2.ListPodsRequest(target="chat"))
                return next((p.pod.address for p in pods.pods if p.pod.id == "pod-a"), "") == address

            first = start("pod-a.1").addresses["grpc"]
            await until(lambda: registered_as(first), 30, "the first process to register")
            procs[0].stop()  # SIGTERM: a graceful shutdown
            t0 = time.monotonic()
            await until(lambda: registered_as(""), 10, "the stopped process's registration to lapse")
            second = start("pod-a.2").addresses["grpc"]
            assert second != first
            await until(lambda: registered_as(second), 20, "the restarted process to register")
            assert time.monotonic() - t0 < LEASE_S / 2  # far from the old lease's end
            log = (tmp_path / "pod-a.2.log").read_text(errors="replace")
            assert "already registered" not in log
    finally:
        for p in procs:
            p.stop()
        assigner.stop()

