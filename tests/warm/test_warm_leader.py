"""The leader (the shell that owns the clock) clears warming marks on the pod's warm report or at the deadline,
and counts both."""

from __future__ import annotations

import dataclasses
import time

from sharder.assigner.hub import WatchHub
from sharder.assigner.leader import Leader
from sharder.assigner.pod_loads import PodLoadView
from sharder.assignment import Assignment, initial_assignment
from sharder.config import TargetConfig
from sharder.keyspace import Slice
from sharder.load import LoadReport, SliceLoad
from sharder.pods import Pod, PodState
from sharder.policy.round import reshard
from sharder.store.base import LeaderInfo
from sharder.store.embedded import EmbeddedStore


def _setup(deadline_s: float, replicas: int = 2) -> tuple[Leader, dict[str, Pod], Assignment]:
    pods = [Pod(f"p{i}", f"127.0.0.1:{1000 + i}", target="t") for i in range(3)]
    cfg = TargetConfig(
        "t", min_replicas=replicas, max_replicas=max(replicas, 2), initial_slices=6, warm_deadline_s=deadline_s
    )  # with two replicas, a third pod to gain slices
    a = dataclasses.replace(initial_assignment(cfg, pods), generation=10)
    leader = Leader(EmbeddedStore(), LeaderInfo("me", "127.0.0.1:1"), WatchHub(), PodLoadView(), policy=reshard)
    leader._current["t"] = a
    live = {p.id: p for p in pods}
    live["p0"] = dataclasses.replace(live["p0"], state=PodState.DRAINING)
    marked = leader.policy_round("t")(a, live)
    assert marked is not None
    leader._current["t"] = marked
    leader._note_warming(marked)  # as run_round does after a commit
    return leader, live, marked


def _marks(a: Assignment) -> set[tuple[int, str]]:
    return {(sa.slice.lo, p) for sa in a.slices for p in sa.warming}


def _counter(leader: Leader, name: str) -> float:
    v = leader.metrics.registry.get_sample_value(name, {"target": "t"})
    return v or 0.0


def test_a_warm_report_clears_the_mark_and_counts_completed() -> None:
    leader, live, marked = _setup(deadline_s=60.0)
    marks = _marks(marked)
    assert marks and _counter(leader, "brunoise_assigner_warmups_started_total") == len(marks)
    lo, pod = sorted(marks)[0]
    sa = marked.lookup(lo)
    leader.view.update(live[pod], LoadReport(pod, "t", warm=(sa.slice,)), ttl_s=60.0)
    new = leader.policy_round("t")(marked, live)
    assert new is not None and _marks(new) == marks - {(lo, pod)}
    leader._note_warming(new)
    assert _counter(leader, "brunoise_assigner_warmups_completed_total") == 1
    assert _counter(leader, "brunoise_assigner_warmups_timed_out_total") == 0
    assert leader.metrics.registry.get_sample_value("brunoise_assigner_warming_replicas", {"target": "t"}) == len(marks) - 1


def test_marks_past_the_deadline_are_cleared_and_count_as_timed_out() -> None:
    leader, live, marked = _setup(deadline_s=0.2)
    marks = _marks(marked)
    early = leader.policy_round("t")(marked, live)
    assert early is None or _marks(early) == marks  # before the deadline (and without a report) they stay
    deadline = time.monotonic() + 5.0
    new = None
    while time.monotonic() < deadline:  # a poll with a deadline: the leader's clock must pass warm_deadline_s
        new = leader.policy_round("t")(marked, live)
        if new is not None and not _marks(new):
            break
        time.sleep(0.05)
    assert new is not None and not _marks(new)
    leader._note_warming(new)
    assert _counter(leader, "brunoise_assigner_warmups_timed_out_total") == len(marks)
    assert _counter(leader, "brunoise_assigner_warmups_completed_total") == 0


def _renewed(a: Assignment) -> Assignment:
    """``a`` with the last slice that p0 is leaving while its replicas warm split in two, as the policy's split phase
    may do in any round: both halves carry the marks (the replicas still warm), and the upper half's are new marks
    with a new clock."""
    out = list(a.slices)
    i = max((i for i, sa in enumerate(out) if "p0" in sa.leaving and sa.warming), default=None)
    if i is not None:
        sa = out[i]
        mid = (sa.slice.lo + sa.slice.hi) // 2
        out[i : i + 1] = [dataclasses.replace(sa, slice=Slice(sa.slice.lo, mid)),
                          dataclasses.replace(sa, slice=Slice(mid, sa.slice.hi))]  # fmt: skip
    return dataclasses.replace(a, slices=tuple(out))


def test_a_draining_pod_leaves_at_once_where_another_replica_is_warm_and_it_served_nothing() -> None:
    """Failure mode (agentic's restart phase, stop 5): every drain waited for its replacements to warm although each
    slice kept a warm replica, so the bench's rolling restart ran on three pods of four for most of the phase, and
    the long sessions crowded into their KV caches evicted each other. A slice the draining pod served nothing
    from has nothing of its to copy."""
    leader, live, marked = _setup(deadline_s=60.0)
    assert _marks(marked) and any("p0" in sa.leaving for sa in marked.slices)  # make-before-break: one generation
    assert all(set(sa.replicas) - set(sa.warming) for sa in marked.slices)  # each beside a warm replica
    new = leader.policy_round("t")(marked, live)  # the next round, no replacement reported warm yet
    assert new is not None and _marks(new) == _marks(marked)
    assert not new.slices_of("p0", include_leaving=True)


def test_a_draining_pod_that_served_a_slice_stays_while_its_replacement_warms_beside_a_warm_replica() -> None:
    """Failure mode (the simulator's docs restart phase, stop 10): the warm replicas beside a replacement are warm
    for the slice but do not hold the documents and sessions the draining pod alone served; the draining pod left
    in the next round, stopped before its replacement had copied them, and each restart lost 3-6 of its documents
    (no pod held them when next asked for). It stays on the slices it served from until the replacement reports
    warm (or the deadline), and leaves the others at once."""
    leader, live, marked = _setup(deadline_s=60.0)
    held = [sa for sa in marked.slices if "p0" in sa.leaving and sa.warming]
    assert len(held) >= 2
    served, idle = held[0], held[1]
    report = LoadReport("p0", "t", slices=(SliceLoad(served.slice, 5.0, requests=3),))
    leader.view.update(live["p0"], report, ttl_s=60.0)
    new = leader.policy_round("t")(marked, live)
    assert new is not None
    assert "p0" in new.lookup(served.slice.lo).leaving  # still serving its sessions, and their donor
    assert "p0" not in new.lookup(idle.slice.lo).leaving
    (warming,) = new.lookup(served.slice.lo).warming
    leader.view.update(live[warming], LoadReport(warming, "t", warm=(served.slice,)), ttl_s=60.0)
    cur = new
    for _ in range(2):  # the round that clears the mark, and the next one, which sees the replica warm
        nxt = leader.policy_round("t")(cur, live)
        assert nxt is not None
        cur = dataclasses.replace(nxt, generation=cur.generation + 1)
    over = [sa for sa in cur.slices if sa.slice.lo < served.slice.hi and served.slice.lo < sa.slice.hi]
    assert over and all(not sa.warming and "p0" not in sa.leaving for sa in over)


def test_a_drain_waits_for_warm_up_at_most_the_deadline_even_when_marks_are_renewed() -> None:
    limit = 0.3
    leader, live, marked = _setup(deadline_s=limit, replicas=1)  # each slice's only replica warms
    assert any("p0" in sa.leaving and sa.warming for sa in marked.slices)  # p0 stays while its replacements warm
    leader._set_draining({"p0"})  # the drain, as Drain or the store's drain flags tell the leader
    cur, t0, rounds = marked, time.monotonic(), 0
    while any("p0" in sa.leaving for sa in cur.slices):  # a poll with a deadline: the leader's clock must pass it
        assert time.monotonic() - t0 < limit + 3.0, (
            f"p0 still leaving {len(cur.slices_of('p0', include_leaving=True))} slices after {rounds} rounds"
        )
        new = leader.policy_round("t")(_renewed(cur), live)
        if new is not None:
            cur = dataclasses.replace(new, generation=cur.generation + 1)
            leader._current["t"] = cur
            leader._note_warming(cur)
        rounds += 1
        time.sleep(0.1)  # a round interval (and at most ~33 halvings of a slice before the limit)
    assert time.monotonic() - t0 >= limit  # it did wait (the marks were never reported warm)
    assert not cur.slices_of("p0", include_leaving=True)


def test_a_warm_report_clears_its_mark_without_a_policy_round() -> None:
    """Failure mode: every warm report woke a whole policy round; rounds then ran at report rate (the bench's docs
    run: 728 generations in 40 s, 19 moves per round in the steady phase), each round's moves marked more
    replicas warming, and their reports woke more rounds. A warm report now only clears marks."""
    leader, live, marked = _setup(deadline_s=60.0)
    marks = _marks(marked)
    lo, pod = sorted(marks)[0]
    sa = marked.lookup(lo)
    leader.view.update(live[pod], LoadReport(pod, "t", warm=(sa.slice,)), ttl_s=60.0)
    busy = dataclasses.replace(marked, stats=dataclasses.replace(marked.stats, moves=7))
    new = leader.clear_round("t")(busy, live)
    assert new is not None and _marks(new) == marks - {(lo, pod)}
    assert new.stats.moves == 0  # a clearing commit is no round: it reports no moves of its own
    assert [(x.slice, x.replicas, x.leaving) for x in new.slices] == [(x.slice, x.replicas, x.leaving) for x in busy.slices]
    assert new.memory == busy.memory  # the calm policy's smoothing and streak are untouched
    assert leader.clear_round("t")(new, live) is None  # nothing more is done: nothing to commit
    # the register path wakes the loop for a clear only (a new pod still wakes a full round)
    leader._wake.clear()
    leader._wake_full = False
    leader.wake(full=False)
    assert leader._wake.is_set() and not leader._wake_full
    leader.wake()
    assert leader._wake_full
