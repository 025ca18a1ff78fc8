"""Regions without processes: placement records, the region plan, and the router's pick of a regional target."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from axon_router.errors import Shed, Unavailable
from axon_router.knobs import Knobs
from axon_router.metrics import RouterMetrics
from axon_router.pod_view import PodView
from axon_router.regions import RegionRouter, target_region
from axon_router.routing_key import RouteRequest
from axon_router.targets import TargetState
from sharder.assigner.placements import Placements
from sharder.promtext import metric_value
from sharder.regions import PlacementError, TenantPlacement, choose, plan
from sharder.store.embedded import EmbeddedStore

MODEL = "m"


# ---------------------------------------------------------------------------------------------- pure plan
def test_an_unpinned_home_goes_first_then_the_routers_own_region_then_the_rest_by_name() -> None:
    p = plan(TenantPlacement("acme", "eu"), "us", ["us", "ap", "eu", "ca"])
    assert p.order == ("eu", "us", "ap", "ca") and not p.pinned and p.preferred == "eu"
    assert choose(p, {"eu": True, "us": True}) == "eu"
    assert choose(p, {"eu": False, "us": False, "ap": True, "ca": True}) == "ap"  # deterministic: by name
    assert choose(p, {"eu": True}) == "eu"  # back home as soon as home is healthy again


def test_a_pinned_tenant_has_its_home_region_only() -> None:
    p = plan(TenantPlacement("bank", "eu", pinned=True), "us", ["us", "eu"])
    assert p.order == ("eu",) and p.pinned and p.why == "residency"
    assert choose(p, {"eu": False, "us": True}) is None


def test_no_placement_prefers_the_routers_own_region_and_a_header_pins() -> None:
    assert plan(None, "us", ["eu", "us"]).order == ("us", "eu")
    assert plan(None, "", ["us", "eu"]).order == ("eu", "us")  # no preference at all: by name
    h = plan(TenantPlacement("acme", "eu"), "us", ["eu", "us"], header_region="us")
    assert h.order == ("us",) and h.pinned and h.why == "header"
    assert plan(TenantPlacement("bank", "eu", pinned=True), "us", ["eu", "us"], header_region="us").order == ("eu",)


@pytest.mark.parametrize(
    ("placement", "field"),
    [(TenantPlacement("", "eu"), "tenant"), (TenantPlacement("t", ""), "home_region"),
     (TenantPlacement("t", "eu west"), "home_region"), (TenantPlacement("t" * 300, "eu"), "tenant")],
)  # fmt: skip
def test_invalid_placements_name_their_field(placement: TenantPlacement, field: str) -> None:
    with pytest.raises(PlacementError) as e:
        placement.validate()
    assert e.value.field == field


def test_placements_round_trip_through_the_store() -> None:
    async def run() -> list[TenantPlacement]:
        st = Placements(EmbeddedStore())
        await st.set(TenantPlacement("b", "us", pinned=True))
        await st.set(TenantPlacement("a", "eu"))
        await st.set(TenantPlacement("a", "ap"))  # a later set replaces the record
        await st.set(TenantPlacement("c", "eu"))
        await st.delete("c")
        return await st.list()

    assert asyncio.run(run()) == [TenantPlacement("a", "ap"), TenantPlacement("b", "us", pinned=True)]


# ---------------------------------------------------------------------------------------------- router pick
def _target(name: str, region: str, pods: list[str]) -> TargetState:
    views = {p: PodView(p, f"http://{p}", labels={"model": MODEL, "region": region}) for p in pods}
    listed = [SimpleNamespace(id=p, state=SimpleNamespace(value="active"), labels=views[p].labels) for p in pods]
    elig = {"region": region} if region else {}
    cfg = SimpleNamespace(model=MODEL, eligibility=elig)
    return TargetState(name, SimpleNamespace(generation=1, pods=listed, config=cfg), views)


class _Table:
    """The part of TargetTable the region pick uses."""

    def __init__(self, *targets: TargetState) -> None:
        self.by_model = {MODEL: sorted(targets, key=lambda t: t.name)}
        self.resolved = 0

    def resolve(self, req: RouteRequest) -> TargetState:
        self.resolved += 1
        return self.by_model[MODEL][0]


def _req(tenant: str | None = None, **kw: Any) -> RouteRequest:
    return RouteRequest(
        path="/v1/completions", body=b"{}", model=MODEL, stream=False, slice_key=1, key_source="session",
        prefix_hashes=(), prompt_tokens=1, max_tokens=1, deadline=1e9, tenant=tenant, **kw,
    )  # fmt: skip


def _regions(own: str = "") -> tuple[RegionRouter, RouterMetrics]:
    m = RouterMetrics(Knobs())
    r = RegionRouter(own, m)
    r.set_placements({"acme": TenantPlacement("acme", "eu"), "bank": TenantPlacement("bank", "eu", pinned=True)})
    return r, m


def _metric(m: RouterMetrics, name: str, **labels: str) -> float:
    return metric_value(m.render().decode(), "brunoise_router_" + name, labels)


def test_home_region_first_failover_when_its_pods_are_down_and_back_when_they_return() -> None:
    eu, us = _target("chat-eu", "eu", ["e1", "e2"]), _target("chat-us", "us", ["u1", "u2"])
    assert (target_region(eu), target_region(us)) == ("eu", "us")
    table = _Table(eu, us)
    regions, m = _regions(own="us")
    assert regions.resolve(table, _req("acme"), 0.0) is eu  # home, though the router is in us
    assert _metric(m, "cross_region_requests_total", from_region="us", to_region="eu") == 1
    for v in eu.pool:
        v.healthy = False
    assert regions.resolve(table, _req("acme"), 0.0) is us
    assert _metric(m, "region_failovers_total", from_region="eu", to_region="us") == 1
    eu.pool[1].healthy = True
    assert regions.resolve(table, _req("acme"), 0.0) is eu
    assert regions.resolve(table, _req(None), 0.0) is us  # no placement: the router's own region


def test_an_open_circuit_or_a_draining_pod_is_no_healthy_pod() -> None:
    eu, us = _target("chat-eu", "eu", ["e1", "e2"]), _target("chat-us", "us", ["u1"])
    regions, _ = _regions()
    eu.pool[0].draining = True
    for _ in range(3):
        eu.pool[1].breaker.failure(0.0, 3, 2.0, 30.0)
    assert regions.resolve(_Table(eu, us), _req("acme"), 1.0) is us
    assert regions.resolve(_Table(eu, us), _req("acme"), 2.5) is eu  # the circuit half-opens: a probe may go


def test_a_pinned_tenant_fails_closed_with_a_503_naming_its_residency() -> None:
    eu, us = _target("chat-eu", "eu", ["e1"]), _target("chat-us", "us", ["u1"])
    regions, m = _regions(own="us")
    assert regions.resolve(_Table(eu, us), _req("bank"), 0.0) is eu
    eu.pool[0].healthy = False
    with pytest.raises(Unavailable) as e:
        regions.resolve(_Table(eu, us), _req("bank"), 0.0)
    assert e.value.code == "residency_unavailable" and e.value.status == 503
    assert "'bank' is pinned to region 'eu' (residency)" in e.value.message
    assert _metric(m, "region_failovers_total") == 0 and _metric(m, "unavailable_total", cause="residency") == 1
    with pytest.raises(Unavailable):  # a region with no target at all is no different
        regions.resolve(_Table(us), _req("bank"), 0.0)
    h = _req("acme", labels={"region": "eu"})  # x-brunoise-region pins too
    with pytest.raises(Unavailable) as e:
        regions.resolve(_Table(eu, us), h, 0.0)
    assert "x-brunoise-region" in e.value.message
    eu.pool[0].healthy = True
    with pytest.raises(Unavailable) as e:  # a pinned tenant's client cannot name its way out of its region
        regions.resolve(_Table(eu, us), _req("bank", labels={"region": "us"}), 0.0)
    assert "'bank' is pinned to region 'eu'" in e.value.message


def test_placements_not_yet_read_fail_closed_for_tenants_only() -> None:
    eu, us = _target("chat-eu", "eu", ["e1"]), _target("chat-us", "us", ["u1"])
    regions = RegionRouter("us", RouterMetrics(Knobs()), calls=SimpleNamespace())  # type: ignore[arg-type]
    with pytest.raises(Unavailable) as e:
        regions.resolve(_Table(eu, us), _req("acme"), 0.0)
    assert e.value.code == "placements_unknown"
    assert regions.resolve(_Table(eu, us), _req(None), 0.0) is us


def test_models_without_regional_targets_and_named_targets_resolve_as_before() -> None:
    plain = _target("chat", "", ["p1"])
    regions, _ = _regions(own="us")
    table = _Table(plain)
    assert regions.resolve(table, _req("acme"), 0.0) is plain and table.resolved == 1
    pinned = _req("bank")
    assert regions.resolve(table, pinned, 0.0) is plain
    assert pinned.labels == {"region": "eu"}  # residency on a region-less target: only eu-labelled pods are eligible
    eu, us = _target("chat-eu", "eu", ["e1"]), _target("chat-us", "us", ["u1"])
    table = _Table(eu, us)
    assert regions.resolve(table, _req("acme", target="chat-eu"), 0.0) is eu and table.resolved == 1


def test_a_request_whose_attempts_all_failed_is_tried_in_the_next_region_unless_pinned() -> None:
    eu, us, ap = _target("chat-eu", "eu", ["e1"]), _target("chat-us", "us", ["u1"]), _target("chat-ap", "ap", ["p1"])
    table = _Table(eu, us, ap)
    regions, m = _regions(own="us")
    failed = Unavailable("2 attempt(s) failed", code="upstream_unavailable")
    skip: set[str] = set()
    # eu still looks healthy (its pods died a moment ago): the request goes on in the next region of its plan
    assert regions.elsewhere(table, _req("acme"), eu, failed, 0.0, skip) is us and skip == {"eu"}
    assert _metric(m, "region_failovers_total", from_region="eu", to_region="us") == 1
    assert regions.elsewhere(table, _req("acme"), us, failed, 0.0, skip) is ap and skip == {"eu", "us"}
    assert regions.elsewhere(table, _req("acme"), ap, failed, 0.0, skip) is None  # every region tried
    assert regions.elsewhere(table, _req("bank"), eu, failed, 0.0, set()) is None  # pinned: never
    shed = Shed("over the admission limit", code="overloaded")
    assert regions.elsewhere(table, _req("acme"), eu, shed, 0.0, set()) is None  # only failed attempts move on
    assert regions.elsewhere(table, _req("acme", target="chat-eu"), eu, failed, 0.0, set()) is None


def test_a_key_the_guard_holds_in_its_home_region_does_not_fail_over() -> None:
    eu, us = _target("chat-eu", "eu", ["e1"]), _target("chat-us", "us", ["u1"])
    regions, m = _regions(own="us")
    eu.pool[0].healthy = False
    held_in = {"chat-eu"}  # the key guard suspects the key in chat-eu (it coincided with a fault there)
    assert regions.resolve(_Table(eu, us), _req("acme"), 0.0, lambda ts: ts.name in held_in) is eu
    assert _metric(m, "region_failovers_total") == 0
    held_in.clear()
    assert regions.resolve(_Table(eu, us), _req("acme"), 0.0, lambda ts: ts.name in held_in) is us
