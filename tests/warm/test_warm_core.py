"""The pure warm-up marks: new replicas warm, marks carry until a report or the deadline clears them, never unroutable."""

from __future__ import annotations

import dataclasses

from brunoise_api.v1 import slicing_pb2
from sharder import codec
from sharder.assignment import Assignment, SliceAssignment, check_invariants, initial_assignment
from sharder.config import TargetConfig
from sharder.errors import InvariantError
from sharder.pods import Pod, PodState
from sharder.policy import reshard
from sharder.policy.warm import clear_warming, handoff_replica, warming_of


def _pods(n: int) -> list[Pod]:
    return [Pod(f"p{i}", f"a{i}") for i in range(n)]


def _drain_p0(deadline: float = 5.0) -> tuple[Assignment, Assignment, list[Pod]]:
    cfg = TargetConfig("t", min_replicas=2, initial_slices=8, warm_deadline_s=deadline)
    ps = _pods(4)
    a = initial_assignment(cfg, ps)
    drained = [dataclasses.replace(ps[0], state=PodState.DRAINING), *ps[1:]]
    return a, reshard(a, drained, []), drained


def test_initial_assignment_has_no_warming_replicas() -> None:
    a = initial_assignment(TargetConfig("t", initial_slices=8), _pods(3))
    assert all(sa.warming == () for sa in a.slices)


def test_a_replica_that_gains_a_slice_is_warming_and_the_warm_ones_are_not() -> None:
    a, b, drained = _drain_p0()
    check_invariants(b, drained)
    moved = [sa for sa in a.slices if "p0" in sa.replicas]
    assert moved
    for old in moved:
        new = b.lookup(old.slice.lo)
        gained = tuple(p for p in new.replicas if p not in old.replicas)
        assert gained and new.warming == gained  # the refill warms; the replica that stayed is warm
        assert new.leaving == ("p0",)
        assert new.warm_replicas() == tuple(p for p in new.replicas if p in old.replicas)
    untouched = [sa for sa in a.slices if "p0" not in sa.replicas]
    assert all(b.lookup(sa.slice.lo).warming == () for sa in untouched)


def test_a_drain_with_no_replacement_hands_each_slice_to_one_replica_that_warms_from_the_draining_pod() -> None:
    """Failure mode (every slice on every pod: ``min_replicas`` = the pods, 4 of 4 on the bench): a draining pod
    left each slice with no pod to replace it, so no replica was marked warming, nobody copied the draining pod's
    sessions, and its long agentic sessions each prefilled their whole context again elsewhere (the bench's
    agentic restart phase at 0.82 of steady, against 0.93 with a spare pod). Now one remaining replica per slice
    warms from it, as a replacement would, spread over the replicas."""
    cfg = TargetConfig("t", min_replicas=3, max_replicas=3, initial_slices=16)
    ps = _pods(3)
    a = initial_assignment(cfg, ps)
    assert all(len(sa.replicas) == 3 for sa in a.slices)
    drained = [dataclasses.replace(ps[0], state=PodState.DRAINING), *ps[1:]]
    b = reshard(a, drained, [])
    check_invariants(b, drained)
    takers = []
    for sa in b.slices:
        assert sa.leaving == ("p0",) and set(sa.replicas) == {"p1", "p2"}
        assert len(sa.warming) == 1 and sa.warming == (handoff_replica(sa),)
        assert sa.warm_replicas(), "the other replica is warm: the slice stays routable for new sessions"
        (taker,) = sa.warming
        donors = {s.slice.lo: d for s, d in warming_of(b, taker)}[sa.slice.lo]
        assert donors[0] == "p0", "the draining pod is the first donor"
        takers.append(taker)
    assert set(takers) == {"p1", "p2"}, "a drain's slices spread over the replicas"
    # a dead pod has nothing to copy: no mark (the slice must not wait on a warm-up that cannot happen)
    dead = [dataclasses.replace(ps[0], state=PodState.DEAD), *ps[1:]]
    assert all(sa.warming == () for sa in reshard(a, dead, []).slices)
    # with a spare pod the replacement warms, as before, and no replica that stayed is marked
    before, c, _ = _drain_p0()
    assert any(sa.warming for sa in c.slices)
    assert all(set(sa.warming).isdisjoint(before.lookup(sa.slice.lo).replicas) for sa in c.slices)


def test_a_slice_with_leaving_pods_warms_from_them_alone_else_from_its_warm_replicas() -> None:
    """The leaving pods' sessions are the ones that must find a new cache; the staying replicas' sessions keep
    theirs, so copying their prompts too only evicts what the warming pod held (the fleet simulator's docs, 48
    seeds: 1 point of hit and 3 of the restart phase, where each drain's handoff replica copied the documents its
    fellow replicas already served). With no pod leaving (a replication, a restarted pod refilled), the warm
    replicas are the donors."""
    cfg = TargetConfig("t", min_replicas=3, max_replicas=3, initial_slices=16)
    ps = _pods(3)
    a = initial_assignment(cfg, ps)
    drained = [dataclasses.replace(ps[0], state=PodState.DRAINING), *ps[1:]]
    b = reshard(a, drained, [])
    for sa in b.slices:
        (taker,) = sa.warming
        assert dict(warming_of(b, taker))[sa] == ("p0",), "the draining pod alone"
    # a one-replica slice gaining a second replica, nobody leaving: its warm replica is the donor
    one = TargetConfig("t", min_replicas=1, max_replicas=2, initial_slices=2)
    c = initial_assignment(one, _pods(2))
    sa = c.slices[0]
    (holder,) = sa.replicas
    other = "p1" if holder == "p0" else "p0"
    grown = dataclasses.replace(c, slices=(dataclasses.replace(sa, replicas=(holder, other), warming=(other,)),
                                           *c.slices[1:]))  # fmt: skip
    assert warming_of(grown, other) == [(grown.slices[0], (holder,))]


def test_marks_carry_over_rounds_until_cleared_by_a_report() -> None:
    _, b, drained = _drain_p0()
    c = reshard(b, drained, [])  # p0 no longer leaving; nobody reported warm yet
    marked = [(sa.slice, sa.warming) for sa in c.slices if sa.warming]
    assert marked == [(sa.slice, sa.warming) for sa in b.slices if sa.warming]
    first_slice, (pod, *_) = marked[0]
    d = clear_warming(c, {pod: [first_slice]})
    assert pod not in d.lookup(first_slice.lo).warming
    assert sum(len(sa.warming) for sa in d.slices) == sum(len(w) for _, w in marked) - 1
    # a report covering a wider range clears every mark of that pod inside it
    e = clear_warming(c, {pod: [dataclasses.replace(first_slice, lo=0, hi=2**64)]})
    assert all(pod not in sa.warming for sa in e.slices)
    assert clear_warming(c, {}) is c


def test_deadline_expiry_clears_the_named_marks_only() -> None:
    _, b, _ = _drain_p0()
    marked = [(sa.slice.lo, p) for sa in b.slices for p in sa.warming]
    d = clear_warming(b, {}, expired={marked[0]})
    left = [(sa.slice.lo, p) for sa in d.slices for p in sa.warming]
    assert left == marked[1:]


def test_deadline_zero_disables_warm_up() -> None:
    _, b, drained = _drain_p0(deadline=0.0)
    assert all(sa.warming == () for sa in b.slices)
    # and turning it off later clears marks already there
    _, marked, _ = _drain_p0()
    off = reshard(marked, drained, [], config=dataclasses.replace(marked.config, warm_deadline_s=0.0))
    assert all(sa.warming == () for sa in off.slices)


def test_a_slice_whose_every_holder_died_gets_no_marks_and_stays_routable() -> None:
    cfg = TargetConfig("t", min_replicas=1, max_replicas=2, initial_slices=4)
    ps = _pods(2)
    a = initial_assignment(cfg, ps)
    dead = [dataclasses.replace(ps[0], state=PodState.DEAD), ps[1]]
    b = reshard(a, dead, [])
    for sa in b.slices:
        assert sa.replicas  # routable
        assert sa.warming == ()  # nothing alive to warm from


def test_all_replicas_warming_is_still_routable() -> None:
    # a move of a one-replica slice: the only replica warms, the leaving pod is its donor
    cfg = TargetConfig("t", min_replicas=1, max_replicas=1, initial_slices=2)
    ps = _pods(2)
    a = initial_assignment(cfg, ps)
    drained = [dataclasses.replace(ps[0], state=PodState.DRAINING), ps[1]]
    b = reshard(a, drained, [])
    sa = b.lookup(0)
    assert sa.replicas == ("p1",) and sa.warming == ("p1",) and sa.leaving == ("p0",)
    assert sa.warm_replicas() == ()
    assert warming_of(b, "p1") == [(sa, ("p0",))]  # the leaving pod is the donor


def test_split_children_keep_the_parents_marks() -> None:
    _, b, drained = _drain_p0()
    sa = next(s for s in b.slices if s.warming)
    mid = (sa.slice.lo + sa.slice.hi) // 2
    from sharder.overrides import SplitOverride

    c = reshard(dataclasses.replace(b, overrides=(SplitOverride("s", mid),)), drained, [])
    left, right = c.lookup(sa.slice.lo), c.lookup(mid)
    assert left.slice.hi == mid and left.warming == sa.warming and right.warming == sa.warming


def test_invariants_refuse_a_warming_pod_that_is_not_a_replica() -> None:
    a = initial_assignment(TargetConfig("t", initial_slices=2), _pods(3))
    bad = dataclasses.replace(a.slices[0], warming=("p9",))
    broken = dataclasses.replace(a, slices=(bad, *a.slices[1:]))
    try:
        check_invariants(broken)
    except InvariantError as exc:
        assert exc.field == "slices[0].warming"
    else:
        raise AssertionError("a warming pod outside the replicas passed the invariant check")


def test_codec_round_trips_warming_and_the_deadline() -> None:
    _, b, _ = _drain_p0(deadline=2.5)
    back = codec.decode_assignment(codec.encode_assignment(b))
    assert [sa.warming for sa in back.slices] == [sa.warming for sa in b.slices]
    assert back.config.warm_deadline_s == 2.5
    # unset on the wire (an older sender): the default, not zero
    msg = codec.config_to_proto(b.config)
    msg.ClearField("warm_deadline_s")
    assert codec.config_from_proto(msg).warm_deadline_s == TargetConfig("t").warm_deadline_s
    assert isinstance(
        codec.slice_assignment_to_proto(SliceAssignment(b.slices[0].slice, ("p1",))), slicing_pb2.SliceAssignment
    )


def test_a_draining_pod_stays_every_pods_kv_pull_peer_after_handing_on_its_last_slice() -> None:
    """Failure mode (the simulator's agentic restarts, stop 29): a draining pod keeps serving the sessions whose
    cache it holds (the router's held tier) after the drain has handed its last slice on; when those sessions then
    go to their new replicas, a pull hint names the draining pod, and the replicas refused it (``unknown_peer``):
    the assigner named as a pod's peers only the pods sharing a slice with it, so each session prefilled its whole
    history again (2 s first tokens) while the pod that held it was still up. Now every draining pod is a peer."""
    a, _, drained = _drain_p0()
    gone = Assignment(
        a.target, a.generation + 2,
        tuple(dataclasses.replace(sa, replicas=("p1", "p2"), leaving=(), warming=()) for sa in a.slices),
        tuple(drained), a.config,
    )  # fmt: skip
    check_invariants(gone, drained)
    assert not gone.slices_of("p0", include_leaving=True), "the drain handed every slice on"
    for pid in ("p1", "p2", "p3"):
        assert "p0" in {p.id for p in gone.peers_of(pid)}
    assert "p0" not in {p.id for p in gone.peers_of("p0")}
    dead = [dataclasses.replace(drained[0], state=PodState.DEAD), *drained[1:]]
    gone_dead = dataclasses.replace(gone, pods=tuple(dead))
    assert "p0" not in {p.id for p in gone_dead.peers_of("p1")}, "a dead pod holds nothing to read"
