"""Per-pod pollers: a readiness loop (HTTP /ready, else /health) and a Runtime.GetLoad loop (load, cache view)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from axon_router.forward import Forwarder
from axon_router.knobs import Knobs
from axon_router.metrics import RouterMetrics
from axon_router.pod_view import PodView
from brunoise_api.v1 import runtime_pb2, runtime_pb2_grpc

log = logging.getLogger("axon_router")


class Pollers:
    """The poll tasks of every known pod and their gRPC channels; started and stopped by the target table."""

    def __init__(self, knobs: Knobs, metrics: RouterMetrics, forwarder: Forwarder) -> None:
        self.knobs = knobs
        self.metrics = metrics
        self.forwarder = forwarder
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def start(self, v: PodView) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._health_loop(v), name=f"health-{v.id}")]
        if v.address:
            tasks.append(loop.create_task(self._load_loop(v), name=f"load-{v.id}"))
        self._tasks[v.id] = tasks

    def stop_soon(self, pod_id: str) -> None:
        """Stop a pod's pollers in the background (the pod left every assignment)."""
        asyncio.get_running_loop().create_task(self.stop(pod_id))

    async def stop(self, pod_id: str) -> None:
        for t in self._tasks.pop(pod_id, []):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        ch = self._channels.pop(pod_id, None)
        if ch is not None:
            await ch.close(None)

    async def stop_all(self) -> None:
        for pid in list(self._tasks):
            await self.stop(pid)

    async def _health_loop(self, v: PodView) -> None:
        k = self.knobs
        probe = "/ready"  # a brunoise runtime's readiness (fails while it drains); a plain vLLM has only /health
        while True:
            ok = False
            if v.http_address:
                try:
                    status = await self.forwarder.get(v.http_address + probe, k.health_timeout_s)
                    if status == 404 and probe == "/ready":
                        probe = "/health"
                        status = await self.forwarder.get(v.http_address + probe, k.health_timeout_s)
                    ok = status == 200
                except Exception:
                    ok = False
            else:
                ok = True
            changed = v.health.observe(ok, k.unhealthy_after, k.healthy_after)
            if changed is not None:
                v.healthy = changed
                self.metrics.pod_healthy.labels(v.id).set(1 if changed else 0)
                self.metrics.health_transitions.labels(v.id, "healthy" if changed else "unhealthy").inc()
                log.warning("pod health changed", extra={"pod": v.id, "healthy": changed})
            await asyncio.sleep(k.health_interval_s)

    async def _load_loop(self, v: PodView) -> None:
        k = self.knobs
        last_cache = -1e9
        ch = self._channels.get(v.id)
        if ch is None:
            ch = self._channels[v.id] = grpc.aio.insecure_channel(v.address)
        stub = runtime_pb2_grpc.RuntimeStub(ch)  # type: ignore[no-untyped-call]
        while True:
            now = time.monotonic()
            want_cache = now - last_cache >= k.cache_poll_interval_s
            epoch = v.poll_started()
            try:
                resp = await stub.GetLoad(
                    runtime_pb2.GetLoadRequest(include_cache=want_cache), timeout=k.load_poll_timeout_s
                )
                e = resp.engine
                v.apply_report(epoch, now, e.running, e.waiting, e.tokens_in_flight, e.kv_usage)
                if want_cache and resp.HasField("cache"):
                    c = resp.cache
                    v.set_cache(
                        c.chunk_bytes, frozenset(c.prefix_hashes), now, c.blocks_total, c.block_tokens,
                        incarnation=c.incarnation, epoch=c.epoch,
                    )  # fmt: skip
                    last_cache = now
                self.metrics.load_polls.labels("ok").inc()
            except Exception:
                self.metrics.load_polls.labels("error").inc()
            await asyncio.sleep(k.load_poll_interval_s)
