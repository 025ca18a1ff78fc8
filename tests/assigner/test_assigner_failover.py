"""Failure tests against a real 3-member etcd cluster: assigner failover, etcd member loss, etcd outage, leases."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from brunoise_api.v1 import assigner_pb2
from sharder.assignment import Assignment
from sharder.clerk import Clerk
from sharder.etcd_server import EtcdCluster
from sharder.slicelet import Slicelet
from tests.assigner.conftest import Assigner, Traffic, make_slicelet
from tests.waiting import until

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


class Recorder:
    """Every assignment a clerk accepted, in order."""

    def __init__(self, clerk: Clerk) -> None:
        self.seen: list[Assignment] = []
        clerk.add_listener(self.seen.append)

    @property
    def generations(self) -> list[int]:
        return [a.generation for a in self.seen]

    def assert_monotonic(self) -> None:
        g = self.generations
        assert all(x < y for x, y in itertools.pairwise(g)), f"generations not strictly increasing: {g}"


def holders(clerk: Clerk) -> set[str]:
    a = clerk.assignment("t")
    return {p for sa in a.slices for p in sa.replicas} if a is not None else set()


async def find_leader(reps: list[Assigner]) -> Assigner:
    """The replica every live replica names as leader (polled until they agree on one of ``reps``)."""

    async def agreed() -> Assigner | None:
        named = set()
        for r in reps:
            if not r.proc.alive():
                continue
            with contextlib.suppress(grpc.aio.AioRpcError):
                named.add((await r.stub.ListTargets(assigner_pb2.ListTargetsRequest(), timeout=2)).leader_id)
        if len(named) == 1:
            return next((r for r in reps if r.id in named), None)
        return None

    found: Assigner = await until(agreed, 15, "the replicas to agree on a leader")
    return found


async def drain(reps: list[Assigner], pod_id: str, undrain: bool = False) -> bool:
    """Send Drain to whichever replica is leader now (followers answer FAILED_PRECONDITION)."""
    for r in reps:
        if not r.proc.alive():
            continue
        with contextlib.suppress(grpc.aio.AioRpcError):
            await r.stub.Drain(assigner_pb2.DrainRequest(pod_id=pod_id, undrain=undrain), timeout=3)
            return True
    return False


async def serving(a: Assigner) -> int:
    stub = health_pb2_grpc.HealthStub(a.channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service="brunoise.v1.Assigner"), timeout=2)
    return int(resp.status)


async def setup(
    start_assigner: Callable[..., Assigner],
    cluster: EtcdCluster,
    slicelets: list[Slicelet],
    *,
    replicas: int,
    pods: int,
    clerks: int = 2,
    prefix: str = "/failover",
) -> tuple[list[Assigner], list[Clerk], list[Recorder], Traffic]:
    reps = [start_assigner(store="etcd", etcd=cluster.endpoints, prefix=prefix, ident=f"a{i}") for i in range(replicas)]
    addrs = [r.addr for r in reps]
    for i in range(pods):
        s = make_slicelet(f"p{i}", 9000 + i, addrs)
        slicelets.append(s)
        await s.start()
    cs = [Clerk(addrs, target="t", backoff_initial_s=0.05, backoff_max_s=0.5) for _ in range(clerks)]
    recs = [Recorder(c) for c in cs]
    for c in cs:
        await c.start()
    for c in cs:
        await c.wait_ready(20)
    traffic = Traffic(cs[0], slicelets)
    traffic.start()
    want = {f"p{i}" for i in range(pods)}
    await until(lambda: holders(cs[0]) == want, 40, "slices on every pod", interval_s=0.1)
    return reps, cs, recs, traffic


async def teardown(cs: list[Clerk], traffic: Traffic) -> None:
    await traffic.stop()
    for c in cs:
        await c.stop()


async def test_leader_failover(
    start_assigner: Callable[..., Assigner], make_etcd_cluster: Callable[..., EtcdCluster], slicelets: list[Slicelet]
) -> None:
    cluster = make_etcd_cluster(3)
    reps, cs, recs, traffic = await setup(start_assigner, cluster, slicelets, replicas=3, pods=3)
    try:
        leader = await find_leader(reps)
        leader_id = leader.id
        survivors = [r for r in reps if r is not leader]
        # a follower refuses writes and names the leader
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await survivors[0].stub.Drain(assigner_pb2.DrainRequest(pod_id="p0"))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert leader_id in (e.value.details() or "")
        md: Any = e.value.trailing_metadata()
        assert md.get("x-brunoise-leader") == leader.addr
        # followers serve reads
        got = await survivors[0].stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target="t"))
        assert got.generation >= 1
        gen_before = max(c.generation("t") for c in cs)
        lookups_before = traffic.lookups

        leader.kill9()
        t0 = time.monotonic()

        async def new_leader() -> str | None:
            for r in survivors:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    resp = await r.stub.ListTargets(assigner_pb2.ListTargetsRequest(), timeout=1)
                    if resp.leader_id and resp.leader_id != leader_id:
                        return str(resp.leader_id)
            return None

        elected = await until(new_leader, 10, "a follower to become leader", interval_s=0.02)
        failover_s = time.monotonic() - t0
        print(f"\nFAILOVER: {elected} became leader {failover_s:.2f}s after kill -9 of {leader_id} (lease TTL 1.5s)")
        assert failover_s < 5.0
        # the new leader takes reports and commits: drain a pod, every clerk sees a newer generation
        await until(lambda: all(s.leader_id == elected and s.last_error is None for s in slicelets), 10, "reports to the new leader")
        new = next(r for r in survivors if r.id == elected)
        await new.stub.Drain(assigner_pb2.DrainRequest(pod_id="p2"))
        await until(lambda: all(c.generation("t") > gen_before for c in cs), 10, "a newer generation at every clerk")
        await until(lambda: "p2" not in holders(cs[0]), 15, "the drained pod to lose its slices", interval_s=0.1)
        for r in recs:
            r.assert_monotonic()
        assert traffic.misses == 0 and traffic.lookups > lookups_before
        assert all(c.lookup("t", 12345) is not None for c in cs)
    finally:
        await teardown(cs, traffic)


async def test_etcd_member_loss_and_outage(
    start_assigner: Callable[..., Assigner], make_etcd_cluster: Callable[..., EtcdCluster], slicelets: list[Slicelet]
) -> None:
    cluster = make_etcd_cluster(3)
    reps, cs, recs, traffic = await setup(start_assigner, cluster, slicelets, replicas=2, pods=2, clerks=1)
    try:
        await find_leader(reps)  # a settled leader before the chaos
        # 1) kill -9 the raft leader member: nothing visible beyond a retry
        victim = cluster.leader_index()
        assert victim is not None
        cluster.kill_member(victim)
        sent = [s.reports_sent for s in slicelets]
        await until(lambda: all(s.reports_sent > n + 2 for s, n in zip(slicelets, sent, strict=True)), 15, "reports to continue")
        assert await all_status(reps, health_pb2.HealthCheckResponse.SERVING)
        gen = cs[0].generation("t")
        await until(lambda: drain(reps, "p1"), 15, "a drain to commit")
        await until(lambda: cs[0].generation("t") > gen, 15, "a new generation with one member down")
        cluster.start_member(victim)

        # 2) every member down: clerks keep routing on their last assignment, health goes NOT_SERVING
        last = cs[0].assignment("t")
        assert last is not None
        misses = traffic.misses
        cluster.stop_all()
        t0 = time.monotonic()
        await until(
            lambda: all_status(reps, health_pb2.HealthCheckResponse.NOT_SERVING), 10, "NOT_SERVING while etcd is down"
        )
        print(f"\nNOT_SERVING {time.monotonic() - t0:.2f}s after every etcd member stopped")
        lookups = traffic.lookups
        await until(lambda: traffic.lookups > lookups + 500, 10, "lookups to continue")
        assert traffic.misses == misses
        assert cs[0].generation("t") >= last.generation
        assert cs[0].lookup("t", 42) is not None

        # 3) etcd returns: SERVING again, and the leader commits again
        cluster.start_all()
        t1 = time.monotonic()
        await until(lambda: all_status(reps, health_pb2.HealthCheckResponse.SERVING), 20, "SERVING after etcd returns")
        print(f"SERVING again {time.monotonic() - t1:.2f}s after etcd restarted")

        gen = cs[0].generation("t")
        await until(lambda: drain(reps, "p1", undrain=True), 30, "a leader to accept writes again", interval_s=0.2)
        await until(lambda: cs[0].generation("t") > gen, 20, "a new generation after the outage", interval_s=0.1)
        for r in recs:
            r.assert_monotonic()
        assert traffic.misses == misses
    finally:
        await teardown(cs, traffic)


async def all_status(reps: list[Assigner], want: int) -> bool:
    for r in reps:
        try:
            if await serving(r) != want:
                return False
        except grpc.aio.AioRpcError:
            return False
    return True


async def test_dead_and_drained_pods_on_etcd(
    start_assigner: Callable[..., Assigner], make_etcd_cluster: Callable[..., EtcdCluster], slicelets: list[Slicelet]
) -> None:
    cluster = make_etcd_cluster(3)
    reps, cs, recs, traffic = await setup(start_assigner, cluster, slicelets, replicas=2, pods=3, clerks=1)
    try:
        # a pod that stops heartbeating loses its slices after its lease TTL
        await slicelets[2].stop()
        t0 = time.monotonic()
        await until(lambda: "p2" not in holders(cs[0]), 15, "p2 to lose its slices", interval_s=0.05)
        print(f"\nLEASE: p2 lost its slices {time.monotonic() - t0:.2f}s after its last heartbeat (TTL 1.5s)")
        # a drained pod loses them make-before-break
        start = len(recs[0].seen)
        await until(lambda: drain(reps, "p0"), 15, "the drain to be accepted")
        await until(lambda: "p0" not in holders(cs[0]) and not any("p0" in sa.leaving for sa in cs[0].assignment("t").slices),  # type: ignore[union-attr]
                   15, "p0 to be drained", interval_s=0.1)
        seen = recs[0].seen[start - 1 :]
        for prev, cur in itertools.pairwise(seen):
            before = {sa.slice.lo: sa for sa in prev.slices}
            for sa in cur.slices:
                assert sa.replicas, f"slice {sa.slice} lost every replica at generation {cur.generation}"
                p = before.get(sa.slice.lo)
                if p is not None and "p0" in p.replicas and "p0" not in sa.replicas:
                    assert "p0" in sa.leaving, f"p0 left {sa.slice} without make-before-break"
        recs[0].assert_monotonic()
        assert traffic.misses == 0
    finally:
        await teardown(cs, traffic)


_ = asyncio  # keep the import for pytest-asyncio's auto mode helpers
