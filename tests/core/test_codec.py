"""Round-trip and validation tests for the protobuf codec."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import assignments, configs, finite, overrides, pods, reports_for, slices, stats

from brunoise_api.v1 import slicing_pb2 as pb
from sharder import codec
from sharder.assignment import Assignment, diff
from sharder.config import TargetConfig
from sharder.errors import ConfigError, InvalidSliceError, InvariantError, LoadReportError, OverrideError
from sharder.keyspace import KEYSPACE_END, Slice
from sharder.load import EngineLoad, LoadReport, SliceLoad
from sharder.overrides import Override
from sharder.pods import Pod


@given(slices())
def test_slice_round_trip(s: Slice) -> None:
    m = codec.slice_to_proto(s)
    assert m.hi == (0 if s.hi == KEYSPACE_END else s.hi)
    assert codec.slice_from_proto(pb.Slice.FromString(m.SerializeToString())) == s


def test_bad_slice() -> None:
    with pytest.raises(InvalidSliceError) as e:
        codec.slice_from_proto(pb.Slice(lo=5, hi=5), "x")
    assert e.value.field == "x.hi"


@given(pods())
def test_pod_round_trip(ps: list[Pod]) -> None:
    for p in ps:
        assert codec.decode_pod(codec.encode_pod(p)) == p


@given(configs())
def test_config_round_trip(c: TargetConfig) -> None:
    assert codec.config_from_proto(codec.config_to_proto(c)) == c


def test_config_zero_means_default_and_validation() -> None:
    c = codec.config_from_proto(pb.TargetConfig(target="t"))
    assert c == TargetConfig("t", merge_threshold=0.0, dereplicate_threshold=0.0)
    with pytest.raises(ConfigError) as e:
        codec.config_from_proto(pb.TargetConfig(target="t", churn_budget=2.0))
    assert e.value.field == "churn_budget"
    with pytest.raises(ConfigError):
        codec.config_from_proto(pb.TargetConfig(target=""))


@given(overrides())
def test_override_round_trip(o: Override) -> None:
    assert codec.override_from_proto(codec.override_to_proto(o)) == o


def test_bad_override() -> None:
    with pytest.raises(OverrideError):
        codec.override_from_proto(pb.Override(id="x"))
    with pytest.raises(OverrideError):
        codec.override_from_proto(pb.Override(id="x", split=pb.SplitOverride(at=0)))


@given(assignments(), st.data())
def test_assignment_and_reports_round_trip(ap: tuple[Assignment, list[Pod]], data: st.DataObject) -> None:
    a, ps = ap
    a = dataclasses.replace(a, stats=data.draw(stats), created_unix_ms=data.draw(st.integers(0, 2**40)))
    assert codec.decode_assignment(codec.encode_assignment(a)) == a
    for r in data.draw(reports_for(a, ps)):
        assert codec.decode_load_report(codec.encode_load_report(r)) == r
    b = dataclasses.replace(
        a,
        generation=a.generation + 1,
        slices=(*a.slices[:-1], dataclasses.replace(a.slices[-1], load=data.draw(finite))),
    )
    d = diff(a, b)
    assert codec.diff_from_proto(pb.AssignmentDiff.FromString(codec.diff_to_proto(d).SerializeToString())) == d


def test_decode_rejects_corrupt_assignments() -> None:
    ps = [Pod("p0", "a"), Pod("p1", "a")]
    from sharder.assignment import initial_assignment

    a = initial_assignment(TargetConfig("t", initial_slices=4), ps)
    m = codec.assignment_to_proto(a)
    gap = pb.Assignment()
    gap.CopyFrom(m)
    del gap.slices[1]
    with pytest.raises(InvariantError):
        codec.assignment_from_proto(gap)
    unknown = pb.Assignment()
    unknown.CopyFrom(m)
    unknown.slices[0].replicas[0] = "ghost"
    with pytest.raises(InvariantError):
        codec.assignment_from_proto(unknown)
    wrong = pb.Assignment()
    wrong.CopyFrom(m)
    wrong.target = "other"
    with pytest.raises(InvariantError) as e:
        codec.assignment_from_proto(wrong)
    assert e.value.field == "target"
    with pytest.raises(InvariantError):
        codec.decode_assignment(b"\xff\xff\xff")


def test_decode_rejects_bad_reports() -> None:
    r = LoadReport("p0", "t", EngineLoad(), (SliceLoad(Slice(0, 10), 1.0),))
    m = codec.load_report_to_proto(r)
    m.slices[0].load = -1.0
    with pytest.raises(LoadReportError) as e:
        codec.load_report_from_proto(m)
    assert e.value.field == "slices[0].load"
    m.slices[0].load = 1.0
    m.slices[0].slice.lo = 20
    with pytest.raises(LoadReportError) as e:
        codec.load_report_from_proto(m)
    assert e.value.field == "slices[0].slice.hi"
    m2 = codec.load_report_to_proto(r)
    m2.engine.capacity = 0.0
    assert codec.load_report_from_proto(m2).engine.capacity == 1.0
