"""Fixtures for the assigner suite: real assigner processes (by PID), gRPC stubs, slicelets and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2  # noqa: E402
from sharder.launch import ManagedProcess, python_module  # noqa: E402
from sharder.load import EngineLoad  # noqa: E402
from sharder.pods import Pod  # noqa: E402
from tests.etcd_plugin import make_etcd_cluster  # noqa: E402, F401

if TYPE_CHECKING:
    from sharder.slicelet import Slicelet


ROUND_S = 0.3
LEASE_S = 1.5


class Assigner:
    """One assigner process started by a test."""

    def __init__(self, proc: ManagedProcess) -> None:
        self.proc = proc
        self.addr = proc.addresses["grpc"]
        self.id = proc.addresses["id"]
        self.channel = grpc.aio.insecure_channel(self.addr)
        self.stub = assigner_pb2_grpc.AssignerStub(self.channel)  # type: ignore[no-untyped-call]

    def kill9(self) -> None:
        self.proc.kill9()

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture
async def start_assigner(tmp_path: Path) -> AsyncIterator[Callable[..., Assigner]]:
    started: list[Assigner] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")

    def start(
        *,
        store: str = "embedded",
        etcd: list[str] | None = None,
        prefix: str = "/brunoise-test",
        ident: str | None = None,
        round_s: float = ROUND_S,
        lease_s: float = LEASE_S,
        extra: tuple[str, ...] = (),
        targets_from_reports: bool = True,
    ) -> Assigner:
        n = len(started)
        name = ident or f"assigner{n}"
        argv = ["--store", store, "--id", name, "--round-interval", str(round_s), "--lease-ttl", str(lease_s)]
        # these tests register pods for targets nobody configured: an open loopback assigner may create them
        argv += ["--report-interval", "0.2", *(["--targets-from-reports"] if targets_from_reports else []), *extra]
        for e in etcd or ():
            argv += ["--etcd-endpoint", e]
        if store == "etcd":
            argv += ["--etcd-prefix", prefix]
        proc = ManagedProcess(name, python_module("sharder.assigner.main", *argv), env=env, log_dir=tmp_path / name)
        proc.start()
        try:
            proc.wait_ready(30)
        except BaseException:
            proc.stop()
            raise
        a = Assigner(proc)
        started.append(a)
        return a

    try:
        yield start
    finally:
        for a in reversed(started):
            a.stop()
            await a.channel.close(None)
        for a in started:
            print(f"--- log of {a.id}:\n{a.proc.log_tail(15)}")


def pod_msg(pid: str, port: int, target: str = "t", **labels: str) -> slicing_pb2.Pod:
    return slicing_pb2.Pod(id=pid, address=f"127.0.0.1:{port}", target=target, labels={"model": "m", **labels})


async def report(stub: assigner_pb2_grpc.AssignerStub, pod: slicing_pb2.Pod, ttl_ms: int = 0) -> assigner_pb2.ReportResponse:
    resp: assigner_pb2.ReportResponse = await stub.Report(
        assigner_pb2.ReportRequest(pod=pod, lease_ttl_ms=ttl_ms), timeout=5
    )
    return resp


async def report_load(
    stub: assigner_pb2_grpc.AssignerStub, pod: slicing_pb2.Pod, held: list[slicing_pb2.Slice], per_slice: float = 1.0
) -> assigner_pb2.ReportResponse:
    """Report ``per_slice`` load on every slice in ``held`` (what a busy pod would say)."""
    load = slicing_pb2.LoadReport(
        pod_id=pod.id,
        target=pod.target,
        engine=slicing_pb2.EngineLoad(running=len(held), capacity=1.0, load=per_slice * len(held)),
        slices=[slicing_pb2.SliceLoad(slice=s, load=per_slice, requests=10) for s in held],
    )
    resp: assigner_pb2.ReportResponse = await stub.Report(assigner_pb2.ReportRequest(pod=pod, load=load), timeout=5)
    return resp


async def get(stub: assigner_pb2_grpc.AssignerStub, target: str = "t") -> slicing_pb2.Assignment:
    a: slicing_pb2.Assignment = await stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=target), timeout=5)
    return a


def holders(a: slicing_pb2.Assignment) -> set[str]:
    return {p for s in a.slices for p in (*s.replicas, *s.leaving)}


def make_slicelet(pid: str, port: int, addrs: list[str], target: str = "t", lease_s: float = LEASE_S) -> Slicelet:
    from sharder.slicelet import Slicelet

    pod = Pod(id=pid, address=f"127.0.0.1:{port}", labels={"model": "m"}, target=target)
    return Slicelet(
        pod, addrs, engine_load=lambda: EngineLoad(running=1, load=1.0), report_interval_s=0.2, lease_ttl_s=lease_s
    )


@pytest.fixture
async def slicelets() -> AsyncIterator[list[Slicelet]]:
    """Slicelets a test appends here are stopped after it."""
    made: list[Slicelet] = []
    try:
        yield made
    finally:
        for s in made:
            await s.stop()


@pytest.fixture
def no_leaks() -> Iterator[None]:
    yield


class Traffic:
    """A stand-in router: random keys, looked up in a clerk, recorded on the first replica's slicelet.
    Every lookup after the clerk is ready must find a slice (``misses`` counts the ones that did not)."""

    def __init__(self, clerk: Any, slicelets: list[Slicelet], target: str = "t", per_tick: int = 100) -> None:
        self.clerk = clerk
        self.by_id = {s.pod.id: s for s in slicelets}
        self.target = target
        self.per_tick = per_tick
        self.lookups = 0
        self.misses = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        rng = random.Random(7)
        while True:
            for _ in range(self.per_tick):
                key = rng.getrandbits(64)
                sa = self.clerk.lookup(self.target, key)
                self.lookups += 1
                if sa is None or not sa.replicas:
                    self.misses += 1
                    continue
                sl = self.by_id.get(sa.replicas[0])
                if sl is not None:
                    sl.record(key)
            await asyncio.sleep(0.01)
