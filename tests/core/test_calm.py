"""Calm resharding and replica-true load: splits move nothing, noise moves nothing, balancing starts after a streak
of imbalanced rounds and stops at a lower target, and a replica's pod counts the load it really served."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sharder.assignment import Assignment, SliceAssignment, check_invariants, initial_assignment
from sharder.config import TargetConfig
from sharder.load import EngineLoad, LoadReport, SliceLoad
from sharder.pods import Pod
from sharder.policy import reshard
from sharder.policy.memory import PolicyMemory


def _pods(n: int) -> list[Pod]:
    return [Pod(f"p{i}", f"10.0.0.{i}:1") for i in range(n)]


def _reports(a: Assignment, load_of: dict[int, float]) -> list[LoadReport]:
    """Every replica reports an even share of each slice it holds (load by slice lo)."""
    per_pod: dict[str, list[SliceLoad]] = {}
    for sa in a.slices:
        r = len(sa.replicas)
        for p in sa.replicas:
            per_pod.setdefault(p, []).append(SliceLoad(sa.slice, load_of.get(sa.slice.lo, 0.0) / r))
    return [
        LoadReport(p, a.target, EngineLoad(load=sum(x.load for x in v)), tuple(v)) for p, v in sorted(per_pod.items())
    ]


def _aged(a: Assignment, generation: int = 100) -> Assignment:
    """``a`` at a later generation, every slice unchanged since generation 1 (no cooldown left)."""
    return dataclasses.replace(a, generation=generation)


def _split_keys_keep_replicas(a: Assignment, b: Assignment) -> int:
    """Every key of a slice that was split this round maps to the same replica set in ``a`` and ``b`` (the
    pieces refine the old slice); returns how many of ``b``'s slices are such pieces."""
    pieces = 0
    for sb in b.slices:
        sa = a.lookup(sb.slice.lo)
        if sa.slice == sb.slice:
            continue
        if sa.slice.lo <= sb.slice.lo and sb.slice.hi <= sa.slice.hi:  # a piece of a split (not a merge)
            assert set(sb.replicas) == set(sa.replicas), (sa, sb)
            assert set(sb.leaving) == set(sa.leaving), (sa, sb)
            pieces += 1
    return pieces


@given(
    st.integers(2, 6),
    st.integers(1, 2),
    st.integers(4, 32),
    st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4),
    st.integers(0, 2**32),
)
def test_a_split_moves_no_session(n: int, min_replicas: int, slices: int, hot: list[float], seed: int) -> None:
    rng = random.Random(seed)
    ps = _pods(n)
    cfg = TargetConfig("t", min_replicas=min_replicas, max_replicas=3, initial_slices=slices, merge_threshold=0.0)
    a = _aged(initial_assignment(cfg, ps))
    loads = {sa.slice.lo: rng.uniform(0.0, 1.0) for sa in a.slices}
    for w in hot:  # a few hot slices, well above the split threshold
        loads[rng.choice(a.slices).slice.lo] = 10.0 + w
    b = reshard(a, ps, _reports(a, loads), now_ms=1)
    check_invariants(b, ps)
    assert b.stats.splits > 0
    assert _split_keys_keep_replicas(a, b) > 0
    # a fresh memory has no streak of imbalanced rounds: no load moves or replications (count balancing may
    # hand a cold slice to a pod the splits left with few slices)
    assert b.stats.replications == b.stats.dereplications == b.stats.merges == 0, b.stats
    assert b.stats.churn <= cfg.churn_budget


def test_a_round_that_only_splits_keeps_every_key_on_its_replicas() -> None:
    ps = _pods(4)
    cfg = TargetConfig("t", min_replicas=2, max_replicas=3, initial_slices=64)
    a = _aged(initial_assignment(cfg, ps))
    loads = {sa.slice.lo: 1.0 for sa in a.slices}
    loads[a.slices[5].slice.lo] = 12.0
    b = reshard(a, ps, _reports(a, loads), now_ms=1)
    s = b.stats
    assert s.splits > 0 and s.moves == s.replications == s.dereplications == s.merges == s.fills == 0, s
    for sb in b.slices:  # b refines a: every key keeps its replicas
        sa = a.lookup(sb.slice.lo)
        assert sa.slice.lo <= sb.slice.lo and sb.slice.hi <= sa.slice.hi
        assert sb.replicas == sa.replicas and sb.leaving == sa.leaving
    assert {sa.since_generation for sa in b.slices if sa.slice not in {x.slice for x in a.slices}} == {b.generation}


@given(st.integers(2, 8), st.integers(5, 12), st.integers(0, 2**32), st.integers(1, 10))
def test_no_move_while_the_imbalance_is_inside_the_tolerance(n: int, per_pod: int, seed: int, rounds: int) -> None:
    """Each slice's load varies by +-4% round to round, so max/mean pod load never exceeds 1.04/0.96 < 1.10."""
    rng = random.Random(seed)
    ps = _pods(n)
    cfg = TargetConfig("t", min_replicas=1, initial_slices=n * per_pod)
    a = _aged(initial_assignment(cfg, ps))
    for i in range(rounds):
        loads = {sa.slice.lo: rng.uniform(0.96, 1.04) for sa in a.slices}
        b = reshard(a, ps, _reports(a, loads), now_ms=i)
        assert b.stats.imbalance <= 1.0 + cfg.imbalance_tolerance
        assert b.stats.moves == b.stats.replications == b.stats.dereplications == 0, b.stats
        assert b.same_placement(a) or all(not sa.leaving for sa in b.slices)
        a = b


def _memo(a: Assignment) -> tuple[object, ...]:
    m = a.memory
    assert m is not None
    return (m.over_rounds, m.acting, m.counting, [(r.lo, r.hi, r.load, r.served) for r in m.slices])


def _quiet_rounds(calm: bool, seed: int, rounds: int = 50) -> tuple[int, int, Assignment]:
    """50 rounds of noisy reports around a balanced mean: 8 pods, 64 slices, each slice's load uniform in
    [0.7, 1.3] x its mean every round (sessions come and go; a pod's load moves by about 6% round to round).
    Returns (moves, other changes, last)."""
    rng = random.Random(seed)
    ps = _pods(8)
    cfg = TargetConfig("t", imbalance_tolerance=0.10, imbalance_target=0.05, act_after_rounds=3, min_replicas=1, initial_slices=64, calm=calm)
    a = _aged(initial_assignment(cfg, ps))
    moves = changes = 0
    for i in range(rounds):
        loads = {sa.slice.lo: rng.uniform(0.7, 1.3) for sa in a.slices}
        b = reshard(a, ps, _reports(a, loads), now_ms=i)
        check_invariants(b, ps)
        assert _memo(reshard(a, ps, _reports(a, loads), now_ms=i)) == _memo(b)  # deterministic, memory included
        moves += b.stats.moves
        s = b.stats
        changes += s.splits + s.merges + s.replications + s.dereplications
        a = b
    return moves, changes, a


@settings(max_examples=10)
@given(st.integers(0, 2**32))
@example(769)  # its first rounds, before the smoothing had any history, read 1.17 and balanced on noise
def test_a_quiet_balanced_workload_makes_no_moves(seed: int) -> None:
    moves, changes, last = _quiet_rounds(True, seed)
    assert moves == 0 and changes == 0, (moves, changes)
    assert all(sa.since_generation == 1 for sa in last.slices)


def test_the_quiet_workload_does_move_the_uncalm_policy() -> None:
    """The noise of the test above is enough to make the act-every-round policy churn (the test has teeth)."""
    moves, changes, _ = _quiet_rounds(False, 7)
    assert moves + changes > 0


def _skewed(n: int = 4, per_pod: int = 8, hot: float = 3.0) -> tuple[Assignment, list[Pod], dict[int, float]]:
    ps = _pods(n)
    cfg = TargetConfig("t", imbalance_tolerance=0.10, imbalance_target=0.05, act_after_rounds=3, min_replicas=1, initial_slices=n * per_pod, cooldown_rounds=0, load_smoothing=1.0)
    a = _aged(initial_assignment(cfg, ps))
    loads = {sa.slice.lo: hot if "p0" in sa.replicas else 1.0 for sa in a.slices}
    return a, ps, loads


@given(st.integers(1, 6))
def test_balancing_starts_after_act_after_rounds_rounds_above_the_tolerance(k: int) -> None:
    a, ps, loads = _skewed()
    a = dataclasses.replace(a, config=dataclasses.replace(a.config, act_after_rounds=k))
    for i in range(1, k):
        b = reshard(a, ps, _reports(a, loads), now_ms=i)
        assert b.stats.moves == 0, (i, b.stats)
        assert b.memory is not None and b.memory.over_rounds == i and not b.memory.acting
        assert b.same_placement(a)
        a = b
    b = reshard(a, ps, _reports(a, loads), now_ms=k)
    assert b.stats.moves > 0
    assert b.stats.imbalance < a.stats.imbalance or k == 1
    # the round that moved load ends the episode: the next one needs a new streak
    assert b.memory is not None and not b.memory.acting and b.memory.over_rounds == 0


def test_an_episode_moves_load_in_one_round_then_waits_for_a_new_streak() -> None:
    """The moved sessions' load reaches the reports only over the next rounds, so the rounds right after an
    episode see the same skew: they move nothing until it has lasted act_after_rounds rounds again (without the
    episode rule the policy went on moving, round after round, for load it had already moved)."""
    a, ps, loads = _skewed()
    a = dataclasses.replace(a, config=dataclasses.replace(a.config, act_after_rounds=3, churn_budget=0.1))
    reports = _reports(a, loads)  # the reports lag: the same skew every round, as just after a move
    moved_at = []
    for i in range(1, 10):
        b = reshard(a, ps, reports, now_ms=i)
        if b.stats.moves:
            moved_at.append(i)
        a = b
    assert moved_at == [3, 6, 9]


def test_hysteresis_keeps_balancing_down_to_the_target() -> None:
    """Max/mean 1.08: inside the 10% tolerance but above the 5% target. Balancing that is on goes on; balancing
    that is off does not start."""
    ps = _pods(4)
    cfg = TargetConfig("t", min_replicas=2, imbalance_tolerance=0.10, imbalance_target=0.05, act_after_rounds=3, initial_slices=256, cooldown_rounds=0, load_smoothing=1.0, merge_threshold=0.0)
    a = _aged(initial_assignment(cfg, ps))
    loads = {sa.slice.lo: (1.11 if "p0" in sa.replicas else 1.0) for sa in a.slices}  # p0: 1.08 x mean
    on = reshard(a, ps, _reports(a, loads), memory=PolicyMemory(over_rounds=0, acting=True))
    off = reshard(a, ps, _reports(a, loads), memory=PolicyMemory(over_rounds=0, acting=False))
    assert 1.05 < off.stats.imbalance <= 1.10
    assert off.stats.moves == 0 and off.memory is not None and not off.memory.acting
    assert on.stats.moves > 0 and on.stats.imbalance < off.stats.imbalance
    assert on.memory is not None and not on.memory.acting  # it moved: the episode is over


def test_balancing_that_could_not_move_stays_on() -> None:
    """An episode ends with the round that moves load; a round that could not (every slice cooling down) keeps
    it on, so it moves once the cooldown is over without waiting for a new streak."""
    a, ps, loads = _skewed()
    cfg = dataclasses.replace(a.config, cooldown_rounds=3)
    a = dataclasses.replace(a, config=cfg, slices=tuple(dataclasses.replace(sa, since_generation=a.generation) for sa in a.slices))
    b = reshard(a, ps, _reports(a, loads), memory=PolicyMemory(over_rounds=cfg.act_after_rounds, acting=True))
    assert b.stats.moves == 0
    assert b.memory is not None and b.memory.acting


def test_a_slice_that_just_moved_is_left_alone_for_the_cooldown() -> None:
    a, ps, loads = _skewed()
    cfg = dataclasses.replace(a.config, act_after_rounds=1, cooldown_rounds=4, churn_budget=1.0)
    a = dataclasses.replace(a, config=cfg)
    b = reshard(a, ps, _reports(a, loads), now_ms=1)
    moved = {sa.slice.lo for sa in b.slices if sa.since_generation == b.generation}
    assert moved
    c = b
    for i in range(2, 2 + cfg.cooldown_rounds - 1):
        c = reshard(c, ps, _reports(c, loads), now_ms=i)
        for lo in moved:
            assert c.lookup(lo).replicas == b.lookup(lo).replicas


@given(st.floats(0.0, 1.0), st.floats(1.0, 100.0), st.floats(0.0, 100.0), st.booleans())
def test_replica_true_load_counts_what_each_replica_served(f: float, total: float, other: float, true: bool) -> None:
    """Slice S is on pods a and b; a served f of it, b the rest (the router sends sessions to the replica holding
    their cache). Pod c holds the other slice."""
    ps = [Pod("a", "1"), Pod("b", "2"), Pod("c", "3")]
    cfg = TargetConfig("t", min_replicas=1, initial_slices=2, max_replicas=3, replica_true_load=true)
    base = initial_assignment(cfg, ps)
    s0, s1 = (sa.slice for sa in base.slices)
    # both slices changed this generation: cooling, so this round only measures
    a = dataclasses.replace(
        base,
        generation=10,
        slices=(SliceAssignment(s0, ("a", "b"), since_generation=10), SliceAssignment(s1, ("c",), since_generation=10)),
    )
    reports = [
        LoadReport("a", "t", slices=(SliceLoad(s0, f * total),)),
        LoadReport("b", "t", slices=(SliceLoad(s0, (1 - f) * total),)),
        LoadReport("c", "t", slices=(SliceLoad(s1, other),)),
    ]
    b = reshard(a, ps, reports, now_ms=1)
    mean = (total + other) / 3
    want = (max(f * total, (1 - f) * total, other) if true else max(total / 2, other)) / mean
    assert abs(b.stats.imbalance - want) <= 1e-9 * max(1.0, want), (b.stats.imbalance, want)


@pytest.mark.parametrize("true", [True, False], ids=["replica-true", "equal-shares"])
def test_the_idle_replica_can_receive_load(true: bool) -> None:
    """p0 served all of slice S0, which p1 also holds: with replica-true load p1 is the idle pod it really is
    and takes p0's other slice; with equal shares p1 looks loaded and p0 looks only mildly above the mean, so
    nothing fits anywhere."""
    ps = _pods(4)
    cfg = TargetConfig(
        "t", min_replicas=1, initial_slices=4, max_replicas=3, calm=False, churn_budget=1.0, split_threshold=10.0,
        imbalance_tolerance=0.10,
        replica_true_load=true,
    )
    base = initial_assignment(cfg, ps)
    s = [sa.slice for sa in base.slices]
    a = dataclasses.replace(
        base,
        slices=(
            SliceAssignment(s[0], ("p0", "p1")),
            SliceAssignment(s[1], ("p0",)),
            SliceAssignment(s[2], ("p2",)),
            SliceAssignment(s[3], ("p3",)),
        ),
    )
    reports = [
        LoadReport("p0", "t", slices=(SliceLoad(s[0], 6.0), SliceLoad(s[1], 2.0))),
        LoadReport("p1", "t", slices=(SliceLoad(s[0], 0.0),)),
        LoadReport("p2", "t", slices=(SliceLoad(s[2], 1.0),)),
        LoadReport("p3", "t", slices=(SliceLoad(s[3], 1.0),)),
    ]
    b = reshard(a, ps, reports, now_ms=1)
    check_invariants(b, ps)
    if true:
        assert b.lookup(s[1].lo).replicas == ("p1",) and b.lookup(s[1].lo).leaving == ("p0",)
        assert b.stats.imbalance < 8.0 / 2.5
    else:
        assert b.stats.moves == 0 and b.same_placement(a)
        assert abs(b.stats.imbalance - 5.0 / 2.5) < 1e-9


def test_a_caller_that_skips_unchanged_rounds_must_carry_the_memory() -> None:
    """The assigner writes a round's result only when the placement changed. Handing the dropped result's
    memory to the next round (as below) lets the imbalance streak build up; dropping it too never does."""
    a, ps, loads = _skewed()
    carried = dropped = a
    started_carried = started_dropped = None
    for i in range(1, 8):
        new = reshard(carried, ps, _reports(carried, loads), now_ms=i)
        if new.same_placement(carried):
            carried = dataclasses.replace(carried, memory=new.memory)  # not written, memory kept
        else:
            carried = new
            started_carried = started_carried or i
        new = reshard(dropped, ps, _reports(dropped, loads), now_ms=i)
        if not new.same_placement(dropped):
            dropped = new
            started_dropped = started_dropped or i
    assert started_carried == a.config.act_after_rounds
    assert started_dropped is None


@pytest.mark.parametrize("calm", [False, True], ids=["act-every-round", "calm"])
def test_calm_merges_stay_well_under_the_split_threshold(calm: bool) -> None:
    """merge_threshold 0.2 next to split_threshold 0.25 leaves no margin: two neighbours at 0.075 x mean pod load
    each merge into a 0.15 slice without calm; calm merges only below half the split threshold (0.125)."""
    ps = _pods(1)
    cfg = TargetConfig("t", initial_slices=8, merge_threshold=0.2, split_threshold=0.25, calm=calm)
    a = _aged(initial_assignment(cfg, ps))
    s = [sa.slice for sa in a.slices]
    # one pod, total load 1: the pair carries 0.15, each other slice 0.85 / 6 (any other pair is above 0.2)
    loads = {x.lo: 0.075 for x in s[:2]} | {x.lo: 0.85 / 6 for x in s[2:]}
    b = reshard(a, ps, _reports(a, loads), now_ms=1)
    pair_merged = b.lookup(s[0].lo).slice.hi == s[1].hi
    assert pair_merged is not calm


def _piled(empty_pod: bool) -> tuple[Assignment, list[Pod], dict[int, float]]:
    """p0 holds 40 slices (a hot range split into pieces), p1-p3 8 each (p3 none when ``empty_pod``: it joined or
    came back); p0 serves a little more load than the others, inside the tolerance."""
    ps = _pods(4)
    cfg = TargetConfig("t", min_replicas=1, initial_slices=64, cooldown_rounds=0, load_smoothing=1.0, merge_threshold=0.0)
    a = _aged(initial_assignment(cfg, ps))
    owners = ["p0"] * 40 + ["p1"] * 8 + ["p2"] * 8 + ["p3"] * 8
    if empty_pod:
        owners = ["p0"] * 40 + ["p1"] * 12 + ["p2"] * 12
    per_pod = Counter(owners)
    slices = tuple(dataclasses.replace(sa, replicas=(o,)) for sa, o in zip(a.slices, owners, strict=True))
    a = dataclasses.replace(a, slices=slices)
    total = {"p0": 1.2, "p1": 0.9, "p2": 0.9, "p3": 0.9}  # max/mean 1.23: inside the 0.25 tolerance
    loads = {sa.slice.lo: total[sa.replicas[0]] / per_pod[sa.replicas[0]] for sa in a.slices}
    return a, ps, loads


def test_slices_piled_up_by_splits_stay_put_while_the_load_is_balanced() -> None:
    """Count balancing on a loaded target does not move the slices that splits piled up on one pod in a round
    that balances no load: each such move is a hop for its sessions and buys nothing (the steady phase of the
    bench moved cold slices round after round this way)."""
    a, ps, loads = _piled(empty_pod=False)
    acting = reshard(a, ps, _reports(a, loads), now_ms=1, memory=PolicyMemory(over_rounds=0, acting=True))
    assert acting.stats.moves > 0  # the test has teeth: count balancing would move them
    b = reshard(a, ps, _reports(a, loads), now_ms=1)
    assert b.stats.moves == 0, b.stats
    assert b.same_placement(a)


def test_a_pod_with_no_slice_still_gets_cold_slices_on_a_loaded_target() -> None:
    a, ps, loads = _piled(empty_pod=True)
    b = reshard(a, ps, _reports(a, loads), now_ms=1)
    assert b.stats.moves > 0
    assert any("p3" in sa.replicas for sa in b.slices)


_POD_IDS = ("a", "b", "c", "d")


@st.composite
def _served_slices(draw: st.DrawFn) -> list[tuple[tuple[str, ...], float, dict[str, float] | None]]:
    """Slices as (replicas, load, served): some replicas reported, all, none, or more than the slice's load."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        reps = tuple(draw(st.lists(st.sampled_from(_POD_IDS), min_size=0, max_size=4, unique=True)))
        load = draw(st.floats(0.0, 10.0))
        told = draw(st.lists(st.sampled_from(_POD_IDS), max_size=4, unique=True))
        served = {p: draw(st.floats(0.0, 10.0)) for p in told} or None
        out.append((reps, load, served))
    return out


def _spec_shares(reps: tuple[str, ...], load: float, served: dict[str, float] | None, true: bool) -> list[float]:
    """Each replica's part of a slice's load, as the replica-true rule states it: what it reported (scaled down when
    the reports say more than the load); the rest in equal parts to the replicas that did not report (to all of
    them when every one did); equal parts when nobody reported or the rule is off."""
    n = len(reps)
    if n == 0:
        return []
    got = [served.get(p) for p in reps] if served else [None] * n
    if not true or n < 2 or all(v is None for v in got):
        return [load / n] * n
    told = sum(v for v in got if v is not None)
    if told > load:
        return [v * load / told if v is not None else 0.0 for v in got]
    missing = sum(1 for v in got if v is None) or n
    rest = (load - told) / missing
    return [v + rest if v is not None and missing == n else v if v is not None else rest for v in got]


@given(_served_slices(), st.booleans())
@example([(("a", "b"), 10.0, {"a": 1.0, "b": 2.0})], True)  # every replica reported, less than the load
@example([(("a", "b", "c"), 10.0, {"a": 2.0, "d": 1.0})], True)  # some did not; a pod that is no replica did
@example([(("a", "b"), 1.0, {"a": 3.0, "b": 1.0}), (("b", "c"), 4.0, None)], True)  # more than the load
def test_pod_loads_are_the_sum_of_each_replicas_share(
    slices: list[tuple[tuple[str, ...], float, dict[str, float] | None]], true: bool
) -> None:
    """``RoundState.recompute`` (which adds the common case's parts without building ``replica_loads``' list, for
    speed) gives each pod the sum over its slices of that replica's part as the rule states it (``_spec_shares``),
    and so does ``replica_loads``."""
    from sharder.policy.round_state import Rec, RoundState, replica_loads

    cfg = TargetConfig("t", min_replicas=1, initial_slices=1, max_replicas=4, replica_true_load=true)
    recs = []
    for i, (reps, load, served) in enumerate(slices):
        rec = Rec(i, i + 1, None, reps, (), load, 0)
        rec.served = None if served is None else dict(served)
        recs.append(rec)
    state = RoundState(cfg, 1, recs, {p: Pod(p, p) for p in _POD_IDS}, list(_POD_IDS), dict.fromkeys(_POD_IDS, 1.0))
    state.recompute()
    want = dict.fromkeys(_POD_IDS, 0.0)
    count = dict.fromkeys(_POD_IDS, 0)
    for rec, (reps, load, served) in zip(recs, slices, strict=True):
        shares = replica_loads(rec) if true and len(reps) > 1 else None
        spec = _spec_shares(reps, load, served, true)
        if shares is not None:
            assert shares == pytest.approx(spec, rel=1e-9, abs=1e-12), (reps, load, served)
        for j, p in enumerate(reps):
            want[p] += spec[j]
            count[p] += 1
    assert state.count == count
    assert state.total_load == pytest.approx(sum(rec.load for rec in recs))
    for p in _POD_IDS:
        assert state.load[p] == pytest.approx(want[p], rel=1e-9, abs=1e-9), (p, state.load, want)
        got = sum(state.share_of(rec, p) for rec in recs if p in rec.replicas)
        assert got == pytest.approx(want[p], rel=1e-9, abs=1e-9)
