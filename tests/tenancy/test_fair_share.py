"""Fair shedding, pure: a tenant's ratio to its weighted fair share and the limits it sees."""

from __future__ import annotations

import pytest

from axon_router.admission import (
    FAIR_RESERVE,
    Admission,
    DemandMeter,
    Outcome,
    Priority,
    contended,
    share_ratio,
)
from axon_router.cost import PickInput
from axon_router.knobs import Knobs
from axon_router.pick import CostPick
from axon_router.pod_view import PodView


def test_share_ratio() -> None:
    assert share_ratio("a", {}) == 0.0, "a lone tenant is never above its share"
    assert share_ratio("a", {"a": 50.0}) == 0.0
    # two active tenants: each deserves half of the demand
    assert share_ratio("a", {"a": 30.0, "b": 3.0}) == pytest.approx(30 / 16.5)
    assert share_ratio("b", {"a": 30.0, "b": 3.0}) == pytest.approx(3 / 16.5)
    assert share_ratio("a", {"a": 9.0, "b": 1.0}) > share_ratio("c", {"a": 9.0, "b": 1.0, "c": 1.0})
    # weights: a tenant weighted 3 deserves 3/4
    assert share_ratio("a", {"a": 6.0, "b": 2.0}, {"a": 3.0}) == pytest.approx(6 / (8 * 3 / 4))
    assert share_ratio("gone", {"a": 1.0, "gone": 0.0}) == 0.0, "idle tenants are not active"


def test_contended() -> None:
    assert not contended({"a": 5.0})
    assert not contended({"a": 5.0, "b": 5.0}), "equal demand: nobody above its share"
    assert contended({"a": 30.0, "b": 3.0})


def test_demand_meter_decays_and_forgets() -> None:
    m = DemandMeter(half_life_s=1.0)
    for i in range(10):
        m.observe("flood", i * 0.1)
    m.observe("good", 0.5)
    r = m.rates(1.0)
    assert r["flood"] > 5 * r["good"], "demand counts arrivals, admitted or not"
    assert m.rates(20.0) == {}, "quiet tenants are forgotten"
    for i in range(100):
        m.observe("steady", 30.0 + i * 0.1)
    r = m.rates(40.0)
    assert r["steady"] == pytest.approx(10.0, rel=0.05), "a steady tenant's rate, in requests per second"
    assert m.rates(41.0)["steady"] == pytest.approx(r["steady"] / 2, rel=0.01), "one half-life halves it"


def test_a_flood_just_begun_is_above_its_share_and_the_steady_tenant_within() -> None:
    """A tenant sending 1.5 requests/s for 20 s, then another starting at 15/s: from the flood's second request on,
    the flood is above its fair share and the steady tenant within. (A bare decayed count ramps over a half-life:
    the steady tenant looked above its share for the flood's first 0.3 s, so its limits were cut while the flood
    got the reserve; in CI that shed one of the steady tenant's requests in tests/tenancy/test_flood.py.)"""
    m = DemandMeter()
    t = 0.0
    while t < 20.0:
        m.observe("good", t)
        t += 1 / 1.5
    start = 20.0
    for i in range(8):
        now = start + i / 15
        m.observe("flood", now)
        if i >= 1:
            r = m.rates(now)
            assert share_ratio("flood", r) > 1.0, (i, r)
            assert share_ratio("good", r) < 1.0, (i, r)
            assert contended(r)


def _loaded_pod(outstanding: int) -> PodView:
    v = PodView("p", "http://127.0.0.1:1")
    for _ in range(outstanding):
        v.begin(10, 0)
    return v


@pytest.mark.parametrize("outstanding", [0, 1, 3, 4, 6, 7, 8, 9, 10])
def test_a_tenant_above_its_share_sheds_first(outstanding: int) -> None:
    k = Knobs(admit_max_outstanding=8)
    adm = Admission(k)
    views = {"p": _loaded_pod(outstanding)}
    pin = PickInput(1, [], 10, 4, 0)
    within = adm.decide(CostPick(k), ["p"], [], views, pin, 0.0, Priority.INTERACTIVE, share=0.5)
    flooding = adm.decide(CostPick(k), ["p"], [], views, pin, 0.0, Priority.INTERACTIVE, share=4.0)
    assert within.outcome is (Outcome.IN_SUBSET if outstanding < 8 else Outcome.SHED), "the full limits"
    expected = Outcome.IN_SUBSET if outstanding < 8 * FAIR_RESERVE else Outcome.SHED
    assert flooding.outcome is expected, "limits scaled by max(FAIR_RESERVE, 1/ratio^2)"
    reserved = adm.decide(CostPick(k), ["p"], [], views, pin, 0.0, Priority.INTERACTIVE, share=0.5, contended=True)
    assert reserved.outcome is (Outcome.IN_SUBSET if outstanding < 8 * (1 + FAIR_RESERVE) else Outcome.SHED)
    mild = adm.decide(CostPick(k), ["p"], [], views, pin, 0.0, Priority.INTERACTIVE, share=1.1)
    expected = Outcome.IN_SUBSET if outstanding < 8 / 1.21 else Outcome.SHED
    assert mild.outcome is expected, "a tenant slightly above its share is barely tightened"


def test_a_tenant_above_its_share_is_not_shed_for_latency_on_an_unsaturated_pod() -> None:
    """Fair shedding tightens the outstanding limit of a tenant above its share, not the TTFT limit: a request
    slowed by prefill queued on a pod far from saturation is slow, not unfair. (Scaling the TTFT limit too shed the
    hot tenant's long agentic turns in bench/compare.py with every pod nearly idle.)"""
    from axon_router.admission import Admission, Outcome, Priority
    from axon_router.cost import PickInput
    from axon_router.knobs import Knobs
    from axon_router.pick import CostPick
    from axon_router.pod_view import PodView

    k = Knobs(admit_ttft_slo_s=0.2)
    adm, policy = Admission(k), CostPick(k)
    pod = PodView("a", "http://a")
    pod.begin(2100, prefill=2000)  # one request's prefill queued ahead: ~0.1 s to a first token, 1 of 64 outstanding
    req = PickInput(1, [], prompt_tokens=100, max_tokens=16)
    for share in (1.0, 4.0):  # within its share, and at 4x it (limits x 0.25 before)
        d = adm.decide(policy, ["a"], [], {"a": pod}, req, 0.0, Priority.INTERACTIVE, share=share)
        assert d.outcome is Outcome.IN_SUBSET, (share, d)
