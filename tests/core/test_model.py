"""Tests for the data model: pods, configs, load reports, overrides, assignments, invariants and diffs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import assignments, keys

from sharder import codec
from sharder import load as load_module
from sharder.assignment import (
    Assignment,
    SliceAssignment,
    apply_diff,
    check_invariants,
    diff,
    initial_assignment,
)
from sharder.config import TargetConfig
from sharder.errors import (
    BrunoiseError,
    ConfigError,
    GenerationError,
    InvariantError,
    KeyTypeError,
    LoadReportError,
    OverrideError,
)
from sharder.keyspace import KEYSPACE_END, Slice, split_evenly
from sharder.load import EngineLoad, LoadReport, SliceLoad
from sharder.override_admission import check_override
from sharder.overrides import MergeOverride, MoveOverride, Override, SplitOverride
from sharder.pods import Pod, PodState, eligible
from sharder.policy import reshard


def _pods(n: int, **labels: str) -> list[Pod]:
    return [Pod(f"p{i}", f"a{i}", dict(labels)) for i in range(n)]


# --- pods ---------------------------------------------------------------------------------------------------
def test_eligible_requires_exact_labels() -> None:
    p = Pod("p", "a", {"region": "eu", "model": "m"})
    assert eligible(p, {})
    assert eligible(p, {"region": "eu"})
    assert not eligible(p, {"region": "us"})
    assert not eligible(p, {"model_version": "1"})
    assert PodState("draining") is PodState.DRAINING
    assert hash(p) == hash(Pod("p", "a", {"other": "x"}))


# --- config -------------------------------------------------------------------------------------------------
def test_default_config_is_valid() -> None:
    cfg = TargetConfig("t").validate()
    assert (cfg.min_replicas, cfg.max_replicas) == (4, 4)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"target": ""}, "target"),
        ({"target": "  "}, "target"),
        ({"min_replicas": 0}, "min_replicas"),
        ({"min_replicas": 4, "max_replicas": 3}, "min_replicas"),
        ({"max_replicas": 1000}, "max_replicas"),
        ({"imbalance_tolerance": -0.1}, "imbalance_tolerance"),
        ({"imbalance_tolerance": math.nan}, "imbalance_tolerance"),
        ({"imbalance_tolerance": 0.0}, "imbalance_tolerance"),
        ({"churn_budget": 0.0}, "churn_budget"),
        ({"churn_budget": 1.5}, "churn_budget"),
        ({"churn_budget": math.inf}, "churn_budget"),
        ({"split_threshold": -1.0}, "split_threshold"),
        ({"split_threshold": 0.0}, "split_threshold"),
        ({"merge_threshold": -1.0}, "merge_threshold"),
        ({"merge_threshold": 0.3}, "merge_threshold"),
        ({"dereplicate_threshold": math.inf}, "dereplicate_threshold"),
        ({"dereplicate_threshold": 0.5}, "dereplicate_threshold"),
        ({"hot_key_fraction": 0.0}, "hot_key_fraction"),
        ({"hot_key_fraction": 1.1}, "hot_key_fraction"),
        ({"min_slices_per_pod": -1}, "min_slices_per_pod"),
        ({"min_slices_per_pod": 11, "max_slices_per_pod": 10}, "min_slices_per_pod"),
        ({"max_slices_per_pod": 0}, "max_slices_per_pod"),
        ({"initial_slices": 0}, "initial_slices"),
        ({"initial_slices": 1.5}, "initial_slices"),
        ({"eligibility": {"zone": "a"}}, "eligibility.zone"),
        ({"eligibility": {"region": ""}}, "eligibility.region"),
        ({"min_replicas": True}, "min_replicas"),
    ],
)
def test_config_validation_names_field(changes: dict[str, Any], field: str) -> None:
    cfg = dataclasses.replace(TargetConfig("t"), **changes)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.field == field
    assert field.split(".")[0] in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, BrunoiseError)


# --- load reports ---------------------------------------------------------------------------------------------
def _report(**kw: Any) -> LoadReport:
    base: dict[str, Any] = {"pod_id": "p0", "target": "t", "engine": EngineLoad(), "slices": ()}
    base.update(kw)
    return LoadReport(**base)


def test_valid_report() -> None:
    r = _report(slices=(SliceLoad(Slice(0, 10), 1.0, ((5, 0.5),), requests=3),))
    assert r.validate() is r


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"pod_id": ""}, "pod_id"),
        ({"engine": EngineLoad(kv_usage=1.5)}, "engine.kv_usage"),
        ({"engine": EngineLoad(kv_usage=math.nan)}, "engine.kv_usage"),
        ({"engine": EngineLoad(capacity=0.0)}, "engine.capacity"),
        ({"engine": EngineLoad(load=-1.0)}, "engine.load"),
        ({"engine": EngineLoad(running=-1)}, "engine.running"),
        ({"slices": (SliceLoad(Slice(0, 10), -1.0),)}, "slices[0].load"),
        ({"slices": (SliceLoad(Slice(0, 10), math.inf),)}, "slices[0].load"),
        ({"slices": (SliceLoad(Slice(0, 10), math.nan),)}, "slices[0].load"),
        ({"slices": (SliceLoad(Slice(0, 10), 1.0, ((11, 1.0),)),)}, "slices[0].top_keys"),
        ({"slices": (SliceLoad(Slice(0, 10), 1.0, ((5, -1.0),)),)}, "slices[0].top_keys"),
        ({"slices": (SliceLoad(Slice(0, 10), 1.0, ((KEYSPACE_END, 1.0),)),)}, "slices[0].top_keys"),
        ({"slices": (SliceLoad(Slice(0, 10), 1.0, requests=-1),)}, "slices[0].requests"),
        ({"slices": (SliceLoad((0, 10), 1.0),)}, "slices[0].slice"),  # type: ignore[arg-type]
        ({"slices": (SliceLoad(Slice(0, 10), 1.0),) * 100_001}, "slices"),
        ({"seq": -1}, "seq"),
    ],
)
def test_report_validation_names_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(LoadReportError) as e:
        _report(**kw).validate()
    assert e.value.field == field


def test_the_round_does_not_check_a_report_the_service_checked_on_arrival(monkeypatch: pytest.MonkeyPatch) -> None:
    # the assigner's service validates each report as it arrives; the round must not pay for it a second time
    ps = _pods(2)
    a = initial_assignment(TargetConfig("t", initial_slices=4), ps)
    reports = [
        _report(pod_id=p.id, slices=tuple(SliceLoad(sa.slice, 1.0, ((sa.slice.lo, 0.5),)) for sa in a.slices_of(p.id)))
        for p in ps
    ]
    checked: list[int] = []
    real = load_module._check_top_keys

    def counting(i: int, sl: SliceLoad) -> bool:
        checked.append(i)
        return real(i, sl)

    monkeypatch.setattr(load_module, "_check_top_keys", counting)
    arrived = [codec.load_report_from_proto(codec.load_report_to_proto(r)) for r in reports]  # decoding checks
    arrived = [r.validate() for r in arrived]  # and so does the service (free now)
    on_arrival = len(checked)
    assert on_arrival == sum(len(r.slices) for r in reports) > 0
    reshard(a, ps, arrived, now_ms=1)
    assert len(checked) == on_arrival


def test_a_report_is_checked_again_when_it_could_have_changed() -> None:
    good = SliceLoad(Slice(0, 10), 1.0)
    bad = SliceLoad(Slice(0, 10), -1.0)
    r = _report(slices=(good,)).validate()
    with pytest.raises(LoadReportError):  # a copy with other fields is another report
        dataclasses.replace(r, slices=(bad,)).validate()
    held: list[SliceLoad] = [good]
    listed = _report(slices=held)  # a list (not the tuple the type asks for) can change after a check
    listed.validate()
    held.append(bad)
    with pytest.raises(LoadReportError) as e:
        listed.validate()
    assert e.value.field == "slices[1].load"
    pair = [5, 0.5]
    keyed = _report(slices=(SliceLoad(Slice(0, 10), 1.0, (pair,)),))  # type: ignore[arg-type]
    keyed.validate()
    pair.append(0.5)  # the pair became a triple
    with pytest.raises(LoadReportError):
        keyed.validate()


# --- assignments ----------------------------------------------------------------------------------------------
def test_initial_assignment_spreads_round_robin() -> None:
    cfg = TargetConfig("t", min_replicas=2, initial_slices=8)
    ps = _pods(4)
    a = initial_assignment(cfg, ps)
    check_invariants(a, ps)
    assert a.generation == 1 and len(a.slices) == 8
    counts = {p.id: len(a.slices_of(p.id)) for p in ps}
    assert set(counts.values()) == {4}
    assert a.pod("p1") == ps[1] and a.pod("nope") is None


def test_initial_assignment_with_too_few_pods() -> None:
    cfg = TargetConfig("t", min_replicas=3, eligibility={"region": "eu"})
    ps = [*_pods(2, region="eu"), Pod("x", "a", {"region": "us"}), Pod("d", "a", {"region": "eu"}, PodState.DEAD)]
    a = initial_assignment(cfg, ps)
    check_invariants(a, ps)
    assert all(len(sa.replicas) == 2 for sa in a.slices)
    assert [p.id for p in a.pods] == ["p0", "p1", "x"]
    none = initial_assignment(cfg, [Pod("x", "a", {"region": "us"})])
    check_invariants(none)
    assert all(sa.replicas == () for sa in none.slices)


@given(assignments(), st.lists(keys, max_size=30))
def test_lookup_agrees_with_linear_scan(ap: tuple[Assignment, list[Pod]], ks: list[int]) -> None:
    a, _ = ap
    for k in [*ks, 0, KEYSPACE_END - 1, *(sa.slice.lo for sa in a.slices)]:
        expect = next(sa for sa in a.slices if sa.slice.lo <= k < sa.slice.hi)
        assert a.lookup(k) is expect
        assert a.slices[a.index_of(k)] is expect


def test_lookup_rejects_bad_keys() -> None:
    a = initial_assignment(TargetConfig("t"), _pods(2))
    with pytest.raises(KeyTypeError):
        a.lookup(KEYSPACE_END)
    with pytest.raises(KeyTypeError):
        a.lookup("abc")  # type: ignore[arg-type]
    assert a.lookup_app_key("abc") is a.lookup_app_key(b"abc")


def test_assignment_must_tile() -> None:
    cfg = TargetConfig("t")
    s = split_evenly(3)
    sas = [SliceAssignment(x, ()) for x in s]
    with pytest.raises(InvariantError) as e:
        Assignment("t", 1, (sas[0], sas[2]), (), cfg)
    assert e.value.field == "slices[1].slice"
    with pytest.raises(InvariantError):
        Assignment("t", 1, tuple(sas[:2]), (), cfg)
    with pytest.raises(InvariantError):
        Assignment("t", 1, (), (), cfg)
    with pytest.raises(InvariantError):
        Assignment("t", 1, tuple(sas), (Pod("a", "x"), Pod("a", "y")), cfg)
    with pytest.raises(InvariantError):
        Assignment("t", -1, tuple(sas), (), cfg)


def _with_slice(a: Assignment, i: int, **changes: Any) -> Assignment:
    slices = list(a.slices)
    slices[i] = dataclasses.replace(slices[i], **changes)
    return dataclasses.replace(a, slices=tuple(slices))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"replicas": ()}, "slices[0].replicas"),
        ({"replicas": ("p0", "p0")}, "slices[0].replicas"),
        ({"replicas": ("p0", "p1", "p2", "p3")}, "slices[0].replicas"),
        ({"replicas": ("p0", "zz")}, "slices[0].replicas"),
        ({"replicas": ("p0", "dead")}, "slices[0].replicas"),
        ({"replicas": ("p0", "us")}, "slices[0].replicas"),
        ({"replicas": ("p0", "p1"), "leaving": ("p1",)}, "slices[0].leaving"),
        ({"replicas": ("p0", "p1"), "leaving": ("dead",)}, "slices[0].leaving"),
        ({"load": -1.0}, "slices[0].load"),
        ({"load": math.nan}, "slices[0].load"),
        ({"since_generation": 99}, "slices[0].since_generation"),
    ],
)
def test_check_invariants_catches(changes: dict[str, Any], field: str) -> None:
    cfg = TargetConfig("t", min_replicas=2, max_replicas=3, eligibility={"region": "eu"})
    ps = [*_pods(4, region="eu"), Pod("dead", "a", {"region": "eu"}, PodState.DEAD), Pod("us", "a", {"region": "us"})]
    a = initial_assignment(cfg, ps)
    a = dataclasses.replace(a, pods=tuple(ps))
    check_invariants(a)
    with pytest.raises(InvariantError) as e:
        check_invariants(_with_slice(a, 0, **changes))
    assert e.value.field == field


def test_check_invariants_against_current_pods() -> None:
    cfg = TargetConfig("t", min_replicas=1)
    ps = _pods(2)
    a = initial_assignment(cfg, ps)
    now = [ps[0], dataclasses.replace(ps[1], state=PodState.DEAD)]
    with pytest.raises(InvariantError):
        check_invariants(a, now)


@given(assignments(), st.data())
def test_diff_apply_round_trip(ap: tuple[Assignment, list[Pod]], data: st.DataObject) -> None:
    a, _ = ap
    # a new generation: some slices split, some merged, some replicas changed
    slices = list(a.slices)
    out: list[SliceAssignment] = []
    i = 0
    while i < len(slices):
        sa = slices[i]
        op = data.draw(st.sampled_from(["keep", "split", "merge", "load"]))
        if op == "split" and sa.slice.width > 1:
            left, right = sa.slice.split_at(sa.slice.lo + sa.slice.width // 2)
            out += [dataclasses.replace(sa, slice=left), dataclasses.replace(sa, slice=right, load=3.0)]
        elif op == "merge" and i + 1 < len(slices):
            out.append(dataclasses.replace(sa, slice=Slice(sa.slice.lo, slices[i + 1].slice.hi)))
            i += 1
        elif op == "load":
            out.append(dataclasses.replace(sa, load=sa.load + 1.0))
        else:
            out.append(sa)
        i += 1
    b = dataclasses.replace(a, generation=a.generation + data.draw(st.integers(1, 5)), slices=tuple(out))
    d = diff(a, b)
    assert apply_diff(a, d) == b
    assert len(d.upserts) <= len(b.slices)
    wa, wb = codec.assignment_to_proto(a), codec.assignment_to_proto(b)  # the wire diff Watch sends agrees
    wd = codec.diff_message(wa, wb)
    assert codec.apply_diff_message(wa, wd) == wb
    assert [s.slice.lo for s in wd.upserts] == [s.slice.lo for s in d.upserts]
    assert list(wd.removed_los) == list(d.removed_los)
    if a.same_placement(b) and all(x.load == y.load for x, y in zip(a.slices, b.slices, strict=True)):
        assert d.upserts == () and d.removed_los == ()


def test_diff_errors() -> None:
    a = initial_assignment(TargetConfig("t"), _pods(2))
    b = dataclasses.replace(a, generation=2)
    with pytest.raises(GenerationError):
        diff(b, a)
    d = diff(a, b)
    with pytest.raises(GenerationError) as e:
        apply_diff(b, d)
    assert e.value.field == "from_generation"
    other = dataclasses.replace(a, target="u", config=TargetConfig("u"))
    with pytest.raises(GenerationError):
        apply_diff(other, d)
    bad = dataclasses.replace(d, removed_los=(12345,))
    with pytest.raises(InvariantError):
        apply_diff(a, bad)
    gap = dataclasses.replace(d, removed_los=(a.slices[1].slice.lo,))
    with pytest.raises(InvariantError):
        apply_diff(a, gap)


# --- overrides ------------------------------------------------------------------------------------------------
def test_check_override() -> None:
    cfg = TargetConfig("t", min_replicas=1, max_replicas=2, initial_slices=4)
    ps = [*_pods(3), Pod("dead", "a", state=PodState.DEAD)]
    a = initial_assignment(cfg, ps)
    b1 = a.slices[1].slice.lo
    check_override(a, ps, MoveOverride("m", 5, ("p0",)))
    check_override(a, ps, SplitOverride("s", 77))
    check_override(a, ps, MergeOverride("g", 0, a.slices[2].slice.lo))
    check_override(a, ps, MergeOverride("g", b1, KEYSPACE_END))
    bad = [
        (MoveOverride("m", 5, ()), "move.pods"),
        (MoveOverride("m", 5, ("p0", "p1", "p2")), "move.pods"),
        (MoveOverride("m", 5, ("zz",)), "move.pods"),
        (MoveOverride("m", 5, ("dead",)), "move.pods"),
        (MoveOverride("m", 5, ("p0", "p0")), "move.pods"),
        (MoveOverride("m", -5, ("p0",)), "move.key"),
        (SplitOverride("s", 0), "split.at"),
        (SplitOverride("", 5), "id"),
        (MergeOverride("g", 1, b1), "merge.lo"),
        (MergeOverride("g", 0, b1 + 1), "merge.hi"),
        (MergeOverride("g", 5, 5), "merge.hi"),
    ]
    for o, field in bad:
        with pytest.raises(OverrideError) as e:
            check_override(a, ps, o)  # type: ignore[arg-type]
        assert e.value.field == field, o
    with_o = dataclasses.replace(
        a, overrides=(MoveOverride("m", 5, ("p0",)), MergeOverride("g", 0, b1), SplitOverride("s", b1 + 7))
    )
    conflicts: list[tuple[Override, str]] = [
        (MoveOverride("m", 6, ("p0",)), "id"),
        (MoveOverride("m2", 6, ("p1",)), "move.key"),
        (SplitOverride("s2", 3), "split.at"),
        (MergeOverride("g2", 0, a.slices[2].slice.lo), "merge.lo"),
        (MergeOverride("g3", b1, a.slices[2].slice.lo), "merge.lo"),
    ]
    for o, field in conflicts:
        with pytest.raises(OverrideError) as e:
            check_override(with_o, ps, o)
        assert e.value.field == field, o
