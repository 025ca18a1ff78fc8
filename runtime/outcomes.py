"""The pod's request outcome counters (requests, 5xx errors, TTFT histogram) for its load reports (rollout SLOs)."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Callable

from runtime.engines.base import Engine, EngineChunk, EngineError, EngineProxy, EngineRequest
from sharder.load import TTFT_BUCKETS_MS, RequestOutcomes


class CountedEngine(EngineProxy):
    """``engine`` behind the same interface, counting each request's outcome for both surfaces: finished (with its
    first-token latency) or failed with a server error (an ``EngineError`` of status >= 500 or any other exception).
    A client error (4xx) or a client that went away counts as neither."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(engine)
        self.clock = clock
        self.requests = 0
        self.errors = 0
        self.ttft_ms_buckets = [0] * len(TTFT_BUCKETS_MS)

    def outcomes(self) -> RequestOutcomes:
        return RequestOutcomes(self.requests, self.errors, tuple(self.ttft_ms_buckets))

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        t0 = self.clock()
        first = True
        try:
            async for chunk in self.inner.generate(request):
                if first:
                    first = False
                    ttft_ms = (self.clock() - t0) * 1000.0
                    self.ttft_ms_buckets[bisect.bisect_left(TTFT_BUCKETS_MS, ttft_ms)] += 1
                yield chunk
                if chunk.finish_reason is not None:
                    self.requests += 1
        except EngineError as e:
            if e.status >= 500:
                self.requests += 1
                self.errors += 1
            raise
        except (asyncio.CancelledError, GeneratorExit, ConnectionError):
            raise
        except Exception:
            self.requests += 1
            self.errors += 1
            raise
