"""Model-version rollouts, pure: the rollout record, its state machine, the SLO verdict and ``version_for``.

No clock inside: every transition takes ``now_ms``. The assigner keeps one ``Rollout`` per model in the store and
changes it only by compare-and-swap (``sharder.assigner.rollouts``); routers read it and route each request by
``version_for(slice_key, rollout)``.

Keyspace order: a rollout at fraction ``f`` sends the keys ``[0, f x 2^64)`` to green and the rest to blue. Steps only
grow ``f``, so a key (a session; with grouped keys, a whole group) moves from blue to green at most once, at the step
whose range takes it in; a rollback sets ``f`` to 0 in one change (one generation), a promotion to 1.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Sequence
from typing import Any

from sharder.errors import BrunoiseError
from sharder.keyspace import KEYSPACE_END
from sharder.load import TTFT_BUCKETS_MS

CANARY_STEPS: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0)
BLUE_GREEN_STEPS: tuple[float, ...] = (1.0,)


class RolloutError(BrunoiseError, ValueError):
    """A rollout record or command is invalid (e.g. promoting a rolled-back rollout)."""


class RolloutState(enum.StrEnum):
    """Where a rollout stands: ``running`` advances its steps, ``paused`` holds its fraction; both are judged
    against the SLO. ``promoted`` (all keys green) and ``rolled_back`` (all keys blue) are final."""

    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


ACTIVE = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})


@dataclasses.dataclass(frozen=True, slots=True)
class RolloutSLO:
    """What green must hold: error rate and TTFT p99 (0 = not judged) over the last ``window_s``, judged only once
    green served at least ``min_requests`` requests in the window (one report, or a handful of requests, never
    decides)."""

    max_error_rate: float = 0.05
    max_ttft_p99_ms: float = 0.0
    min_requests: int = 20
    window_s: float = 30.0

    def validate(self) -> None:
        if not math.isfinite(self.max_error_rate) or not 0.0 <= self.max_error_rate <= 1.0:
            raise RolloutError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}", "slo.max_error_rate")
        if not math.isfinite(self.max_ttft_p99_ms) or self.max_ttft_p99_ms < 0:
            raise RolloutError(f"max_ttft_p99_ms must be >= 0, got {self.max_ttft_p99_ms}", "slo.max_ttft_p99_ms")
        if self.min_requests < 1:
            raise RolloutError(f"min_requests must be >= 1, got {self.min_requests}", "slo.min_requests")
        if not math.isfinite(self.window_s) or self.window_s <= 0:
            raise RolloutError(f"window_s must be > 0, got {self.window_s}", "slo.window_s")


@dataclasses.dataclass(frozen=True, slots=True)
class GreenWindow:
    """What green's pods served over the SLO window: requests, errors and the TTFT histogram
    (counts per ``TTFT_BUCKETS_MS`` bucket, not cumulative)."""

    requests: int = 0
    errors: int = 0
    ttft_ms_buckets: tuple[int, ...] = ()

    def ttft_p99_ms(self) -> float:
        """The upper bound of the bucket holding the 99th percentile (0 with no samples)."""
        total = sum(self.ttft_ms_buckets)
        if total == 0:
            return 0.0
        need = math.ceil(0.99 * total)
        seen = 0
        for bound, n in zip(TTFT_BUCKETS_MS, self.ttft_ms_buckets, strict=False):
            seen += n
            if seen >= need:
                return bound
        return math.inf


@dataclasses.dataclass(frozen=True, slots=True)
class Rollout:
    """One model's rollout from target ``blue`` to target ``green``. ``step``: steps taken (0: none yet, every key
    blue); ``changed_ms``: when the step or state last changed; ``generation`` grows by one on every change."""

    model: str
    blue: str
    green: str
    steps: tuple[float, ...] = CANARY_STEPS
    step: int = 0
    state: RolloutState = RolloutState.RUNNING
    slo: RolloutSLO = dataclasses.field(default_factory=RolloutSLO)
    step_interval_s: float = 10.0
    generation: int = 1
    changed_ms: int = 0
    reason: str = ""

    def validate(self) -> Rollout:
        if not self.model:
            raise RolloutError("model is required", "model")
        if not self.blue or not self.green:
            raise RolloutError("blue and green targets are required", "blue" if not self.blue else "green")
        if self.blue == self.green:
            raise RolloutError(f"blue and green must be different targets, both are {self.blue!r}", "green")
        if not self.steps:
            raise RolloutError("at least one step is required (1.0 for blue-green)", "steps")
        prev = 0.0
        for f in self.steps:
            if not math.isfinite(f) or not prev < f <= 1.0:
                raise RolloutError(f"steps must increase within (0, 1], got {list(self.steps)}", "steps")
            prev = f
        if self.steps[-1] != 1.0:
            raise RolloutError(f"the last step must be 1.0 (every key green), got {self.steps[-1]}", "steps")
        if not 0 <= self.step <= len(self.steps):
            raise RolloutError(f"step must be in [0, {len(self.steps)}], got {self.step}", "step")
        if not math.isfinite(self.step_interval_s) or self.step_interval_s < 0:
            raise RolloutError(f"step_interval_s must be >= 0, got {self.step_interval_s}", "step_interval_s")
        if self.generation < 1:
            raise RolloutError(f"generation must be >= 1, got {self.generation}", "generation")
        self.slo.validate()
        return self

    @property
    def fraction(self) -> float:
        """The share of the keyspace routed to green now."""
        if self.state == RolloutState.PROMOTED:
            return 1.0
        if self.state == RolloutState.ROLLED_BACK or self.step == 0:
            return 0.0
        return self.steps[self.step - 1]

    @property
    def bound(self) -> int:
        """Keys below this go to green."""
        f = self.fraction
        return KEYSPACE_END if f >= 1.0 else int(f * KEYSPACE_END)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_json(self) -> bytes:
        doc = dataclasses.asdict(self)
        doc["state"] = self.state.value
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Rollout:
        doc: dict[str, Any] = json.loads(raw)
        return cls(
            model=str(doc["model"]),
            blue=str(doc["blue"]),
            green=str(doc["green"]),
            steps=tuple(float(f) for f in doc["steps"]),
            step=int(doc["step"]),
            state=RolloutState(doc["state"]),
            slo=RolloutSLO(**doc.get("slo", {})),
            step_interval_s=float(doc["step_interval_s"]),
            generation=int(doc["generation"]),
            changed_ms=int(doc.get("changed_ms", 0)),
            reason=str(doc.get("reason", "")),
        ).validate()


def version_for(slice_key: int, rollout: Rollout) -> str:
    """The target that serves ``slice_key`` under ``rollout``: green below the bound, blue from it on."""
    return rollout.green if slice_key < rollout.bound else rollout.blue


# transitions: each returns the next record (generation + 1) or raises RolloutError -----------------------------------
def start(
    model: str,
    blue: str,
    green: str,
    now_ms: int,
    *,
    steps: Sequence[float] = CANARY_STEPS,
    slo: RolloutSLO | None = None,
    step_interval_s: float = 10.0,
    previous: Rollout | None = None,
) -> Rollout:
    """A new running rollout at step 0 (every key blue until green is ready). A model has one rollout at a time:
    ``previous`` must be final; its generation carries on, so routers never see a generation go back."""
    if previous is not None and previous.active:
        raise RolloutError(
            f"model {model!r} already has a {previous.state.value} rollout {previous.blue} -> {previous.green}; "
            "promote or roll it back first",
            "model",
        )
    gen = previous.generation + 1 if previous is not None else 1
    return Rollout(
        model, blue, green, tuple(float(f) for f in steps), 0, RolloutState.RUNNING, slo or RolloutSLO(),
        step_interval_s, gen, now_ms, "started",
    ).validate()  # fmt: skip


def _next(r: Rollout, now_ms: int, reason: str, **changes: Any) -> Rollout:
    return dataclasses.replace(r, generation=r.generation + 1, changed_ms=now_ms, reason=reason, **changes)


def pause(r: Rollout, now_ms: int, reason: str = "paused by command") -> Rollout:
    if r.state != RolloutState.RUNNING:
        raise RolloutError(f"only a running rollout can be paused; this one is {r.state.value}", "state")
    return _next(r, now_ms, reason, state=RolloutState.PAUSED)


def resume(r: Rollout, now_ms: int, reason: str = "resumed by command") -> Rollout:
    if r.state != RolloutState.PAUSED:
        raise RolloutError(f"only a paused rollout can be resumed; this one is {r.state.value}", "state")
    return _next(r, now_ms, reason, state=RolloutState.RUNNING)


def promote(r: Rollout, now_ms: int, reason: str = "promoted by command") -> Rollout:
    """Every key green, for good."""
    if not r.active:
        raise RolloutError(f"only a running or paused rollout can be promoted; this one is {r.state.value}", "state")
    return _next(r, now_ms, reason, state=RolloutState.PROMOTED, step=len(r.steps))


def rollback(r: Rollout, now_ms: int, reason: str = "rolled back by command") -> Rollout:
    """Every key blue, in this one change (also after a promotion)."""
    if r.state == RolloutState.ROLLED_BACK:
        raise RolloutError("this rollout is already rolled back", "state")
    return _next(r, now_ms, reason, state=RolloutState.ROLLED_BACK, step=0)


def breach(slo: RolloutSLO, window: GreenWindow) -> str | None:
    """Why green breaches ``slo`` over ``window``, or None (also when the window holds too few requests)."""
    if window.requests < slo.min_requests:
        return None
    rate = window.errors / window.requests
    if rate > slo.max_error_rate:
        return (
            f"green error rate {rate:.3f} > {slo.max_error_rate:g} over {window.requests} requests "
            f"({window.errors} errors)"
        )
    if slo.max_ttft_p99_ms > 0 and sum(window.ttft_ms_buckets) >= slo.min_requests:
        p99 = window.ttft_p99_ms()
        if p99 > slo.max_ttft_p99_ms:
            return f"green TTFT p99 <= {p99:g} ms bucket > {slo.max_ttft_p99_ms:g} ms over {window.requests} requests"
    return None


def step_due(r: Rollout, now_ms: int) -> bool:
    """Whether the next step is due (running, steps left, the interval since the last change passed; the first step
    is due at once): only then does green's readiness matter."""
    if r.state != RolloutState.RUNNING or r.step >= len(r.steps):
        return False
    return r.step == 0 or now_ms - r.changed_ms >= r.step_interval_s * 1000


def tick(r: Rollout, now_ms: int, window: GreenWindow, green_ready: bool) -> Rollout | None:
    """The leader's periodic decision: roll back on an SLO breach (running or paused), else take the next step once
    the step interval passed and green is ready (warm). None when nothing changes."""
    if not r.active:
        return None
    why = breach(r.slo, window)
    if why is not None:
        return rollback(r, now_ms, f"automatic rollback: {why}")
    if not step_due(r, now_ms) or not green_ready:
        return None
    nxt = r.step + 1
    return _next(r, now_ms, f"step {nxt}/{len(r.steps)}: {r.steps[nxt - 1]:g} of the keyspace to green", step=nxt)
