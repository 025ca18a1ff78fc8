"""The pure rollout state machine: steps only grow green's range, rollback is one change, the SLO needs volume."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharder import rollout as ro
from sharder.keyspace import KEYSPACE_END
from sharder.rollout import GreenWindow, Rollout, RolloutError, RolloutSLO, RolloutState, version_for

CLEAN = GreenWindow()


def started(**kw: object) -> Rollout:
    return ro.start("chat", "chat-v1", "chat-v2", 1_000, step_interval_s=5.0, **kw)  # type: ignore[arg-type]


def test_start_routes_everything_blue_until_green_is_ready() -> None:
    r = started()
    assert (r.state, r.step, r.fraction, r.generation) == (RolloutState.RUNNING, 0, 0.0, 1)
    assert version_for(0, r) == "chat-v1" and version_for(KEYSPACE_END - 1, r) == "chat-v1"
    assert ro.tick(r, 2_000, CLEAN, green_ready=False) is None, "no step before green is ready"
    r1 = ro.tick(r, 2_000, CLEAN, green_ready=True)
    assert r1 is not None and r1.step == 1 and r1.fraction == 0.01 and r1.generation == 2
    assert version_for(0, r1) == "chat-v2"
    assert version_for(int(0.01 * KEYSPACE_END), r1) == "chat-v1", "the bound itself is blue"


def test_steps_wait_the_interval_and_end_at_the_last_step() -> None:
    r = ro.tick(started(), 1_000, CLEAN, True)
    assert r is not None
    assert ro.tick(r, 5_999, CLEAN, True) is None, "interval not over"
    fractions = [r.fraction]
    t = 1_000
    while (n := ro.tick(r, t + 5_000, CLEAN, True)) is not None:
        r, t = n, t + 5_000
        fractions.append(r.fraction)
    assert fractions == [0.01, 0.1, 0.5, 1.0]
    assert r.state == RolloutState.RUNNING, "full green still waits for promote"
    p = ro.promote(r, t + 1)
    assert p.state == RolloutState.PROMOTED and p.fraction == 1.0 and ro.tick(p, t + 99_999, CLEAN, True) is None


def test_pause_holds_resume_goes_on_and_commands_check_the_state() -> None:
    r = ro.tick(started(), 1_000, CLEAN, True)
    assert r is not None
    p = ro.pause(r, 2_000)
    assert p.fraction == r.fraction and p.generation == r.generation + 1
    assert ro.tick(p, 60_000, CLEAN, True) is None, "a paused rollout does not step"
    with pytest.raises(RolloutError):
        ro.pause(p, 2_001)
    q = ro.resume(p, 3_000)
    assert q.state == RolloutState.RUNNING
    b = ro.rollback(q, 4_000)
    with pytest.raises(RolloutError):
        ro.promote(b, 5_000)
    with pytest.raises(RolloutError):
        ro.rollback(b, 5_000)


def test_rollback_is_one_generation_to_all_blue_even_after_promotion() -> None:
    r = ro.promote(started(), 2_000)
    b = ro.rollback(r, 3_000, "bad model")
    assert b.generation == r.generation + 1 and b.fraction == 0.0 and b.reason == "bad model"
    assert version_for(0, b) == "chat-v1"


def test_slo_needs_a_minimum_of_requests_and_rolls_back_automatically() -> None:
    r = ro.tick(started(slo=RolloutSLO(max_error_rate=0.1, min_requests=20)), 1_000, CLEAN, True)
    assert r is not None
    assert ro.breach(r.slo, GreenWindow(requests=19, errors=19)) is None, "too few requests decide nothing"
    assert ro.breach(r.slo, GreenWindow(requests=100, errors=10)) is None, "at the limit is fine"
    b = ro.tick(r, 1_100, GreenWindow(requests=40, errors=8), True)
    assert b is not None and b.state == RolloutState.ROLLED_BACK and "error rate 0.200" in b.reason
    paused = ro.pause(r, 1_050)
    assert ro.tick(paused, 1_100, GreenWindow(requests=40, errors=8), True) is not None, "paused is judged too"


def test_ttft_slo_uses_the_histogram_p99() -> None:
    slo = RolloutSLO(max_ttft_p99_ms=500, min_requests=10)
    fast = GreenWindow(requests=100, ttft_ms_buckets=(0, 0, 50, 50))
    assert fast.ttft_p99_ms() == 100 and ro.breach(slo, fast) is None
    slow = GreenWindow(requests=100, ttft_ms_buckets=(0, 0, 0, 90, 0, 0, 10))
    assert slow.ttft_p99_ms() == 1000
    assert "TTFT" in (ro.breach(slo, slow) or "")


def test_one_rollout_per_model_and_generations_carry_on() -> None:
    r = started()
    with pytest.raises(RolloutError):
        ro.start("chat", "chat-v1", "chat-v3", 2_000, previous=r)
    b = ro.rollback(r, 2_000)
    again = ro.start("chat", "chat-v1", "chat-v3", 3_000, previous=b, steps=ro.BLUE_GREEN_STEPS)
    assert again.generation == b.generation + 1 and again.steps == (1.0,)


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": ()},
        {"steps": (0.5, 0.2, 1.0)},
        {"steps": (0.1, 0.5)},
        {"steps": (0.0, 1.0)},
        {"green": "chat-v1"},
        {"slo": RolloutSLO(max_error_rate=2.0)},
        {"slo": RolloutSLO(min_requests=0)},
    ],
)
def test_invalid_records_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(RolloutError):
        dataclasses.replace(Rollout("chat", "chat-v1", "chat-v2"), **bad).validate()  # type: ignore[arg-type]


def test_json_round_trip() -> None:
    r = ro.pause(ro.tick(started(), 1_000, CLEAN, True) or started(), 2_000)
    assert Rollout.from_json(r.to_json()) == r


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.integers(0, KEYSPACE_END - 1), min_size=1, max_size=50), steps=st.integers(1, 6))
def test_a_key_switches_at_most_once_through_the_steps(keys: list[int], steps: int) -> None:
    fr = tuple(sorted({round((i + 1) / steps, 6) for i in range(steps)}))
    r = ro.start("m", "b", "g", 0, steps=fr, step_interval_s=0)
    seen: dict[int, list[str]] = {k: [version_for(k, r)] for k in keys}
    t = 0
    while (n := ro.tick(r, t := t + 1, CLEAN, True)) is not None:
        r = n
        for k in keys:
            if seen[k][-1] != (v := version_for(k, r)):
                seen[k].append(v)
    r = ro.promote(r, t + 1)
    for k in keys:
        if seen[k][-1] != (v := version_for(k, r)):
            seen[k].append(v)
        assert seen[k] in (["b", "g"], ["g"]), seen[k]


def test_a_step_is_due_at_once_then_after_each_interval_and_never_when_paused_or_done() -> None:
    r = started()
    assert ro.step_due(r, 1_000), "the first step waits only for green"
    r1 = ro.tick(r, 1_000, CLEAN, True)
    assert r1 is not None
    assert not ro.step_due(r1, 5_999) and ro.step_due(r1, 6_000)
    assert not ro.step_due(ro.pause(r1, 2_000), 60_000)
    assert not ro.step_due(ro.promote(r1, 2_000), 60_000)
