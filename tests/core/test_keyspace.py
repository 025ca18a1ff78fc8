"""Tests for SliceKey hashing and Slice ranges."""

from __future__ import annotations

import itertools

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from sharder.errors import InvalidSliceError, KeyRangeError, KeyTypeError
from sharder.keyspace import (
    FULL_KEYSPACE,
    KEYSPACE_END,
    Slice,
    check_slice_key,
    even_boundaries,
    slice_key,
    split_evenly,
)


def test_slice_key_is_xxh3_of_utf8() -> None:
    assert slice_key("session-1") == xxhash.xxh3_64_intdigest(b"session-1")
    assert slice_key("é") == xxhash.xxh3_64_intdigest("é".encode())
    assert slice_key(b"abc") == slice_key("abc") == slice_key(bytearray(b"abc")) == slice_key(memoryview(b"abc"))


@given(st.text())
def test_slice_key_in_keyspace_and_stable(s: str) -> None:
    k = slice_key(s)
    assert 0 <= k < KEYSPACE_END
    assert slice_key(s) == k


@pytest.mark.parametrize("bad", [1, 1.5, None, ["a"], {"a": 1}, True])
def test_slice_key_rejects_other_types(bad: object) -> None:
    with pytest.raises(KeyTypeError) as e:
        slice_key(bad)  # type: ignore[arg-type]
    assert e.value.field == "app_key"
    assert isinstance(e.value, TypeError)


def test_check_slice_key() -> None:
    assert check_slice_key(5) == 5
    with pytest.raises(KeyRangeError):
        check_slice_key(KEYSPACE_END)
    with pytest.raises(KeyRangeError):
        check_slice_key(-1)
    with pytest.raises(KeyTypeError):
        check_slice_key("5")


@pytest.mark.parametrize(
    ("lo", "hi", "field"),
    [(-1, 5, "lo"), (5, 5, "hi"), (6, 5, "hi"), (0, KEYSPACE_END + 1, "hi"), (KEYSPACE_END, KEYSPACE_END + 1, "lo")],
)
def test_slice_validation_names_field(lo: int, hi: int, field: str) -> None:
    with pytest.raises(InvalidSliceError) as e:
        Slice(lo, hi)
    assert e.value.field == field
    assert isinstance(e.value, ValueError)


def test_slice_type_errors() -> None:
    with pytest.raises(InvalidSliceError):
        Slice(0.5, 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidSliceError):
        Slice(True, 3)


def test_slice_basics() -> None:
    s = Slice(10, 20)
    assert s.contains(10) and s.contains(19) and not s.contains(20) and not s.contains(9)
    assert 15 in s and "x" not in s
    assert s.width == 10
    assert FULL_KEYSPACE.width == KEYSPACE_END
    assert Slice(0, 5) < Slice(1, 2)
    assert s.overlap(Slice(15, 30)) == 5 and s.overlap(Slice(20, 30)) == 0
    a, b = s.split_at(12)
    assert (a, b) == (Slice(10, 12), Slice(12, 20))
    with pytest.raises(InvalidSliceError):
        s.split_at(10)
    assert "END" in str(FULL_KEYSPACE)


@given(st.integers(min_value=1, max_value=2000))
def test_split_evenly_tiles(n: int) -> None:
    parts = split_evenly(n)
    assert len(parts) == n
    assert parts[0].lo == 0 and parts[-1].hi == KEYSPACE_END
    assert all(a.hi == b.lo for a, b in itertools.pairwise(parts))
    widths = {p.width for p in parts}
    assert max(widths) - min(widths) <= 1


def test_even_boundaries_errors() -> None:
    with pytest.raises(InvalidSliceError):
        even_boundaries(0)
    with pytest.raises(InvalidSliceError):
        even_boundaries(5, 0, 3)
    assert split_evenly(2, Slice(0, 4)) == (Slice(0, 2), Slice(2, 4))
