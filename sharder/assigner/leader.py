"""Leader election and the leader's work: policy rounds, pod registration and every assignment write (CAS)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from brunoise_api.v1 import slicing_pb2
from sharder import codec
from sharder.assignment import Assignment, RoundStats, check_invariants, initial_assignment
from sharder.config import TargetConfig
from sharder.errors import InvariantError
from sharder.load import LoadReport
from sharder.pods import Pod, PodState
from sharder.policy.warm import clear_warming
from sharder.store.base import LeaderInfo, Store, StoreError, Versioned

from .hub import WatchHub
from .metrics import AssignerMetrics
from .pod_loads import PodLoadView
from .status import Aborted, AlreadyExists, NotFound, NotLeader, Unavailable

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer("sharder.assigner")

DRAIN_PREFIX = "drain/"
AUDIT_PREFIX = "audit/"
AUDIT_KEPT = 200  # audit records kept per target (oldest dropped)
CAS_ATTEMPTS = 5

#: A target's first generation carries an epoch in its high bits: milliseconds since EPOCH_ORIGIN_MS, shifted
#: left by EPOCH_SHIFT. A target created again after its store was lost (an assigner restarted without its
#: snapshot, a wiped etcd) therefore starts above every generation the old store reached, unless that store
#: committed more than 2**12 generations per millisecond of its life. Generations stay below 2**53 (exact
#: as float64, e.g. in a Prometheus gauge) for 69 years.
EPOCH_ORIGIN_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
EPOCH_SHIFT = 12


def first_generation(unix_ms: int) -> int:
    """The generation a newly created target starts at, ``unix_ms`` being the wall clock now."""
    return (max(0, unix_ms - EPOCH_ORIGIN_MS) << EPOCH_SHIFT) + 1


class PolicyFn(Protocol):
    """The pure resharding round (``sharder.policy.reshard``)."""

    def __call__(
        self,
        assignment: Assignment,
        pods: Sequence[Pod],
        reports: Sequence[LoadReport],
        *,
        config: TargetConfig | None = None,
        now_ms: int = 0,
    ) -> Assignment: ...


def load_policy(spec: str) -> PolicyFn:
    """The resharding round named ``module:function`` (default ``sharder.policy:reshard``)."""
    module, _, name = spec.partition(":")
    fn: PolicyFn = getattr(importlib.import_module(module), name or "reshard")
    return fn


def decode(data: bytes) -> Assignment:
    return codec.decode_assignment(data)


def pod_from_bytes(data: bytes, draining: bool) -> Pod:
    pod = codec.decode_pod(data)
    return dataclasses.replace(pod, state=PodState.DRAINING if draining else PodState.ACTIVE)


def changed(old: Assignment, new: Assignment) -> bool:
    """Whether ``new`` is worth a generation: placement, config or overrides differ."""
    return not new.same_placement(old) or new.config != old.config or new.overrides != old.overrides


Mutation = Callable[[Assignment | None, dict[str, Pod]], Assignment | None]


class Leader:
    """Campaigns for leadership; while leader, runs policy rounds and performs every assignment write.

    Every write is a compare-and-swap on the generation this process last read; a conflict means
    re-read and recompute, never overwrite. On election the stored generations are read first, so
    generations strictly increase across leaders.
    """

    def __init__(
        self,
        store: Store,
        me: LeaderInfo,
        hub: WatchHub,
        view: PodLoadView,
        *,
        policy: PolicyFn,
        round_interval_s: float = 2.0,
        lease_ttl_s: float = 5.0,
        report_interval_s: float = 1.0,
        targets: Sequence[TargetConfig] = (),
        targets_from_reports: bool = False,
        metrics: AssignerMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics if metrics is not None else AssignerMetrics()
        self.targets = {c.target: c for c in targets}
        self.targets_from_reports = targets_from_reports
        self.me = me
        self.hub = hub
        self.view = view
        self.policy = policy
        self.round_interval_s = round_interval_s
        self.lease_ttl_s = lease_ttl_s
        self.report_interval_s = report_interval_s
        self.known_leader: LeaderInfo | None = None
        self._elected = False
        self._current: dict[str, Assignment] = {}
        self._msgs: dict[str, slicing_pb2.Assignment] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._draining: set[str] = set()
        #: pod -> monotonic time this leader first saw it draining: a drain waits for its replacements' warm-up at
        #: most ``warm_deadline_s`` from then, however often the policy renews the marks it waits on
        self._drain_since: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._wake_full = False
        self._tasks: list[asyncio.Task[None]] = []
        self.rounds = 0
        self.elected_at: float | None = None
        self._grace_until = 0.0
        #: (target, slice lo, pod) -> monotonic time its warming mark was first seen (the deadline's clock)
        self._warm_since: dict[tuple[str, int, str], float] = {}

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._campaign_loop(), name="campaign"),
            asyncio.create_task(self._round_loop(), name="rounds"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._elected:
            with contextlib.suppress(StoreError, Exception):
                await asyncio.wait_for(self.store.resign(), timeout=1.0)
        self._elected = False

    @property
    def is_leader(self) -> bool:
        return self._elected and self.store.is_leader()

    def require_leader(self) -> None:
        if self.is_leader:
            return
        info = self.known_leader
        if info is None or info.candidate_id == self.me.candidate_id:
            raise Unavailable("no leader is elected right now (is the store reachable?); retry shortly")
        raise NotLeader(info.candidate_id, info.address)

    def wake(self, *, full: bool = True) -> None:
        """Run a round now instead of at the next interval. ``full`` False: only clear the warming marks that are
        done (a warm report); the policy itself keeps its ``round_interval_s`` cadence."""
        if full:
            self._wake_full = True
        self._wake.set()

    async def _campaign_loop(self) -> None:
        while True:
            try:
                won = await asyncio.wait_for(self.store.campaign(self.me, self.lease_ttl_s), timeout=self.lease_ttl_s)
                if won and not self._elected:
                    await self._on_elected()
                elif not won and self._elected:
                    self._on_deposed("lost the campaign")
                if won:
                    self.known_leader = self.me
                else:
                    self.known_leader = await asyncio.wait_for(self.store.leader(), timeout=self.lease_ttl_s)
            except (StoreError, TimeoutError) as exc:
                if self._elected and not self.store.is_leader():
                    self._on_deposed(f"store error: {exc}")
                if not self._elected:
                    self.known_leader = None
                log.debug("campaign: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("campaign loop")
            if self._elected and not self.store.is_leader():
                self._on_deposed("lease lost")
            # Followers poll often so that failover is about one lease TTL; the leader only re-checks.
            period = min(0.25, self.lease_ttl_s / 8)
            await asyncio.sleep(period * (0.8 + 0.4 * random.random()))

    async def _on_elected(self) -> None:
        current: dict[str, Assignment] = {}
        for target in await self.store.list_targets():
            v = await self.store.get(target)
            if v is not None:
                current[target] = decode(v.data)
        self._current = current
        drains = await self.store.list_meta(DRAIN_PREFIX)
        self._set_draining({k[len(DRAIN_PREFIX) :] if k.startswith(DRAIN_PREFIX) else k for k in drains})
        for a in current.values():
            self.hub.publish(codec.assignment_to_proto(a))
        self._elected = True
        self.elected_at = time.monotonic()
        self._grace_until = self.elected_at + self.lease_ttl_s + self.round_interval_s
        log.warning("%s is leader (targets: %s)", self.me.candidate_id, sorted(current))
        self.wake()

    def _on_deposed(self, why: str) -> None:
        log.warning("%s is no longer leader: %s", self.me.candidate_id, why)
        self._elected = False
        self._current = {}
        self.known_leader = None

    async def _round_loop(self) -> None:
        next_full = time.monotonic() + self.round_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, next_full - time.monotonic()))
            self._wake.clear()
            full, self._wake_full = self._wake_full or time.monotonic() >= next_full, False
            if not self.is_leader:
                continue
            try:
                if not full:
                    # a warm report: clear its marks now (new sessions wait on them), but a policy round run on
                    # every report would act at report rate, not round rate (its calm streak and smoothing count
                    # rounds), and each round's moves mark more replicas warming, whose reports woke more rounds
                    await self.run_clear_round()
                    continue
                next_full = time.monotonic() + self.round_interval_s
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except (StoreError, Unavailable, NotLeader, Aborted) as exc:
                log.info("round skipped: %s", exc)
            except Exception:
                log.exception("policy round failed")

    # reads --------------------------------------------------------------------------------------
    def current(self, target: str) -> Assignment | None:
        return self._current.get(target) if self.is_leader else None

    def led(self) -> list[Assignment] | None:
        """Every current assignment while leader; None on a follower."""
        return list(self._current.values()) if self.is_leader else None

    def to_proto(self, a: Assignment) -> slicing_pb2.Assignment:
        """The protobuf form of ``a``, reusing the one built for its commit when it is the current one."""
        msg = self._msgs.get(a.target)
        if msg is not None and msg.generation == a.generation and self._current.get(a.target) is a:
            return msg
        return codec.assignment_to_proto(a)

    def draining(self, pod_id: str) -> bool:
        return pod_id in self._draining

    def _set_draining(self, pods: set[str]) -> None:
        now = time.monotonic()
        self._draining = pods
        self._drain_since = {p: self._drain_since.get(p, now) for p in pods}

    async def live_pods(self) -> dict[str, Pod]:
        """Pods whose lease is alive, with their drain flag as state."""
        raw = await self.store.list_pods()
        drains = await self.store.list_meta(DRAIN_PREFIX)
        self._set_draining({k[len(DRAIN_PREFIX) :] if k.startswith(DRAIN_PREFIX) else k for k in drains})
        pods: dict[str, Pod] = {}
        for pid, data in raw.items():
            try:
                pods[pid] = pod_from_bytes(data, pid in self._draining)
            except Exception:
                log.warning("ignoring unreadable registration of pod %r", pid)
        self.view.prune(set(pods))
        return pods

    # writes -------------------------------------------------------------------------------------
    def _lock(self, target: str) -> asyncio.Lock:
        lock = self._locks.get(target)
        if lock is None:
            lock = self._locks[target] = asyncio.Lock()
        return lock

    async def mutate(self, target: str, fn: Mutation) -> Assignment | None:
        """Apply ``fn(current, live_pods)`` and commit its result with CAS on the current generation.

        ``fn`` returns None (or the current assignment) for "nothing to write". A CAS conflict re-reads
        the stored generation and recomputes; it never overwrites.
        """
        async with self._lock(target):
            self.require_leader()
            pods = await self.live_pods()
            for _ in range(CAS_ATTEMPTS):
                cur = self._current.get(target)
                new = fn(cur, pods)
                if new is None or new is cur:
                    return cur
                prev_gen = cur.generation if cur is not None else 0
                floor = prev_gen + 1 if cur is not None else first_generation(int(time.time() * 1000))
                if new.generation < floor:
                    new = dataclasses.replace(new, generation=floor)
                try:  # checked before every commit: a bad assignment must never reach the store or a clerk
                    check_invariants(new)
                except InvariantError as exc:
                    log.error(
                        "refusing to commit generation %d of %r (keeping generation %d): %s",
                        new.generation, target, prev_gen, exc,
                    )
                    raise
                msg = codec.assignment_to_proto(new)
                # stamped just before the commit: watchers measure propagation from here
                now_ms = int(time.time() * 1000)
                new = dataclasses.replace(new, created_unix_ms=now_ms)
                msg.created_unix_ms = now_ms
                with self.metrics.store_op("compare_and_swap"):
                    ok = await self.store.compare_and_swap(
                        target, prev_gen, Versioned(target, new.generation, msg.SerializeToString())
                    )
                if ok:
                    self._current[target] = new
                    self._msgs[target] = msg
                    self.hub.publish(msg)
                    return new
                log.warning("CAS conflict on %s at generation %d: re-reading", target, prev_gen)
                stored = await self.store.get(target)
                if stored is None:
                    self._current.pop(target, None)
                else:
                    self._current[target] = decode(stored.data)
                    self.hub.publish(slicing_pb2.Assignment.FromString(stored.data))
                self.require_leader()
            raise Aborted(f"assignment of {target!r} kept changing under us; retry")

    def _round_mutation(self, target: str) -> Mutation:
        def fn(cur: Assignment | None, pods: dict[str, Pod]) -> Assignment | None:
            if cur is None:
                return None
            tpods = self.pods_for(pods, target, cur)
            reports = self.view.reports({p.id for p in tpods})
            new = self.policy(cur, tpods, reports, now_ms=int(time.time() * 1000))
            new = self._clear_warm(target, new, reports)
            if changed(cur, new):
                return new
            if new.memory is not None:  # nothing to commit, but the calm policy's smoothed loads and streak go on
                self._current[target] = dataclasses.replace(cur, memory=new.memory)
            return None

        return fn

    def _clear_warm(self, target: str, a: Assignment, reports: Sequence[LoadReport]) -> Assignment:
        """``a`` without the warming marks its pods reported warm or that are past ``warm_deadline_s`` (this
        leader's clock: a mark's age counts from when this leader first saw it), and without those of a slice a pod
        drained for ``warm_deadline_s`` or longer is leaving: the policy keeps a draining pod ``leaving`` while a
        replica warms from it, so this bounds every drain by the deadline, even where later rounds renew the marks
        (a split's new half, a replica moved on)."""
        warm = {r.pod_id: r.warm for r in reports if r.warm}
        now = time.monotonic()
        limit = a.config.warm_deadline_s
        drained = {p for p, since in self._drain_since.items() if now - since >= limit}
        expired = {
            (lo, p)
            for sa in a.slices
            for p in sa.warming
            if now - self._warm_since.get((target, lo := sa.slice.lo, p), now) >= limit
            or not drained.isdisjoint(sa.leaving)
        }
        return clear_warming(a, warm, expired)

    def _note_warming(self, a: Assignment) -> None:
        """Start the clock of new warming marks and count the cleared ones (after a commit)."""
        target, now, m = a.target, time.monotonic(), self.metrics
        marks = {(target, sa.slice.lo, p) for sa in a.slices for p in sa.warming}
        for k in marks - self._warm_since.keys():
            self._warm_since[k] = now
            m.warmups_started.labels(target).inc()
        limit = a.config.warm_deadline_s
        for k in [k for k in self._warm_since if k[0] == target and k not in marks]:
            age = now - self._warm_since.pop(k)
            m.warmup_duration.observe(age)
            (m.warmups_timed_out if limit > 0 and age >= limit else m.warmups_completed).labels(target).inc()
        m.warming.labels(target).set(len(marks))

    def _with_grace(self, cur: Assignment, pods: dict[str, Pod]) -> dict[str, Pod]:
        """Right after an election, pods the assignment names are not dropped for missing a lease: their
        leases may have lapsed while no leader could take their heartbeats. They have one lease TTL to
        report to the new leader."""
        if time.monotonic() >= self._grace_until:
            return pods
        missing = [p for p in cur.pods if p.id not in pods]
        if not missing:
            return pods
        out = dict(pods)
        for p in missing:
            out[p.id] = dataclasses.replace(p, state=PodState.DRAINING if p.id in self._draining else PodState.ACTIVE)
        return out

    async def run_clear_round(self) -> None:
        """Clear the warming marks that are done, in every target, without a policy round (leader only)."""
        for target in sorted(self._current):
            with contextlib.suppress(InvariantError):
                after = await self.mutate(target, self.clear_round(target))
                if after is not None:
                    self._note_warming(after)

    def clear_round(self, target: str) -> Mutation:
        """The mutation of ``run_clear_round``: the current assignment without its done marks (no policy, so
        no moves, and the calm memory untouched), or None when no mark is done."""

        def fn(cur: Assignment | None, pods: dict[str, Pod]) -> Assignment | None:
            if cur is None:
                return None
            reports = self.view.reports({p.id for p in self.pods_for(pods, target, cur)})
            new = self._clear_warm(target, cur, reports)
            return None if new is cur else dataclasses.replace(new, stats=RoundStats())

        return fn

    async def run_round(self) -> None:
        """One policy round over every target (leader only); configured targets missing from the store are
        created first, once the election grace is over. Within it a missing target is one whose store was lost
        (or a fresh deployment): its pods are still re-registering, and an assignment made now would name none,
        so routers would adopt a generation they cannot route on. A pod's first report creates it meanwhile,
        with that pod."""
        in_grace = time.monotonic() < self._grace_until
        t0 = time.perf_counter()
        with _TRACER.start_as_current_span("assigner.round", attributes={"brunoise.assigner": self.me.candidate_id}):
            for name in sorted(set(self.targets) - set(self._current)):
                if not in_grace:
                    await self.ensure_target(name, "")
            for target in sorted(self._current):
                before = self._current.get(target)
                with _TRACER.start_as_current_span("assigner.round.target", attributes={"brunoise.target": target}) as sp:
                    try:
                        after = await self.mutate(target, self._round_mutation(target))
                    except InvariantError as exc:
                        sp.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
                        continue  # logged by mutate; the previous generation stays, other targets still get a round
                    if after is not None and after is not before:
                        self._note_warming(after)
                        self.metrics.round_committed(after)
                        s = after.stats
                        sp.set_attributes({
                            "brunoise.generation": after.generation, "brunoise.moves": s.moves,
                            "brunoise.splits": s.splits, "brunoise.merges": s.merges,
                            "brunoise.replications": s.replications, "brunoise.churn": s.churn,
                            "brunoise.imbalance": s.imbalance,
                        })  # fmt: skip
        self.rounds += 1
        self.metrics.rounds.inc()
        self.metrics.round_duration.observe(time.perf_counter() - t0)

    def check_target_known(self, target: str) -> None:
        """NotFound unless ``target`` exists, is configured, or may be created by a pod's report."""
        if target in self._current or target in self.targets or self.targets_from_reports:
            return
        raise NotFound(
            f"unknown target {target!r}: targets come from the assigner's configuration (--target, "
            "--targets-file) or an admin's ConfigureTarget, never from a report"
        )

    async def ensure_target(self, target: str, model: str) -> Assignment:
        """The target's assignment, creating it when it is configured (``--target``, ``--targets-file``), or
        with a default config when targets may come from reports; else NotFound."""
        cur = self._current.get(target)
        if cur is not None:
            return cur
        self.check_target_known(target)
        configured = self.targets.get(target)

        def create(cur: Assignment | None, pods: dict[str, Pod]) -> Assignment | None:
            if cur is not None:
                return None
            config = configured or TargetConfig(target=target, model=model).validate()
            tpods = sorted((p for p in pods.values() if p.target in ("", target)), key=lambda p: p.id)
            return initial_assignment(config, tpods, generation=1)

        a = await self.mutate(target, create)
        assert a is not None
        return a

    async def register(self, pod: Pod, report: LoadReport | None, ttl_s: float) -> tuple[Assignment, PodState]:
        """Register/refresh ``pod`` (lease ``ttl_s``), keep its report; its target's assignment and its state."""
        self.require_leader()
        self.check_target_known(pod.target)  # before anything is stored: a report never creates state
        other = self.view.conflicting_address(pod)
        first_time = self.view.get(pod.id) is None
        if other is None and first_time:
            stored = await self._stored_address(pod.id)
            if stored is not None and stored != pod.address:
                other = stored
        if other is not None:
            raise AlreadyExists(
                f"pod id {pod.id!r} is already registered with address {other} (this report: {pod.address}); "
                "give each pod a unique id, or wait for the old registration's lease to expire"
            )
        await self.store.put_pod(pod.id, pod_to_bytes(pod), ttl_s)
        self.view.update(pod, report, ttl_s)
        assignment = await self.ensure_target(pod.target, pod.labels.get("model", ""))
        warm_news = report is not None and report.warm and self._warms(assignment, pod.id)
        if first_time or assignment.pod(pod.id) is None:
            self.wake()
        elif warm_news:
            self.wake(full=False)  # a warm report clears its marks now: new sessions wait on them
        state = PodState.DRAINING if pod.id in self._draining else PodState.ACTIVE
        return assignment, state

    async def leave(self, pod: Pod) -> None:
        """End ``pod``'s registration now (a graceful stop): its lease goes, the next round drops it, and its next
        incarnation registers at once at whatever address it gets. Only the registered address may end it."""
        self.require_leader()
        rec = self.view.get(pod.id)
        registered = rec.pod.address if rec is not None else await self._stored_address(pod.id)
        if registered is None:
            return  # nothing to end (its lease expired already, or it never registered)
        if registered != pod.address:
            raise AlreadyExists(
                f"pod id {pod.id!r} is registered with address {registered}, not {pod.address}; only the registered "
                "incarnation may end its registration"
            )
        await self.store.delete_pod(pod.id)
        self.view.forget(pod.id)
        self.wake()

    async def _stored_address(self, pod_id: str) -> str | None:
        """The address ``pod_id`` is registered with in the store (a registration this leader has not seen a
        report for, e.g. right after an election), or None."""
        raw = (await self.store.list_pods()).get(pod_id)
        return pod_from_bytes(raw, False).address if raw is not None else None

    @staticmethod
    def _warms(a: Assignment, pod_id: str) -> bool:
        return any(pod_id in sa.warming for sa in a.slices)

    async def drain(self, pod_id: str, undrain: bool) -> Pod:
        self.require_leader()
        pods = await self.live_pods()
        pod = pods.get(pod_id)
        if pod is None:
            raise NotFound(f"no live pod {pod_id!r}; ListPods shows the registered pods")
        if undrain:
            await self.store.delete_meta(DRAIN_PREFIX + pod_id)
            self._set_draining(self._draining - {pod_id})
        else:
            await self.store.put_meta(DRAIN_PREFIX + pod_id, b"1")
            self._set_draining(self._draining | {pod_id})
        self.wake()
        return dataclasses.replace(pod, state=PodState.ACTIVE if undrain else PodState.DRAINING)

    async def audit(self, target: str, generation: int, who: str, action: str) -> None:
        """Record an admin action against ``target``'s ``generation`` (shown by History); keeps AUDIT_KEPT."""
        now_ms = int(time.time() * 1000)
        base = audit_prefix(target)
        doc = {"who": who, "action": action, "unix_ms": now_ms, "generation": generation}
        await self.store.put_meta(f"{base}{generation:020d}/{now_ms:013d}", json.dumps(doc).encode())
        log.warning("audit: %s %s on %r (generation %d)", who, action, target, generation)
        kept = sorted(await self.store.list_meta(base))
        for key in kept[:-AUDIT_KEPT]:
            await self.store.delete_meta(key)

    def policy_round(self, target: str) -> Mutation:
        """The round mutation for ``target`` (used by admin writes that want placement recomputed)."""
        return self._round_mutation(target)

    def pods_for(self, pods: dict[str, Pod], target: str, cur: Assignment | None = None) -> list[Pod]:
        """The pods of ``target``; with ``cur``, pods it names are kept through the grace after an election
        (see ``_with_grace``), so a round and an admin write right after a restart see the same pods."""
        if cur is not None:
            pods = self._with_grace(cur, pods)
        return sorted((p for p in pods.values() if p.target in ("", target)), key=lambda p: p.id)

    def reports_for(self, pods: Sequence[Pod]) -> list[LoadReport]:
        return self.view.reports({p.id for p in pods})


def audit_prefix(target: str) -> str:
    return f"{AUDIT_PREFIX}{urllib.parse.quote(target, safe='')}/"


def pod_to_bytes(pod: Pod) -> bytes:
    return codec.encode_pod(dataclasses.replace(pod, state=PodState.ACTIVE))
