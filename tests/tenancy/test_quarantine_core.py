"""The pure key-of-death rule: suspected after one pod's fault, quarantined on distinct pods, cool-down, expiry."""

from __future__ import annotations

import pytest

from axon_router.quarantine import contained
from sharder.quarantine import KeyRecord, QuarantineError, QuarantinePolicy, meta_key, note_fault

POL = QuarantinePolicy(pods=2, window_ms=10_000, cooldown_ms=60_000)


def test_one_pod_suspects_two_distinct_pods_quarantine() -> None:
    r = note_fault(None, "chat", 7, "pod0", "network", 1_000, POL)
    assert r.state(1_000) == "suspected" and r.pods == ("pod0",)
    r = note_fault(r, "chat", 7, "pod0", "timeout", 2_000, POL)
    assert r.state(2_000) == "suspected", "the same pod twice is one pod"
    r = note_fault(r, "chat", 7, "pod1", "network", 3_000, POL)
    assert r.state(3_000) == "quarantined" and r.quarantined_until_ms == 63_000
    again = note_fault(r, "chat", 7, "pod2", "network", 50_000, POL)
    assert again == r, "a quarantined key's cool-down is not extended"
    assert r.state(63_000) == "clear", "the cool-down ends"
    fresh = note_fault(r, "chat", 7, "pod2", "network", 70_000, POL)
    assert fresh.pods == ("pod2",) and fresh.state(70_000) == "suspected", "after it, the count starts over"
    assert KeyRecord.from_json(r.to_json()) == r


def test_suspicion_expires_after_the_window() -> None:
    r = note_fault(None, "chat", 7, "pod0", "network", 0, POL)
    assert r.state(9_999) == "suspected"
    assert r.state(10_000) == "clear"
    r2 = note_fault(r, "chat", 7, "pod1", "network", 10_000, POL)
    assert r2.state(10_000) == "suspected", "a fault after the window does not combine with the old one"
    assert r2.pods == ("pod1",)


def test_policy_and_meta_key() -> None:
    with pytest.raises(QuarantineError):
        QuarantinePolicy(pods=0).validate()
    with pytest.raises(QuarantineError):
        QuarantinePolicy(cooldown_ms=5).validate()
    assert meta_key("chat", 255) == "quarantine/chat/00000000000000ff"


def test_a_suspected_key_leaves_its_subset_only_when_none_of_it_can_take_it() -> None:
    assert contained(["pod2", "pod3"], ["pod1"], 7) == [], "a subset pod can take it: nowhere beyond"
    assert contained([], [], 7) == []
    one = contained(["pod2", "pod3", "pod4"], [], 7)
    assert len(one) == 1, "one pod at a time"
    assert contained(["pod4", "pod3", "pod2"], [], 7) == one, "the same pod whatever the order (every router)"
    assert {contained(["pod2", "pod3", "pod4"], [], k)[0] for k in range(64)} == {"pod2", "pod3", "pod4"}, "spread by key"
