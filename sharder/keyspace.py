"""The 64-bit keyspace: SliceKey hashing of app keys (flat and grouped layouts) and half-open Slice ranges [lo, hi).

Two layouts share the keyspace:

- **flat**: ``slice_key(app_key)`` = xxh3_64 of the key, so keys scatter uniformly.
- **grouped** (locality-preserving): ``group_slice_key(group, session)`` =
  ``(xxh3_64(group) >> 32) << 32 | (xxh3_64(session) & 0xFFFFFFFF)``. The high 32 bits name the group
  (a tenant, or the hash of a shared prompt prefix), the low 32 bits the session inside it, so every key of
  one group lies in the contiguous range ``group_range(group)`` of width 2**32: one slice usually holds a whole
  group (its sessions share a subset and so a warm shared prefix), and a hot group is still split by the
  policy at a key inside that range like any other slice. Without a group the key is the flat one.
"""

from __future__ import annotations

import dataclasses

import xxhash

from sharder.errors import InvalidSliceError, KeyRangeError, KeyTypeError

KEYSPACE_END: int = 1 << 64
"""One past the largest SliceKey; ``Slice.hi`` may equal it (encoded as 0 in protobuf)."""

MAX_SLICE_KEY: int = KEYSPACE_END - 1


def slice_key(app_key: str | bytes | bytearray | memoryview) -> int:
    """The SliceKey of an app key: xxh3_64 of its UTF-8 bytes (bytes-like keys are hashed as they are)."""
    if isinstance(app_key, str):
        return xxhash.xxh3_64_intdigest(app_key.encode("utf-8", "surrogatepass"))
    if isinstance(app_key, bytes | bytearray | memoryview):
        return xxhash.xxh3_64_intdigest(bytes(app_key))
    raise KeyTypeError(
        f"app_key must be str or bytes, got {type(app_key).__name__}; convert the key to a string first",
        field="app_key",
    )


def check_slice_key(key: object, field: str = "slice_key") -> int:
    """Return ``key`` if it is an int SliceKey in [0, 2**64); raise KeyTypeError / KeyRangeError otherwise."""
    if not isinstance(key, int) or isinstance(key, bool):
        raise KeyTypeError(f"{field} must be an int in [0, 2**64), got {type(key).__name__}", field=field)
    if not 0 <= key < KEYSPACE_END:
        raise KeyRangeError(f"{field} must be in [0, 2**64), got {key}", field=field)
    return key


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Slice:
    """Half-open range [lo, hi) of SliceKeys with 0 <= lo < hi <= 2**64."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        lo, hi = self.lo, self.hi
        if type(lo) is not int and (not isinstance(lo, int) or isinstance(lo, bool)):
            raise InvalidSliceError(f"slice.lo must be an int, got {type(lo).__name__}", field="lo")
        if type(hi) is not int and (not isinstance(hi, int) or isinstance(hi, bool)):
            raise InvalidSliceError(f"slice.hi must be an int, got {type(hi).__name__}", field="hi")
        if lo < 0 or lo >= KEYSPACE_END:
            raise InvalidSliceError(f"slice.lo must be in [0, 2**64), got {lo}", field="lo")
        if hi <= lo or hi > KEYSPACE_END:
            raise InvalidSliceError(f"slice.hi must be greater than lo ({lo}) and at most 2**64, got {hi}", field="hi")

    def contains(self, key: int) -> bool:
        """True when ``lo <= key < hi``."""
        return self.lo <= key < self.hi

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.lo <= key < self.hi

    def covers(self, other: Slice) -> bool:
        """True when ``other`` lies inside this slice."""
        return self.lo <= other.lo and other.hi <= self.hi

    @property
    def width(self) -> int:
        """Number of SliceKeys in the slice (``hi - lo``)."""
        return self.hi - self.lo

    def overlap(self, other: Slice) -> int:
        """Number of SliceKeys shared with ``other`` (0 when disjoint)."""
        return max(0, min(self.hi, other.hi) - max(self.lo, other.lo))

    def split_at(self, at: int) -> tuple[Slice, Slice]:
        """The two halves [lo, at) and [at, hi); InvalidSliceError unless lo < at < hi."""
        if not self.lo < at < self.hi:
            raise InvalidSliceError(f"split point must be strictly inside [{self.lo}, {self.hi}), got {at}", field="at")
        return Slice(self.lo, at), Slice(at, self.hi)

    def __str__(self) -> str:
        return f"[{self.lo:#018x}, {'END' if self.hi == KEYSPACE_END else format(self.hi, '#018x')})"


FULL_KEYSPACE: Slice = Slice(0, KEYSPACE_END)


def even_boundaries(n: int, lo: int = 0, hi: int = KEYSPACE_END) -> list[int]:
    """The n + 1 boundaries that split [lo, hi) into n slices of (nearly) equal width."""
    if not isinstance(n, int) or n < 1:
        raise InvalidSliceError(f"the number of slices must be an int >= 1, got {n!r}", field="n")
    width = hi - lo
    if n > width:
        raise InvalidSliceError(f"cannot split a range of width {width} into {n} slices", field="n")
    return [lo + (width * i) // n for i in range(n + 1)]


def split_evenly(n: int, within: Slice = FULL_KEYSPACE) -> tuple[Slice, ...]:
    """``within`` split into n adjacent slices of (nearly) equal width, in key order."""
    b = even_boundaries(n, within.lo, within.hi)
    return tuple(Slice(b[i], b[i + 1]) for i in range(n))


GROUP_SHIFT: int = 32
"""Bits of a grouped SliceKey below the group part (the session part's width)."""

SESSION_MASK: int = (1 << GROUP_SHIFT) - 1


def _hash_of(value: str | bytes | bytearray | memoryview, field: str) -> int:
    if isinstance(value, str):
        return xxhash.xxh3_64_intdigest(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes | bytearray | memoryview):
        return xxhash.xxh3_64_intdigest(bytes(value))
    raise KeyTypeError(
        f"{field} must be str or bytes, got {type(value).__name__}; convert the key to a string first", field=field
    )


def group_bits(group: str | bytes | bytearray | memoryview) -> int:
    """The group part of a grouped SliceKey: the high 32 bits of xxh3_64(group), in [0, 2**32)."""
    return _hash_of(group, "group") >> GROUP_SHIFT


def session_bits(session: str | bytes | bytearray | memoryview) -> int:
    """The session part of a grouped SliceKey: the low 32 bits of xxh3_64(session)."""
    return _hash_of(session, "session") & SESSION_MASK


def join_parts(group_part: int, session_part: int) -> int:
    """The SliceKey with these group (high 32 bits) and session (low 32 bits) parts; inverse of ``key_parts``."""
    if not 0 <= group_part <= SESSION_MASK or not 0 <= session_part <= SESSION_MASK:
        raise KeyRangeError(
            f"group and session parts must be in [0, 2**32), got {group_part} and {session_part}", field="group_part"
        )
    return (group_part << GROUP_SHIFT) | session_part


def group_slice_key(
    group: str | bytes | bytearray | memoryview | None, session: str | bytes | bytearray | memoryview
) -> int:
    """The grouped SliceKey of ``session`` inside ``group``: group hash in the high 32 bits, session hash in the
    low 32; with no group (None) the flat ``slice_key(session)``."""
    if group is None:
        return slice_key(session)
    return join_parts(group_bits(group), session_bits(session))


def group_range(group: str | bytes | bytearray | memoryview) -> Slice:
    """The contiguous range [g << 32, (g + 1) << 32) holding every grouped SliceKey of ``group``."""
    lo = group_bits(group) << GROUP_SHIFT
    return Slice(lo, lo + (1 << GROUP_SHIFT))


def key_group_range(key: int) -> Slice:
    """The grouped layout's range of ``key``'s group: [g << 32, (g + 1) << 32) for its high 32 bits g."""
    lo = key_parts(key)[0] << GROUP_SHIFT
    return Slice(lo, lo + (1 << GROUP_SHIFT))


def key_parts(key: int) -> tuple[int, int]:
    """(group part, session part) of a SliceKey read in the grouped layout: its high and low 32 bits."""
    k = check_slice_key(key)
    return k >> GROUP_SHIFT, k & SESSION_MASK


__all__ = [
    "FULL_KEYSPACE",
    "GROUP_SHIFT",
    "KEYSPACE_END",
    "MAX_SLICE_KEY",
    "SESSION_MASK",
    "Slice",
    "check_slice_key",
    "even_boundaries",
    "group_bits",
    "group_range",
    "group_slice_key",
    "join_parts",
    "key_group_range",
    "key_parts",
    "session_bits",
    "slice_key",
    "split_evenly",
]
