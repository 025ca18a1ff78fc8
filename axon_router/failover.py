"""Failover: per-pod circuit breaker (passive outlier detection, half-open probing), health state, retry backoff."""

from __future__ import annotations

import enum
import random


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Breaker:
    """Circuit breaker of one pod.

    Closed: traffic flows; ``threshold`` consecutive failures open it (passive outlier detection).
    Open: no traffic for ``open_s``; then half-open: exactly one probe request is let through.
    The probe's success closes it; its failure reopens it for twice as long (up to ``max_open_s``).
    """

    __slots__ = ("failures", "open_for", "opened_at", "probe_out", "state")

    def __init__(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.open_for = 0.0
        self.probe_out = False

    def available(self, now: float) -> bool:
        """Whether a request may be sent now (no side effect)."""
        s = self.state
        if s is BreakerState.CLOSED:
            return True
        if s is BreakerState.OPEN:
            return now >= self.opened_at + self.open_for
        return not self.probe_out

    def acquire(self, now: float) -> bool:
        """Called when a request is actually sent; returns True when it is the half-open probe."""
        s = self.state
        if s is BreakerState.CLOSED:
            return False
        if s is BreakerState.OPEN and now >= self.opened_at + self.open_for:
            self.state = BreakerState.HALF_OPEN
        self.probe_out = True
        return True

    def success(self) -> bool:
        """A request succeeded; returns True when this closed the circuit."""
        self.failures = 0
        self.probe_out = False
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self.open_for = 0.0
            return True
        return False

    def failure(self, now: float, threshold: int, open_s: float, max_open_s: float) -> bool:
        """A request failed (connect error, 5xx, timeout); returns True when this opened the circuit."""
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.probe_out = False
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.open_for = min(max_open_s, max(open_s, self.open_for * 2))
            return True
        if self.state is BreakerState.CLOSED and self.failures >= threshold:
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.open_for = open_s
            return True
        return False

    def release_probe(self) -> None:
        """The probe ended without a verdict (client went away): let another one through."""
        self.probe_out = False


class HealthTracker:
    """Consecutive pass/fail counting of active health checks with hysteresis."""

    __slots__ = ("fails", "healthy", "passes")

    def __init__(self) -> None:
        self.healthy = True
        self.fails = 0
        self.passes = 0

    def observe(self, ok: bool, unhealthy_after: int, healthy_after: int) -> bool | None:
        """Record one check; returns the new health when it changed, else None."""
        if ok:
            self.passes += 1
            self.fails = 0
            if not self.healthy and self.passes >= healthy_after:
                self.healthy = True
                return True
        else:
            self.fails += 1
            self.passes = 0
            if self.healthy and self.fails >= unhealthy_after:
                self.healthy = False
                return False
        return None


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based): U(0, min(max, base*2^(a-1)))."""
    cap = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, cap)


class RetryableError(Exception):
    """An attempt failed before the first token; another pod may serve the request.

    ``pod_fault`` is True when the failure says something about the pod (connect error, 5xx, timeout),
    so it counts towards outlier detection; False for e.g. a 429 from an overloaded pod.
    """

    def __init__(self, message: str, *, cause: str, pod_fault: bool = True, status: int = 503) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.pod_fault = pod_fault
        self.status = status

    @property
    def computed_nothing(self) -> bool:
        """The pod could not be reached or answered an error status: it prefilled none of the prompt (after a
        timeout, a reset or an empty stream it may have)."""
        return self.cause == "connect" or self.cause.startswith("http_")
