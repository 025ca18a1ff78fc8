"""The Assigner gRPC servicer: Watch, Report and the admin RPCs (writes go through the leader)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder import codec
from sharder import rollout as ro
from sharder.assignment import Assignment, check_invariants, initial_assignment
from sharder.errors import BrunoiseError, LoadReportError, OverrideError
from sharder.keyspace import Slice, check_slice_key, slice_key
from sharder.load import LoadReport
from sharder.override_admission import check_override
from sharder.overrides import MergeOverride, MoveOverride, Override, SplitOverride, validate_override
from sharder.pods import MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS, Pod, PodState
from sharder.policy.warm import warming_of
from sharder.quota import AllotmentAsk
from sharder.security.interceptor import current_principal
from sharder.security.tokens import Credentials
from sharder.store.base import Store

from .hub import Entry, WatchHub
from .leader import DRAIN_PREFIX, Leader, Mutation, audit_prefix, pod_from_bytes
from .placements import Placements, placement_from_proto, placement_to_proto
from .quarantines import Quarantines, policy_from_proto, record_to_proto
from .quotas import (
    QuotaLedgers,
    allotment_to_proto,
    limits_from_proto,
    limits_to_proto,
    returned_from_proto,
    status_to_proto,
)
from .rollouts import RolloutDriver, Rollouts, rollout_to_proto, slo_from_proto
from .status import FailedPrecondition, InvalidArgument, NotFound, OutOfRange, ResourceExhausted, streaming, unary

log = logging.getLogger(__name__)

MAX_REPORT_SLICES = 4096
MAX_REPORT_BYTES = 1 << 20
#: Largest answer the assigner sends: a default gRPC client takes at most 4 MiB (less a margin for framing).
MAX_RESPONSE_BYTES = (4 << 20) - (64 << 10)

Ctx = grpc.aio.ServicerContext[Any, Any]

_STATE_TO_PB = {
    PodState.ACTIVE: slicing_pb2.POD_STATE_ACTIVE,
    PodState.DRAINING: slicing_pb2.POD_STATE_DRAINING,
    PodState.DEAD: slicing_pb2.POD_STATE_DEAD,
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def override_applies(o: Override, s: Slice) -> bool:
    """Whether override ``o`` constrains slice ``s``."""
    if isinstance(o, MoveOverride):
        return s.lo <= o.key < s.hi
    if isinstance(o, SplitOverride):
        return s.lo <= o.at <= s.hi
    return isinstance(o, MergeOverride) and o.lo < s.hi and s.lo < o.hi


def describe_override(o: Override) -> str:
    if isinstance(o, MoveOverride):
        return f"move {o.id!r} pins the slice of key {o.key:#x} to {', '.join(o.pods)}"
    if isinstance(o, SplitOverride):
        return f"split {o.id!r} keeps a boundary at {o.at:#x}"
    return f"merge {o.id!r} keeps {Slice(o.lo, o.hi)} one slice"


class AssignerService(assigner_pb2_grpc.AssignerServicer):
    """Every Assigner RPC. Reads are served by any replica (from the store); writes only by the leader."""

    def __init__(
        self,
        store: Store,
        leader: Leader,
        hub: WatchHub,
        *,
        credentials: Credentials | None = None,
        rollout_driver: RolloutDriver | None = None,
    ) -> None:
        self.store = store
        self.leader = leader
        self.hub = hub
        self.credentials = credentials
        self.quotas = QuotaLedgers(store)
        self.quarantines = Quarantines(store)
        self.rollouts = rollout_driver.rollouts if rollout_driver is not None else Rollouts(store)
        self.rollout_driver = rollout_driver
        self.placements = Placements(store)

    # helpers ------------------------------------------------------------------------------------
    async def _stored(self, target: str) -> slicing_pb2.Assignment:
        if not target:
            raise InvalidArgument("target is required")
        v = await self.store.get(target)
        if v is None:
            raise NotFound(f"unknown target {target!r}; ListTargets shows the targets")
        return slicing_pb2.Assignment.FromString(v.data)

    def _policy_with(self, target: str, transform: Any) -> Mutation:
        """A mutation that applies ``transform(cur, target_pods)`` (which may raise) and runs the policy on it."""

        def fn(cur: Assignment | None, pods: dict[str, Pod]) -> Assignment | None:
            if cur is None:
                raise NotFound(f"unknown target {target!r}; ListTargets shows the targets")
            tpods = self.leader.pods_for(pods, target, cur)
            base: Assignment = transform(cur, tpods)
            new = self.leader.policy(base, tpods, self.leader.reports_for(tpods), now_ms=_now_ms())
            check_invariants(new, tpods)
            return new

        return fn

    async def _audit(self, context: Ctx, target: str, generation: int, action: str) -> None:
        await self.leader.audit(target, generation, current_principal(context, self.credentials), action)

    # Watch --------------------------------------------------------------------------------------
    @streaming
    async def Watch(self, request: assigner_pb2.WatchRequest, context: Ctx) -> AsyncIterator[bytes]:
        """Yields serialized WatchResponses (encoded once per generation and shared by every watcher; the
        server registers Watch with a pass-through serializer, see ``add_to_server``)."""
        mb = self.hub.subscribe(request.target or None)
        since_ms = time.time() * 1000  # generations committed from now on measure propagation lag
        sent: dict[str, Entry] = {}
        floor = request.from_generation
        try:
            await context.send_initial_metadata(())  # the watcher knows it is connected before any change
            while True:
                entries = await mb.take()
                if not entries:
                    return
                for e in entries:
                    prev = sent.get(e.target)
                    if e.generation <= (prev.generation if prev is not None else floor):
                        continue  # never backwards
                    if request.diffs and prev is not None:
                        yield self.hub.diff_bytes(prev, e)
                    else:
                        yield e.full
                    sent[e.target] = e
                    if e.msg.created_unix_ms >= since_ms:  # written to this watcher: commit-to-stream lag
                        self.leader.metrics.watch_lag.observe(max(0.0, time.time() - e.msg.created_unix_ms / 1000))
        finally:
            self.hub.unsubscribe(mb)

    # Report -------------------------------------------------------------------------------------
    @unary
    async def Report(self, request: assigner_pb2.ReportRequest, context: Ctx) -> assigner_pb2.ReportResponse:
        if len(request.load.slices) > MAX_REPORT_SLICES:
            raise ResourceExhausted(
                f"load.slices has {len(request.load.slices)} entries; at most {MAX_REPORT_SLICES} are accepted: "
                "report only the slices this pod holds"
            )
        if request.ByteSize() > MAX_REPORT_BYTES:
            raise ResourceExhausted(f"report is {request.ByteSize()} bytes; at most {MAX_REPORT_BYTES} are accepted")
        if not request.HasField("pod"):
            raise InvalidArgument("pod is required (id, address, target)")
        try:
            pod = codec.pod_from_proto(request.pod)
        except BrunoiseError as exc:
            raise InvalidArgument(exc.message) from exc
        for field in ("id", "address", "target"):
            if not getattr(pod, field):
                raise InvalidArgument(f"pod.{field} must be non-empty")
        pod = dataclasses.replace(pod, state=PodState.ACTIVE)
        if request.leaving:
            await self.leader.leave(pod)
            return assigner_pb2.ReportResponse(
                report_interval_ms=int(self.leader.report_interval_s * 1000),
                leader_id=self.leader.me.candidate_id,
                state=_STATE_TO_PB[PodState.DEAD],
            )
        report: LoadReport | None = None
        if request.HasField("load"):
            try:
                report = codec.load_report_from_proto(request.load)
            except BrunoiseError as exc:
                raise InvalidArgument(f"load.{exc.field}: {exc.message}" if exc.field else exc.message) from exc
            if not report.pod_id:
                report = dataclasses.replace(report, pod_id=pod.id)
            if not report.target:
                report = dataclasses.replace(report, target=pod.target)
            if report.pod_id != pod.id:
                raise InvalidArgument(f"load.pod_id {report.pod_id!r} differs from pod.id {pod.id!r}")
            if report.target != pod.target:
                raise InvalidArgument(f"load.target {report.target!r} differs from pod.target {pod.target!r}")
            try:
                report.validate().check_disjoint()
            except LoadReportError as exc:
                raise InvalidArgument(f"load.{exc.field}: {exc.message}" if exc.field else exc.message) from exc
        ttl_ms = request.lease_ttl_ms or int(self.leader.lease_ttl_s * 1000)
        if not MIN_LEASE_TTL_MS <= ttl_ms <= MAX_LEASE_TTL_MS:
            raise InvalidArgument(f"lease_ttl_ms must be in [{MIN_LEASE_TTL_MS}, {MAX_LEASE_TTL_MS}], got {ttl_ms}")
        assignment, state = await self.leader.register(pod, report, ttl_ms / 1000)
        resp = assigner_pb2.ReportResponse(
            generation=assignment.generation,
            report_interval_ms=int(self.leader.report_interval_s * 1000),
            leader_id=self.leader.me.candidate_id,
            state=_STATE_TO_PB[state],
        )
        held = assignment.slices_of(pod.id, include_leaving=True)
        for sa in held:
            resp.slices.append(codec.slice_to_proto(sa.slice))
        # a draining pod is never a replica (drop_pods): one still holding a slice with no replica has nowhere
        # to hand it to
        resp.stranded = state is PodState.DRAINING and bool(held) and all(not sa.replicas for sa in held)
        for peer in assignment.peers_of(pod.id):
            resp.peers[peer.id] = peer.address
        for sa, donors in warming_of(assignment, pod.id):
            addresses = [p.address for d in donors if (p := assignment.pod(d)) is not None and p.address]
            resp.warming.append(assigner_pb2.WarmTask(slice=codec.slice_to_proto(sa.slice), donors=addresses))
        return resp

    # admin: reads -------------------------------------------------------------------------------
    @unary
    async def ListTargets(self, request: assigner_pb2.ListTargetsRequest, context: Ctx) -> assigner_pb2.ListTargetsResponse:
        resp = assigner_pb2.ListTargetsResponse()
        known = self.leader.known_leader
        resp.leader_id = known.candidate_id if known is not None else ""
        for target in await self.store.list_targets():
            v = await self.store.get(target)
            if v is None:
                continue
            a = slicing_pb2.Assignment.FromString(v.data)
            resp.targets.append(
                assigner_pb2.TargetSummary(
                    target=target, generation=a.generation, slices=len(a.slices), pods=len(a.pods), config=a.config
                )
            )
        return resp

    @unary
    async def GetAssignment(self, request: assigner_pb2.GetAssignmentRequest, context: Ctx) -> slicing_pb2.Assignment:
        cur = await self._stored(request.target)
        want = request.generation
        if want == 0 or want == cur.generation:
            return cur
        if want > cur.generation:
            raise OutOfRange(
                f"generation {want} of {request.target!r} does not exist yet (current is {cur.generation})"
            )
        kept = await self.store.history(request.target)
        for v in kept:
            if v.generation == want:
                return slicing_pb2.Assignment.FromString(v.data)
        oldest = min((v.generation for v in kept), default=cur.generation)
        raise NotFound(f"generation {want} of {request.target!r} is no longer kept (oldest kept: {oldest})")

    @unary
    async def ExplainKey(self, request: assigner_pb2.ExplainKeyRequest, context: Ctx) -> assigner_pb2.ExplainKeyResponse:
        msg = await self._stored(request.target)
        a = codec.assignment_from_proto(msg)
        which = request.WhichOneof("key")
        if which == "app_key":
            key = slice_key(request.app_key)
            named = f"app key {request.app_key!r} hashes to SliceKey {key:#018x}"
        elif which == "slice_key":
            key = check_slice_key(request.slice_key)
            named = f"SliceKey {key:#018x}"
        else:
            raise InvalidArgument("set one of app_key or slice_key")
        idx = a.index_of(key)
        sa = a.slices[idx]
        ovs = [o for o in a.overrides if override_applies(o, sa.slice)]
        resp = assigner_pb2.ExplainKeyResponse(
            slice_key=key, slice=codec.slice_assignment_to_proto(sa), generation=a.generation
        )
        for pid in (*sa.replicas, *sa.leaving):
            p = a.pod(pid)
            if p is not None:
                resp.pods.append(codec.pod_to_proto(p))
        for o in ovs:
            resp.overrides.append(codec.override_to_proto(o))
        why = [
            f"{named}; it lies in slice {idx + 1} of {len(a.slices)} {sa.slice} of target {a.target!r} "
            f"at generation {a.generation}.",
        ]
        if sa.replicas:
            why.append(
                f"Replicas (in order): {', '.join(sa.replicas)}, unchanged since generation {sa.since_generation}."
            )
        else:
            why.append("The slice has no replicas: no eligible active pod is registered for this target.")
        if sa.leaving:
            why.append(f"Leaving (make-before-break, still serving this generation): {', '.join(sa.leaving)}.")
        why.append(
            f"Slice load {sa.load:.3g} (min_replicas {a.config.min_replicas}, max_replicas {a.config.max_replicas}; "
            f"split above {a.config.split_threshold:g} of a mean pod's load)."
        )
        if ovs:
            why.append("Manual overrides: " + "; ".join(describe_override(o) for o in ovs) + ".")
        else:
            why.append("No manual override applies; the placement is the policy's.")
        resp.why = " ".join(why)
        return resp

    @unary
    async def History(self, request: assigner_pb2.HistoryRequest, context: Ctx) -> assigner_pb2.HistoryResponse:
        if not request.target:
            raise InvalidArgument("target is required")
        kept = await self.store.history(request.target, request.limit)
        if not kept:
            raise NotFound(f"unknown target {request.target!r}; ListTargets shows the targets")
        resp = assigner_pb2.HistoryResponse()
        audit: dict[int, list[assigner_pb2.AuditRecord]] = {}
        for raw in (await self.store.list_meta(audit_prefix(request.target))).values():
            doc = json.loads(raw)
            rec = assigner_pb2.AuditRecord(who=doc["who"], action=doc["action"], unix_ms=doc["unix_ms"])
            audit.setdefault(int(doc["generation"]), []).append(rec)
        for v in kept:
            a = slicing_pb2.Assignment.FromString(v.data)
            entry = assigner_pb2.HistoryEntry(
                generation=a.generation, created_unix_ms=a.created_unix_ms, stats=a.stats, slices=len(a.slices)
            )
            entry.audit.extend(audit.get(a.generation, ()))
            if request.full:
                entry.assignment.CopyFrom(a)
            resp.entries.append(entry)
        if resp.ByteSize() > MAX_RESPONSE_BYTES:
            raise ResourceExhausted(
                f"the history of {request.target!r} is {resp.ByteSize()} bytes with full={request.full}; at most "
                f"{MAX_RESPONSE_BYTES} fit a default client: ask for fewer entries (limit) or leave full off"
            )
        return resp

    @unary
    async def ListPods(self, request: assigner_pb2.ListPodsRequest, context: Ctx) -> assigner_pb2.ListPodsResponse:
        raw = await self.store.list_pods()
        drains = await self.store.list_meta(DRAIN_PREFIX)
        view = self.leader.view
        resp = assigner_pb2.ListPodsResponse()
        for pid in sorted(raw):
            pod = pod_from_bytes(raw[pid], DRAIN_PREFIX + pid in drains or pid in drains)
            if request.target and pod.target != request.target:
                continue
            held = 0
            entry = self.hub.current(pod.target)
            if entry is not None:
                held = sum(1 for s in entry.msg.slices if pid in s.replicas or pid in s.leaving)
            status = assigner_pb2.PodStatus(
                pod=codec.pod_to_proto(pod),
                slices_held=held,
                last_report_unix_ms=view.last_report_unix_ms(pid),
                slice_load=view.slice_load(pid),
            )
            engine = view.engine(pid)
            if engine is not None:
                status.engine.CopyFrom(codec.engine_load_to_proto(engine))
            resp.pods.append(status)
        return resp

    # admin: writes (leader only) ----------------------------------------------------------------
    @unary
    async def ConfigureTarget(
        self, request: assigner_pb2.ConfigureTargetRequest, context: Ctx
    ) -> assigner_pb2.ConfigureTargetResponse:
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        config = codec.config_from_proto(request.config).validate()
        self.leader.require_leader()
        target = config.target

        def fn(cur: Assignment | None, pods: dict[str, Pod]) -> Assignment | None:
            tpods = self.leader.pods_for(pods, target, cur)
            if cur is None:
                return initial_assignment(config, tpods, generation=1)
            if cur.config == config:
                return None
            base = dataclasses.replace(cur, config=config)
            new = self.leader.policy(base, tpods, self.leader.reports_for(tpods), now_ms=_now_ms())
            check_invariants(new, tpods)
            return new

        a = await self.leader.mutate(target, fn)
        assert a is not None
        await self._audit(context, target, a.generation, f"configure target {target!r}")
        return assigner_pb2.ConfigureTargetResponse(assignment=self.leader.to_proto(a))

    @unary
    async def Drain(self, request: assigner_pb2.DrainRequest, context: Ctx) -> assigner_pb2.DrainResponse:
        if not request.pod_id:
            raise InvalidArgument("pod_id is required")
        pod = await self.leader.drain(request.pod_id, request.undrain)
        cur = self.leader.current(pod.target)
        if cur is not None:
            verb = "undrain" if request.undrain else "drain"
            await self._audit(context, pod.target, cur.generation, f"{verb} pod {pod.id!r}")
        return assigner_pb2.DrainResponse(pod=codec.pod_to_proto(pod))

    @unary
    async def SetOverride(self, request: assigner_pb2.SetOverrideRequest, context: Ctx) -> assigner_pb2.SetOverrideResponse:
        if not request.target:
            raise InvalidArgument("target is required")
        if not request.HasField("override"):
            raise InvalidArgument("override is required (move, split or merge)")
        try:
            ov = validate_override(codec.override_from_proto(request.override))
        except OverrideError as exc:
            raise InvalidArgument(f"override.{exc.field}: {exc.message}" if exc.field else exc.message) from exc
        self.leader.require_leader()

        def add(cur: Assignment, tpods: list[Pod]) -> Assignment:
            check_override(cur, tpods, ov)
            return dataclasses.replace(cur, overrides=(*cur.overrides, ov))

        try:
            a = await self.leader.mutate(request.target, self._policy_with(request.target, add))
        except OverrideError as exc:
            if exc.field == "overrides":
                raise ResourceExhausted(exc.message) from exc
            raise FailedPrecondition(f"override.{exc.field}: {exc.message}" if exc.field else exc.message) from exc
        assert a is not None
        await self._audit(context, request.target, a.generation, f"set override {ov.id!r}")
        return assigner_pb2.SetOverrideResponse(assignment=self.leader.to_proto(a))

    @unary
    async def ClearOverrides(
        self, request: assigner_pb2.ClearOverridesRequest, context: Ctx
    ) -> assigner_pb2.ClearOverridesResponse:
        if not request.target:
            raise InvalidArgument("target is required")
        self.leader.require_leader()
        ids = set(request.ids)

        def clear(cur: Assignment, tpods: list[Pod]) -> Assignment:
            unknown = ids - {o.id for o in cur.overrides}
            if unknown:
                raise NotFound(f"no override with id {', '.join(sorted(unknown))} on {request.target!r}")
            keep = tuple(o for o in cur.overrides if ids and o.id not in ids)
            return dataclasses.replace(cur, overrides=keep)

        a = await self.leader.mutate(request.target, self._policy_with(request.target, clear))
        assert a is not None
        which = ", ".join(repr(i) for i in sorted(ids)) if ids else "all"
        await self._audit(context, request.target, a.generation, f"clear overrides {which}")
        return assigner_pb2.ClearOverridesResponse(assignment=self.leader.to_proto(a))


    # tenant quotas (any replica: every ledger change is a CAS in the store) ----------------------------
    @unary
    async def SetQuota(self, request: assigner_pb2.SetQuotaRequest, context: Ctx) -> assigner_pb2.QuotaStatus:
        tenant = request.limits.tenant
        if not tenant:
            raise InvalidArgument("limits.tenant is required")
        if request.remove:
            await self.quotas.delete(tenant)
            log.info("quota removed", extra={"tenant": tenant, "by": str(current_principal(context, self.credentials))})
            return assigner_pb2.QuotaStatus(limits=assigner_pb2.QuotaLimits(tenant=tenant))
        lim = limits_from_proto(request.limits)
        await self.quotas.set_limits(lim)
        log.info("quota set", extra={"limits": lim.to_json().decode(), "by": str(current_principal(context, self.credentials))})
        return status_to_proto(lim, await self.quotas.status(lim))

    @unary
    async def GetQuota(self, request: assigner_pb2.GetQuotaRequest, context: Ctx) -> assigner_pb2.QuotaStatus:
        lim = await self.quotas.limits(request.tenant)
        if lim is None:
            raise NotFound(f"tenant {request.tenant!r} has no quota (it is unlimited); ListQuotas shows the quotas")
        return status_to_proto(lim, await self.quotas.status(lim))

    @unary
    async def ListQuotas(self, request: assigner_pb2.ListQuotasRequest, context: Ctx) -> assigner_pb2.ListQuotasResponse:
        return assigner_pb2.ListQuotasResponse(
            quotas=[status_to_proto(lim, await self.quotas.status(lim)) for lim in await self.quotas.list_limits()]
        )

    @unary
    async def AcquireAllotment(
        self, request: assigner_pb2.AcquireAllotmentRequest, context: Ctx
    ) -> assigner_pb2.AcquireAllotmentResponse:
        if not request.tenant or not request.holder:
            raise InvalidArgument("tenant and holder are required")
        lim = await self.quotas.limits(request.tenant)
        if lim is None:
            return assigner_pb2.AcquireAllotmentResponse(unlimited=True)
        ask = AllotmentAsk(request.holder, request.need_requests, request.need_tokens, request.concurrent)
        a = await self.quotas.acquire(lim, ask, returned_from_proto(request.returning))
        return assigner_pb2.AcquireAllotmentResponse(allotment=allotment_to_proto(a), limits=limits_to_proto(lim))

    @unary
    async def ReturnAllotment(
        self, request: assigner_pb2.ReturnAllotmentRequest, context: Ctx
    ) -> assigner_pb2.ReturnAllotmentResponse:
        ret = returned_from_proto(request.returning)
        lim = await self.quotas.limits(request.tenant)
        if lim is not None and ret is not None:
            await self.quotas.give_back(lim, ret)
        return assigner_pb2.ReturnAllotmentResponse()


    # regions: tenant placements (any replica: one record per tenant, written whole) ---------------------------
    @unary
    async def SetPlacement(self, request: assigner_pb2.SetPlacementRequest, context: Ctx) -> assigner_pb2.TenantPlacement:
        tenant = request.placement.tenant
        if not tenant:
            raise InvalidArgument("placement.tenant is required")
        by = str(current_principal(context, self.credentials))
        if request.remove:
            await self.placements.delete(tenant)
            log.info("placement removed", extra={"tenant": tenant, "by": by})
            return assigner_pb2.TenantPlacement(tenant=tenant)
        p = placement_from_proto(request.placement)  # PlacementError: INVALID_ARGUMENT naming the field
        await self.placements.set(p)
        log.info("placement set", extra={"placement": p.to_json().decode(), "by": by})
        return placement_to_proto(p)

    @unary
    async def ListPlacements(
        self, request: assigner_pb2.ListPlacementsRequest, context: Ctx
    ) -> assigner_pb2.ListPlacementsResponse:
        return assigner_pb2.ListPlacementsResponse(placements=[placement_to_proto(p) for p in await self.placements.list()])

    # key-of-death containment (any replica: every record change is a CAS in the store) -------------------
    @unary
    async def ReportKeyFault(self, request: assigner_pb2.ReportKeyFaultRequest, context: Ctx) -> assigner_pb2.KeyFaultRecord:
        if not request.target or not request.pod_id:
            raise InvalidArgument("target and pod_id are required")
        rec, now = await self.quarantines.report(
            request.target, request.slice_key, request.pod_id, request.cause, policy_from_proto(request)
        )
        if rec.quarantined_until_ms and rec.state(now) == "quarantined" and rec.last_ms == now:
            log.warning("key quarantined", extra={"target": rec.target, "slice_key": f"{rec.slice_key:016x}",
                                                  "pods": list(rec.pods), "cause": rec.cause})  # fmt: skip
        return record_to_proto(rec, now)

    @unary
    async def ListQuarantines(
        self, request: assigner_pb2.ListQuarantinesRequest, context: Ctx
    ) -> assigner_pb2.ListQuarantinesResponse:
        now = _now_ms()
        keep = ("quarantined", "suspected") if request.suspected else ("quarantined",)
        recs = [r for r in await self.quarantines.list(request.target) if r.state(now) in keep]
        return assigner_pb2.ListQuarantinesResponse(keys=[record_to_proto(r, now) for r in recs])

    @unary
    async def ClearQuarantine(
        self, request: assigner_pb2.ClearQuarantineRequest, context: Ctx
    ) -> assigner_pb2.ClearQuarantineResponse:
        if not request.all and not request.target:
            raise InvalidArgument("name the target and slice_key, or set all")
        n = await self.quarantines.clear(request.target, None if request.all else request.slice_key)
        log.info("quarantine cleared", extra={"target": request.target, "cleared": n,
                                               "by": str(current_principal(context, self.credentials))})  # fmt: skip
        return assigner_pb2.ClearQuarantineResponse(cleared=n)

    # model-version rollouts (any replica: every record change is a CAS in the store; the leader steps them) ----------
    def _rollout_proto(self, r: ro.Rollout) -> assigner_pb2.Rollout:
        d = self.rollout_driver
        window = d.last_window.get(r.model) if d is not None and self.leader.is_leader and r.active else None
        return rollout_to_proto(r, window)

    @unary
    async def StartRollout(self, request: assigner_pb2.StartRolloutRequest, context: Ctx) -> assigner_pb2.Rollout:
        if not request.model or not request.blue or not request.green:
            raise InvalidArgument("model, blue and green are required")
        known = set(await self.store.list_targets())
        for what in (request.blue, request.green):
            if what not in known:
                raise NotFound(f"unknown target {what!r}; ListTargets shows the targets (configure green first)")
        slo = slo_from_proto(request.slo, request.HasField("slo"))
        steps = tuple(request.steps) or ro.CANARY_STEPS

        def begin(cur: ro.Rollout | None, now: int) -> ro.Rollout:
            try:
                return ro.start(request.model, request.blue, request.green, now, steps=steps, slo=slo,
                                step_interval_s=request.step_interval_s or 10.0, previous=cur)  # fmt: skip
            except ro.RolloutError as e:
                if e.field == "model":
                    raise FailedPrecondition(e.message) from None
                raise

        r = await self.rollouts.update(request.model, begin)
        assert r is not None
        log.warning(
            "rollout started", extra={"model": r.model, "by": str(current_principal(context, self.credentials))}
        )
        return self._rollout_proto(r)

    @unary
    async def ChangeRollout(self, request: assigner_pb2.ChangeRolloutRequest, context: Ctx) -> assigner_pb2.Rollout:
        A = assigner_pb2.ChangeRolloutRequest
        moves = {A.PAUSE: ro.pause, A.RESUME: ro.resume, A.PROMOTE: ro.promote, A.ROLLBACK: ro.rollback}
        move = moves.get(request.action)
        if move is None:
            raise InvalidArgument("action must be PAUSE, RESUME, PROMOTE or ROLLBACK")
        who = str(current_principal(context, self.credentials))
        reason = request.reason or f"{A.Action.Name(request.action).lower()} by {who}"

        def apply(cur: ro.Rollout | None, now: int) -> ro.Rollout:
            if cur is None:
                raise NotFound(f"model {request.model!r} has no rollout; ListRollouts shows them")
            try:
                return move(cur, now, reason)
            except ro.RolloutError as e:
                raise FailedPrecondition(e.message) from None

        r = await self.rollouts.update(request.model, apply)
        assert r is not None
        return self._rollout_proto(r)

    @unary
    async def ListRollouts(
        self, request: assigner_pb2.ListRolloutsRequest, context: Ctx
    ) -> assigner_pb2.ListRolloutsResponse:
        if request.model:
            one = await self.rollouts.get(request.model)
            found = [one] if one is not None else []
        else:
            found = await self.rollouts.list()
        return assigner_pb2.ListRolloutsResponse(rollouts=[self._rollout_proto(r) for r in found])


def _watch_serializer(resp: bytes | assigner_pb2.WatchResponse) -> bytes:
    return resp if isinstance(resp, bytes) else resp.SerializeToString()


class _Capture:
    """Collects the method handlers the generated ``add_AssignerServicer_to_server`` would register."""

    def __init__(self) -> None:
        self.name = ""
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self.name, self.handlers = name, dict(handlers)


def add_to_server(service: AssignerService, server: grpc.aio.Server) -> None:
    """Register every Assigner RPC; Watch with a serializer that passes pre-encoded bytes through."""
    cap = _Capture()
    assigner_pb2_grpc.add_AssignerServicer_to_server(service, cap)  # type: ignore[no-untyped-call]
    cap.handlers["Watch"] = grpc.unary_stream_rpc_method_handler(
        service.Watch,
        request_deserializer=assigner_pb2.WatchRequest.FromString,
        response_serializer=_watch_serializer,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(cap.name, cap.handlers),))
    server.add_registered_method_handlers(cap.name, cap.handlers)  # type: ignore[attr-defined]
