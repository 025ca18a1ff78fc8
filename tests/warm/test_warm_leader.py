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
from sharder.load import LoadReport
from sharder.pods import Pod, PodState
from sharder.policy.round import reshard
from sharder.store.base import LeaderInfo
from sharder.store.embedded import EmbeddedStore


def _setup(deadline_s: float) -> tuple[Leader, dict[str, Pod], Assignment]:
    pods = [Pod(f"p{i}", f"127.0.0.1:{1000 + i}", target="t") for i in range(3)]
    cfg = TargetConfig("t", initial_slices=6, warm_deadline_s=deadline_s)
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
