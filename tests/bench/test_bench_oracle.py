"""The shared-cache oracle (infinite, or LRU with a capacity) against hand-computed examples."""

from __future__ import annotations

import pytest

from bench.workload import (
    PHASE_RESTART,
    PHASE_STEADY,
    WorkloadConfig,
    generate,
    oracle,
    pool_lru,
    prompt_tokens,
    relative_restart,
    workload_oracle,
)


def test_hand_computed_example() -> None:
    a = "A" * 64
    b = "B" * 64
    c = "C" * 64
    # 1st: 3 full chunks + 10 bytes = 202 bytes = 51 tokens (50.5 rounded up); nothing cached yet.
    # 2nd: same first 2 chunks then different: hits 2 chunks = 32 tokens; 4 chunks = 64 tokens queried.
    # 3rd: identical to the 1st: 3 cached chunks, and 51 tokens leave room to hit all 3 (48 <= 50): 48 hits.
    # 4th: exactly the first 2 chunks (32 tokens): the last token is never a hit, so only 1 chunk = 16 tokens.
    # 5th: shares nothing (different first chunk, so the chain differs even though later bytes match).
    p1 = a + b + c + "x" * 10
    p2 = a + b + "D" * 64 + "E" * 64
    p3 = p1
    p4 = a + b
    p5 = "Z" * 64 + b + c
    res = oracle([("s", p1), ("s", p2), ("h", p3), ("h", p4), ("h", p5)])
    assert [prompt_tokens(p) for p in (p1, p2, p3, p4, p5)] == [51, 64, 51, 32, 48]
    assert res.query_tokens == 51 + 64 + 51 + 32 + 48
    assert res.hit_tokens == 0 + 32 + 48 + 16 + 0
    assert res.per_phase == {"s": (115, 32), "h": (131, 64)}
    assert res.hit_rate == pytest.approx(96 / 246)
    assert res.phase_hit_rate("h") == pytest.approx(64 / 131)
    assert res.phase_hit_rate("nope") == 0.0


def test_plain_strings_count_as_steady() -> None:
    res = oracle(["A" * 100, "A" * 100])
    assert res.per_phase[PHASE_STEADY] == (50, 16)


def test_empty() -> None:
    res = oracle([])
    assert res.hit_rate == 0.0 and res.query_tokens == 0


def test_workload_oracle_is_high_for_chat_and_deterministic() -> None:
    cfg = WorkloadConfig(seed=11, steady_s=5.0, hot_s=3.0, restart_s=3.0)
    r1 = workload_oracle(generate(cfg))
    r2 = workload_oracle(generate(cfg))
    assert r1 == r2
    # shared system prompts + growing histories: most prompt tokens are a prefix some earlier request held
    assert 0.5 < r1.hit_rate < 1.0
    assert sum(q for q, _ in r1.per_phase.values()) == r1.query_tokens


def test_a_capacity_evicts_the_least_recently_used_tail_first() -> None:
    a, b, c, d = ("A" * 64, "B" * 64, "C" * 64, "D" * 64)
    p1 = a + b + "x"  # chunks A, AB; 33 tokens
    p2 = c + d + "x"  # chunks C, CD: 4 chunks held, capacity 3: p1's tail (AB) goes first
    p3 = a + b + "y"  # A still held (1 chunk = 16 tokens), AB was evicted
    res = oracle([p1, p2, p3], capacity=lambda phase: 3)
    assert res.hit_tokens == 16
    assert oracle([p1, p2, p3]).hit_tokens == 32, "infinite: both chunks"
    # p3 refreshed A (and put AB back); p4's two chunks then evict the least recent, C and AB: C + D misses
    p4 = d + "z" * 70
    res = oracle([p1, p2, p3, p4, c + d + "x"], capacity=lambda phase: 3)
    assert res.per_phase[PHASE_STEADY][1] == 16 + 0


def test_pool_lru_loses_a_pod_while_pods_restart() -> None:
    wl = generate(WorkloadConfig(seed=5, steady_s=4.0, hot_s=2.0, restart_s=4.0))
    orc = workload_oracle(wl)
    roomy = pool_lru(wl, 4, 100_000)
    assert roomy == orc, "a pool holding everything is the infinite oracle"
    tight = pool_lru(wl, 4, 60)
    assert tight.hit_tokens < orc.hit_tokens
    down = pool_lru(wl, 2, 60)  # 2 pods, one of them down while pods restart: half the restart phase's room
    assert down.phase_hit_rate(PHASE_RESTART) < tight.phase_hit_rate(PHASE_RESTART)
    assert relative_restart(orc, orc) == pytest.approx(1.0)
    rel = relative_restart(down, orc)
    assert rel is not None and rel < 1.0
