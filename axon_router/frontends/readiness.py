"""Router readiness (``/ready``, gRPC health) and its shutdown: ready = not draining, an assignment held, a healthy pod."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpc_health.v1 import health, health_pb2

from axon_router.router import Router

#: How often gRPC health is brought in line with readiness.
HEALTH_SYNC_S = 0.25


class Readiness:
    """What a load balancer may send this router. Liveness (``/health``) is only "the process answers"."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.draining = False
        self._task: asyncio.Task[None] | None = None

    def why_not(self) -> str | None:
        """None when ready, else why not (the first reason found)."""
        if self.draining:
            return "draining: the router is shutting down"
        r = self.router
        targets = r.targets
        if not targets:
            return "no assignment yet: the router has not received one from an assigner"
        # the pod views are exactly the pods some target's assignment names
        if not any(p.healthy for p in r.pods.values()):
            return "no healthy pod for any target"
        return None

    def report(self) -> dict[str, Any]:
        """The /ready body."""
        r = self.router
        why = self.why_not()
        return {
            "ready": why is None,
            "reason": why,
            "draining": self.draining,
            "watching": bool(getattr(r.clerk, "connected", True)),
            "targets": sorted(r.targets),
            "pods": len(r.pods),
            "healthy_pods": sum(1 for p in r.pods.values() if p.healthy),
        }

    def start_health_sync(self, hs: health.HealthServicer, services: tuple[str, ...]) -> None:
        """Keep gRPC health (``""`` and each service) SERVING exactly while ready."""
        self._task = asyncio.get_running_loop().create_task(self._sync(hs, services), name="router-health-sync")

    async def _sync(self, hs: health.HealthServicer, services: tuple[str, ...]) -> None:
        last: bool | None = None
        while True:
            ok = self.why_not() is None
            if ok != last:
                status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                for name in ("", *services):
                    hs.set(name, status)
                last = ok
            await asyncio.sleep(HEALTH_SYNC_S)

    def drain(self, hs: health.HealthServicer | None, services: tuple[str, ...]) -> None:
        """Readiness fails now (new traffic goes elsewhere); requests in flight go on."""
        self.draining = True
        if hs is not None:
            for name in ("", *services):
                hs.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
