"""Manual overrides (pin a slice to pods, keep a boundary, keep a range whole) and their admission checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sharder.errors import OverrideError
from sharder.keyspace import KEYSPACE_END
from sharder.pods import Pod, serves

if TYPE_CHECKING:
    from sharder.assignment import Assignment

#: Overrides one target may hold. Each split override is a permanent slice boundary (and each override is
#: checked every round), so an unbounded list would grow the assignment and the round without limit.
MAX_OVERRIDES = 64



@dataclasses.dataclass(frozen=True, slots=True)
class MoveOverride:
    """The slice containing ``key`` is pinned to exactly ``pods`` (in this order) until the override is cleared."""

    id: str
    key: int
    pods: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SplitOverride:
    """Keep a slice boundary at ``at`` (0 < at < 2**64): split there now, never merge across it."""

    id: str
    at: int


@dataclasses.dataclass(frozen=True, slots=True)
class MergeOverride:
    """Keep [lo, hi) one slice: merge it now, never split inside it (a hot one is replicated instead)."""

    id: str
    lo: int
    hi: int


Override = MoveOverride | SplitOverride | MergeOverride


def validate_override(override: Override) -> Override:
    """Check an override on its own (ids, key ranges); raise OverrideError naming the field."""
    if not isinstance(override, MoveOverride | SplitOverride | MergeOverride):
        raise OverrideError(f"override must be a Move/Split/MergeOverride, got {type(override).__name__}", "override")
    if not isinstance(override.id, str) or not override.id:
        raise OverrideError("override id must be a non-empty string", field="id")
    if isinstance(override, MoveOverride):
        if not _is_key(override.key):
            raise OverrideError(f"move.key must be an int in [0, 2**64), got {override.key!r}", field="move.key")
        if not isinstance(override.pods, tuple) or not override.pods:
            raise OverrideError("move.pods must name at least one pod", field="move.pods")
        if len(set(override.pods)) != len(override.pods):
            raise OverrideError("move.pods must not repeat a pod", field="move.pods")
        for p in override.pods:
            if not isinstance(p, str) or not p:
                raise OverrideError("move.pods must be non-empty pod ids", field="move.pods")
    elif isinstance(override, SplitOverride):
        if not _is_key(override.at) or override.at == 0:
            raise OverrideError(
                f"split.at must be an int in (0, 2**64): a boundary at 0 always exists, got {override.at!r}",
                field="split.at",
            )
    else:
        if not _is_key(override.lo):
            raise OverrideError(f"merge.lo must be an int in [0, 2**64), got {override.lo!r}", field="merge.lo")
        hi = override.hi
        if not isinstance(hi, int) or isinstance(hi, bool) or not override.lo < hi <= KEYSPACE_END:
            raise OverrideError(f"merge.hi must be in (lo, 2**64], got {hi!r}", field="merge.hi")
    return override


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


def _is_key(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < KEYSPACE_END


__all__ = ["MAX_OVERRIDES", "MergeOverride", "MoveOverride", "Override", "SplitOverride", "check_override", "validate_override"]
