"""Tests for the hot-key sketch and the EWMAs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sharder.errors import ConfigError
from sharder.sketch import Ewma, RateEwma, SpaceSaving


def test_space_saving_finds_heavy_hitters() -> None:
    rng = random.Random(1)
    sk = SpaceSaving(16)
    truth: dict[int, float] = {}
    for _ in range(20_000):
        k = 7 if rng.random() < 0.3 else (11 if rng.random() < 0.2 else rng.randrange(10_000))
        sk.add(k, 1.0)
        truth[k] = truth.get(k, 0.0) + 1.0
    top = sk.top(2)
    assert [k for k, _ in top] == [7, 11]
    for k, c in top:
        assert truth[k] <= c <= truth[k] + sk.error(k)
    assert sk.total == pytest.approx(20_000)
    assert len(sk) == 16


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 10)), max_size=300), st.integers(1, 20))
def test_space_saving_guarantees(stream: list[tuple[int, float]], cap: int) -> None:
    sk = SpaceSaving(cap)
    truth: dict[int, float] = {}
    for k, w in stream:
        sk.add(k, w)
        truth[k] = truth.get(k, 0.0) + w
    total = sum(truth.values())
    assert sk.total == pytest.approx(total)
    assert len(sk) <= cap
    for k, w in truth.items():
        if w > total / cap + 1e-9:
            assert sk.count(k) >= w - 1e-6  # heavy hitters are kept, never underestimated
    for k, c in sk.top(cap):
        assert c - sk.error(k) <= truth.get(k, 0.0) + 1e-6


def test_space_saving_misc() -> None:
    sk = SpaceSaving(2)
    sk.add(1, 3.0)
    sk.add(2, 1.0)
    sk.scale(0.5)
    assert sk.top(5) == [(1, 1.5), (2, 0.5)] and sk.top(0) == []
    sk.clear()
    assert sk.total == 0 and sk.top(1) == []
    with pytest.raises(ConfigError):
        SpaceSaving(0)
    with pytest.raises(ValueError):
        sk.add(1, -1.0)
    with pytest.raises(ValueError):
        sk.add(1, float("nan"))


def test_ewma() -> None:
    e = Ewma(10.0)
    assert e.update(4.0, 0.0) == 4.0
    assert e.update(0.0, 10.0) == pytest.approx(2.0)  # one half-life
    assert e.update(0.0, 0.0) == pytest.approx(2.0)
    with pytest.raises(ConfigError):
        Ewma(0)


def test_rate_ewma() -> None:
    r = RateEwma(5.0, now_s=100.0)
    for _ in range(50):
        r.add(2.0)
    assert r.rate(110.0) == pytest.approx(10.0)
    assert r.rate(105.0) == pytest.approx(10.0)  # time going backwards changes nothing
    assert r.rate(115.0) == pytest.approx(5.0)  # nothing in 5 s (one half-life): halfway to 0
