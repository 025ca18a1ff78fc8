"""The store-backed quota ledger: tenant limits in store meta, each tenant's ledger changed only by compare-and-swap.

Any assigner replica may serve these calls: the CAS on the stored ledger linearizes them (no leader needed), and
allotments live in the store, so they survive an assigner failover.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from brunoise_api.v1 import assigner_pb2
from sharder.quota import Allotment, AllotmentAsk, Ledger, QuotaLimits, Returned, grant, settle, status
from sharder.store.base import Store, StoreError

LIMITS_PREFIX = "quota/limits/"
LEDGER_PREFIX = "quota/ledger/"
CAS_ATTEMPTS = 16


def _now_ms() -> int:
    return int(time.time() * 1000)


class QuotaConflict(StoreError):
    """The ledger kept changing under us (too many concurrent writers); the caller may retry."""


class QuotaLedgers:
    """Limits and ledgers of every tenant in ``store``; ``clock`` gives wall-clock ms (shared by every replica)."""

    def __init__(self, store: Store, clock: Callable[[], int] = _now_ms) -> None:
        self.store = store
        self.clock = clock

    async def limits(self, tenant: str) -> QuotaLimits | None:
        raw = await self.store.get_meta(LIMITS_PREFIX + tenant)
        return QuotaLimits.from_json(raw) if raw is not None else None

    async def set_limits(self, limits: QuotaLimits) -> None:
        limits.validate()
        await self.store.put_meta(LIMITS_PREFIX + limits.tenant, limits.to_json())

    async def delete(self, tenant: str) -> None:
        await self.store.delete_meta(LIMITS_PREFIX + tenant)
        await self.store.delete_meta(LEDGER_PREFIX + tenant)

    async def list_limits(self) -> list[QuotaLimits]:
        found = await self.store.list_meta(LIMITS_PREFIX)
        return [QuotaLimits.from_json(v) for _, v in sorted(found.items())]

    async def status(self, limits: QuotaLimits) -> Ledger:
        raw = await self.store.get_meta(LEDGER_PREFIX + limits.tenant)
        return status(Ledger.from_json(raw) if raw is not None else None, limits, self.clock())

    async def _update(self, limits: QuotaLimits, change: Callable[[Ledger, int], Ledger]) -> Ledger:
        key = LEDGER_PREFIX + limits.tenant
        for _ in range(CAS_ATTEMPTS):
            raw = await self.store.get_meta(key)
            now = self.clock()
            cur = Ledger.from_json(raw) if raw is not None else Ledger.full(limits, now)
            new = change(cur, now)
            if await self.store.cas_meta(key, raw, new.to_json()):
                return new
        raise QuotaConflict(f"the quota ledger of tenant {limits.tenant!r} kept changing; retry")

    async def acquire(self, limits: QuotaLimits, ask: AllotmentAsk, returning: Returned | None = None) -> Allotment:
        got: list[Allotment] = []

        def change(cur: Ledger, now: int) -> Ledger:
            led, a = grant(cur, limits, ask, now, returning)
            got[:] = [a]
            return led

        await self._update(limits, change)
        return got[0]

    async def give_back(self, limits: QuotaLimits, returning: Returned) -> None:
        await self._update(limits, lambda cur, now: settle(cur, limits, returning, now))


# wire ------------------------------------------------------------------------------------------------
def limits_to_proto(lim: QuotaLimits) -> assigner_pb2.QuotaLimits:
    return assigner_pb2.QuotaLimits(
        tenant=lim.tenant,
        requests_per_s=lim.requests_per_s,
        tokens_per_min=lim.tokens_per_min,
        concurrent=lim.concurrent,
        allotment_s=lim.allotment_s,
        lease_ms=lim.lease_ms,
    )


def limits_from_proto(m: assigner_pb2.QuotaLimits) -> QuotaLimits:
    """Validated limits; proto3 zeros of ``allotment_s`` / ``lease_ms`` mean the defaults."""
    unset = QuotaLimits(tenant=m.tenant)  # its defaults, for the proto3 zeros
    lim = QuotaLimits(
        tenant=m.tenant,
        requests_per_s=m.requests_per_s,
        tokens_per_min=m.tokens_per_min,
        concurrent=m.concurrent,
        allotment_s=m.allotment_s or unset.allotment_s,
        lease_ms=m.lease_ms or unset.lease_ms,
    )
    lim.validate()
    return lim


def allotment_to_proto(a: Allotment) -> assigner_pb2.QuotaAllotment:
    return assigner_pb2.QuotaAllotment(
        id=a.id, holder=a.holder, requests=a.requests, tokens=a.tokens, concurrent=a.concurrent,
        expires_unix_ms=a.expires_ms,
    )  # fmt: skip


def status_to_proto(lim: QuotaLimits, led: Ledger) -> assigner_pb2.QuotaStatus:
    return assigner_pb2.QuotaStatus(
        limits=limits_to_proto(lim),
        requests_available=led.requests,
        tokens_available=led.tokens,
        concurrent_held=led.concurrent_held,
        allotments=[allotment_to_proto(a) for a in led.out],
    )


def returned_from_proto(m: assigner_pb2.AllotmentReturn) -> Returned | None:
    return Returned(m.id, m.unused_requests, m.unused_tokens) if m.id else None
