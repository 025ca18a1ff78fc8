"""The store-backed rollouts: one record per model in store meta (CAS), the leader's stepper and SLO judge, the wire.

Any replica serves the commands (start, pause, resume, promote, rollback): each is a compare-and-swap on the
record, like the quota ledgers. Only the leader runs ``RolloutDriver``: every ``interval_s`` it judges each active
rollout's SLO on green's pods' own outcome counters (``LoadReport.outcomes``: the pods see every request they
serve, retried ones included, and the leader already holds their reports; the routers see only their own share and
would have to ship it through the store), rolls back on a breach, and otherwise takes the next step once the step
interval passed and green is ready and warm.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import aiohttp

from brunoise_api.v1 import assigner_pb2
from sharder import rollout as ro
from sharder.assignment import Assignment
from sharder.load import TTFT_BUCKETS_MS, RequestOutcomes
from sharder.pods import PodState
from sharder.rollout import GreenWindow, Rollout, RolloutSLO
from sharder.store.base import Store, StoreError

from .leader import Leader
from .pod_loads import PodLoadView

log = logging.getLogger(__name__)

PREFIX = "rollout/"
CAS_ATTEMPTS = 16


def _now_ms() -> int:
    return int(time.time() * 1000)


def _key(model: str) -> str:
    return PREFIX + urllib.parse.quote(model, safe="")


class RolloutConflict(StoreError):
    """The record kept changing under us; the caller may retry."""


class Rollouts:
    """Every model's rollout record in ``store``; ``clock`` gives wall-clock ms (shared by every replica)."""

    def __init__(self, store: Store, clock: Callable[[], int] = _now_ms) -> None:
        self.store = store
        self.clock = clock

    async def get(self, model: str) -> Rollout | None:
        raw = await self.store.get_meta(_key(model))
        return Rollout.from_json(raw) if raw is not None else None

    async def list(self) -> list[Rollout]:
        found = await self.store.list_meta(PREFIX)
        return sorted((Rollout.from_json(v) for v in found.values()), key=lambda r: r.model)

    async def update(self, model: str, change: Callable[[Rollout | None, int], Rollout | None]) -> Rollout | None:
        """Apply ``change(current, now_ms)`` by compare-and-swap (None: no change); the record written, or None."""
        key = _key(model)
        for _ in range(CAS_ATTEMPTS):
            raw = await self.store.get_meta(key)
            cur = Rollout.from_json(raw) if raw is not None else None
            new = change(cur, self.clock())
            if new is None:
                return None
            if await self.store.cas_meta(key, raw, new.to_json()):
                log.warning(
                    "rollout %s gen %d: %s (%s -> %s, %.3f green)",
                    new.model, new.generation, new.reason, new.blue, new.green, new.fraction,
                )  # fmt: skip
                return new
        raise RolloutConflict(f"the rollout of model {model!r} kept changing; retry")


@dataclasses.dataclass(slots=True)
class WindowCounter:
    """Green's outcome increases over the last ``window_s`` (per tick), from each pod's cumulative counters."""

    last: dict[str, RequestOutcomes] = dataclasses.field(default_factory=dict)
    deltas: collections.deque[tuple[int, int, int, tuple[int, ...]]] = dataclasses.field(
        default_factory=collections.deque
    )

    def add(self, now_ms: int, seen: dict[str, RequestOutcomes], window_s: float) -> GreenWindow:
        req = err = 0
        buckets = [0] * len(TTFT_BUCKETS_MS)
        for pid, o in seen.items():
            prev = self.last.get(pid)
            if prev is None:
                self.last[pid] = o  # first sight: its past is not this rollout's
                continue
            if o.requests < prev.requests:  # the pod restarted: its counters began again at 0
                prev = RequestOutcomes()
            req += o.requests - prev.requests
            err += max(0, o.errors - prev.errors)
            for i, n in enumerate(o.ttft_ms_buckets):
                before = prev.ttft_ms_buckets[i] if i < len(prev.ttft_ms_buckets) else 0
                buckets[i] += max(0, n - before)
            self.last[pid] = o
        self.deltas.append((now_ms, req, err, tuple(buckets)))
        while self.deltas and self.deltas[0][0] <= now_ms - window_s * 1000:
            self.deltas.popleft()
        total = [0] * len(TTFT_BUCKETS_MS)
        for _, _, _, b in self.deltas:
            for i, n in enumerate(b):
                total[i] += n
        return GreenWindow(sum(d[1] for d in self.deltas), sum(d[2] for d in self.deltas), tuple(total))


async def probe_ready(http_addresses: list[str], timeout_s: float = 1.0) -> bool:
    """Every pod answers 200 on ``/ready`` (what a kubelet's readiness probe asks)."""
    if not http_addresses:
        return False
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            for addr in http_addresses:
                async with s.get(addr.rstrip("/") + "/ready") as r:
                    if r.status != 200:
                        return False
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
    return True


def green_warm(assignment: Assignment) -> bool:
    """The warm-up hook: False while any slice of green's ``assignment`` still has a replica warming (warm-up on
    reshard: it gained the slice and has not yet prefilled its donors' hot prompts, nor reached the deadline), so a
    step never hands keys to green while its caches are still being filled."""
    return not any(sa.warming for sa in assignment.slices)


class RolloutDriver:
    """The leader's rollout loop: judge, roll back, step (see the module docstring)."""

    def __init__(
        self,
        rollouts: Rollouts,
        leader: Leader,
        view: PodLoadView,
        *,
        interval_s: float = 1.0,
        ready: Callable[[list[str]], Awaitable[bool]] = probe_ready,
        warm: Callable[[Assignment], bool] = green_warm,
    ) -> None:
        self.rollouts = rollouts
        self.leader = leader
        self.view = view
        self.interval_s = interval_s
        self.ready = ready
        self.warm = warm
        self.windows: dict[tuple[str, str, str], WindowCounter] = {}
        self.last_window: dict[str, GreenWindow] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="rollouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.leader.is_leader:
                self.windows.clear()
                self.last_window.clear()
                continue
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep stepping the other rollouts next time
                log.warning("rollout tick failed: %s", exc)

    def _green_outcomes(self, green: Assignment | None) -> dict[str, RequestOutcomes]:
        out: dict[str, RequestOutcomes] = {}
        for p in green.pods if green is not None else ():
            rec = self.view.get(p.id)
            if rec is not None and rec.report is not None and rec.report.outcomes is not None:
                out[p.id] = rec.report.outcomes
        return out

    async def _green_ready(self, green: Assignment | None) -> bool:
        if green is None or not green.slices or any(not s.replicas for s in green.slices):
            return False
        active = [p for p in green.pods if p.state == PodState.ACTIVE]
        return bool(active) and await self.ready([p.http_address for p in active]) and self.warm(green)

    async def tick(self) -> None:
        """One pass over every active rollout."""
        live: set[tuple[str, str, str]] = set()
        for r in await self.rollouts.list():
            if not r.active:
                continue
            # one window per model and pair of targets, through steps, pauses and resumes; dropped once the rollout
            # ends (a later rollout of the same pair starts a fresh one)
            wkey = (r.model, r.blue, r.green)
            live.add(wkey)
            green = self.leader.current(r.green)
            window = self.windows.setdefault(wkey, WindowCounter()).add(
                self.rollouts.clock(), self._green_outcomes(green), r.slo.window_s
            )
            self.last_window[r.model] = window
            ready = ro.step_due(r, self.rollouts.clock()) and await self._green_ready(green)

            def change(
                cur: Rollout | None, now: int, seen: Rollout = r, ok: bool = ready, w: GreenWindow = window
            ) -> Rollout | None:
                if cur is None or cur.generation != seen.generation:
                    return None  # a command changed it meanwhile: judge it next tick
                return ro.tick(cur, now, w, ok)

            await self.rollouts.update(r.model, change)
        for k in [k for k in self.windows if k not in live]:
            del self.windows[k]


# wire ------------------------------------------------------------------------------------------------
def slo_from_proto(m: assigner_pb2.RolloutSLO, present: bool) -> RolloutSLO:
    """The SLO of a request: the defaults when absent; zeros of ``min_requests`` / ``window_s`` mean the defaults."""
    d = RolloutSLO()
    if not present:
        return d
    return RolloutSLO(m.max_error_rate, m.max_ttft_p99_ms, m.min_requests or d.min_requests, m.window_s or d.window_s)


def rollout_to_proto(r: Rollout, window: GreenWindow | None = None) -> assigner_pb2.Rollout:
    m = assigner_pb2.Rollout(
        model=r.model, blue=r.blue, green=r.green, steps=list(r.steps), step=r.step, state=r.state.value,
        slo=assigner_pb2.RolloutSLO(
            max_error_rate=r.slo.max_error_rate, max_ttft_p99_ms=r.slo.max_ttft_p99_ms,
            min_requests=r.slo.min_requests, window_s=r.slo.window_s,
        ),
        step_interval_s=r.step_interval_s, generation=r.generation, changed_unix_ms=r.changed_ms, reason=r.reason,
        fraction=r.fraction,
    )  # fmt: skip
    if window is not None:
        m.judged = True
        m.green_requests = window.requests
        m.green_errors = window.errors
        p99 = window.ttft_p99_ms()
        m.green_ttft_p99_ms = p99 if p99 != float("inf") else -1.0
    return m


def rollout_from_proto(m: assigner_pb2.Rollout) -> Rollout:
    """What routers decode (validated)."""
    s = m.slo
    return Rollout(
        model=m.model, blue=m.blue, green=m.green, steps=tuple(m.steps), step=m.step, state=ro.RolloutState(m.state),
        slo=RolloutSLO(s.max_error_rate, s.max_ttft_p99_ms, s.min_requests or 1, s.window_s or 1.0),
        step_interval_s=m.step_interval_s, generation=m.generation, changed_ms=m.changed_unix_ms, reason=m.reason,
    ).validate()  # fmt: skip
