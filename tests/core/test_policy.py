"""Property and unit tests of the resharding policy (sharder.policy.reshard)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from core_workload import Workload
from hypothesis import given
from hypothesis import strategies as st
from strategies import configs, pods, reports_for

from sharder.assignment import Assignment, check_invariants, initial_assignment
from sharder.config import TargetConfig
from sharder.errors import ConfigError, InvariantError, LoadReportError, OverrideError, UnknownPodError
from sharder.keyspace import KEYSPACE_END, Slice
from sharder.load import EngineLoad, LoadReport, SliceLoad
from sharder.override_admission import check_override
from sharder.overrides import MergeOverride, MoveOverride, Override, SplitOverride
from sharder.pods import Pod, PodState, serves
from sharder.policy import reshard
from sharder.policy.split import median_point
from sharder.policy.warm import clear_warming


def _check_round(a: Assignment, b: Assignment, ps: list[Pod], now: int) -> None:
    cfg = b.config
    check_invariants(b, ps)
    assert b.generation == a.generation + 1
    assert b.created_unix_ms == now
    assert 0.0 <= b.stats.churn <= cfg.churn_budget + 1e-9
    by_id = {p.id: p for p in ps}
    # make-before-break: a pod that lost a range but may still serve it is listed as leaving
    for lo in sorted({sa.slice.lo for sa in a.slices} | {sa.slice.lo for sa in b.slices}):
        old, new = a.lookup(lo), b.lookup(lo)
        for p in old.replicas:
            pod = by_id.get(p)
            if p in new.replicas or pod is None or pod.state is PodState.DEAD:
                continue
            if not (pod.state is PodState.DRAINING or serves(pod, cfg.target, cfg.eligibility)):
                continue
            if pod.target and pod.target != cfg.target:
                continue
            from sharder.pods import eligible

            if eligible(pod, cfg.eligibility):
                assert p in new.leaving, (p, old, new)


def _mutate_pods(rng: random.Random, ps: list[Pod]) -> list[Pod]:
    out = []
    for p in ps:
        roll = rng.random()
        if roll < 0.1:
            p = dataclasses.replace(p, state=rng.choice(list(PodState)))
        elif roll < 0.13:
            p = dataclasses.replace(p, labels={**p.labels, "region": rng.choice(["eu", "us"])})
        out.append(p)
    if rng.random() < 0.2:
        i = len(ps) + rng.randrange(100)
        if all(q.id != f"n{i}" for q in out):
            out.append(Pod(f"n{i}", "x", {"region": "eu", "model": "m"}))
    if out and rng.random() < 0.1:
        out.pop(rng.randrange(len(out)))
    rng.shuffle(out)
    return out


@given(configs(), pods(), st.integers(0, 2**32), st.integers(1, 5))
def test_rounds_keep_invariants(cfg: TargetConfig, ps: list[Pod], seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    a = initial_assignment(cfg, ps)
    check_invariants(a, ps)
    for i in range(rounds):
        ps = _mutate_pods(rng, ps)
        hot = [(rng.randrange(KEYSPACE_END), rng.uniform(0, 100)) for _ in range(rng.randrange(4))]
        wl = Workload(rng.uniform(0, 100), hot)
        known = {p.id for p in ps}
        reports = [r for r in wl.reports(a) if r.pod_id in known]
        now = 1000 * (i + 1)
        b = reshard(a, ps, reports, now_ms=now)
        _check_round(a, b, ps, now)
        # the same inputs give the same output, whatever the order of the pods
        assert reshard(a, list(reversed(ps)), reports, now_ms=now) == b
        a = b


@given(configs(), pods(), st.data())
def test_random_reports(cfg: TargetConfig, ps: list[Pod], data: st.DataObject) -> None:
    a = initial_assignment(cfg, ps)
    reports = data.draw(reports_for(a, ps))
    b = reshard(a, ps, reports, now_ms=5)
    _check_round(a, b, ps, 5)
    assert reshard(a, ps, reports, now_ms=5) == b
    c = reshard(b, ps, [], now_ms=6)
    _check_round(b, c, ps, 6)


@given(configs(), pods(n_min=2), st.data())
def test_invalid_input_raises_and_changes_nothing(cfg: TargetConfig, ps: list[Pod], data: st.DataObject) -> None:
    a = initial_assignment(cfg, ps)
    snapshot = dataclasses.replace(a)
    good = data.draw(reports_for(a, ps))
    bad_kind = data.draw(st.sampled_from(["unknown", "negative", "target", "key", "capacity", "type"]))
    s0 = a.slices[0].slice
    bad: LoadReport
    err: type[Exception] = LoadReportError
    if bad_kind == "unknown":
        bad, err = LoadReport("ghost", "t"), UnknownPodError
    elif bad_kind == "negative":
        bad = LoadReport(ps[0].id, "t", slices=(SliceLoad(s0, -1.0),))
    elif bad_kind == "target":
        bad = LoadReport(ps[0].id, "other")
    elif bad_kind == "key":
        bad = LoadReport(ps[0].id, "t", slices=(SliceLoad(s0, 1.0, ((s0.hi, 1.0),)),))
    elif bad_kind == "capacity":
        bad = LoadReport(ps[0].id, "t", EngineLoad(capacity=-1.0))
    else:
        bad = "nope"  # type: ignore[assignment]
    reports = [*good, bad]
    data.draw(st.randoms()).shuffle(reports)
    with pytest.raises(err) as e:
        reshard(a, ps, reports)
    assert getattr(e.value, "field", None)
    assert a == snapshot


def test_config_and_pod_errors() -> None:
    ps = [Pod("p0", "a")]
    a = initial_assignment(TargetConfig("t"), ps)
    with pytest.raises(ConfigError):
        reshard(a, ps, [], config=TargetConfig("t", churn_budget=0.0))
    with pytest.raises(ConfigError) as e:
        reshard(a, ps, [], config=TargetConfig("u"))
    assert e.value.field == "target"
    with pytest.raises(InvariantError):
        reshard(a, [*ps, *ps], [])
    with pytest.raises(ConfigError):
        reshard(a, ps, [], now_ms=-1)


def _eight(n: int = 8) -> list[Pod]:
    return [Pod(f"p{i}", f"a{i}") for i in range(n)]


def test_dead_pod_is_replaced_and_draining_pod_leaves_after_replacement() -> None:
    cfg = TargetConfig("t", min_replicas=2, initial_slices=16)
    ps = _eight(4)
    a = initial_assignment(cfg, ps)
    ps2 = [
        dataclasses.replace(ps[0], state=PodState.DEAD),
        dataclasses.replace(ps[1], state=PodState.DRAINING),
        *ps[2:],
    ]
    b = reshard(a, ps2, [])
    check_invariants(b, ps2)
    assert b.stats.dropped_pods == 1 and b.stats.fills > 0
    assert not b.slices_of("p0", include_leaving=True)
    assert not b.slices_of("p1")
    held_by_p1 = [sa for sa in a.slices if "p1" in sa.replicas]
    assert all("p1" in b.lookup(sa.slice.lo).leaving for sa in held_by_p1)
    # the replacements warm from p1's prompts: p1 stays leaving while they do (it stops once it holds nothing)
    held = reshard(b, ps2, [])
    assert all(sa.warming and "p1" in sa.leaving for sa in held.slices if "p1" in sa.leaving or sa.warming)
    assert all("p1" in held.lookup(sa.slice.lo).leaving for sa in held_by_p1)
    # once warm (or past the deadline: the leader clears the marks either way) it leaves
    done = clear_warming(held, {}, {(sa.slice.lo, p) for sa in held.slices for p in sa.warming})
    c = reshard(done, ps2, [])
    assert not c.slices_of("p1", include_leaving=True)
    assert [p.id for p in c.pods] == ["p1", "p2", "p3"]


def test_draining_pod_keeps_slices_without_replacement() -> None:
    cfg = TargetConfig("t", min_replicas=1, initial_slices=4)
    ps = [Pod("p0", "a")]
    a = initial_assignment(cfg, ps)
    drained = [dataclasses.replace(ps[0], state=PodState.DRAINING)]
    b = reshard(a, drained, [])
    c = reshard(b, drained, [])
    for x in (b, c):
        check_invariants(x, drained)
        assert all(sa.replicas == () and sa.leaving == ("p0",) for sa in x.slices)
    back = [*drained, Pod("p1", "b")]
    d = reshard(c, back, [])
    assert all(sa.replicas == ("p1",) and sa.leaving == ("p0",) and sa.warming == ("p1",) for sa in d.slices)
    # p1 warms from p0's prompts: p0 keeps serving until p1 reports warm
    assert all(sa.leaving == ("p0",) for sa in reshard(d, back, []).slices)
    e = reshard(clear_warming(d, {"p1": [Slice(0, KEYSPACE_END)]}), back, [])
    assert all(sa.leaving == () for sa in e.slices)


def test_moves_balance_and_leave_a_round_later() -> None:
    cfg = TargetConfig("t", min_replicas=2, initial_slices=64, churn_budget=0.5, calm=False)  # acts in the first round
    ps = _eight(4)
    a = initial_assignment(cfg, ps)
    a = dataclasses.replace(a, pods=a.pods)
    ps2 = [*ps, *[Pod(f"q{i}", "b") for i in range(4)]]  # four new, empty pods
    wl = Workload(80.0)
    b = reshard(a, ps2, wl.reports(a))
    assert b.stats.moves > 0
    moved = [sa for sa in b.slices if sa.leaving]
    assert moved and all(len(sa.leaving) == 1 for sa in moved)
    c = reshard(b, ps2, wl.reports(b))
    assert all(not sa.leaving for sa in c.slices if sa.slice in {m.slice for m in moved})
    for _ in range(6):
        c = reshard(c, ps2, wl.reports(c))
    loads = c.pod_loads()
    mean = sum(loads.values()) / len(loads)
    assert max(loads.values()) <= mean * (1 + cfg.imbalance_tolerance) + 1e-9
    assert c.stats.imbalance <= 1 + cfg.imbalance_tolerance + 1e-9


def test_hot_slice_splits_at_median_and_hot_key_replicates() -> None:
    cfg = TargetConfig("t", min_replicas=1, initial_slices=8, max_replicas=3, calm=False)  # acts in the first round
    ps = _eight()
    a = initial_assignment(cfg, ps)
    # slice 0 carries most of the load, spread evenly: it must split
    s0 = a.slices[0].slice
    r = LoadReport(a.slices[0].replicas[0], "t", slices=(SliceLoad(s0, 80.0),))
    b = reshard(a, ps, [r])
    assert b.stats.splits > 0
    assert b.slices[0].slice.hi < s0.hi
    pieces = [x for x in b.slices if x.slice.hi <= s0.hi]
    assert len(pieces) >= 2 and all(a.slices[0].replicas[0] in (*x.replicas, *x.leaving) for x in pieces)
    # one key carries 90% of slice 3: replicate, do not split
    s3 = a.slices[3].slice
    key = s3.lo + 12345
    r2 = LoadReport(a.slices[3].replicas[0], "t", slices=(SliceLoad(s3, 80.0, ((key, 75.0),)),))
    c = reshard(a, ps, [r2])
    hot = c.lookup(key)
    assert len(hot.replicas) == 3 and c.stats.replications == 2
    assert hot.slice == s3 or hot.slice.width >= 1


def test_hot_key_is_isolated_when_the_rest_is_hot_too() -> None:
    cfg = TargetConfig("t", min_replicas=2, initial_slices=2, max_replicas=2, calm=False)  # acts in the first round
    ps = _eight(4)
    a = initial_assignment(cfg, ps)
    s = a.slices[0].slice
    key = s.lo + s.width // 3
    r = LoadReport(a.slices[0].replicas[0], "t", slices=(SliceLoad(s, 100.0, ((key, 60.0),)),))
    b = reshard(a, ps, [r])
    hot = b.lookup(key)
    assert hot.slice == Slice(key, key + 1)
    assert len(hot.replicas) == 2
    assert b.lookup(key - 1).slice.hi == key and b.lookup(key + 1).slice.lo == key + 1


def test_median_point() -> None:
    assert median_point(0, 100, 10.0, []) == (50, 5.0)
    at, left = median_point(0, 100, 10.0, [(10, 8.0)]) or (0, 0.0)
    assert at in (10, 11)
    assert median_point(0, 1, 5.0, []) is None
    at, left = median_point(0, KEYSPACE_END, 1.0, [(7, 0.2), (KEYSPACE_END - 5, 0.2)]) or (0, 0.0)
    assert 0 < at < KEYSPACE_END and abs(left - 0.5) < 1e-6


def test_cold_neighbours_merge_and_idle_replicas_go() -> None:
    cfg = TargetConfig(
        "t", min_replicas=1, max_replicas=3, initial_slices=8, merge_threshold=0.05, calm=False
    )  # acts in the first round
    ps = _eight(1)
    a = initial_assignment(cfg, ps)
    wl = Workload(0.0, [(a.slices[7].slice.lo, 10.0)])
    b = reshard(a, ps, wl.reports(a))
    assert b.stats.merges == 6 and len(b.slices) == 2
    # replicated slice, then load falls: dereplicate down to min_replicas
    ps3 = _eight(3)
    x = initial_assignment(dataclasses.replace(cfg, min_replicas=1), ps3)
    x = dataclasses.replace(x, slices=tuple(dataclasses.replace(sa, replicas=("p0", "p1", "p2")) for sa in x.slices))
    y = reshard(x, ps3, [])
    assert all(len(sa.replicas) == 1 for sa in y.slices)
    assert y.stats.dereplications == 16
    check_invariants(y, ps3)


def test_slice_band() -> None:
    cfg = TargetConfig("t", initial_slices=2, min_slices_per_pod=5, max_slices_per_pod=8)
    ps = _eight(2)
    a = initial_assignment(cfg, ps)
    b = reshard(a, ps, [])
    counts = {p.id: len(b.slices_of(p.id)) for p in ps}
    assert all(5 <= c <= 8 for c in counts.values()), counts
    many = initial_assignment(dataclasses.replace(cfg, initial_slices=64, min_slices_per_pod=0), ps[:1])
    c = reshard(many, ps[:1], [])
    assert len(c.slices_of("p0")) <= 8


def _with_override(a: Assignment, ps: list[Pod], o: Override) -> Assignment:
    check_override(a, ps, o)
    return dataclasses.replace(a, overrides=(*a.overrides, o))


def test_overrides_are_respected_every_round() -> None:
    cfg = TargetConfig("t", initial_slices=8, min_replicas=1, max_replicas=2, churn_budget=1.0)
    ps = _eight(4)
    a = initial_assignment(cfg, ps)
    key = a.slices[2].slice.lo + 99
    at = a.slices[5].slice.lo + 1000
    a = _with_override(a, ps, MoveOverride("pin", key, ("p3", "p1")))
    a = _with_override(a, ps, SplitOverride("cut", at))
    merge_lo = a.slices[6].slice.lo
    a = _with_override(a, ps, MergeOverride("whole", merge_lo, KEYSPACE_END))
    with pytest.raises(OverrideError):
        check_override(a, ps, SplitOverride("x", a.slices[7].slice.lo))
    wl = Workload(100.0, [(key, 50.0), (a.slices[7].slice.lo + 5, 60.0)])
    for i in range(6):
        b = reshard(a, ps, wl.reports(a), now_ms=i)
        _check_round(a, b, ps, i)
        assert b.lookup(key).replicas == ("p3", "p1")
        assert b.lookup(at).slice.lo == at
        assert b.lookup(merge_lo).slice == Slice(merge_lo, KEYSPACE_END)
        a = b
    assert b.overrides == a.overrides and len(b.overrides) == 3
