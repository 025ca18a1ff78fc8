"""Router-side key-of-death containment: reports key faults to the assigners and keeps their verdicts.

A request's attempt that fails with a pod fault (the pod crashed, hung, timed out or answered 500) is reported
(``ReportKeyFault``); the assigners judge it in the store (``sharder.quarantine``), so every router shares one
verdict, and a restarted router gets them back from its first poll (``ListQuarantines``). A *suspected* key is not
retried, spilled or fallen back beyond its subset while a pod of its subset can take it (``contained``); a
*quarantined* key is refused (``key_quarantined``) and never retried. With the assigners unreachable the router
judges alone, with the same pure rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import grpc

from axon_router.assigner_client import AssignerCalls
from axon_router.cost import tie_rank
from axon_router.metrics import RouterMetrics
from brunoise_api.v1 import assigner_pb2
from sharder.quarantine import KeyRecord, QuarantinePolicy, note_fault

log = logging.getLogger("axon_router.quarantine")

#: Attempt failures that say the pod broke while serving the request (``RetryableError.cause``, or a broken stream).
FAULT_CAUSES = frozenset({"network", "timeout", "empty_stream", "http_500", "stream_broken"})


def contained(outside: Sequence[str], subset: Sequence[str], slice_key: int) -> list[str]:
    """The pods beyond its subset a suspected key may be sent to: none while a pod of its subset can take it; when
    none can (they are down, or were tried), the one outside pod that ranks first for the key on every router
    (``tie_rank``). An innocent key whose request was on a pod that crashed is suspected too, and must not be
    refused once the key of death has taken its subset down; a key of death still reaches one pod at a time and
    is quarantined at ``QuarantinePolicy.pods`` faulted pods, wherever they are."""
    if subset or not outside:
        return []
    return [min(outside, key=lambda p: tie_rank(slice_key, p))]


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _from_proto(m: assigner_pb2.KeyFaultRecord) -> KeyRecord:
    return KeyRecord(m.target, m.slice_key, tuple(m.pods), m.first_unix_ms, m.last_unix_ms,
                     m.quarantined_until_unix_ms, m.cause, m.suspected_until_unix_ms)  # fmt: skip


class KeyGuard:
    """The keys this router knows to be suspected or quarantined, refreshed from the assigners every ``poll_s``."""

    def __init__(
        self,
        calls: AssignerCalls,
        metrics: RouterMetrics,
        policy: QuarantinePolicy | None = None,
        *,
        poll_s: float = 1.0,
        clock_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.calls = calls
        self.metrics = metrics
        self.policy = policy or QuarantinePolicy()
        self.policy.validate()
        self.poll_s = poll_s
        self.clock_ms = clock_ms
        self.records: dict[tuple[str, int], KeyRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self._reports: set[asyncio.Task[str]] = set()
        self._refreshing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll_loop(), name="key-guard-poll")

    async def stop(self) -> None:
        for t in [self._task, *self._reports]:
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def state(self, target: str, slice_key: int) -> str:
        r = self.records.get((target, slice_key))
        return r.state(self.clock_ms()) if r is not None else "clear"

    def remaining_s(self, target: str, slice_key: int) -> float:
        r = self.records.get((target, slice_key))
        return max(0.0, (r.quarantined_until_ms - self.clock_ms()) / 1000.0) if r is not None else 0.0

    async def fault(self, target: str, slice_key: int, pod: str, cause: str) -> str:
        """Record a fault of ``slice_key``'s request on ``pod``; the key's state after it."""
        self.metrics.key_faults.labels(cause).inc()
        k = (target, slice_key)
        now = self.clock_ms()
        local = note_fault(self.records.get(k), target, slice_key, pod, cause, now, self.policy)
        self.records[k] = local
        req = assigner_pb2.ReportKeyFaultRequest(
            target=target, slice_key=slice_key, pod_id=pod, cause=cause, quarantine_pods=self.policy.pods,
            window_ms=self.policy.window_ms, cooldown_ms=self.policy.cooldown_ms,
        )  # fmt: skip
        try:
            resp: assigner_pb2.KeyFaultRecord = await self.calls.call("ReportKeyFault", req)
        except grpc.aio.AioRpcError as e:
            log.warning(
                "key fault not reported; judged locally",
                extra={"slice_key": f"{slice_key:016x}", "error": e.code().name},
            )
        else:
            self.records[k] = _from_proto(resp)
        st = self.state(target, slice_key)
        if st == "quarantined":
            log.warning("key quarantined", extra={"target": target, "slice_key": f"{slice_key:016x}",
                                                  "pods": list(self.records[k].pods), "cause": cause})  # fmt: skip
        self._export()
        return st

    def fault_later(self, target: str, slice_key: int, pod: str, cause: str) -> None:
        """``fault`` from synchronous code (a stream broken after its first token)."""
        t = asyncio.get_running_loop().create_task(self.fault(target, slice_key, pod, cause))
        self._reports.add(t)
        t.add_done_callback(self._reports.discard)

    async def confirm(self, target: str, slice_key: int) -> str:
        """The key's state after a fresh look at the assigners' records (one look shared by concurrent callers);
        the state known locally when they cannot be reached."""
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())
            self._refreshing.add_done_callback(self._refreshed)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await asyncio.shield(self._refreshing)
        return self.state(target, slice_key)

    def _refreshed(self, t: asyncio.Task[None]) -> None:
        self._refreshing = None
        if not t.cancelled():
            t.exception()  # retrieved: a failed look is not an error (the local state stands)

    async def refresh(self) -> None:
        """Replace the known keys with the assigners' (quarantined and suspected ones); raises when unreachable."""
        resp: assigner_pb2.ListQuarantinesResponse = await self.calls.call(
            "ListQuarantines", assigner_pb2.ListQuarantinesRequest(suspected=True)
        )
        self.records = {(m.target, m.slice_key): _from_proto(m) for m in resp.keys}
        self._export()

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.refresh()
            await asyncio.sleep(self.poll_s)

    def _export(self) -> None:
        now = self.clock_ms()
        states = [r.state(now) for r in self.records.values()]
        self.metrics.quarantined_keys.set(states.count("quarantined"))
        self.metrics.suspected_keys.set(states.count("suspected"))
