"""The pure quota arithmetic: buckets, grants all-or-nothing, returns, expiry, the N-allotment bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharder.quota import AllotmentAsk, Ledger, QuotaError, QuotaLimits, Returned, grant, refill, settle, status

LIM = QuotaLimits("acme", requests_per_s=10, tokens_per_min=6000, concurrent=4, allotment_s=1.0, lease_ms=5000)


def test_chunks_and_validation() -> None:
    assert LIM.request_chunk == 10
    assert LIM.token_chunk == 100
    assert QuotaLimits("t").request_chunk == 0, "0 is unlimited"
    for bad in (
        QuotaLimits(""),
        QuotaLimits("t", requests_per_s=-1),
        QuotaLimits("t", tokens_per_min=float("nan")),
        QuotaLimits("t", concurrent=-1),
        QuotaLimits("t", lease_ms=10),
        QuotaLimits("t", allotment_s=0),
    ):
        with pytest.raises(QuotaError):
            bad.validate()
    assert QuotaLimits.from_json(LIM.to_json()) == LIM


def test_grant_takes_a_chunk_and_the_bucket_refills_at_the_rate() -> None:
    led = Ledger.full(LIM, 0)
    led, a = grant(led, LIM, AllotmentAsk("r1", need_requests=1, need_tokens=50, concurrent=2), 0)
    assert (a.requests, a.tokens, a.concurrent, a.expires_ms) == (10, 100, 2, 5000)
    assert led.requests == 0 and led.tokens == 0 and led.concurrent_held == 2
    led, b = grant(led, LIM, AllotmentAsk("r2"), 0)
    assert (b.requests, b.tokens, b.concurrent) == (0, 0, 0), "an empty bucket grants nothing"
    assert len(led.out) == 1, "an empty grant holds nothing"
    led, c = grant(led, LIM, AllotmentAsk("r2", need_requests=1, need_tokens=0, concurrent=3), 500)
    assert c.requests == 5 and c.tokens == 50, "half a second refills half a chunk"
    assert c.concurrent == 2, "only the free slots"
    assert Ledger.from_json(led.to_json()) == led


def test_need_is_all_or_nothing() -> None:
    led, _ = grant(Ledger.full(LIM, 0), LIM, AllotmentAsk("r0", concurrent=1), 0)  # takes the full buckets
    led, a = grant(led, LIM, AllotmentAsk("r1", need_tokens=60), 500)  # half a second: 5 requests, 50 tokens
    assert (a.requests, a.tokens, a.concurrent) == (0, 0, 0)
    assert led.requests == 5 and led.tokens == 50, "a refused ask takes nothing"


def test_a_request_larger_than_an_allotment_runs_from_a_full_bucket_into_debt() -> None:
    led = Ledger.full(LIM, 0)  # token chunk 100 (6000/min)
    led, a = grant(led, LIM, AllotmentAsk("r1", need_tokens=250), 0)
    assert a.tokens == 250 and led.tokens == -150
    led, b = grant(led, LIM, AllotmentAsk("r1", need_tokens=10), 1000)
    assert b.tokens == 0, "the debt is repaid at the rate first (100 tokens/s)"
    _, c = grant(led, LIM, AllotmentAsk("r1", need_tokens=10), 2600)
    assert c.tokens == 100, "repaid: a full chunk again"


def test_return_credits_unspent_and_frees_slots_expiry_frees_slots_only() -> None:
    led, a = grant(Ledger.full(LIM, 0), LIM, AllotmentAsk("r1", concurrent=4), 0)
    led = settle(led, LIM, Returned(a.id, unused_requests=7, unused_tokens=1000), 0)
    assert led.requests == 7 and led.tokens == 100, "credit capped at what was granted"
    assert led.concurrent_held == 0
    led, b = grant(led, LIM, AllotmentAsk("r1", concurrent=4), 0)
    assert b.concurrent == 4
    later = refill(led, LIM, b.expires_ms)
    assert later.concurrent_held == 0, "an expired allotment frees its slots"
    again = settle(later, LIM, Returned(b.id, unused_requests=7), b.expires_ms)
    assert again.requests == later.requests, "an expired allotment's budget is not credited back"


def test_renewal_keeps_the_slots_in_use() -> None:
    led, a = grant(Ledger.full(LIM, 0), LIM, AllotmentAsk("r1", concurrent=4), 0)
    led, _ = grant(led, LIM, AllotmentAsk("r2", concurrent=1), 0)  # nothing free: r2 gets no slot
    assert led.concurrent_held == 4
    led, b = grant(led, LIM, AllotmentAsk("r1", need_requests=0, concurrent=4), 100, Returned(a.id, 0, 0))
    assert b.concurrent == 4, "returning and acquiring in one step cannot lose the holder's slots"


def test_unlimited_kinds_are_not_counted() -> None:
    lim = QuotaLimits("t", requests_per_s=2)
    _, a = grant(Ledger.full(lim, 0), lim, AllotmentAsk("r", need_tokens=10**9, concurrent=100), 0)
    assert (a.requests, a.tokens, a.concurrent) == (2, 0, 0)


def test_a_clock_going_back_refills_nothing() -> None:
    led, _ = grant(Ledger.full(LIM, 10_000), LIM, AllotmentAsk("r"), 10_000)
    assert status(led, LIM, 9_000).requests == 0


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 2), st.integers(0, 12), st.booleans()), min_size=1, max_size=80
    )
)
def test_granted_work_never_exceeds_rate_times_window_plus_one_chunk(steps: list[tuple[int, int, int, bool]]) -> None:
    """Whatever routers ask and return, requests granted minus returned over [0, t] <= rps*t + one chunk."""
    lim = QuotaLimits("t", requests_per_s=10, allotment_s=1.0)
    led = Ledger.full(lim, 0)
    now = 0
    net = 0
    held: dict[int, tuple[str, int]] = {}
    for dt, router, unused, ret in steps:
        now += dt
        prev = held.get(router)
        back = None
        if ret and prev is not None:
            u = min(unused, prev[1])
            back = Returned(prev[0], u)
            net -= u
        led, a = grant(led, lim, AllotmentAsk(f"r{router}"), now, back)
        net += a.requests
        held[router] = (a.id, a.requests)
        assert net <= 10 * now / 1000 + lim.request_chunk + 1e-9
