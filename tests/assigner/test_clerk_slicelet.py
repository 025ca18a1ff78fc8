"""Clerk and slicelet against a real assigner process (embedded store)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, slicing_pb2
from sharder.assignment import Assignment
from sharder.clerk import Clerk
from sharder.keyspace import slice_key
from sharder.slicelet import Slicelet
from tests.assigner.conftest import Assigner, Traffic, get, holders, make_slicelet
from tests.waiting import until

pytestmark = pytest.mark.slow


def held_in(a: Assignment, pod_id: str) -> set[tuple[int, int]]:
    return {(sa.slice.lo, sa.slice.hi) for sa in a.slices_of(pod_id, include_leaving=True)}


async def test_clerk_and_slicelets(start_assigner: Callable[..., Assigner], slicelets: list[Slicelet]) -> None:
    a = start_assigner()
    for i in range(3):
        s = make_slicelet(f"p{i}", 9000 + i, [a.addr])
        slicelets.append(s)
        await s.start()
    clerk = Clerk([a.addr], target="t")
    seen: list[int] = []
    clerk.add_listener(lambda asg: seen.append(asg.generation))
    await clerk.start()
    traffic = Traffic(clerk, slicelets)
    try:
        first = await clerk.wait_ready(10)
        assert first.target == "t" and clerk.targets() == ["t"]
        assert clerk.connected and clerk.staleness_s("t") == 0.0
        assert math.isinf(clerk.staleness_s("other"))
        sa = clerk.lookup("t", slice_key("session-1"))
        assert sa is not None and sa.replicas
        assert clerk.lookup("nope", 1) is None
        traffic.start()
        # load reported by the slicelets spreads the slices over every pod
        await until(lambda: len(holders_of(clerk)) == 3, 30, "slices on all three pods", interval_s=0.1)

        # every slicelet's view matches the clerk's (same generation)
        def consistent() -> bool:
            asg = clerk.assignment("t")
            return asg is not None and all(
                s.generation == asg.generation and {(x.lo, x.hi) for x in s.slices} == held_in(asg, s.pod.id)
                for s in slicelets
            )

        await until(consistent, 10, "slicelets agree with the clerk")
        asg = clerk.assignment("t")
        assert asg is not None
        key = slice_key("session-1")
        owner = asg.lookup(key).replicas[0]
        assert next(s for s in slicelets if s.pod.id == owner).holds(key)
        assert traffic.misses == 0
        assert seen == sorted(set(seen)), "generations went backwards or repeated"
        pods = await a.stub.ListPods(assigner_pb2.ListPodsRequest(target="t"))
        assert all(p.last_report_unix_ms > 0 and p.engine.load == 1.0 for p in pods.pods)
        assert sum(p.slice_load for p in pods.pods) > 0
    finally:
        await traffic.stop()
        await clerk.stop()


def holders_of(clerk: Clerk) -> set[str]:
    a = clerk.assignment("t")
    return {p for sa in a.slices for p in sa.replicas} if a is not None else set()


async def test_clerk_keeps_routing_while_assigner_down(
    start_assigner: Callable[..., Assigner], slicelets: list[Slicelet], tmp_path: Path
) -> None:
    snap = str(tmp_path / "snapshot.json")
    a = start_assigner(extra=("--snapshot", snap))
    port = a.addr.rsplit(":", 1)[1]
    s = make_slicelet("p0", 9000, [a.addr])
    slicelets.append(s)
    await s.start()
    clerk = Clerk([a.addr], target="t", backoff_initial_s=0.05, backoff_max_s=0.3)
    await clerk.start()
    try:
        before = await clerk.wait_ready(10)
        a.kill9()
        await until(lambda: not clerk.connected, 5, "clerk to notice the assigner is gone")
        for i in range(100):
            sa = clerk.lookup("t", slice_key(f"k{i}"))
            assert sa is not None and sa.replicas == before.lookup(slice_key(f"k{i}")).replicas
        await until(lambda: clerk.staleness_s("t") > 0.2, 5, "staleness to grow")
        # the assigner comes back on the same port with its snapshot: generations continue upwards
        b = start_assigner(extra=("--snapshot", snap, "--port", port), ident="assigner-restarted")
        await until(lambda: clerk.connected, 10, "clerk to reconnect")
        gen_before = before.generation
        stored = await until(lambda: get(b.stub), 10, "the restarted assigner to serve t")
        assert stored.generation >= gen_before
        assert clerk.generation("t") >= gen_before
        assert clerk.staleness_s("t") == 0.0
        assert holders(stored) <= {"p0"}
    finally:
        await clerk.stop()


async def test_pod_without_heartbeat_loses_slices(
    start_assigner: Callable[..., Assigner], slicelets: list[Slicelet]
) -> None:
    a = start_assigner()
    for i in range(2):
        s = make_slicelet(f"p{i}", 9000 + i, [a.addr], lease_s=1.0)
        slicelets.append(s)
        await s.start()
    clerk = Clerk([a.addr], target="t")
    await clerk.start()
    traffic = Traffic(clerk, slicelets)
    try:
        await clerk.wait_ready(10)
        traffic.start()
        await until(lambda: holders_of(clerk) == {"p0", "p1"}, 30, "both pods hold slices", interval_s=0.1)
        await slicelets[1].stop(leave=False)  # goes quiet, as a dead pod: its lease runs out
        await until(lambda: holders_of(clerk) == {"p0"}, 10, "p1 to lose its slices after its lease", interval_s=0.1)
        asg = clerk.assignment("t")
        assert asg is not None and asg.pod("p1") is None
        assert traffic.misses == 0
    finally:
        await traffic.stop()
        await clerk.stop()


async def test_a_stopped_pod_leaves_so_its_next_incarnation_registers_at_once(
    start_assigner: Callable[..., Assigner], slicelets: list[Slicelet]
) -> None:
    """Failure mode: a restarted pod gets a new address (its gRPC port, or a Kubernetes pod IP) and the assigner
    refused it (ALREADY_EXISTS) for the old incarnation's whole lease: in the bench's rolling restart every pod
    was out ~5 s longer than it needed. A graceful stop now ends the registration; only its own address may."""
    a = start_assigner()
    old = make_slicelet("p0", 9000, [a.addr], lease_s=30.0)
    slicelets.append(old)
    await old.start()
    await old.wait_registered(10)
    # another address may neither take the id nor end its registration while the lease lives
    impostor = make_slicelet("p0", 9666, [a.addr], lease_s=30.0)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await impostor.report_once()
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await impostor.report_once(leaving=True)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert {p.pod.id: p.pod.address for p in (await a.stub.ListPods(assigner_pb2.ListPodsRequest())).pods}[
        "p0"
    ].endswith(":9000")
    await old.stop()  # graceful: the last report leaves
    new = make_slicelet("p0", 9100, [a.addr], lease_s=30.0)
    slicelets.append(new)
    resp = await new.report_once()  # at once, 25+ s before the old lease would have expired
    assert resp.state == slicing_pb2.POD_STATE_ACTIVE
    pods = {p.pod.id: p.pod.address for p in (await a.stub.ListPods(assigner_pb2.ListPodsRequest())).pods}
    assert pods["p0"].endswith(":9100")
