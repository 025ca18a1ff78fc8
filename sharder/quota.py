"""Tenant quotas, pure: limits, the tenant's ledger (token buckets + leased allotments) and its grant/return arithmetic.

No clock inside: every function takes ``now_ms``. The assigner keeps one ``Ledger`` per tenant in the store and
changes it only by compare-and-swap (``sharder.assigner.quotas``); routers spend allotments locally.

Model. Requests per second and tokens per minute are token buckets whose capacity is one allotment (so a tenant's
burst is one allotment); a grant takes budget out of the bucket at once, a return puts the unspent part back
(capped at the capacity). Concurrent requests are slots held by allotments: a grant takes free slots, a return or
the allotment's expiry frees them. Budget handed out is spent or returned, never re-granted, so over any window
``T`` the admitted work is at most ``rate x T + capacity`` plus what the allotments in hand still hold: across N
routers, each holding at most one allotment, a tenant exceeds its limit by at most one allotment per router.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from sharder.errors import BrunoiseError


class QuotaError(BrunoiseError, ValueError):
    """A quota limit, allotment request or return is invalid."""


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaLimits:
    """A tenant's limits; 0 means unlimited. ``allotment_s``: seconds of rate one allotment holds (also the burst);
    ``lease_ms``: how long an allotment's concurrency slots stay held without a renewal."""

    tenant: str
    requests_per_s: float = 0.0
    tokens_per_min: float = 0.0
    concurrent: int = 0
    allotment_s: float = 1.0
    lease_ms: int = 10_000

    def validate(self) -> None:
        if not self.tenant:
            raise QuotaError("tenant is required", "tenant")
        if len(self.tenant) > 256:
            raise QuotaError("tenant is longer than 256 characters", "tenant")
        for name in ("requests_per_s", "tokens_per_min", "allotment_s"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise QuotaError(f"{name} must be a finite number >= 0, got {v}", name)
        if self.allotment_s <= 0:
            raise QuotaError("allotment_s must be > 0", "allotment_s")
        if self.concurrent < 0:
            raise QuotaError(f"concurrent must be >= 0, got {self.concurrent}", "concurrent")
        if not 100 <= self.lease_ms <= 600_000:
            raise QuotaError(f"lease_ms must be in [100, 600000], got {self.lease_ms}", "lease_ms")

    @property
    def request_chunk(self) -> int:
        """Requests in one allotment (and the bucket's capacity); 0 when unlimited."""
        return max(1, math.ceil(self.requests_per_s * self.allotment_s)) if self.requests_per_s > 0 else 0

    @property
    def token_chunk(self) -> int:
        """Tokens in one allotment (and the bucket's capacity); 0 when unlimited."""
        return max(1, math.ceil(self.tokens_per_min / 60.0 * self.allotment_s)) if self.tokens_per_min > 0 else 0

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> QuotaLimits:
        doc = json.loads(raw)
        lim = cls(
            tenant=str(doc["tenant"]),
            requests_per_s=float(doc.get("requests_per_s", 0.0)),
            tokens_per_min=float(doc.get("tokens_per_min", 0.0)),
            concurrent=int(doc.get("concurrent", 0)),
            allotment_s=float(doc.get("allotment_s", 1.0)),
            lease_ms=int(doc.get("lease_ms", 10_000)),
        )
        lim.validate()
        return lim


@dataclasses.dataclass(frozen=True, slots=True)
class Allotment:
    """A chunk of a tenant's budget held by one router (``holder``) until it is spent, returned or expires."""

    id: str
    holder: str
    requests: int
    tokens: int
    concurrent: int
    expires_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class AllotmentAsk:
    """What a router asks for: at least ``need_*`` (else nothing is granted of that kind), up to one chunk."""

    holder: str
    need_requests: int = 1
    need_tokens: int = 0
    concurrent: int = 0  # slots wanted (its in-flight requests plus headroom)


@dataclasses.dataclass(frozen=True, slots=True)
class Returned:
    """The unspent part of an allotment handed back."""

    id: str
    unused_requests: int = 0
    unused_tokens: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Ledger:
    """A tenant's linearizable state: bucket levels at ``at_ms`` and the allotments out."""

    requests: float
    tokens: float
    at_ms: int
    out: tuple[Allotment, ...] = ()
    seq: int = 0  # allotments granted so far (ids are "<seq>")

    @classmethod
    def full(cls, limits: QuotaLimits, now_ms: int) -> Ledger:
        return cls(float(limits.request_chunk), float(limits.token_chunk), now_ms)

    @property
    def concurrent_held(self) -> int:
        return sum(a.concurrent for a in self.out)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Ledger:
        doc: dict[str, Any] = json.loads(raw)
        out = tuple(Allotment(**a) for a in doc.get("out", ()))
        return cls(float(doc["requests"]), float(doc["tokens"]), int(doc["at_ms"]), out, int(doc.get("seq", 0)))


def refill(ledger: Ledger, limits: QuotaLimits, now_ms: int) -> Ledger:
    """The ledger at ``now_ms``: buckets refilled (capped at one allotment), expired allotments dropped (their slots
    freed; their unspent rate budget is lost, never re-granted). A clock that went backwards refills nothing."""
    dt_s = max(0, now_ms - ledger.at_ms) / 1000.0
    req = min(float(limits.request_chunk), ledger.requests + limits.requests_per_s * dt_s)
    tok = min(float(limits.token_chunk), ledger.tokens + limits.tokens_per_min / 60.0 * dt_s)
    out = tuple(a for a in ledger.out if a.expires_ms > now_ms)
    return dataclasses.replace(ledger, requests=req, tokens=tok, at_ms=max(now_ms, ledger.at_ms), out=out)


def settle(ledger: Ledger, limits: QuotaLimits, ret: Returned, now_ms: int) -> Ledger:
    """Take allotment ``ret.id`` back: free its slots and credit its unspent budget (at most what it was granted).
    An unknown or expired id returns nothing (its budget already counts as spent)."""
    led = refill(ledger, limits, now_ms)
    held = next((a for a in led.out if a.id == ret.id), None)
    if held is None:
        return led
    if ret.unused_requests < 0 or ret.unused_tokens < 0:
        raise QuotaError("unused budget must be >= 0", "returning")
    r = min(ret.unused_requests, held.requests)
    t = min(ret.unused_tokens, held.tokens)
    return dataclasses.replace(
        led,
        requests=min(float(limits.request_chunk), led.requests + r),
        tokens=min(float(limits.token_chunk), led.tokens + t),
        out=tuple(a for a in led.out if a.id != ret.id),
    )


def grant(
    ledger: Ledger, limits: QuotaLimits, ask: AllotmentAsk, now_ms: int, returning: Returned | None = None
) -> tuple[Ledger, Allotment]:
    """Settle ``returning`` (if any), then grant up to one chunk of each limited kind, all-or-nothing against the
    ask's needs: when the bucket cannot cover ``need_requests`` / ``need_tokens`` or no slot is free, the allotment
    is empty (a router then fails closed). Unlimited kinds grant nothing (a router does not count them)."""
    if not ask.holder:
        raise QuotaError("holder is required", "holder")
    if ask.need_requests < 0 or ask.need_tokens < 0 or ask.concurrent < 0:
        raise QuotaError("asks must be >= 0", "need")
    led = settle(ledger, limits, returning, now_ms) if returning is not None else refill(ledger, limits, now_ms)
    req = math.floor(led.requests + 1e-9) if limits.request_chunk else 0
    tok = math.floor(led.tokens + 1e-9) if limits.token_chunk else 0
    if limits.token_chunk and tok >= limits.token_chunk and ask.need_tokens > tok:
        # one request larger than an allotment: granted from a full bucket, which goes into debt (repaid at the
        # rate), else it could never run; the long-run rate still holds
        tok = ask.need_tokens
    free = max(0, limits.concurrent - led.concurrent_held) if limits.concurrent else 0
    slots = min(max(ask.concurrent, 1), free) if limits.concurrent else 0
    short = (
        (limits.request_chunk and req < max(1, ask.need_requests))
        or (limits.token_chunk and tok < ask.need_tokens)
        or (limits.concurrent and slots < 1)
    )
    if short:
        req = tok = slots = 0
    seq = led.seq + 1
    a = Allotment(str(seq), ask.holder, req, tok, slots, now_ms + limits.lease_ms)
    out = (*led.out, a) if (req or tok or slots) else led.out
    return dataclasses.replace(led, requests=led.requests - req, tokens=led.tokens - tok, out=out, seq=seq), a


def status(ledger: Ledger | None, limits: QuotaLimits, now_ms: int) -> Ledger:
    """The ledger as it stands at ``now_ms`` (a full one when none is stored yet)."""
    return refill(ledger, limits, now_ms) if ledger is not None else Ledger.full(limits, now_ms)
