"""Router-side regions: this router's region, the tenants' placements (polled from the assigners), and the pick of
a model's regional target for a request (home region, failover, residency).

A *regional* target is one whose ``eligibility`` names a region: one target per (model, region), each with its own
keyspace and assignment. A request for a model with regional targets goes to the target of the first region of
``sharder.regions.plan`` with a usable pod (healthy, not draining, circuit not open): its tenant's home region,
else this router's own, then this router's own, then the others by name. A pinned tenant (residency) or a request
naming ``x-brunoise-region`` has one region only and gets 503 ``residency_unavailable`` when it has no usable pod
(fail closed). An unpinned request whose every attempt in its region failed before its first token (the router
had not yet seen the region down) goes on in the next region (``elsewhere``). A request naming its target
(``x-brunoise-target``), or for a model without regional targets, is resolved as before (``TargetTable.resolve``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from axon_router.assigner_client import AssignerCalls
from axon_router.errors import RouterError, Unavailable
from axon_router.metrics import RouterMetrics
from axon_router.refresh import Refreshed
from axon_router.routing_key import RouteRequest
from axon_router.targets import TargetState, TargetTable
from brunoise_api.v1 import assigner_pb2
from sharder.regions import RegionPlan, TenantPlacement, choose, plan

log = logging.getLogger("axon_router.regions")

#: Errors after which an unpinned request is tried in its next region: every attempt in its region failed.
RETRY_ELSEWHERE = frozenset({"no_healthy_pod", "upstream_unavailable"})


def target_region(ts: TargetState) -> str:
    """The region a target serves (its eligibility's ``region``), "" for a region-less target."""
    cfg = getattr(ts.assignment, "config", None)
    elig = getattr(cfg, "eligibility", None) or {}
    return str(elig.get("region", ""))


def usable(ts: TargetState, now: float) -> bool:
    """Whether the target has a pod a request could be sent to now."""
    return any(v.healthy and not v.draining and v.breaker.available(now) for v in ts.pool)


class RegionRouter(Refreshed):
    """This router's region and every tenant's placement, refreshed from the assigners every ``refresh_s`` (``interval_s``)."""

    def __init__(
        self,
        own_region: str,
        metrics: RouterMetrics,
        calls: AssignerCalls | None = None,
        *,
        refresh_s: float = 1.0,
        retry_after_s: float = 1.0,
    ) -> None:
        self.own_region = own_region
        self.metrics = metrics
        self.calls = calls
        self.retry_after_s = retry_after_s
        self.placements: dict[str, TenantPlacement] = {}
        self.refreshed = calls is None  # placements were read at least once (none to read without assigners)
        self.interval_s = refresh_s
        self.what = "placements"

    # ------------------------------------------------------------------------------------------ placements
    def set_placements(self, placements: Mapping[str, TenantPlacement]) -> None:
        self.placements = dict(placements)
        self.refreshed = True

    async def refresh(self) -> None:
        """Read every placement from any assigner replica (a failed read keeps the last ones)."""
        if self.calls is None:
            return
        resp = await self.calls.call("ListPlacements", assigner_pb2.ListPlacementsRequest())
        self.set_placements(
            {
                m.tenant: TenantPlacement(m.tenant, m.home_region, m.pinned)
                for m in resp.placements
                if m.tenant and m.home_region
            }
        )

    # ------------------------------------------------------------------------------------------ the pick
    def _plan(self, table: TargetTable, req: RouteRequest) -> tuple[list[TargetState], dict[str, TargetState], RegionPlan]:
        """The model's targets, its regional ones by region, and the request's region plan."""
        cands = (table.by_model.get(req.model) or []) if req.target is None else []
        regional: dict[str, TargetState] = {}
        for ts in cands:
            r = target_region(ts)
            if r and r not in regional:
                regional[r] = ts
        placement = self.placements.get(req.tenant) if req.tenant else None
        return cands, regional, plan(placement, self.own_region, regional, req.labels.get("region"))

    def _count(self, p: RegionPlan, region: str) -> None:
        if not p.pinned and p.preferred and region != p.preferred:
            self.metrics.region_failovers.labels(p.preferred, region).inc()
        if self.own_region and region != self.own_region:
            self.metrics.cross_region.labels(self.own_region, region).inc()

    def resolve(
        self,
        table: TargetTable,
        req: RouteRequest,
        now: float,
        held: Callable[[TargetState], bool] | None = None,
        fallback: Callable[[RouteRequest], TargetState] | None = None,
    ) -> TargetState:
        """The target of ``req``: its model's regional target by placement and health (see the module); a model
        with no regional target resolves by ``fallback`` (the router's: a model-version rollout, else by model).
        ``held(ts)``: whether the request's key must stay in target ``ts`` (the key guard suspects it there), so an
        unpinned request whose preferred region holds it does not fail over (a key of death would take a second
        region's pods down)."""
        if req.tenant and self.refreshed:
            placed = self.placements.get(req.tenant)
            if placed is not None and placed.pinned:
                # residency holds on any target: only pods labelled with the home region are eligible (a client's
                # x-brunoise-region naming another region then finds none: 503, never relaxed)
                if req.labels.get("region", placed.home_region) != placed.home_region:
                    raise self._residency(req, placed.home_region, "is not the region the request names")
                req.labels["region"] = placed.home_region
        plain = fallback if fallback is not None else table.resolve
        if req.target is not None or not table.by_model.get(req.model):
            return plain(req)
        cands, regional, p = self._plan(table, req)
        if not regional:
            return plain(req)
        if req.tenant and not self.refreshed:
            # fail closed: the tenant may be pinned, and this router has not read a placement yet
            self.metrics.unavailable.labels("placements_unknown").inc()
            raise Unavailable(
                f"this router has not read the tenant placements yet, so it cannot tell where tenant {req.tenant!r} "
                "may be served (residency is never relaxed); retry shortly",
                code="placements_unknown",
                retry_after_s=self.retry_after_s,
            )
        if not p.pinned and held is not None and p.preferred in regional and held(regional[p.preferred]):
            return regional[p.preferred]
        region = choose(p, {r: usable(ts, now) for r, ts in regional.items()})
        if region is None:
            if p.pinned:
                where = "has no target" if p.preferred not in regional else "has no healthy pod"
                raise self._residency(req, p.preferred, f"{where} for model {req.model!r}", header=p.why == "header")
            # nowhere healthy: region-less targets of the model are the last resort, else the preferred region's
            # target answers (its request path gives the 503)
            rest = [ts for ts in cands if not target_region(ts)]
            return rest[0] if rest else regional.get(p.preferred) or regional[p.order[0]]
        self._count(p, region)
        return regional[region]

    def elsewhere(
        self, table: TargetTable, req: RouteRequest, failed: TargetState, err: RouterError, now: float,
        skip: set[str],
    ) -> TargetState | None:  # fmt: skip
        """After every attempt of an unpinned request in ``failed``'s region failed before its first token (the
        router had not yet seen the region down): the next region's target with a usable pod, else None. The failed
        region joins ``skip`` (regions this request has tried)."""
        region = target_region(failed)
        if err.code not in RETRY_ELSEWHERE or not region or req.target is not None:
            return None
        _, regional, p = self._plan(table, req)
        if p.pinned:
            return None
        skip.add(region)
        nxt = choose(p, {r: r not in skip and usable(ts, now) for r, ts in regional.items()})
        if nxt is None:
            return None
        self._count(p, nxt)
        return regional[nxt]

    def _residency(self, req: RouteRequest, region: str, why: str, header: bool = False) -> Unavailable:
        """503 ``residency_unavailable``: the request may be served in ``region`` only, which ``why``."""
        self.metrics.unavailable.labels("residency").inc()
        who = (
            f"the request names region {region!r} (x-brunoise-region)"
            if header
            else f"tenant {req.tenant!r} is pinned to region {region!r} (residency)"
        )
        return Unavailable(
            f"{who}; region {region!r} {why}, and residency is never relaxed: the request is not sent to another "
            "region",
            code="residency_unavailable",
            retry_after_s=self.retry_after_s,
        )
