"""Watching the assignment through chaos: every generation a clerk accepts is checked, routers' generations sampled."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Callable

from sharder.assignment import Assignment, check_invariants
from sharder.clerk import Clerk
from sharder.errors import InvariantError
from sharder.promtext import metric_value
from sharder.security.client import ClientAuth
from tests.router.conftest import TARGET

GENERATION_METRIC = "brunoise_router_assignment_generation"


def router_generation(url: str, timeout_s: float = 0.5) -> int:
    """The generation router ``url`` routes on (from its /metrics); OSError when it does not answer in time."""
    with urllib.request.urlopen(url + "/metrics", timeout=timeout_s) as r:
        return int(metric_value(r.read().decode(), GENERATION_METRIC, {"target": TARGET}))


class Watcher:
    """A clerk of its own on ``addresses`` whose every accepted generation is checked with ``check_invariants``
    and against the one before (strictly increasing); plus the generation each live router routes on, sampled
    every ``sample_s`` (a router process must never go backwards). ``violations`` lists what broke."""

    def __init__(
        self,
        name: str,
        addresses: list[str],
        routers: Callable[[], dict[int, str]] | None = None,
        sample_s: float = 0.1,
        auth: ClientAuth | None = None,
    ) -> None:
        self.name = name
        self.clerk = Clerk(addresses, target=TARGET, backoff_initial_s=0.05, backoff_max_s=0.5, auth=auth or ClientAuth())
        self.routers = routers
        self.sample_s = sample_s
        self.generations: list[int] = []
        self.violations: list[str] = []
        self.router_last: dict[int, int] = {}  # router pid -> last generation it reported
        self.router_samples = 0
        self._task: asyncio.Task[None] | None = None
        self.clerk.add_listener(self._on_generation)

    def _on_generation(self, a: Assignment) -> None:
        if self.generations and a.generation <= self.generations[-1]:
            self.violations.append(f"{self.name}: generation {a.generation} after {self.generations[-1]}")
        self.generations.append(a.generation)
        try:
            check_invariants(a)
        except InvariantError as e:
            self.violations.append(f"{self.name}: generation {a.generation} breaks an invariant: {e}")

    async def start(self, ready_s: float = 20.0) -> None:
        await self.clerk.start()
        await self.clerk.wait_ready(ready_s)
        if self.routers is not None:
            self._task = asyncio.create_task(self._sample_routers(), name=f"{self.name}-routers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.clerk.stop()

    @property
    def generation(self) -> int:
        return self.clerk.generation(TARGET)

    async def _sample_routers(self) -> None:
        assert self.routers is not None
        while True:
            for pid, url in self.routers().items():
                try:
                    g = await asyncio.to_thread(router_generation, url)
                except OSError:
                    continue  # a dead or stopped router has no view to check
                self.router_samples += 1
                last = self.router_last.get(pid, 0)
                if g < last:
                    self.violations.append(f"router pid {pid} went from generation {last} back to {g}")
                self.router_last[pid] = max(last, g)
            await asyncio.sleep(self.sample_s)

    async def wait_generation(self, at_least: int, timeout_s: float, routers: bool = True) -> float:
        """Wait until this clerk (and, with ``routers``, every live router) holds ``at_least``; seconds waited.
        A clerk or router that froze on an older generation fails here."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while True:
            behind = [] if self.generation >= at_least else [f"clerk at {self.generation}"]
            if routers and self.routers is not None:
                for pid, url in self.routers().items():
                    try:
                        g = await asyncio.to_thread(router_generation, url)
                    except OSError:
                        continue
                    if g < at_least:
                        behind.append(f"router pid {pid} at {g}")
            if not behind:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: generation {at_least} not reached in {timeout_s}s: {behind}")
            await asyncio.sleep(0.05)

    async def wait_in_step(self, stored: Callable[[], int], timeout_s: float) -> float:
        """Wait until this clerk and every live router hold exactly the generation ``stored()`` (the assigner's
        current one, re-read each time) returns; seconds waited. Catches a view frozen above or below the store."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while True:
            want = await asyncio.to_thread(stored)
            views = {"clerk": self.generation}
            if self.routers is not None:
                for pid, url in self.routers().items():
                    try:
                        views[f"router pid {pid}"] = await asyncio.to_thread(router_generation, url)
                    except OSError:
                        continue
            off = {k: g for k, g in views.items() if g != want}
            if not off:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: not at the assigner's generation {want} after {timeout_s}s: {off}")
            await asyncio.sleep(0.05)
