"""Issue 10 finding 3: an assigner that comes back with a lower generation must not strand the routers.

Generations carry an epoch (the creation time) in their high bits, so an assigner restarted without its
snapshot goes forward; and a clerk that sees the assigners go backwards anyway (an old snapshot restored)
resyncs after ``resync_after_s`` instead of freezing, reporting the staleness meanwhile."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from brunoise_api.v1 import assigner_pb2
from sharder.clerk import Clerk
from tests.assigner.conftest import Assigner, get, pod_msg, report
from tests.waiting import until

pytestmark = pytest.mark.slow


def _port(a: Assigner) -> str:
    return a.addr.rsplit(":", 1)[1]


async def test_clerk_follows_an_assigner_restarted_without_its_store(
    start_assigner: Callable[..., Assigner],
) -> None:
    a = start_assigner()
    await report(a.stub, pod_msg("old-pod", 9000))
    clerk = Clerk([a.addr], target="t", backoff_max_s=0.2)
    await clerk.start()
    try:
        held = await clerk.wait_ready(10)
        assert held.pod("old-pod") is not None
        a.kill9()
        b = start_assigner(extra=("--port", _port(a)))  # same address, empty store
        await report(b.stub, pod_msg("new-pod", 9001))
        fresh = await get(b.stub)
        assert fresh.generation > held.generation, "a fresh store still goes forward (epoch in the high bits)"
        got = await until(
            lambda: (c := clerk.assignment("t")) is not None and c.pod("new-pod") is not None, 10, "the new pod"
        )
        assert got and clerk.generation("t") == fresh.generation
        assert clerk.staleness_s("t") == 0.0
    finally:
        await clerk.stop()


async def test_clerk_resyncs_when_the_assigner_goes_backwards(
    start_assigner: Callable[..., Assigner], tmp_path: Path
) -> None:
    snap = tmp_path / "snap.json"
    a = start_assigner(extra=("--snapshot", str(snap)))
    await report(a.stub, pod_msg("p0", 9000))
    old = await get(a.stub)
    shutil.copy(snap, tmp_path / "old.json")
    # a newer generation: a second pod's registration changes the assignment
    await report(a.stub, pod_msg("p1", 9001))
    newer = await until(
        lambda: _gen_above(a, old.generation), 10, "a generation above the copied snapshot's"
    )
    clerk = Clerk([a.addr], target="t", backoff_max_s=0.2, resync_after_s=1.0)
    await clerk.start()
    try:
        await until(lambda: clerk.generation("t") == newer.generation, 10, "the clerk at the newer generation")
        a.kill9()
        shutil.copy(tmp_path / "old.json", snap)  # the backup that is restored is older than what routers hold
        b = start_assigner(extra=("--snapshot", str(snap), "--port", _port(a)))
        restored = await get(b.stub)
        assert restored.generation < newer.generation
        # while the clerk ignores the older generation its view is not confirmed: staleness grows
        await until(lambda: clerk.staleness_s("t") > 0.2, 5, "staleness above zero while behind")
        await until(lambda: clerk.generation("t") < newer.generation, 10, "the clerk resyncing to the restored store")
        assert clerk.resyncs >= 1
        await until(lambda: clerk.staleness_s("t") == 0.0, 5, "staleness back to zero after the resync")
    finally:
        await clerk.stop()


async def _gen_above(a: Assigner, g: int) -> object:
    cur = await get(a.stub)
    return cur if cur.generation > g else None


async def test_clerk_staleness_counts_while_it_rejects_invalid_generations() -> None:
    """Finding 2's second half: while a clerk rejected every new (invalid) generation, its staleness read 0."""
    import math

    from sharder import codec
    from sharder.assignment import initial_assignment
    from sharder.config import TargetConfig
    from sharder.pods import Pod

    pods = [Pod(id="p0", address="127.0.0.1:1", target="t")]
    good = codec.assignment_to_proto(initial_assignment(TargetConfig(target="t"), pods, generation=5))
    clerk = Clerk(["127.0.0.1:1"], target="t")
    clerk._connected = True  # as while a Watch stream is open
    clerk._accept(good)
    assert clerk.generation("t") == 5 and clerk.staleness_s("t") == 0.0
    bad = type(good).FromString(good.SerializeToString())
    bad.generation = 6
    bad.slices[0].load = math.inf
    clerk._accept(bad)
    assert clerk.generation("t") == 5, "the invalid generation is not installed"
    await until(lambda: clerk.staleness_s("t") > 0.05, 5, "staleness above zero while generations are rejected")
    fixed = type(good).FromString(good.SerializeToString())
    fixed.generation = 7
    clerk._accept(fixed)
    assert clerk.generation("t") == 7 and clerk.staleness_s("t") == 0.0
    await clerk.stop()


async def test_a_configured_target_lost_with_the_store_comes_back_with_its_pods(
    start_assigner: Callable[..., Assigner],
) -> None:
    """An assigner restarted without its store re-creates its configured targets. Created at its first round,
    the target named no pod (they were still re-registering), and routers adopted that newer generation and
    answered 503 until the next rounds (the chaos scenario lost requests). Within the election grace the
    target now comes from its first pod's report, with that pod; after the grace a round creates it anyway."""
    a = start_assigner(targets_from_reports=False, extra=("--target", "t=m"))
    await until(lambda: report(a.stub, pod_msg("p0", 9000)), 10, "a leader to take p0's report")
    hist = await a.stub.History(assigner_pb2.HistoryRequest(target="t", full=True), timeout=5)
    first = min(hist.entries, key=lambda e: e.generation).assignment
    assert [p.id for p in first.pods] == ["p0"], first.pods
    assert all(list(s.replicas) == ["p0"] for s in first.slices)
    # a configured target nobody reports for is still created once the grace (lease + round) is over
    b = start_assigner(targets_from_reports=False, extra=("--target", "idle=m"))
    await until(lambda: _listed(b, "idle"), 10, "the configured target to be created after the grace")


async def _listed(a: Assigner, target: str) -> bool:
    resp = await a.stub.ListTargets(assigner_pb2.ListTargetsRequest(), timeout=5)
    return target in {t.target for t in resp.targets}
