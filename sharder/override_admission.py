"""Admitting a manual override into an assignment: the checks that need both (``check_override``)."""

from __future__ import annotations

from collections.abc import Iterable

from sharder.assignment import Assignment
from sharder.errors import OverrideError
from sharder.keyspace import KEYSPACE_END
from sharder.overrides import MAX_OVERRIDES, MergeOverride, MoveOverride, Override, SplitOverride, validate_override
from sharder.pods import Pod, serves


def check_override(assignment: Assignment, pods: Iterable[Pod], override: Override) -> None:
    """Raise OverrideError when adding ``override`` to ``assignment`` would break an invariant or conflict
    with an override it already has. ``pods`` is the current pod list (with states)."""
    validate_override(override)
    cfg = assignment.config
    existing = assignment.overrides
    if any(o.id == override.id for o in existing):
        raise OverrideError(f"an override with id {override.id!r} already exists; clear it first", field="id")
    if len(existing) >= MAX_OVERRIDES:
        raise OverrideError(
            f"target {cfg.target!r} already has {len(existing)} overrides; at most {MAX_OVERRIDES} are kept: "
            "clear some first",
            field="overrides",
        )
    pod_map = {p.id: p for p in pods}
    if isinstance(override, MoveOverride):
        n = len(override.pods)
        if n < cfg.min_replicas or n > cfg.max_replicas:
            raise OverrideError(
                f"move.pods names {n} pods; the target needs between {cfg.min_replicas} and {cfg.max_replicas}",
                field="move.pods",
            )
        for pid in override.pods:
            pod = pod_map.get(pid)
            if pod is None:
                raise OverrideError(f"move.pods names unknown pod {pid!r}", field="move.pods")
            if not serves(pod, cfg.target, cfg.eligibility):
                raise OverrideError(
                    f"pod {pid!r} cannot serve target {cfg.target!r} (state {pod.state.value}, labels {pod.labels}); "
                    "pin it to active pods whose labels match the eligibility",
                    field="move.pods",
                )
        sa = assignment.lookup(override.key)
        for o in existing:
            if isinstance(o, MoveOverride) and sa.slice.contains(o.key) and o.pods != override.pods:
                raise OverrideError(
                    f"override {o.id!r} already pins the slice containing key {override.key} to other pods",
                    field="move.key",
                )
    elif isinstance(override, SplitOverride):
        for o in existing:
            if isinstance(o, MergeOverride) and o.lo < override.at < o.hi:
                raise OverrideError(
                    f"split.at {override.at} lies inside merge override {o.id!r} [{o.lo}, {o.hi})", field="split.at"
                )
    else:
        los = {sa.slice.lo for sa in assignment.slices}
        if override.lo not in los:
            raise OverrideError(
                f"merge.lo {override.lo} is not a current slice boundary; use the lo of an existing slice",
                field="merge.lo",
            )
        if override.hi != KEYSPACE_END and override.hi not in los:
            raise OverrideError(
                f"merge.hi {override.hi} is not a current slice boundary; use the hi of an existing slice",
                field="merge.hi",
            )
        for o in existing:
            if isinstance(o, MergeOverride) and o.lo < override.hi and override.lo < o.hi:
                raise OverrideError(f"merge range overlaps merge override {o.id!r}", field="merge.lo")
            if isinstance(o, SplitOverride) and override.lo < o.at < override.hi:
                raise OverrideError(
                    f"merge range contains the boundary kept by split override {o.id!r}", field="merge.lo"
                )
        pinned = [o for o in existing if isinstance(o, MoveOverride) and override.lo <= o.key < override.hi]
        if len({o.pods for o in pinned}) > 1:
            raise OverrideError(
                "merge range contains keys pinned to different pods by move overrides", field="merge.lo"
            )


__all__ = ["check_override"]
