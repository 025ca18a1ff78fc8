"""The virtual clock and event queue of the simulator: events at simulated times, FIFO among equal times."""

from __future__ import annotations

import heapq
from collections.abc import Callable

Action = Callable[[float], None]


class EventQueue:
    """A min-heap of (time, sequence, action); ``now`` is the time of the event being run. No wall clock."""

    __slots__ = ("_heap", "_seq", "events_run", "now")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Action]] = []
        self._seq = 0
        self.now = 0.0
        self.events_run = 0

    def at(self, t: float, action: Action) -> None:
        """Run ``action(t)`` at simulated time ``t`` (never before ``now``)."""
        if t < self.now:
            t = self.now
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, action))

    def after(self, dt: float, action: Action) -> None:
        self.at(self.now + dt, action)

    def every(self, interval: float, action: Action, *, start: float = 0.0, until: Callable[[], bool]) -> None:
        """Run ``action`` at ``start``, ``start + interval``, ... while ``until()`` is false."""

        def tick(t: float) -> None:
            if until():
                return
            action(t)
            self.at(t + interval, tick)

        self.at(start, tick)

    def __len__(self) -> int:
        return len(self._heap)

    def run(self, stop: Callable[[], bool] | None = None) -> None:
        """Run events in time order until none is left (or ``stop()`` is true after an event)."""
        heap = self._heap
        pop = heapq.heappop
        while heap:
            t, _, action = pop(heap)
            self.now = t
            action(t)
            self.events_run += 1
            if stop is not None and stop():
                return


__all__ = ["Action", "EventQueue"]
