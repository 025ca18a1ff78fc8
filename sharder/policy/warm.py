"""Warm-up marks, pure: which replicas gained a slice and still warm it, and clearing marks once warm or expired."""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence

from sharder.assignment import Assignment, SliceAssignment
from sharder.keyspace import Slice
from sharder.pods import Pod, PodState, pod_rank


def _holders(old: Assignment, los: Sequence[int], s: Slice) -> tuple[set[str], set[str]]:
    """Over the old slices overlapping ``s``: the pods holding every one of them warm, and every pod holding any."""
    i = max(0, bisect.bisect_right(los, s.lo) - 1)
    warm: set[str] | None = None
    anyone: set[str] = set()
    slices = old.slices
    while i < len(slices) and slices[i].slice.lo < s.hi:
        o = slices[i]
        held = set(o.replicas) | set(o.leaving)
        anyone |= held
        w = held - set(o.warming)
        warm = w if warm is None else warm & w
        i += 1
    return (warm or set()), anyone


def mark_warming(
    old: Assignment, slices: Sequence[SliceAssignment], pods: Mapping[str, Pod], *, enabled: bool
) -> tuple[SliceAssignment, ...]:
    """``slices`` (the next generation's, tiling the keyspace) with ``warming`` set: a replica is warming when it
    did not hold the whole range warm in ``old`` (a replica or leaving pod there, not warming) and some pod that
    did is still alive to warm it from; when a draining pod leaves a slice and no replica gained it (no pod to
    replace it), ``handoff_replica`` is, to copy the draining pod's sessions. Marks carry over from ``old`` until
    cleared (``clear_warming``); a slice with no live warm holder has nothing to warm from, so it gets no marks. ``enabled`` False clears every mark
    (``TargetConfig.warm_deadline_s`` 0: no warm-up)."""
    if not enabled:
        return tuple(dataclasses.replace(sa, warming=()) if sa.warming else sa for sa in slices)
    unchanged = set(map(id, old.slices))
    los: list[int] | None = None
    out: list[SliceAssignment] = []
    for sa in slices:
        if id(sa) in unchanged:  # the round left this slice exactly as it was: its marks stand
            out.append(sa)
            continue
        if los is None:  # most rounds change few slices or none
            los = [o.slice.lo for o in old.slices]
        warm, _ = _holders(old, los, sa.slice)
        alive = {p for p in warm if (pod := pods.get(p)) is not None and pod.state is not PodState.DEAD}
        warming = tuple(p for p in sa.replicas if p not in warm) if alive else ()
        if not warming and sa.replicas and any(p in alive and pods[p].state is PodState.DRAINING for p in sa.leaving):
            warming = (handoff_replica(sa),)
        out.append(sa if warming == sa.warming else dataclasses.replace(sa, warming=warming))
    return tuple(out)


def handoff_replica(sa: SliceAssignment) -> str:
    """The replica that takes a draining pod's sessions of ``sa`` when the drain has no replacement (every eligible
    pod is a replica already, e.g. a slice on every pod of a small fleet): it is marked warming, so it copies them
    from the draining pod (leaving donors first) while that pod keeps serving them (``drop_pods``), as a
    replacement would. A stable hash of (slice, pod) picks it, so a drain's slices spread over the replicas."""
    lo = sa.slice.lo
    return min(sa.replicas, key=lambda p: (pod_rank(lo, p), p))


def clear_warming(
    assignment: Assignment, warm: Mapping[str, Collection[Slice]], expired: Collection[tuple[int, str]] = ()
) -> Assignment:
    """``assignment`` without the warming marks that are done: pod ``p`` reported a slice containing the marked
    slice warm (``warm[p]``), or the shell's clock says the mark outlived its deadline (``(slice lo, pod)`` in
    ``expired``). The same object when nothing changes; the generation is the caller's to set."""
    changed = False
    out: list[SliceAssignment] = []
    for sa in assignment.slices:
        if not sa.warming:
            out.append(sa)
            continue
        s = sa.slice
        keep = tuple(
            p for p in sa.warming if (s.lo, p) not in expired and not any(w.covers(s) for w in warm.get(p, ()))
        )
        if keep != sa.warming:
            changed = True
            sa = dataclasses.replace(sa, warming=keep)
        out.append(sa)
    return dataclasses.replace(assignment, slices=tuple(out)) if changed else assignment


def still_reported(done: Iterable[Slice], marks: Collection[Slice]) -> list[Slice]:
    """Of the ranges a pod finished warming, those it still reports warm: each while a mark of its own inside it
    remains (a split slice's halves included), so a range warmed once does not clear a later mark on it (the
    slicelet's ``_on_warming``, and the fleet simulator's pods)."""
    return [d for d in done if any(d.covers(s) for s in marks)]


def warming_of(assignment: Assignment, pod_id: str) -> list[tuple[SliceAssignment, tuple[str, ...]]]:
    """The slices ``pod_id`` warms, each with the warm holders to warm it from: its leaving pods when it has any
    (their sessions are the ones that must find a new cache; the staying replicas' sessions keep theirs, and
    copying their prompts too would only evict what ``pod_id`` holds), else its warm replicas (a replication, a
    restarted pod refilled)."""
    out = []
    for sa in assignment.slices:
        if pod_id in sa.warming:
            donors = tuple(sa.leaving) if sa.leaving else tuple(p for p in sa.warm_replicas() if p != pod_id)
            out.append((sa, donors))
    return out


__all__ = ["clear_warming", "handoff_replica", "mark_warming", "still_reported", "warming_of"]
