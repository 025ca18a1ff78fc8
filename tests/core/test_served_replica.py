"""With several replicas the router sends a session to the replica holding its prefix, so a slice's replicas report
unequal load: dereplication drops the replica that served the least (the warm one keeps its sessions)."""

from __future__ import annotations

import dataclasses

from sharder.assignment import SliceAssignment, initial_assignment
from sharder.config import TargetConfig
from sharder.load import EngineLoad, LoadReport, SliceLoad
from sharder.pods import Pod
from sharder.policy import reshard


def test_dereplication_keeps_the_replica_that_serves_the_slice() -> None:
    # one round, no cooldown: calm off
    cfg = TargetConfig("t", min_replicas=1, max_replicas=3, initial_slices=4, merge_threshold=0.0, calm=False)
    pods = [Pod("pod-1", "10.0.0.1:1"), Pod("pod-2", "10.0.0.2:1")]
    a = initial_assignment(cfg, pods)
    s0, s1, s2, s3 = (sa.slice for sa in a.slices)
    slices = (
        SliceAssignment(s0, ("pod-1", "pod-2")),  # replicated; pod-2 serves it all
        SliceAssignment(s1, ("pod-1",)),
        SliceAssignment(s2, ("pod-2",)),
        SliceAssignment(s3, ("pod-2",)),
    )
    a = dataclasses.replace(a, slices=slices)
    per_pod = {
        "pod-1": (SliceLoad(s0, 0.0), SliceLoad(s1, 10.0)),
        "pod-2": (SliceLoad(s0, 0.01), SliceLoad(s2, 6.0), SliceLoad(s3, 5.0)),
    }
    reports = [
        LoadReport(pod_id=p, target="t", engine=EngineLoad(load=sum(s.load for s in sls)), slices=sls)
        for p, sls in per_pod.items()
    ]
    b = reshard(a, pods, reports, now_ms=1)
    got = b.lookup(s0.lo)
    # pod-1 held a cold copy: it goes, though pod-2 is the more loaded pod
    assert got.replicas == ("pod-2",), got
    assert got.leaving == ("pod-1",)
