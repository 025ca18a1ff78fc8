"""Issue 10's assigner defects, each reproduced against a real assigner process first."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, slicing_pb2
from sharder import codec
from tests.assigner.conftest import Assigner, get, pod_msg, report
from tests.waiting import until

pytestmark = pytest.mark.slow

FLOAT_NEAR_MAX = 1.7e308


async def test_report_with_duplicate_huge_slices_is_rejected_and_assignment_stays_valid(
    start_assigner: Callable[..., Assigner],
) -> None:
    """Finding 2: one report listing the same slice twice with load near float max summed to inf, was
    committed, and froze every clerk. Now the report is refused and every generation still decodes."""
    a = start_assigner()
    pod = pod_msg("p0", 9000)
    first = await report(a.stub, pod)
    held = list(first.slices)
    assert held
    load = slicing_pb2.LoadReport(
        pod_id="p0",
        target="t",
        engine=slicing_pb2.EngineLoad(running=1, capacity=1.0, load=1.0),
        slices=[slicing_pb2.SliceLoad(slice=held[0], load=1e11, requests=1)] * 2,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await a.stub.Report(assigner_pb2.ReportRequest(pod=pod, load=load), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "slices[1]" in (err.value.details() or "") and "repeats" in (err.value.details() or "")
    # one huge (finite) load on a single slice is refused too: loads are bounded
    one = slicing_pb2.LoadReport(
        pod_id="p0", target="t", slices=[slicing_pb2.SliceLoad(slice=held[0], load=FLOAT_NEAR_MAX)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await a.stub.Report(assigner_pb2.ReportRequest(pod=pod, load=one), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "slices[0].load" in (err.value.details() or "")
    # the stored assignment is one a clerk accepts (finite loads)
    codec.assignment_from_proto(await get(a.stub))


async def test_round_never_commits_an_assignment_failing_the_invariants(
    start_assigner: Callable[..., Assigner],
) -> None:
    """A policy that returns an invalid assignment (infinite load) must not be committed: the previous
    generation is kept and served."""
    a = start_assigner(extra=("--policy", "tests.security.bad_policy:reshard"))
    await report(a.stub, pod_msg("p0", 9000))
    first = await until(lambda: get(a.stub), 10, "the target's first generation")
    # several rounds pass (the round interval is 0.3 s): wait for the assigner to log a refused commit
    await until(lambda: "refusing to commit" in a.proc.log_tail(200), 10, "a refused commit in the log")
    now = await get(a.stub)
    assert now.generation == first.generation
    codec.assignment_from_proto(now)


def test_load_report_rejects_overlapping_slices_and_unbounded_loads() -> None:
    from sharder.errors import LoadReportError
    from sharder.keyspace import Slice
    from sharder.load import MAX_LOAD, LoadReport, SliceLoad

    ok = LoadReport("p", "t", slices=(SliceLoad(Slice(0, 10), 1.0), SliceLoad(Slice(10, 20), MAX_LOAD)))
    assert ok.validate() is ok
    overlap = LoadReport("p", "t", slices=(SliceLoad(Slice(5, 20), 1.0), SliceLoad(Slice(0, 10), 1.0)))
    with pytest.raises(LoadReportError, match="overlaps") as err:
        overlap.validate().check_disjoint()
    assert err.value.field == "slices[1]"
    huge = LoadReport("p", "t", slices=(SliceLoad(Slice(0, 10), MAX_LOAD * 2),))
    with pytest.raises(LoadReportError, match=r"slices\[0\]\.load"):
        huge.validate()


async def test_split_overrides_are_bounded_per_target(start_assigner: Callable[..., Assigner]) -> None:
    """Finding 7: split overrides were unbounded (each one a permanent boundary). Beyond MAX_OVERRIDES the
    assigner answers with a clear error and the assignment is unchanged."""
    from sharder.overrides import MAX_OVERRIDES

    a = start_assigner()
    await report(a.stub, pod_msg("p0", 9000))
    step = 2**64 // (MAX_OVERRIDES + 2)
    for i in range(MAX_OVERRIDES):
        ov = slicing_pb2.Override(id=f"s{i}", split=slicing_pb2.SplitOverride(at=step * (i + 1)))
        await a.stub.SetOverride(assigner_pb2.SetOverrideRequest(target="t", override=ov), timeout=5)
    before = await get(a.stub)
    assert len(before.overrides) == MAX_OVERRIDES
    extra = slicing_pb2.Override(id="one-too-many", split=slicing_pb2.SplitOverride(at=step * (MAX_OVERRIDES + 1)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await a.stub.SetOverride(assigner_pb2.SetOverrideRequest(target="t", override=extra), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"at most {MAX_OVERRIDES}" in (err.value.details() or "")
    after = await get(a.stub)
    assert after.generation == before.generation and len(after.overrides) == MAX_OVERRIDES


async def test_two_assigners_cannot_share_one_snapshot_file(
    start_assigner: Callable[..., Assigner], tmp_path: pathlib.Path
) -> None:
    """Finding 8: two assigners on one snapshot file both led (each its own in-process election). The
    second now fails to start, naming the lock; the first keeps serving."""
    from sharder.launch import LaunchError

    snap = str(tmp_path / "shared.json")
    first = start_assigner(extra=("--snapshot", snap))
    await report(first.stub, pod_msg("p0", 9000))
    with pytest.raises(LaunchError, match="locked"):
        start_assigner(extra=("--snapshot", snap))
    assert (await get(first.stub)).generation >= 1
