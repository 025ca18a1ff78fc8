"""Tests of the grouped (locality-preserving) SliceKey layout beside the flat one."""

from __future__ import annotations

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from sharder.assignment import initial_assignment
from sharder.config import TargetConfig
from sharder.errors import KeyTypeError
from sharder.keyspace import (
    GROUP_SHIFT,
    KEYSPACE_END,
    group_bits,
    group_range,
    group_slice_key,
    key_parts,
    slice_key,
)
from sharder.pods import Pod

keys = st.one_of(st.text(max_size=40), st.binary(max_size=40))


def test_layout_is_the_documented_formula() -> None:
    g, s = "tenant-7", "session-42"
    want = (xxhash.xxh3_64_intdigest(b"tenant-7") >> 32) << 32 | (xxhash.xxh3_64_intdigest(b"session-42") & 0xFFFFFFFF)
    assert group_slice_key(g, s) == want
    assert key_parts(want) == (xxhash.xxh3_64_intdigest(b"tenant-7") >> 32, want & 0xFFFFFFFF)


@given(keys)
def test_no_group_is_the_flat_key(session: str | bytes) -> None:
    assert group_slice_key(None, session) == slice_key(session)


@given(keys, st.lists(keys, min_size=1, max_size=20))
def test_a_groups_keys_are_contiguous(group: str | bytes, sessions: list[str | bytes]) -> None:
    r = group_range(group)
    assert r.width == 1 << GROUP_SHIFT
    assert r.lo == group_bits(group) << GROUP_SHIFT
    ks = [group_slice_key(group, s) for s in sessions]
    assert all(r.contains(k) and 0 <= k < KEYSPACE_END for k in ks)
    # contiguous: nothing outside the group's range lies between its smallest and largest key
    assert r.lo <= min(ks) <= max(ks) < r.hi


@given(keys, keys, keys)
def test_other_groups_stay_out_of_the_range(g1: str | bytes, g2: str | bytes, session: str | bytes) -> None:
    k = group_slice_key(g2, session)
    assert group_range(g1).contains(k) == (group_bits(g1) == group_bits(g2))


def test_a_group_lands_in_one_slice_of_an_even_layout() -> None:
    pods = [Pod(f"p{i}", f"127.0.0.1:{9000 + i}", {}) for i in range(4)]
    a = initial_assignment(TargetConfig("t", min_replicas=1, max_replicas=1), pods)
    for t in range(20):
        slices = {a.lookup(group_slice_key(f"tenant-{t}", f"s{i}")).slice for i in range(200)}
        assert len(slices) == 1, f"tenant-{t} spread over {len(slices)} slices"
    flat = {a.lookup(slice_key(f"s{i}")).slice for i in range(200)}
    assert len(flat) > len(a.slices) // 2  # the flat layout scatters the same sessions over most slices


@pytest.mark.parametrize("bad", [1, 2.5, ["g"]])
def test_bad_types_name_the_field(bad: object) -> None:
    with pytest.raises(KeyTypeError) as e:
        group_slice_key(bad, "s")  # type: ignore[arg-type]
    assert e.value.field == "group"
    with pytest.raises(KeyTypeError) as e2:
        group_slice_key("g", bad)  # type: ignore[arg-type]
    assert e2.value.field == "session"
    with pytest.raises(KeyTypeError):
        group_range(bad)  # type: ignore[arg-type]
