"""Regions, pure: a tenant's placement (home region, residency pin) and the deterministic order of regions to try.

A request's *preferred* region is its tenant's home region, else the router's own region. An unpinned request
goes to the first region of ``region_order`` that has a healthy pod, so it fails over when its home region has
none and comes back as soon as it has one again. A pinned (residency) request has exactly one region and never
leaves it: with no healthy pod there, it fails closed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping

from sharder.errors import BrunoiseError

#: What a region name may be: a pod label value (``x-brunoise-region``'s rule).
REGION_RE = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")


class PlacementError(BrunoiseError, ValueError):
    """A tenant placement is invalid."""


@dataclasses.dataclass(frozen=True, slots=True)
class TenantPlacement:
    """Where a tenant's traffic lives: ``home_region``; ``pinned``: residency, its requests never leave it."""

    tenant: str
    home_region: str
    pinned: bool = False

    def validate(self) -> None:
        if not self.tenant:
            raise PlacementError("tenant is required", "tenant")
        if len(self.tenant) > 256:
            raise PlacementError("tenant is longer than 256 characters", "tenant")
        if not REGION_RE.match(self.home_region):
            raise PlacementError(
                f"home_region must be 1..63 characters of [A-Za-z0-9._/-], got {self.home_region!r}", "home_region"
            )

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TenantPlacement:
        doc = json.loads(raw)
        p = cls(tenant=str(doc["tenant"]), home_region=str(doc["home_region"]), pinned=bool(doc.get("pinned", False)))
        p.validate()
        return p


@dataclasses.dataclass(frozen=True, slots=True)
class RegionPlan:
    """The regions a request may be served in, best first; ``pinned``: only ``order[0]``, fail closed."""

    order: tuple[str, ...]
    preferred: str
    pinned: bool
    why: str  # "residency" (pinned placement), "header" (x-brunoise-region), "home", "own" or "any"


def plan(
    placement: TenantPlacement | None, own_region: str, regions: Iterable[str], header_region: str | None = None
) -> RegionPlan:
    """The regions to try for one request, in a deterministic order.

    A pinned placement has its home region only. Else ``header_region`` (the client's ``x-brunoise-region``)
    pins the request like a residency placement. Otherwise the
    preferred region is the placement's home, else ``own_region``; an unpinned request then tries the router's
    own region, then the others by name. With no preference at all, the own region first, then by name.
    """
    known = sorted(set(regions))
    if placement is not None and placement.pinned:  # before the header: a client cannot move a pinned tenant
        return RegionPlan((placement.home_region,), placement.home_region, True, "residency")
    if header_region:
        return RegionPlan((header_region,), header_region, True, "header")
    if placement is not None:
        preferred, why = placement.home_region, "home"
    elif own_region:
        preferred, why = own_region, "own"
    else:
        return RegionPlan(tuple(known), known[0] if known else "", False, "any")
    order = [preferred]
    if own_region and own_region != preferred:
        order.append(own_region)
    order += [r for r in known if r not in order]
    return RegionPlan(tuple(order), preferred, False, why)


def choose(p: RegionPlan, healthy: Mapping[str, bool]) -> str | None:
    """The first region of the plan with a healthy pod; None when there is none (pinned: its one region is down)."""
    return next((r for r in p.order if healthy.get(r, False)), None)


__all__ = ["REGION_RE", "PlacementError", "RegionPlan", "TenantPlacement", "choose", "plan"]
