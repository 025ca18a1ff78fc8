"""Manual overrides (pin a slice to pods, keep a boundary, keep a range whole) and their own validation."""

from __future__ import annotations

import dataclasses

from sharder.errors import OverrideError
from sharder.keyspace import KEYSPACE_END

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


def _is_key(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < KEYSPACE_END


__all__ = ["MAX_OVERRIDES", "MergeOverride", "MoveOverride", "Override", "SplitOverride", "validate_override"]
