"""Hot-key sketch (space-saving top-k) and load smoothing (EWMA of values and of event rates); no clock inside."""

from __future__ import annotations

import heapq
import math

from sharder.errors import ConfigError


class SpaceSaving:
    """Space-saving heavy-hitter sketch over int keys with float weights (Metwally et al.).

    Keeps at most ``capacity`` counters; a key's reported count overestimates its true weight by at most the
    weight of the counter it evicted (``error``), and every key heavier than ``total / capacity`` is kept."""

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"capacity must be an int >= 1, got {capacity!r}", field="capacity")
        self.capacity = capacity
        self._counts: dict[int, float] = {}
        self._errors: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []  # lazy min-heap of (count, key)
        self.total = 0.0

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, key: int, weight: float = 1.0) -> None:
        """Count ``weight`` (finite, >= 0) for ``key``."""
        if not 0.0 <= weight <= 1.7976931348623157e308:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self.total += weight
        counts = self._counts
        c = counts.get(key)
        if c is not None:
            c += weight
            counts[key] = c
        elif len(counts) < self.capacity:
            c = weight
            counts[key] = c
            self._errors[key] = 0.0
        else:
            victim, floor = self._pop_min()
            del counts[victim]
            del self._errors[victim]
            c = floor + weight
            counts[key] = c
            self._errors[key] = floor
        heapq.heappush(self._heap, (c, key))
        if len(self._heap) > 4 * self.capacity + 16:
            self._heap = [(v, k) for k, v in counts.items()]
            heapq.heapify(self._heap)

    def _pop_min(self) -> tuple[int, float]:
        heap, counts = self._heap, self._counts
        while heap:
            c, k = heapq.heappop(heap)
            if counts.get(k) == c:
                return k, c
        k = min(counts, key=lambda x: (counts[x], x))  # unreachable while the heap is kept in sync
        return k, counts[k]

    def count(self, key: int) -> float:
        """Estimated weight of ``key`` (0 when it is not tracked)."""
        return self._counts.get(key, 0.0)

    def error(self, key: int) -> float:
        """Upper bound of the overestimate of ``count(key)``."""
        return self._errors.get(key, 0.0)

    def top(self, n: int) -> list[tuple[int, float]]:
        """The ``n`` heaviest keys as (key, estimated weight), heaviest first (ties by key)."""
        if n <= 0:
            return []
        return heapq.nsmallest(n, ((k, c) for k, c in self._counts.items()), key=lambda kc: (-kc[1], kc[0]))

    def scale(self, factor: float) -> None:
        """Multiply every counter and the total by ``factor`` in [0, 1] (ageing between report windows)."""
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"factor must be in [0, 1], got {factor!r}")
        self._counts = {k: c * factor for k, c in self._counts.items()}
        self._errors = {k: e * factor for k, e in self._errors.items()}
        self._heap = [(c, k) for k, c in self._counts.items()]
        heapq.heapify(self._heap)
        self.total *= factor

    def clear(self) -> None:
        self._counts.clear()
        self._errors.clear()
        self._heap.clear()
        self.total = 0.0


def _decay(dt_s: float, half_life_s: float) -> float:
    """Weight kept by the old value after ``dt_s`` seconds."""
    return math.pow(0.5, dt_s / half_life_s)


def _check_half_life(half_life_s: float) -> float:
    if not isinstance(half_life_s, int | float) or not math.isfinite(half_life_s) or half_life_s <= 0:
        raise ConfigError(f"half_life_s must be a finite number > 0, got {half_life_s!r}", field="half_life_s")
    return float(half_life_s)


class Ewma:
    """Exponentially weighted moving average with a half-life in seconds; time is passed in (``dt_s``)."""

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = _check_half_life(half_life_s)
        self.value = 0.0
        self.initialized = False

    def update(self, value: float, dt_s: float) -> float:
        """Fold in ``value`` observed ``dt_s`` seconds after the previous one; the first sets the average."""
        if not math.isfinite(value):
            raise ValueError(f"value must be finite, got {value!r}")
        if not self.initialized:
            self.value = float(value)
            self.initialized = True
        else:
            keep = _decay(max(0.0, dt_s), self.half_life_s)
            self.value = keep * self.value + (1.0 - keep) * value
        return self.value


class RateEwma:
    """Smoothed event rate (weight per second): ``add`` events, read ``rate(now_s)``; the caller owns the clock."""

    def __init__(self, half_life_s: float, now_s: float = 0.0) -> None:
        self.half_life_s = _check_half_life(half_life_s)
        self._rate = 0.0
        self._pending = 0.0
        self._last = now_s
        self._seen = False

    def add(self, weight: float = 1.0) -> None:
        if not 0.0 <= weight <= 1.7976931348623157e308:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self._pending += weight

    def rate(self, now_s: float) -> float:
        """The smoothed rate at ``now_s`` (time going backwards is ignored)."""
        dt = now_s - self._last
        if dt > 0:
            inst = self._pending / dt
            if not self._seen:
                self._rate = inst
                self._seen = True
            else:
                keep = _decay(dt, self.half_life_s)
                self._rate = keep * self._rate + (1.0 - keep) * inst
            self._pending = 0.0
            self._last = now_s
        return self._rate


__all__ = ["Ewma", "RateEwma", "SpaceSaving"]
