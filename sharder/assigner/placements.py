"""Tenant placements (home region, residency pin) in store meta ``placement/<tenant>``, and their wire form.

A placement is one small record written whole (no read-modify-write), so a plain put is linearizable enough; any
assigner replica serves these calls, and routers read them all with ``ListPlacements`` (reader role).
"""

from __future__ import annotations

from brunoise_api.v1 import assigner_pb2
from sharder.regions import TenantPlacement
from sharder.store.base import Store

PLACEMENT_PREFIX = "placement/"


class Placements:
    """Every tenant's placement in ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def set(self, placement: TenantPlacement) -> None:
        placement.validate()
        await self.store.put_meta(PLACEMENT_PREFIX + placement.tenant, placement.to_json())

    async def delete(self, tenant: str) -> None:
        await self.store.delete_meta(PLACEMENT_PREFIX + tenant)

    async def list(self) -> list[TenantPlacement]:
        found = await self.store.list_meta(PLACEMENT_PREFIX)
        return [TenantPlacement.from_json(v) for _, v in sorted(found.items())]


def placement_to_proto(p: TenantPlacement) -> assigner_pb2.TenantPlacement:
    return assigner_pb2.TenantPlacement(tenant=p.tenant, home_region=p.home_region, pinned=p.pinned)


def placement_from_proto(m: assigner_pb2.TenantPlacement) -> TenantPlacement:
    """A validated placement (PlacementError names the bad field)."""
    p = TenantPlacement(tenant=m.tenant, home_region=m.home_region, pinned=m.pinned)
    p.validate()
    return p
