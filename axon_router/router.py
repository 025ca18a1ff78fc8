"""The request path: target and clerk lookup, the pick (``axon_router.pick``) with admission, retry and forward."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from axon_router import tracing
from axon_router.admission import Admission, Decision, DemandMeter, Outcome, Priority, contended, share_ratio
from axon_router.cost import PickInput
from axon_router.errors import (
    Conflict,
    DeadlineExceeded,
    KeyQuarantined,
    RouterError,
    Shed,
    StreamBroken,
    Unavailable,
    UpstreamError,
)
from axon_router.failover import RetryableError, backoff_s
from axon_router.forward import Forwarder, Upstream
from axon_router.knobs import Knobs
from axon_router.metrics import RouterMetrics
from axon_router.pick import HELD, SUBSET, Candidates, CostPick, PickPolicy, Ranking, pull_source
from axon_router.pod_view import PodView, Residence, Ticket
from axon_router.pollers import Pollers
from axon_router.quarantine import FAULT_CAUSES, KeyGuard, contained
from axon_router.quota import QuotaGate, QuotaTicket, used_tokens
from axon_router.regions import RegionRouter
from axon_router.rollout import RolloutView
from axon_router.routing_key import RouteRequest
from axon_router.targets import ClerkLike, TargetState, TargetTable, new_session_replicas, not_outside
from sharder.headers import (
    ATTEMPTS_HEADER,
    DEADLINE_HEADER,
    KV_PULL_HEADER,
    PICK_HEADER,
    PICK_RULE_HEADER,
    ROUTER_POD_HEADER,
    SLICE_KEY_HEADER,
)

log = logging.getLogger("axon_router")


@dataclasses.dataclass(slots=True)
class Flight:
    """One request in the router, from parse to the end of its response."""

    req: RouteRequest
    frontend: str
    t0: float
    span: Any
    target: str = ""
    pod: PodView | None = None
    ticket: Ticket | None = None
    reason: str = ""
    attempts: int = 0
    upstream: Upstream | None = None
    first_token_at: float = 0.0
    traceparent_out: str | None = None
    closed: bool = False
    quota: QuotaTicket | None = None
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)  # span attributes, set once at the end

    def pick_metadata(self) -> tuple[tuple[str, str], ...]:
        """Where and why the request went, for the client: HTTP response headers, gRPC trailing metadata."""
        return (
            (ROUTER_POD_HEADER, self.pod.id if self.pod else ""),
            (PICK_HEADER, self.reason),
            (PICK_RULE_HEADER, str(self.attrs.get("brunoise.pick_rule", ""))),
            (ATTEMPTS_HEADER, str(self.attempts)),
        )


def count_pick(m: RouterMetrics, d: Decision) -> None:
    """Count a first pick in ``brunoise_router_picks_total{reason}`` by its outcome (and the subset or held
    pick's rule in ``brunoise_router_pick_rule_total``)."""
    m.picks_by_reason[d.outcome.value].inc()
    if d.outcome in (Outcome.IN_SUBSET, Outcome.HELD):
        m.pick_rule.labels(d.rule).inc()


class Router:
    """Shares nothing with other router replicas but the assignment (through the clerk)."""

    def __init__(
        self,
        clerk: ClerkLike,
        knobs: Knobs,
        metrics: RouterMetrics | None = None,
        policy: PickPolicy | None = None,
        quota: QuotaGate | None = None,
        guard: KeyGuard | None = None,
        rollouts: RolloutView | None = None,
        regions: RegionRouter | None = None,
    ) -> None:
        self.clerk = clerk
        self.regions = regions
        self.quota = quota
        self.guard = guard
        self.rollouts = rollouts
        self.knobs = knobs
        self.metrics = metrics or RouterMetrics(knobs)
        self.policy: PickPolicy = policy or CostPick(knobs)
        self.admission = Admission(knobs)
        self.forwarder = Forwarder(knobs)
        self.pollers = Pollers(knobs, self.metrics, self.forwarder)
        self.table = TargetTable(clerk, knobs, self.metrics, self.pollers.start, self.pollers.stop_soon)
        self.residence = Residence()
        self.inflight_ids: set[str] = set()
        self.demand = DemandMeter()  # per-tenant request rate ("" none), for fair shedding
        self._refresh_task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.forwarder.start()
        self.refresh()
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="router-refresh")

    async def stop(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        await self.pollers.stop_all()
        await self.forwarder.stop()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.knobs.clerk_refresh_s)
            try:
                self.refresh()
            except Exception:  # keep routing on the last state
                log.exception("refresh from the clerk failed")

    def refresh(self) -> bool:
        """Rebuild target states whose generation changed (``TargetTable.refresh``)."""
        return self.table.refresh()

    # ------------------------------------------------------------------------------------------ lookup
    @property
    def pods(self) -> dict[str, PodView]:
        return self.table.pods

    @property
    def targets(self) -> dict[str, TargetState]:
        return self.table.targets

    @property
    def by_model(self) -> dict[str, list[TargetState]]:
        return self.table.by_model

    def models(self) -> list[str]:
        return self.table.models()

    def resolve(self, req: RouteRequest) -> TargetState:
        """The request's target: by its model's rollout (``axon_router.rollout``) unless it names one, else by model."""
        if req.target is None and self.rollouts is not None:
            ts = self.rollouts.pick(req.model, req.slice_key, self.table.targets, self._any_usable)
            if ts is not None:
                return ts
        return self.table.resolve(req)

    @staticmethod
    def _any_usable(ts: TargetState) -> bool:
        now = time.monotonic()
        return any(v.healthy and v.breaker.available(now) for v in ts.pool)

    def lookup(self, target: str, slice_key: int) -> dict[str, Any]:
        """Debug view of a key (``TargetTable.lookup``)."""
        return self.table.lookup(target, slice_key)

    def pod_states(self) -> list[dict[str, Any]]:
        """Debug view of every pod (``TargetTable.pod_states``)."""
        return self.table.pod_states(time.monotonic())

    # ------------------------------------------------------------------------------------------ the request path
    def begin(self, req: RouteRequest, frontend: str) -> Flight:
        """Register a request: idempotency check and its span. Always pair with ``finish``."""
        rid = req.request_id
        if rid is not None:
            if rid in self.inflight_ids:
                self.metrics.idempotency_conflicts.inc()
                raise Conflict(
                    f"request id {rid!r} is already in flight; wait for it or use a new id",
                    param="x-request-id",
                    code="request_in_flight",
                )
            self.inflight_ids.add(rid)
        parent = tracing.extract(req.traceparent, req.tracestate)
        span = tracing.start_span(
            "router.generate",
            parent,
            {
                "brunoise.frontend": frontend,
                "brunoise.model": req.model,
                "brunoise.slice_key": str(req.slice_key),
                "brunoise.key_source": req.key_source,
            },
        )
        f = Flight(req, frontend, time.monotonic(), span)
        f.traceparent_out = tracing.traceparent_of(span, req.traceparent)
        return f

    @staticmethod
    def _usable(
        ts: TargetState, ids: Sequence[str], elig_ids: AbstractSet[str], tried: Sequence[str], now: float
    ) -> list[str]:
        """The pods of ``ids`` that are eligible, not yet tried, healthy and not behind an open breaker."""
        return [
            i
            for i in ids
            if (v := ts.pods.get(i)) is not None
            and i in elig_ids
            and i not in tried
            and v.healthy
            and v.breaker.available(now)
        ]

    async def open(self, f: Flight) -> Upstream:
        """Pick a pod and get the first token (or the whole body) from it, failing over before the first token
        (to another region for an unpinned request whose every attempt in its region failed)."""
        req = f.req
        self.metrics.routing_key_source.labels(req.key_source).inc()
        self.metrics.routing_group_source.labels(req.group_source).inc()
        regions = self.regions
        if regions is None:
            return await self._open_in(f, self.resolve(req))
        guard = self.guard
        held = None if guard is None else (lambda t: guard.state(t.name, req.slice_key) != "clear")
        ts = regions.resolve(self.table, req, time.monotonic(), held, fallback=self.resolve)
        tried_regions: set[str] = set()
        while True:
            try:
                return await self._open_in(f, ts)
            except Unavailable as e:
                # nothing was tried (the region's verdict stands, e.g. residency), or the key guard keeps the key in
                # its subset (a key of death must not take a second region down)
                if f.attempts == 0 or (held is not None and held(ts)):
                    raise
                nxt = regions.elsewhere(self.table, req, ts, e, time.monotonic(), tried_regions)
                if nxt is None:
                    raise
                ts = nxt

    async def _open_in(self, f: Flight, ts: TargetState) -> Upstream:
        """``open`` within target ``ts``."""
        req = f.req
        k = self.knobs
        m = self.metrics
        f.target = ts.name
        guard = self.guard
        suspected = False
        if guard is not None:
            st = guard.state(ts.name, req.slice_key)
            if st == "quarantined":
                raise self._quarantined(ts.name, req.slice_key)
            suspected = st == "suspected"
        if self.quota is not None and req.tenant and f.quota is None:
            try:
                f.quota = await self.quota.admit(req.tenant, req.prompt_tokens + req.max_tokens)
            except Shed:
                m.quota_denied.inc()
                f.reason = "quota"
                raise
        sa = ts.assignment.lookup(req.slice_key)
        # Make-before-break: leaving pods still hold the slice for this generation, but new sessions go to the
        # replicas; a leaving pod is in the subset only when no replica can be used, and otherwise outside, where
        # the held tier keeps the sessions whose cache it holds (targets.not_outside).
        if req.labels:
            elig, elig_ids = ts.eligible(req.labels)
            if not elig:
                m.unavailable.labels("no_pod_with_labels").inc()
                raise Unavailable(
                    f"no pod of target {ts.name!r} carries labels {req.labels}; residency is never relaxed",
                    code="no_eligible_pod",
                )
        else:
            elig, elig_ids = ts.pool, frozenset(ts.pods)
        attrs = f.attrs
        attrs["brunoise.target"] = ts.name
        attrs["brunoise.generation"] = ts.generation
        attrs["brunoise.slice"] = f"{sa.slice.lo:x}-{sa.slice.hi:x}"
        if req.group is not None:
            attrs["brunoise.group"] = f"{req.group:08x}"
        attrs["brunoise.group_source"] = req.group_source
        pin = PickInput(req.slice_key, req.prefix_hashes, req.prompt_tokens, req.max_tokens, req.session_chunks)
        headers = {"content-type": "application/json", SLICE_KEY_HEADER: str(req.slice_key)}
        if f.traceparent_out:
            headers["traceparent"] = f.traceparent_out
        if req.request_id:
            headers["x-request-id"] = req.request_id
        headers[DEADLINE_HEADER] = str(int((time.time() + req.deadline - time.monotonic()) * 1000))
        tried: list[str] = []
        last: RetryableError | None = None
        counted = False
        ranking: Ranking | None = None
        while True:
            now = time.monotonic()
            left = req.deadline - now
            if left <= 0:
                m.errors.labels("deadline").inc()
                raise DeadlineExceeded(
                    f"deadline exceeded after {f.attempts} attempt(s)" + (f": {last.message}" if last else ""),
                    code="deadline_exceeded",
                )
            # warming replicas take no new session while a warm one can (targets.new_session_replicas); retries
            # may use every replica
            starts = new_session_replicas(sa, ts.pods, pin.prefix_hashes, pin.session_chunks, now, k)
            subset = self._usable(ts, starts if f.attempts == 0 else sa.replicas, elig_ids, tried, now)
            if not subset and starts is not sa.replicas:
                subset = self._usable(ts, sa.replicas, elig_ids, tried, now)
            if not subset and sa.leaving:
                subset = self._usable(ts, sa.leaving, elig_ids, tried, now)
            inside = not_outside(sa, subset)
            outside = [
                v.id
                for v in elig
                if v.id not in inside and v.id not in tried and v.healthy and v.breaker.available(now)
            ]
            if suspected:
                # beyond its subset only when no subset pod can take it, and then to one pod (quarantine.contained)
                outside = contained(outside, subset, req.slice_key)
            if f.attempts == 0:
                tenant = req.tenant or ""
                if not counted:  # once per request (a suspected key decides again)
                    self.demand.observe(tenant, now)
                    counted = True
                rates = self.demand.rates(now)
                share = share_ratio(tenant, rates)
                d = self.admission.decide(
                    self.policy,
                    subset,
                    outside,
                    ts.pods,
                    pin,
                    now,
                    req.priority,
                    share,
                    share <= 1.0 and contended(rates),
                )
                if (
                    d.outcome in (Outcome.SPILL, Outcome.FALLBACK, Outcome.OVERFLOW)
                    and not suspected
                    and await self._suspect(ts.name, req)
                ):
                    suspected = True
                    continue  # decide again inside the subset
                if d.outcome is Outcome.SHED:
                    pr = "batch" if req.priority is Priority.BATCH else "interactive"
                    m.sheds.labels(pr).inc()
                    if share > 1.0:
                        m.fair_sheds.inc()
                    f.reason = "shed"
                    attrs["brunoise.pick_reason"] = "shed"
                    log.info("shed", extra={"target": ts.name, "priority": pr, "slice_key": req.slice_key})
                    raise Shed(
                        f"every eligible pod of target {ts.name!r} is over its admission limit ({pr}); retry after {k.retry_after_s:g}s",
                        code="overloaded",
                        retry_after_s=k.retry_after_s,
                    )
                if d.outcome is Outcome.UNAVAILABLE or d.pick is None:
                    m.unavailable.labels("no_healthy_pod").inc()
                    raise Unavailable(
                        f"no healthy pod of target {ts.name!r}"
                        + (f" with labels {req.labels}" if req.labels else "")
                        + " can take the request",
                        code="no_healthy_pod",
                        retry_after_s=k.retry_after_s,
                    )
                pick = d.pick
                ranking = d.ranking
                reason = d.outcome.value
                count_pick(m, d)
                if d.rule:
                    attrs["brunoise.pick_rule"] = d.rule
                if d.outcome is Outcome.SPILL:
                    log.info("spill", extra={"target": ts.name, "pod": pick.pod.id, "slice_key": req.slice_key})
            else:
                ranking = self.policy.choose_replicas(pin, Candidates(subset, outside), ts.pods, now)
                first = ranking.first()
                outside_subset = first is not None and first[0] not in (SUBSET, HELD)
                if outside_subset and not suspected and await self._suspect(ts.name, req):
                    suspected = True
                    continue
                if first is None:
                    m.unavailable.labels("retries_exhausted").inc()
                    raise Unavailable(
                        f"no other healthy pod to retry on after {f.attempts} attempt(s): {last.message if last else ''}",
                        code="no_healthy_pod",
                        retry_after_s=k.retry_after_s,
                    )
                pick = first[1]
                reason = "retry"
                m.picks_retry.inc()
            pod = pick.pod
            f.attempts += 1
            f.reason = reason
            probe = pod.breaker.acquire(now)
            ticket = pod.begin(
                req.prompt_tokens + req.max_tokens, pick.miss_tokens, req.prefix_hashes, now, req.slice_key
            )
            self.residence.placed(self.table.pods, pod, req.prefix_hashes, now, req.slice_key)
            g = pod.inflight_gauge
            if g is not None:
                g.inc()  # type: ignore[attr-defined]
            sent = headers
            hint = (
                pull_source(ranking, pick, req.slice_key, k.kv_pull_min_chunks, k.key_layout == "grouped")
                if ranking is not None
                else None
            )
            if hint is not None:
                sent = {**headers, KV_PULL_HEADER: hint.header()}
                m.kv_pulls.inc()
            try:
                up = await self.forwarder.open(pod.http_address, req.path, req.body, sent, req.stream, left)
            except RetryableError as e:
                self._end_ticket(pod, ticket, failed=e.computed_nothing)
                self.residence.failed(pod, req.slice_key)
                if e.pod_fault:
                    self._pod_failed(pod)
                elif probe:
                    pod.breaker.release_probe()
                last = e
                tried.append(pod.id)
                if guard is not None and e.pod_fault and e.cause in FAULT_CAUSES:
                    if await guard.fault(ts.name, req.slice_key, pod.id, e.cause) == "quarantined":
                        raise self._quarantined(ts.name, req.slice_key) from None
                    suspected = True
                m.retries.labels(e.cause).inc()
                log.info(
                    "attempt failed", extra={"pod": pod.id, "cause": e.cause, "attempt": f.attempts, "error": e.message}
                )
                if f.attempts >= k.max_attempts:
                    raise Unavailable(
                        f"{f.attempts} attempt(s) failed before the first token; last: {e.message}",
                        code="upstream_unavailable",
                        retry_after_s=k.retry_after_s,
                    ) from None
                pause = backoff_s(f.attempts, k.retry_backoff_s, k.retry_backoff_max_s, self._rng)
                if pause > 0 and time.monotonic() + pause < req.deadline:
                    await asyncio.sleep(pause)
                continue
            except UpstreamError:
                self._end_ticket(pod, ticket, failed=True)
                self.residence.failed(pod, req.slice_key)
                self._pod_ok(pod)
                raise
            except BaseException:
                self._end_ticket(pod, ticket)
                self.residence.failed(pod, req.slice_key)
                if probe:
                    pod.breaker.release_probe()
                raise
            f.pod = pod
            f.ticket = ticket
            f.upstream = up
            f.first_token_at = time.monotonic()
            pod.first_token(ticket)
            self.residence.served(self.table.pods, pod, req.prefix_hashes, now, req.slice_key)
            attrs["brunoise.pod"] = pod.id
            attrs["brunoise.pick_reason"] = reason
            attrs["brunoise.attempts"] = f.attempts
            attrs["brunoise.cost_s"] = pick.cost
            if req.prefix_hashes:
                m.prefix_hit_chunks.observe(pick.hit_chunks / len(req.prefix_hashes))
            m.observe_ttft(req.model, f.target, f.first_token_at - f.t0)
            return up

    async def _suspect(self, target: str, req: RouteRequest) -> bool:
        """Before a request leaves its subset: whether its key is suspected, asked of the assigners (fresh, since
        another router may have seen the fault); raises KeyQuarantined for a quarantined key."""
        if self.guard is None:
            return False
        st = await self.guard.confirm(target, req.slice_key)
        if st == "quarantined":
            raise self._quarantined(target, req.slice_key)
        return st == "suspected"

    def _quarantined(self, target: str, slice_key: int) -> KeyQuarantined:
        self.metrics.quarantine_refusals.inc()
        left = self.guard.remaining_s(target, slice_key) if self.guard is not None else 0.0
        return KeyQuarantined(
            f"key {slice_key:016x} of target {target!r} is quarantined for {left:.0f}s more: its requests coincided "
            "with engine crashes or hangs on several pods; it is not retried (brunoise quarantine list/clear)",
            code="key_quarantined",
            retry_after_s=max(1.0, left),
        )

    def _end_ticket(self, pod: PodView, ticket: Ticket, failed: bool = False) -> None:
        """End ``ticket`` on ``pod``; ``failed``: before its first token, with nothing computed (``PodView.fail``)."""
        if not ticket.done:
            if failed:
                pod.fail(ticket)
            else:
                pod.end(ticket, time.monotonic())
            g = pod.inflight_gauge
            if g is not None:
                g.dec()  # type: ignore[attr-defined]

    def _pod_failed(self, pod: PodView) -> None:
        k = self.knobs
        if pod.breaker.failure(
            time.monotonic(), k.outlier_consecutive_failures, k.breaker_open_s, k.breaker_max_open_s
        ):
            self.metrics.pod_breaker.labels(pod.id).set(1)
            self.metrics.breaker_transitions.labels(pod.id, "open").inc()
            log.warning("circuit opened", extra={"pod": pod.id, "open_s": pod.breaker.open_for})

    def _pod_ok(self, pod: PodView) -> None:
        if pod.breaker.success():
            self.metrics.pod_breaker.labels(pod.id).set(0)
            self.metrics.breaker_transitions.labels(pod.id, "closed").inc()
            log.warning("circuit closed", extra={"pod": pod.id})

    def finish(self, f: Flight, code: str, error: BaseException | None = None) -> None:
        """End a request: pod accounting, breaker verdict, metrics, span, idempotency release. Idempotent."""
        if f.closed:
            return
        f.closed = True
        rid = f.req.request_id
        if rid is not None:
            self.inflight_ids.discard(rid)
        pod, ticket = f.pod, f.ticket
        if pod is not None and ticket is not None:
            self._end_ticket(pod, ticket)
            if isinstance(error, StreamBroken):
                self._pod_failed(pod)
                if self.guard is not None and f.target:
                    self.guard.fault_later(f.target, f.req.slice_key, pod.id, "stream_broken")
            elif error is None:
                self._pod_ok(pod)
            elif pod.breaker.probe_out:
                pod.breaker.release_probe()
        if f.quota is not None and self.quota is not None:
            up = f.upstream
            self.quota.release(f.quota, served=up is not None, used_tokens=used_tokens(up.body if up else None))
        if f.upstream is not None:
            f.upstream.close()
        m = self.metrics
        # model only once it named a known target: a client's unknown model names must not become series
        m.count_request(f.frontend, code, f.req.model if f.target else "", f.target)
        if isinstance(error, StreamBroken):
            m.broken_streams.inc()
        attrs = f.attrs
        if isinstance(error, RouterError):
            m.errors.labels(code).inc()
            attrs["brunoise.error"] = error.message
        m.latency.observe(time.monotonic() - f.t0)
        attrs["brunoise.status"] = code
        span = f.span
        if span.is_recording():
            span.set_attributes(attrs)
        span.end()


def flight_log(f: Flight, code: str) -> dict[str, Any]:
    return {
        "request_id": f.req.request_id,
        "target": f.target,
        "pod": f.pod.id if f.pod else None,
        "reason": f.reason,
        "attempts": f.attempts,
        "code": code,
        "span": f.span,  # the JSON log formatter turns it into trace_id / span_id
    }
