"""Pod-side agent: registers the pod, heartbeats, reports per-slice load and hot keys, learns its slices."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder import codec
from sharder.headers import LEADER_METADATA_KEY
from sharder.keyspace import Slice
from sharder.load import EngineLoad, LoadReport, RequestOutcomes, SliceLoad
from sharder.pods import Pod, PodState
from sharder.policy.warm import still_reported
from sharder.security.client import ClientAuth
from sharder.sketch import Ewma, SpaceSaving

log = logging.getLogger(__name__)

_STATE_FROM_PB = {
    slicing_pb2.POD_STATE_ACTIVE: PodState.ACTIVE,
    slicing_pb2.POD_STATE_DRAINING: PodState.DRAINING,
    slicing_pb2.POD_STATE_DEAD: PodState.DEAD,
}


class _SliceStats:
    """Per-held-slice aggregation: EWMA of the load rate and a space-saving hot-key sketch."""

    __slots__ = ("ewma", "requests", "sketch", "window_weight")

    def __init__(self, top_k: int, halflife_s: float) -> None:
        self.ewma = Ewma(half_life_s=halflife_s)
        self.sketch = SpaceSaving(top_k)
        self.requests = 0
        self.window_weight = 0.0


class Slicelet:
    """Registers ``pod`` with the assigner leader and reports its load every ``report_interval_s``.

    ``record(slice_key, weight)`` is the request-path hook: an O(1) append; aggregation (per-slice EWMA
    and hot keys, misrouted counting) happens in the report loop. Reports go to the leader: a follower's
    FAILED_PRECONDITION carries the leader's address (``x-brunoise-leader``), which is followed at once;
    unreachable assigners are skipped with jittered backoff. The held slices come from the last answer.
    ``auth``: this pod's token (bound to its pod id) and the CA (default: ``ClientAuth.from_env()``).

    Warm part: each answer lists the slices this pod holds as a warming replica and their donors' runtimes;
    ``on_warming`` gets those not yet warmed (slice -> donor addresses), and ``mark_warm(slice)`` (the warmer is
    done) puts the slice in the next report's ``warm`` — sent at once — until the assigner clears the mark.
    """

    def __init__(
        self,
        pod: Pod,
        assigner_addresses: Sequence[str],
        *,
        engine_load: Callable[[], EngineLoad],
        outcomes: Callable[[], RequestOutcomes] | None = None,
        report_interval_s: float = 1.0,
        lease_ttl_s: float = 5.0,
        top_k: int = 8,
        ewma_halflife_s: float = 10.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        rpc_timeout_s: float = 3.0,
        auth: ClientAuth | None = None,
        on_warming: Callable[[dict[Slice, list[str]]], None] | None = None,
    ) -> None:
        if not assigner_addresses:
            raise ValueError("assigner_addresses must name at least one assigner (host:port)")
        if not pod.id or not pod.address or not pod.target:
            raise ValueError("pod needs an id, an address and a target")
        if report_interval_s <= 0 or lease_ttl_s <= 0:
            raise ValueError("report_interval_s and lease_ttl_s must be > 0")
        self.pod = pod
        self.addresses = list(assigner_addresses)
        self.engine_load = engine_load
        self.outcomes = outcomes  # the pod's request outcome counters (rollout SLOs), when it counts them
        self.report_interval_s = report_interval_s
        self.lease_ttl_s = lease_ttl_s
        self.top_k = top_k
        self.ewma_halflife_s = ewma_halflife_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.rpc_timeout_s = rpc_timeout_s
        self.auth = auth if auth is not None else ClientAuth.from_env()  # this pod's token; $BRUNOISE_TOKEN
        self._pending: list[tuple[int, float]] = []
        self._held: tuple[Slice, ...] = ()
        self._los: list[int] = []
        self._stats: dict[Slice, _SliceStats] = {}
        self._window_start = time.monotonic()
        self._window_misrouted = 0
        self.misrouted = 0
        self.generation = 0
        self.state = PodState.ACTIVE
        #: the assigner's word that this pod drains with slices no other pod can take (``ReportResponse.stranded``)
        self.stranded = False
        #: the state the assigner named in its first answer to this process (DRAINING: a drain asked for by an
        #: earlier process of this pod id, e.g. on its SIGTERM); None until registered
        self.first_state: PodState | None = None
        self.leader_id = ""
        self.last_error: str | None = None
        self.reports_sent = 0
        self._seq = 0
        self._addr_idx = random.randrange(len(self.addresses))
        self._leader_addr: str | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._task: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self._server_interval_s: float | None = None
        self.on_warming = on_warming
        self._warm_done: set[Slice] = set()
        self.warming: dict[Slice, list[str]] = {}  # the last answer's warm tasks
        self.peers: dict[str, str] = {}  # the last answer's peer runtimes by pod id (what a KV pull may read from)
        self._kick = asyncio.Event()

    # request path (synchronous, O(1)) -----------------------------------------------------------
    def record(self, slice_key: int, weight: float = 1.0) -> None:
        """Count one request for ``slice_key`` (aggregated by the report loop)."""
        self._pending.append((slice_key, weight))

    def holds(self, slice_key: int) -> bool:
        """Whether this pod holds (as replica or leaving) the slice containing ``slice_key``."""
        i = bisect.bisect_right(self._los, slice_key) - 1
        return i >= 0 and slice_key < self._held[i].hi

    def mark_warm(self, s: Slice) -> None:
        """The warmer finished ``s``: report it warm now (and in every report until the assigner clears it)."""
        self._warm_done.add(s)
        self._kick.set()

    @property
    def slices(self) -> tuple[Slice, ...]:
        return self._held

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the report loop (the first report is sent at once); returns without waiting for it."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"slicelet-{self.pod.id}")

    async def wait_registered(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._registered.wait(), timeout=timeout_s)

    async def stop(self, *, leave: bool = True) -> None:
        """Stop reporting and, when registered and ``leave``, end the registration (a last report with
        ``leaving``), so the pod's next incarnation, at whatever address it gets, need not wait for this one's
        lease to expire. ``leave`` False just goes quiet (the lease runs out, as when a pod dies)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if leave and self._registered.is_set():
            self.on_warming = None  # the answer hands out no more work: this process is going away
            try:
                await asyncio.wait_for(self.report_once(leaving=True), timeout=2 * self.rpc_timeout_s)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:  # the lease expires on its own
                log.info("slicelet %s: leaving report failed: %r", self.pod.id, exc)
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close(None)
        self._channels.clear()

    # aggregation --------------------------------------------------------------------------------
    def _aggregate(self) -> tuple[SliceLoad, ...]:
        pending, self._pending = self._pending, []
        now = time.monotonic()
        dt = max(now - self._window_start, 1e-3)
        self._window_start = now
        held, los, stats = self._held, self._los, self._stats
        for key, weight in pending:
            i = bisect.bisect_right(los, key) - 1
            if i >= 0 and key < held[i].hi:
                st = stats[held[i]]
                st.requests += 1
                st.window_weight += weight
                st.sketch.add(key, weight)
            else:
                self._window_misrouted += 1
        self.misrouted += self._window_misrouted
        out: list[SliceLoad] = []
        age = 0.5 ** (dt / self.ewma_halflife_s)
        for s in held:
            st = stats[s]
            st.ewma.update(st.window_weight / dt, dt)
            load = max(0.0, float(st.ewma.value))
            total = st.sketch.total
            top: tuple[tuple[int, float], ...] = ()
            if total > 0 and load > 0:
                top = tuple((k, load * c / total) for k, c in st.sketch.top(self.top_k))
            # the window's misrouted requests ride on the first reported slice (a report has no pod-level field)
            out.append(SliceLoad(s, load, top, st.requests, self._window_misrouted if not out else 0))
            st.window_weight = 0.0
            st.sketch.scale(age)  # hot keys age like the load EWMA
        self._window_misrouted = 0 if out else self._window_misrouted
        return tuple(out)

    def _set_held(self, slices: Sequence[Slice]) -> None:
        held = tuple(sorted(slices))
        if held == self._held:
            return
        self._stats = {s: self._stats.get(s) or _SliceStats(self.top_k, self.ewma_halflife_s) for s in held}
        self._held = held
        self._los = [s.lo for s in held]

    # reporting ----------------------------------------------------------------------------------
    def _channel(self, addr: str) -> grpc.aio.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = self.auth.aio_channel(addr)
        return ch

    def build_request(self, *, leaving: bool = False) -> assigner_pb2.ReportRequest:
        if leaving:  # the last word of a stopping pod: no load, its registration ends
            return assigner_pb2.ReportRequest(pod=codec.pod_to_proto(self.pod), leaving=True)
        self._seq += 1
        report = LoadReport(
            pod_id=self.pod.id,
            target=self.pod.target,
            engine=self.engine_load(),
            slices=self._aggregate(),
            seq=self._seq,
            unix_ms=int(time.time() * 1000),
            outcomes=self.outcomes() if self.outcomes is not None else None,
            warm=tuple(sorted(self._warm_done)),
        )
        return assigner_pb2.ReportRequest(
            pod=codec.pod_to_proto(self.pod),
            load=codec.load_report_to_proto(report),
            lease_ttl_ms=int(self.lease_ttl_s * 1000),
        )

    async def report_once(self, *, leaving: bool = False) -> assigner_pb2.ReportResponse:
        """Build and send one report, following leader hints and trying each address once; raises the last error.
        ``leaving``: the pod is stopping, and its registration ends with this report."""
        req = self.build_request(leaving=leaving)
        last: grpc.aio.AioRpcError | None = None
        unreachable: set[str] = set()
        tried = 0
        hops = 0
        while tried < len(self.addresses) and hops < 2 * len(self.addresses) + 2:
            hops += 1
            addr = self._leader_addr or self.addresses[self._addr_idx % len(self.addresses)]
            try:
                stub = assigner_pb2_grpc.AssignerStub(self._channel(addr))  # type: ignore[no-untyped-call]
                resp: assigner_pb2.ReportResponse = await stub.Report(
                    req, timeout=self.rpc_timeout_s, metadata=self.auth.metadata
                )
            except grpc.aio.AioRpcError as exc:
                last = exc
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    hint = _leader_hint(exc)
                    if hint and hint != addr and hint not in unreachable:
                        self._leader_addr = hint
                        continue
                if exc.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.ALREADY_EXISTS,
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.NOT_FOUND,
                ):
                    raise  # retrying elsewhere will not help
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    unreachable.add(addr)
                if self._leader_addr is None or self._leader_addr == addr:
                    self._addr_idx += 1
                self._leader_addr = None
                tried += 1
                continue
            self._on_response(resp)
            if self._leader_addr is None:
                self._leader_addr = addr
            return resp
        assert last is not None
        raise last

    def _on_response(self, resp: assigner_pb2.ReportResponse) -> None:
        self.generation = resp.generation
        self.leader_id = resp.leader_id
        self.state = _STATE_FROM_PB.get(resp.state, PodState.ACTIVE)
        self.stranded = resp.stranded
        if self.first_state is None:
            self.first_state = self.state
        self._set_held([codec.slice_from_proto(s) for s in resp.slices])
        if resp.report_interval_ms:
            self._server_interval_s = resp.report_interval_ms / 1000
        self._on_warming({codec.slice_from_proto(w.slice): list(w.donors) for w in resp.warming})
        self.peers = dict(resp.peers)
        self.reports_sent += 1
        self.last_error = None
        self._registered.set()

    def _on_warming(self, tasks: dict[Slice, list[str]]) -> None:
        self._warm_done = set(still_reported(self._warm_done, tasks.keys()))
        self.warming = tasks
        todo = {s: d for s, d in tasks.items() if not any(w.covers(s) for w in self._warm_done)}
        if self.on_warming is not None:
            try:
                self.on_warming(todo)
            except Exception:
                log.exception("slicelet %s: warm hook failed", self.pod.id)

    async def _run(self) -> None:
        backoff = self.backoff_initial_s
        while True:
            try:
                await self.report_once()
                backoff = self.backoff_initial_s
                delay = self.report_interval_s
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
                log.warning("slicelet %s: report failed: %s", self.pod.id, self.last_error)
                delay = min(backoff, self.report_interval_s) * (0.5 + random.random())
                backoff = min(backoff * 2, self.backoff_max_s)
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("slicelet %s: report failed", self.pod.id)
                delay = self.report_interval_s
            with contextlib.suppress(TimeoutError):  # a finished warm-up reports at once
                await asyncio.wait_for(self._kick.wait(), delay)
            self._kick.clear()


def _leader_hint(exc: grpc.aio.AioRpcError) -> str | None:
    md: Any = exc.trailing_metadata()  # grpc.aio.Metadata at runtime (the stubs say tuple)
    value = md.get(LEADER_METADATA_KEY) if md is not None else None
    if value is None:
        return None
    return value if isinstance(value, str) else bytes(value).decode()
