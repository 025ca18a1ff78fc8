"""Fair shedding, pure: a tenant's ratio to its weighted fair share and the limits it sees."""

from __future__ import annotations

import pytest

from axon_router.admission import Admission, Outcome, Priority, share_ratio
from axon_router.cost import PickInput
from axon_router.knobs import Knobs
from axon_router.pick import CostPick
from axon_router.pod_view import PodView


def test_share_ratio() -> None:
    assert share_ratio("a", {}) == 0.0, "a lone tenant is never above its share"
    assert share_ratio("a", {"a": 50}) == 0.0
    # two active tenants: each deserves half of the in-flight requests (this one counted)
    assert share_ratio("b", {"a": 9}) == pytest.approx(1 / 5)
    assert share_ratio("a", {"a": 9, "b": 1}) == pytest.approx(10 / 5.5)
    assert share_ratio("a", {"a": 9, "b": 1}) > share_ratio("c", {"a": 9, "b": 1, "c": 0})
    # weights: a tenant weighted 3 deserves 3/4
    assert share_ratio("a", {"a": 5, "b": 2}, {"a": 3.0}) == pytest.approx(6 / (8 * 3 / 4))
    assert share_ratio("gone", {"a": 0, "gone": 0}) == 0.0, "idle tenants are not active"


def _loaded_pod(outstanding: int) -> PodView:
    v = PodView("p", "http://127.0.0.1:1")
    for _ in range(outstanding):
        v.begin(10, 0)
    return v


@pytest.mark.parametrize("outstanding", [0, 1, 3, 6])
def test_a_tenant_above_its_share_sheds_first(outstanding: int) -> None:
    k = Knobs(admit_max_outstanding=8)
    adm = Admission(k)
    views = {"p": _loaded_pod(outstanding)}
    pin = PickInput(1, [], 10, 4, 0)
    within = adm.decide(CostPick(k), ["p"], [], views, pin, 0.0, Priority.INTERACTIVE, share=0.5)
    flooding = adm.decide(CostPick(k), ["p"], [], views, pin, 0.0, Priority.INTERACTIVE, share=4.0)
    assert within.outcome is Outcome.IN_SUBSET, "a tenant within its share keeps the full limits"
    expected = Outcome.IN_SUBSET if outstanding < max(1.0, 8 / 4**2) else Outcome.SHED
    assert flooding.outcome is expected, "limits divided by the square of the share ratio"
