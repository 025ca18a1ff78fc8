"""Graceful drain of a runtime pod: stop reporting ready, then wait (bounded) for the requests already running."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from runtime.engines.base import Engine, EngineChunk, EngineProxy, EngineRequest


class DrainGate(EngineProxy):
    """Counts the requests in flight through it; once ``drain()`` starts, ``ready`` is False (HTTP /health 503, gRPC
    NOT_SERVING, so routers pick other pods) while the requests already running finish."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return not self.draining and self.inner.ready

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        self.inflight += 1
        self._idle.clear()
        try:
            async for chunk in self.inner.generate(request):
                yield chunk
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> int:
        """Stop reporting ready and wait up to ``timeout_s`` for the requests in flight; how many were left."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=deadline - time.monotonic())
            except TimeoutError:
                break
        return self.inflight
