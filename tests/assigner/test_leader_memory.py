"""The leader keeps the calm policy's memory across rounds that commit nothing, so balancing can start."""

from __future__ import annotations

import dataclasses

from sharder.assigner.hub import WatchHub
from sharder.assigner.leader import Leader
from sharder.assigner.pod_loads import PodLoadView
from sharder.assignment import initial_assignment
from sharder.config import TargetConfig
from sharder.load import EngineLoad, LoadReport, SliceLoad
from sharder.pods import Pod
from sharder.policy.round import reshard
from sharder.store.base import LeaderInfo
from sharder.store.embedded import EmbeddedStore


def test_rounds_that_commit_nothing_still_build_the_imbalance_streak() -> None:
    pods = [Pod(f"p{i}", f"127.0.0.1:{1000 + i}", target="t") for i in range(4)]
    # three replicas of four pods: a slice on every pod could not move anywhere
    cfg = TargetConfig(
        "t", min_replicas=3, max_replicas=3, initial_slices=32, cooldown_rounds=0, load_smoothing=1.0,
        act_after_rounds=3,
    )  # fmt: skip
    a = dataclasses.replace(initial_assignment(cfg, pods), generation=100)
    view = PodLoadView()
    for p in pods:  # p0 carries three times the others' load, every round the same
        held = [sa.slice for sa in a.slices if p.id in sa.replicas]
        per = 3.0 if p.id == "p0" else 1.0
        loads = tuple(SliceLoad(s, per) for s in held)
        view.update(p, LoadReport(p.id, "t", EngineLoad(load=per * len(held)), loads), ttl_s=60.0)
    leader = Leader(EmbeddedStore(), LeaderInfo("me", "127.0.0.1:1"), WatchHub(), view, policy=reshard)
    leader._current["t"] = a
    round_fn = leader.policy_round("t")
    live = {p.id: p for p in pods}
    started = None
    for i in range(1, 6):
        new = round_fn(leader._current["t"], live)
        if new is not None:
            started = i
            break
    assert started == cfg.act_after_rounds, started
