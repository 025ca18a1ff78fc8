"""Helpers shared by the store tests: a fake clock, polling with a deadline, a backend-neutral store handle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sharder.store.base import Store

HISTORY_LIMIT = 5


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Backend:
    """One started store plus what a backend-neutral test needs: more clients of the same store, and time."""

    def __init__(self, kind: str, store: Store, another: Callable[[], Awaitable[Store]], clock: FakeClock | None):
        self.kind = kind
        self.store = store
        self._another = another
        self.clock = clock
        self.extra: list[Store] = []

    async def another(self) -> Store:
        """Another client of the same store (own leader identity), started; closed after the test."""
        s = await self._another()
        self.extra.append(s)
        return s

    def let_time_pass(self, seconds: float) -> None:
        """Embedded: move the fake clock. etcd: real time passes by itself (callers poll with a deadline)."""
        if self.clock is not None:
            self.clock.advance(seconds)

    async def close(self) -> None:
        for s in [*self.extra, self.store]:
            await s.close()
