"""Fuzz of the assigner's gRPC surface: adversarial Report loads (pod token) and admin RPCs (admin token).

A real secured assigner (embedded store, TLS, tokens by role; the ``secured`` fixture of the security suite)
with target ``t`` and pods p0 and p1 registered. No answer is UNKNOWN or INTERNAL, the generation of ``t``
never goes backwards, and after the run the process still serves an assignment that passes check_invariants.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.assigner.status import MAX_DETAILS, bounded_details
from sharder.assignment import check_invariants
from sharder.codec import assignment_from_proto, config_to_proto
from sharder.config import TargetConfig
from tests.fuzz.test_fuzz_router_grpc import _mostly, _text
from tests.security.test_auth import Secured, _call, pod_p0, secured  # noqa: F401  (secured: the fixture)
from tests.waiting import until

pytestmark = pytest.mark.slow

_BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
_MAX_U64 = 2**64 - 1
_PODS = ("p0", "p1")
_u64 = st.sampled_from([0, 1, 2**63, _MAX_U64 - 1, _MAX_U64]) | st.integers(0, _MAX_U64)
_u32 = st.sampled_from([0, 1, 2, 3, 64, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
_float = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -1.0, 1e308, -0.0, 0.5, 5e-324])
_huge = st.integers(1, 200_000).map(lambda n: "x" * n)
_pod_id = st.sampled_from([*_PODS, "", "ghost"]) | _text | _huge
_target = st.sampled_from(["t", "", "elsewhere"]) | _text | _huge
_t = _mostly(st.just("t"), _target)  # the configured target four times in five
_p = _mostly(st.sampled_from(_PODS), _pod_id)  # a registered pod four times in five


def _slice(lo: int, hi: int) -> slicing_pb2.Slice:
    return slicing_pb2.Slice(lo=lo, hi=hi)


_slices = st.builds(_slice, _u64, _u64) | st.sampled_from(
    [_slice(0, 0), _slice(0, 1 << 63), _slice(1 << 63, 0), _slice(5, 5), _slice(9, 3), _slice(_MAX_U64, 0)]
)
_slice_load = st.builds(
    slicing_pb2.SliceLoad,
    slice=_slices,
    load=_float,
    top_keys=st.lists(st.builds(slicing_pb2.KeyCount, key=_u64, count=_float), max_size=3),
    requests=_u64,
    misrouted=_u64,
)
_engine = st.builds(
    slicing_pb2.EngineLoad,
    running=_u32, waiting=_u32, kv_usage=_float, tokens_in_flight=_u64,
    prefix_hit_rate=_float, capacity=_float, load=_float,
)  # fmt: skip


@st.composite
def _report(draw: st.DrawFn) -> tuple[assigner_pb2.ReportRequest, list[tuple[int, int]]]:
    """A Report for p0's token: mostly p0's own registration and load on the slices it holds, each field
    adversarial now and then (foreign pod or target, NaN/inf/negative loads, overlapping or bogus slices).
    Also (position in load.slices, k): the caller puts p0's k-th held slice there (hypothesis draws may not
    depend on the live assignment)."""
    pod = pod_p0()
    pod.id = draw(_mostly(st.just("p0"), _pod_id))
    pod.target = draw(_mostly(st.just("t"), _target))
    ok_load = st.builds(slicing_pb2.SliceLoad, load=st.floats(0, 100), requests=st.integers(0, 1000))
    slices = draw(st.lists(_mostly(ok_load, _slice_load), max_size=6))
    held = [(i, draw(st.integers(0, 1000))) for i, sl in enumerate(slices) if not sl.HasField("slice")]
    if draw(st.booleans()) and slices:  # duplicate and overlapping slices
        slices = slices + slices[: draw(st.integers(1, len(slices)))]
    if draw(st.integers(0, 9)) == 0:  # many slices
        slices = [slicing_pb2.SliceLoad(slice=_slice(i << 48, (i + 1) << 48), load=1.0) for i in range(5000)]
    load = slicing_pb2.LoadReport(
        pod_id=draw(_mostly(st.just("p0"), _pod_id)),
        target=draw(_mostly(st.just("t"), _target)),
        engine=draw(_mostly(st.just(slicing_pb2.EngineLoad(running=1, capacity=1.0, load=1.0)), _engine)),
        slices=slices,
        seq=draw(_mostly(st.integers(0, 2**32), _u64)),
        unix_ms=draw(st.sampled_from([0, -1, -(2**63), 2**63 - 1]) | st.integers(-(2**63), 2**63 - 1)),
    )
    ttl = draw(_mostly(st.just(0), st.sampled_from([1, 5000, 2**32 - 1])))
    req = assigner_pb2.ReportRequest(pod=pod, lease_ttl_ms=ttl)
    if draw(st.integers(0, 5)):
        req.load.CopyFrom(load)
    return req, held


@st.composite
def _override(draw: st.DrawFn) -> slicing_pb2.Override:
    o = slicing_pb2.Override(id=draw(_mostly(st.sampled_from(["a", "b"]), st.just("") | _text | _huge)))
    kind = draw(_mostly(st.sampled_from(["move", "split", "merge"]), st.just("none")))
    if kind == "move":
        pods = draw(st.lists(_p, max_size=4))
        o.move.CopyFrom(slicing_pb2.MoveOverride(key=draw(_u64), pods=pods))
    elif kind == "split":
        o.split.CopyFrom(slicing_pb2.SplitOverride(at=draw(_u64)))
    elif kind == "merge":
        o.merge.CopyFrom(slicing_pb2.MergeOverride(lo=draw(_u64), hi=draw(_u64)))
    return o


_CONFIG_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "target": _target, "min_replicas": _u32, "max_replicas": _u32, "imbalance_tolerance": _float,
    "churn_budget": _float, "split_threshold": _float, "merge_threshold": _float, "dereplicate_threshold": _float,
    "hot_key_fraction": _float, "min_slices_per_pod": _u32, "max_slices_per_pod": _u32, "initial_slices": _u32,
    "model": st.sampled_from(["m", ""]) | _text, "calm": st.booleans(), "imbalance_target": _float,
    "act_after_rounds": _u32, "cooldown_rounds": _u32, "load_smoothing": _float, "move_cost_weight": _float,
    "replica_true_load": st.booleans(),
}  # fmt: skip


@st.composite
def _config(draw: st.DrawFn) -> slicing_pb2.TargetConfig:
    """A valid config of ``t`` with a few fields random (sometimes all of them), eligibility included."""
    c = config_to_proto(TargetConfig(target="t", model="m", min_replicas=1, max_replicas=2, initial_slices=8))
    names = sorted(_CONFIG_FIELDS)
    for name in draw(_mostly(st.lists(st.sampled_from(names), max_size=2), st.just(names))):
        setattr(c, name, draw(_CONFIG_FIELDS[name]))
    eligibility = draw(_mostly(st.sampled_from([{}, {"model": "m"}]), st.dictionaries(_text, _text, max_size=2)))
    c.eligibility.clear()
    c.eligibility.update(eligibility)
    return c


_admin = st.one_of(
    st.builds(lambda t, o: ("ops", "SetOverride", assigner_pb2.SetOverrideRequest(target=t, override=o)), _t, _override()),
    st.builds(lambda c: ("ops", "ConfigureTarget", assigner_pb2.ConfigureTargetRequest(config=c)), _config()),
    st.builds(lambda p, u: ("ops", "Drain", assigner_pb2.DrainRequest(pod_id=p, undrain=u)), _p, st.booleans()),
    st.builds(lambda t, k: ("ops", "ExplainKey", assigner_pb2.ExplainKeyRequest(target=t, slice_key=k)), _t, _u64),
    st.builds(lambda t, k: ("ops", "ExplainKey", assigner_pb2.ExplainKeyRequest(target=t, app_key=k)), _t, _text | _huge),
    st.builds(lambda t, n, f: ("ops", "History", assigner_pb2.HistoryRequest(target=t, limit=n, full=f)), _t, _u32, st.booleans()),
    st.builds(lambda t, ids: ("ops", "ClearOverrides", assigner_pb2.ClearOverridesRequest(target=t, ids=ids)), _t, st.lists(_text, max_size=2)),
)  # fmt: skip


class _Seen:
    """The highest generation of ``t`` seen so far (it must never go backwards)."""

    generation = 0


@pytest.fixture(scope="module")
def fuzzed(secured: Secured) -> Iterator[tuple[Secured, grpc.Channel]]:  # noqa: F811
    async def register() -> None:
        for pid in _PODS:
            pod = slicing_pb2.Pod(id=pid, address=f"127.0.0.1:{9000 + int(pid[1])}", target="t", labels={"model": "m"})
            req = assigner_pb2.ReportRequest(pod=pod)
            await until(lambda: _call(secured, pid, "Report", req), 15, f"the leader to register {pid}")  # noqa: B023
        await until(lambda: _assignment_of(secured), 15, "an assignment of t")

    asyncio.run(register())
    with secured.auth(None).channel(secured.addr) as ch:
        yield secured, ch


async def _assignment_of(s: Secured) -> slicing_pb2.Assignment | None:
    a: slicing_pb2.Assignment = await _call(s, "ops", "GetAssignment", assigner_pb2.GetAssignmentRequest(target="t"))
    return a if a.slices else None


def _get(s: Secured, ch: grpc.Channel) -> slicing_pb2.Assignment:
    stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
    a: slicing_pb2.Assignment = stub.GetAssignment(
        assigner_pb2.GetAssignmentRequest(target="t"), timeout=10, metadata=s.auth("ops").metadata
    )
    return a


def _check_after(s: Secured, ch: grpc.Channel) -> slicing_pb2.Assignment:
    a = _get(s, ch)
    assert a.generation >= _Seen.generation, f"generation went back from {_Seen.generation} to {a.generation}"
    _Seen.generation = a.generation
    return a


def _fire(s: Secured, ch: grpc.Channel, who: str, rpc: str, req: Any, record: bool = True) -> grpc.StatusCode:
    stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
    try:
        getattr(stub, rpc)(req, timeout=10, metadata=s.auth(who).metadata)
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        details = e.details() or ""
        assert code not in _BAD, (rpc, code, details, str(req)[:500])
        assert "metadata size exceeds" not in details, (rpc, "the answer was lost in transport", details)
        if record:
            event(f"{rpc} {code.name}")
        _check_after(s, ch)
        return code
    if record:
        event(f"{rpc} OK")
    _check_after(s, ch)
    return grpc.StatusCode.OK


_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(_SETTINGS, max_examples=80)
@given(data=st.data())
def test_fuzz_report_never_unknown_or_internal(fuzzed: tuple[Secured, grpc.Channel], data: st.DataObject) -> None:
    req, on_held = data.draw(_report())
    held = [sa.slice for sa in _get(*fuzzed).slices if "p0" in sa.replicas]
    for i, k in on_held:
        if held and i < len(req.load.slices):
            req.load.slices[i].slice.CopyFrom(held[k % len(held)])
    _fire(*fuzzed, "p0", "Report", req)


@settings(_SETTINGS, max_examples=120)
@given(call=_admin)
def test_fuzz_admin_rpcs_never_unknown_or_internal(
    fuzzed: tuple[Secured, grpc.Channel], call: tuple[str, str, Any]
) -> None:
    _fire(*fuzzed, *call)


def test_assigner_still_serves_a_valid_assignment_after_the_fuzz(fuzzed: tuple[Secured, grpc.Channel]) -> None:
    s, ch = fuzzed
    assert s.proc.alive(), s.proc.log_tail(30)
    log = s.proc.log_path.read_text(errors="replace").splitlines()
    bad = [i for i, line in enumerate(log) if "Traceback" in line or '"level": "error"' in line]
    assert not bad, "\n".join(log[bad[0] : bad[0] + 40])  # e.g. "policy round failed", "refusing to commit"
    for pid in _PODS:  # the pods can still report (and are undrained, so the policy has somewhere to put slices)
        assert _fire(s, ch, "ops", "Drain", assigner_pb2.DrainRequest(pod_id=pid, undrain=True), record=False) in {
            grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND
        }  # fmt: skip
    a = _check_after(s, ch)
    assert a.generation > 0 and a.target == "t"
    decoded = assignment_from_proto(a)
    check_invariants(decoded)
    assert all(math.isfinite(sa.load) and sa.load >= 0 for sa in decoded.slices)
    assert assignment_from_proto(_check_after(s, ch)).generation >= decoded.generation


@pytest.mark.parametrize(
    ("who", "rpc", "req", "code"),
    [
        ("ops", "Drain", assigner_pb2.DrainRequest(pod_id="x" * 100_000), grpc.StatusCode.NOT_FOUND),
        ("p0", "Report", assigner_pb2.ReportRequest(pod=slicing_pb2.Pod(id="x" * 100_000, target="t")),
         grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["drain-unknown-pod", "report-foreign-pod"],
)  # fmt: skip
def test_an_error_echoing_a_huge_field_keeps_its_status(
    fuzzed: tuple[Secured, grpc.Channel], who: str, rpc: str, req: Any, code: grpc.StatusCode
) -> None:
    """Found by the fuzz: the details echoed a 200k-character pod id, the grpc-message trailer passed the
    client's metadata limit, and the caller got RESOURCE_EXHAUSTED "Stream removed" instead of the answer."""
    s, ch = fuzzed
    stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, rpc)(req, timeout=10, metadata=s.auth(who).metadata)
    details = err.value.details() or ""
    assert err.value.code() == code, details
    assert "xxxxxxxx" in details and len(details) <= MAX_DETAILS, len(details)


@settings(max_examples=100, deadline=None)
@given(message=_text | _huge | st.integers(1, 3000).map(lambda n: "é€😀" * n))
def test_bounded_details_fits_and_keeps_short_messages(message: str) -> None:
    out = bounded_details(message)
    assert len(out.encode()) <= MAX_DETAILS
    if len(message.encode()) <= MAX_DETAILS:
        assert out == message
    else:
        assert out.endswith(f"({len(message.encode())} bytes, cut)") and message.startswith(out.rsplit(" ... (", 1)[0])


def test_a_history_too_big_for_a_default_client_is_refused_by_the_assigner(
    fuzzed: tuple[Secured, grpc.Channel],
) -> None:
    """Found by the fuzz: History(full) of generations carrying huge override ids outgrew the 4 MiB a default
    client accepts; the client saw a transport error and the assigner logged ExecuteBatchError."""
    s, ch = fuzzed
    stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
    md = s.auth("ops").metadata
    sane = config_to_proto(TargetConfig(target="t", model="m", min_replicas=1, max_replicas=2, initial_slices=8))
    stub.ConfigureTarget(assigner_pb2.ConfigureTargetRequest(config=sane), timeout=10, metadata=md)
    stub.ClearOverrides(assigner_pb2.ClearOverridesRequest(target="t"), timeout=10, metadata=md)
    for i in range(10):  # 10 generations holding 1..10 overrides of ~200 kB each: ~11 MB of full history
        ov = slicing_pb2.Override(id=f"big{i}" + "x" * 200_000, split=slicing_pb2.SplitOverride(at=(i + 1) << 40))
        stub.SetOverride(assigner_pb2.SetOverrideRequest(target="t", override=ov), timeout=10, metadata=md)
    with pytest.raises(grpc.RpcError) as err:
        stub.History(assigner_pb2.HistoryRequest(target="t", full=True), timeout=10, metadata=md)
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in details, details
    newest = stub.History(assigner_pb2.HistoryRequest(target="t", full=True, limit=1), timeout=10, metadata=md)
    assert len(newest.entries) == 1 and len(newest.entries[0].assignment.overrides) == 10
    summary = stub.History(assigner_pb2.HistoryRequest(target="t"), timeout=10, metadata=md)
    assert len(summary.entries) > 10 and not any(e.HasField("assignment") for e in summary.entries)
    stub.ClearOverrides(assigner_pb2.ClearOverridesRequest(target="t"), timeout=10, metadata=md)
    log = s.proc.log_path.read_text(errors="replace")
    assert "ExecuteBatchError" not in log, "the assigner sent an answer the client could not take"
