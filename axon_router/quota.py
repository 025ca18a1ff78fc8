"""Router-side tenant quotas: spends leased allotments locally, refills ahead in the background, fails closed.

A router holds at most one allotment per tenant (``sharder.quota``): a refill returns the unspent rest of the one it
holds and takes a new one in the same call (``AcquireAllotment``), so across N routers a tenant exceeds its limit by
at most one allotment per router. Requests wait for a refill only ``wait_s``; when the assigners (the store) cannot
be reached, a router spends what it holds and then answers 429 ``quota_exceeded`` with Retry-After (fail closed).
A tenant the assigner says has no quota is not counted for ``unlimited_ttl_s`` (a quota set meanwhile takes
effect within that time).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable

import grpc

from axon_router.assigner_client import AssignerCalls
from axon_router.errors import Shed
from brunoise_api.v1 import assigner_pb2

log = logging.getLogger("axon_router.quota")

#: A refill after an empty grant or a failed call waits this long (denied requests fail fast meanwhile).
EMPTY_BACKOFF_S = 0.05
FAILED_BACKOFF_S = 0.25


@dataclasses.dataclass(slots=True)
class _Held:
    """The allotment a router holds for one tenant (what is left of it)."""

    id: str = ""
    requests: int = 0
    tokens: int = 0
    slots: int = 0
    count_requests: bool = False
    count_tokens: bool = False
    count_slots: bool = False
    valid_until: float = 0.0
    renew_at: float = 0.0
    chunk_requests: int = 0
    chunk_tokens: int = 0


@dataclasses.dataclass(slots=True)
class _Tenant:
    name: str
    held: _Held | None = None
    unlimited_until: float = 0.0
    inflight: int = 0
    refill: asyncio.Task[None] | None = None
    next_ask_at: float = 0.0
    why: str = ""  # why the last refill gave nothing
    limits: str = ""  # the limits, as words, for error messages


@dataclasses.dataclass(slots=True)
class QuotaTicket:
    """What one admitted request took: returned by ``QuotaGate.release``."""

    tenant: str
    tokens: int
    counted: bool
    done: bool = False


class QuotaGate:
    """Per-tenant admission against allotments drawn from the assigners (any replica; tried in turn)."""

    def __init__(
        self,
        calls: AssignerCalls,
        holder: str,
        *,
        wait_s: float = 0.5,
        unlimited_ttl_s: float = 5.0,
        headroom: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.calls = calls
        self.holder = holder
        self.wait_s = wait_s
        self.unlimited_ttl_s = unlimited_ttl_s
        self.headroom = headroom
        self.clock = clock
        self.tenants: dict[str, _Tenant] = {}
        self.denied = 0
        self.refills = 0
        self.refill_failures = 0

    async def stop(self) -> None:
        """Return every allotment held (best effort)."""
        for t in self.tenants.values():
            if t.refill is not None:
                t.refill.cancel()
        for name, t in self.tenants.items():
            h = t.held
            if h is not None and h.id and h.valid_until > self.clock():
                ret = assigner_pb2.AllotmentReturn(
                    id=h.id, unused_requests=max(0, h.requests), unused_tokens=max(0, h.tokens)
                )
                with contextlib.suppress(Exception):
                    await self.calls.call(
                        "ReturnAllotment", assigner_pb2.ReturnAllotmentRequest(tenant=name, returning=ret)
                    )

    # ------------------------------------------------------------------------------------------ the request path
    async def admit(self, tenant: str, tokens: int) -> QuotaTicket:
        """Take one request, ``tokens`` tokens and a concurrency slot from ``tenant``'s allotment, refilling (at
        most ``wait_s``) when it runs short; ``Shed`` (429 ``quota_exceeded``) when it cannot."""
        t = self.tenants.get(tenant)
        if t is None:
            t = self.tenants[tenant] = _Tenant(tenant)
        now = self.clock()
        if t.unlimited_until > now:
            if t.unlimited_until - now < self.unlimited_ttl_s / 2:
                self._kick(t, tokens)
            return QuotaTicket(tenant, 0, counted=False)
        if self._take(t, tokens, now):
            return QuotaTicket(tenant, tokens, counted=True)
        if now >= t.next_ask_at or t.refill is not None:
            task = self._kick(t, tokens)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self.wait_s)
            now = self.clock()
            if t.unlimited_until > now:
                return QuotaTicket(tenant, 0, counted=False)
            if self._take(t, tokens, now):
                return QuotaTicket(tenant, tokens, counted=True)
        self.denied += 1
        raise Shed(
            f"tenant {tenant!r} is over its quota ({t.limits or 'limits unknown'}): {t.why or 'allotment spent'}; "
            "retry later",
            code="quota_exceeded",
            param="x-tenant-id",
            retry_after_s=1.0,
        )

    def release(self, ticket: QuotaTicket, *, served: bool, used_tokens: int | None = None) -> None:
        """End a request: free its slot; a request never forwarded gives its request and tokens back, a finished
        one settles its tokens with the real usage when known (else it stays charged its reservation)."""
        if ticket.done or not ticket.counted:
            ticket.done = True
            return
        ticket.done = True
        t = self.tenants.get(ticket.tenant)
        if t is None:
            return
        t.inflight = max(0, t.inflight - 1)
        h = t.held
        if h is None:
            return
        if not served:
            h.requests += 1 if h.count_requests else 0
            h.tokens += ticket.tokens if h.count_tokens else 0
        elif used_tokens is not None and h.count_tokens:
            h.tokens += ticket.tokens - used_tokens

    def _take(self, t: _Tenant, tokens: int, now: float) -> bool:
        h = t.held
        if h is None or h.valid_until <= now:
            return False
        if (
            (h.count_requests and h.requests < 1)
            or (h.count_tokens and h.tokens < tokens)
            or (h.count_slots and t.inflight >= h.slots)
        ):
            return False
        h.requests -= 1 if h.count_requests else 0
        h.tokens -= tokens if h.count_tokens else 0
        t.inflight += 1
        low = (
            now >= h.renew_at
            or (h.count_requests and h.requests * 2 < h.chunk_requests)
            or (h.count_tokens and h.tokens * 2 < h.chunk_tokens)
            or (h.count_slots and t.inflight >= h.slots)
        )
        if low and now >= t.next_ask_at:
            self._kick(t, tokens)
        return True

    # ------------------------------------------------------------------------------------------ refills
    def _kick(self, t: _Tenant, tokens: int) -> asyncio.Task[None]:
        if t.refill is None:
            t.refill = asyncio.get_running_loop().create_task(self._refill(t.name, t, tokens), name=f"quota-{t.name}")
        return t.refill

    async def _refill(self, tenant: str, t: _Tenant, need_tokens: int) -> None:
        try:
            h = t.held
            now = self.clock()
            ret = None
            declared = (0, 0)
            if h is not None and h.id and h.valid_until > now:
                declared = (max(0, h.requests), max(0, h.tokens))
                ret = assigner_pb2.AllotmentReturn(id=h.id, unused_requests=declared[0], unused_tokens=declared[1])
                # what is returned is no longer ours to spend, whatever the call's outcome
                h.requests -= declared[0]
                h.tokens -= declared[1]
            req = assigner_pb2.AcquireAllotmentRequest(
                tenant=tenant,
                holder=self.holder,
                need_requests=1,
                need_tokens=max(0, need_tokens),
                concurrent=t.inflight + self.headroom,
                returning=ret,
            )
            sent = self.clock()
            try:
                resp: assigner_pb2.AcquireAllotmentResponse = await self.calls.call("AcquireAllotment", req)
            except grpc.aio.AioRpcError as e:
                self.refill_failures += 1
                if h is not None and e.code() == grpc.StatusCode.UNAVAILABLE:  # not delivered: still ours
                    h.requests += declared[0]
                    h.tokens += declared[1]
                t.why = "the quota store cannot be reached and the allotment in hand is spent"
                t.next_ask_at = self.clock() + FAILED_BACKOFF_S
                log.warning("quota refill failed", extra={"tenant": tenant, "error": e.code().name})
                return
            self.refills += 1
            if resp.unlimited:
                t.unlimited_until = sent + self.unlimited_ttl_s
                t.held = None
                return
            t.unlimited_until = 0.0
            lim = resp.limits
            a = resp.allotment
            lease_s = (lim.lease_ms or 10_000) / 1000.0
            allot_s = lim.allotment_s or 1.0
            t.held = _Held(
                id=a.id,
                requests=int(a.requests),
                tokens=int(a.tokens),
                slots=int(a.concurrent),
                count_requests=lim.requests_per_s > 0,
                count_tokens=lim.tokens_per_min > 0,
                count_slots=lim.concurrent > 0,
                valid_until=sent + lease_s,
                renew_at=sent + lease_s / 2,
                chunk_requests=max(1, math.ceil(lim.requests_per_s * allot_s)) if lim.requests_per_s > 0 else 0,
                chunk_tokens=max(1, math.ceil(lim.tokens_per_min / 60 * allot_s)) if lim.tokens_per_min > 0 else 0,
            )
            if h is not None and ret is not None:
                # refunds and settlements that arrived during the call belong to the new allotment
                t.held.requests += max(0, h.requests)
                t.held.tokens += h.tokens
            t.limits = _describe(lim)
            empty = not (a.requests or a.tokens or a.concurrent)
            t.why = "its budget is spent for now" if empty else ""
            t.next_ask_at = self.clock() + (EMPTY_BACKOFF_S if empty else 0.0)
        finally:
            t.refill = None


def _describe(lim: assigner_pb2.QuotaLimits) -> str:
    parts = []
    if lim.requests_per_s > 0:
        parts.append(f"requests_per_s={lim.requests_per_s:g}")
    if lim.tokens_per_min > 0:
        parts.append(f"tokens_per_min={lim.tokens_per_min:g}")
    if lim.concurrent > 0:
        parts.append(f"concurrent={lim.concurrent}")
    return ", ".join(parts) or "unlimited"


def used_tokens(body: bytes | None) -> int | None:
    """Prompt + completion tokens from an OpenAI response body's ``usage``, None when it has none (a stream)."""
    if not body:
        return None
    try:
        usage = json.loads(body).get("usage") or {}
        return int(usage["prompt_tokens"]) + int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
