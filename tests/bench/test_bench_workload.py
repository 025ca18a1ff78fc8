"""Unit tests of the seeded workload generator: determinism, Zipf shares, growing history, phase schedule."""

from __future__ import annotations

import collections
import dataclasses

import pytest

from bench.workload import (
    PHASE_HOT,
    PHASE_RESTART,
    PHASE_STEADY,
    PHASE_WARMUP,
    WorkloadConfig,
    generate,
    phase_schedule,
    restart_schedule,
    synth_text,
    zipf_weights,
)
from sharder.prefix import render_chat

SMALL = WorkloadConfig(seed=7, warmup_s=2.0, steady_s=4.0, hot_s=4.0, restart_s=5.0, session_rate=3.0, think_s=0.5)


def test_same_seed_same_workload() -> None:
    a = generate(SMALL)
    b = generate(SMALL)
    assert a.requests == b.requests
    assert a.restarts == b.restarts
    assert a.system_prompts == b.system_prompts


def test_other_seed_other_workload() -> None:
    a = generate(SMALL)
    b = generate(dataclasses.replace(SMALL, seed=8))
    assert [r.prompt for r in a.requests] != [r.prompt for r in b.requests]


def test_requests_ordered_and_indexed() -> None:
    wl = generate(SMALL)
    assert [r.index for r in wl.requests] == list(range(len(wl.requests)))
    ts = [r.t for r in wl.requests]
    assert ts == sorted(ts)
    assert all(0 <= t < SMALL.duration_s for t in ts)


def test_zipf_weights() -> None:
    w = zipf_weights(4, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert w[0] / w[3] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        zipf_weights(0, 1.0)


def test_session_shares_follow_zipf() -> None:
    cfg = WorkloadConfig(
        seed=3,
        tenants=4,
        zipf_s=1.0,
        warmup_s=0.0,
        steady_s=400.0,
        hot_s=0.0,
        restart_s=0.0,
        session_rate=5.0,
        turns=(1, 1),
    )
    wl = generate(cfg)
    counts = collections.Counter(s.tenant for s in wl.sessions)
    n = sum(counts.values())
    assert n > 1500
    for tenant, expected in enumerate(zipf_weights(4, 1.0)):
        assert counts[tenant] / n == pytest.approx(expected, abs=0.03)


def test_hot_tenant_rate_jumps() -> None:
    cfg = WorkloadConfig(
        seed=1,
        tenants=4,
        warmup_s=0.0,
        steady_s=200.0,
        hot_s=200.0,
        restart_s=0.0,
        session_rate=4.0,
        hot_tenant=2,
        hot_factor=10.0,
        turns=(1, 1),
    )
    wl = generate(cfg)
    steady = collections.Counter(s.tenant for s in wl.sessions if s.start < cfg.steady_s)
    hot = collections.Counter(s.tenant for s in wl.sessions if s.start >= cfg.steady_s)
    assert hot[2] / steady[2] == pytest.approx(10.0, rel=0.25)
    assert hot[0] / steady[0] == pytest.approx(1.0, rel=0.25)


def test_history_grows_turn_by_turn() -> None:
    wl = generate(SMALL)
    multi = [s for s in wl.sessions if len(s.requests) >= 3]
    assert multi
    for s in multi:
        system = wl.system_prompts[s.tenant]
        for prev, cur in zip(s.requests, s.requests[1:], strict=False):
            assert cur.turn == prev.turn + 1
            assert cur.t >= prev.t
            # each turn = previous messages + the previous assistant reply + a new user message
            assert cur.messages[: len(prev.messages)] == prev.messages
            assert [m["role"] for m in cur.messages[len(prev.messages) :]] == ["assistant", "user"]
            assert cur.prompt.startswith(render_chat(prev.messages)[: -len("<|assistant|>\n")])
            assert len(cur.messages[len(prev.messages)]["content"]) <= prev.max_tokens * 4
        assert s.requests[0].messages[0] == {"role": "system", "content": system}
        assert [m["role"] for m in s.requests[0].messages] == ["system", "user"]
        assert {r.session_id for r in s.requests} == {s.session_id}


def test_tenants_share_a_preamble_and_keep_their_own_prompt() -> None:
    wl = generate(SMALL)
    pre = SMALL.common_preamble_bytes
    assert len({p[:pre] for p in wl.system_prompts}) == 1
    assert len({p[pre:] for p in wl.system_prompts}) == SMALL.tenants
    lo, hi = SMALL.system_prompt_bytes
    assert all(lo + pre <= len(p) <= hi + pre for p in wl.system_prompts)


def test_phase_schedule_and_labels() -> None:
    phases = phase_schedule(SMALL)
    assert [p.name for p in phases] == [PHASE_WARMUP, PHASE_STEADY, PHASE_HOT, PHASE_RESTART]
    assert [(p.start, p.end) for p in phases] == [(0.0, 2.0), (2.0, 6.0), (6.0, 10.0), (10.0, 15.0)]
    assert phases[0].tenant_factors == phases[1].tenant_factors == phases[3].tenant_factors == (1.0,) * SMALL.tenants
    assert phases[2].tenant_factors[SMALL.hot_tenant] == SMALL.hot_factor
    assert sum(phases[2].tenant_factors) == SMALL.tenants - 1 + SMALL.hot_factor
    wl = generate(SMALL)
    for r in wl.requests:
        expected = (
            PHASE_WARMUP if r.t < 2.0 else PHASE_STEADY if r.t < 6.0 else PHASE_HOT if r.t < 10.0 else PHASE_RESTART
        )
        assert r.phase == expected


def test_restart_schedule_covers_every_pod_inside_the_phase() -> None:
    ev = restart_schedule(SMALL)
    assert [e.pod for e in ev] == list(range(SMALL.pods))
    assert all(10.0 < e.t < 15.0 for e in ev)
    assert [e.t for e in ev] == sorted(e.t for e in ev)
    assert restart_schedule(dataclasses.replace(SMALL, restart_s=0.0)) == ()


def test_synth_text_exact_size_ascii() -> None:
    import random

    for n in (0, 1, 17, 64, 1000):
        t = synth_text(random.Random(n), n)
        assert len(t) == n
        assert len(t.encode("utf-8")) == n


def test_invalid_config_rejected() -> None:
    with pytest.raises(ValueError, match="hot_tenant"):
        generate(dataclasses.replace(SMALL, hot_tenant=99))
    with pytest.raises(ValueError, match="turns"):
        generate(dataclasses.replace(SMALL, turns=(3, 2)))
