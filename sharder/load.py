"""Load reports from pods: engine load, per-slice load with hot keys, and their validation."""

from __future__ import annotations

import dataclasses
import itertools
import math

from sharder.errors import LoadReportError
from sharder.keyspace import Slice

MAX_SLICES_PER_REPORT = 100_000
MAX_TOP_KEYS = 1024
#: The largest load (engine, slice or hot-key weight) a report may carry. Loads are requests or tokens per
#: second in practice; the bound keeps every sum the policy forms over a round finite.
MAX_LOAD = 1e12
#: Upper bounds (ms) of the TTFT buckets a pod counts its requests in (``RequestOutcomes.ttft_ms_buckets``); the
#: last is +inf.
TTFT_BUCKETS_MS: tuple[float, ...] = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, math.inf)


@dataclasses.dataclass(frozen=True, slots=True)
class EngineLoad:
    """Engine-level load of one pod (vLLM gauges) and the scalar ``load`` the policy balances.

    ``capacity`` is the pod's relative capacity (1.0 = reference pod); the policy divides pod load by it.
    """

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    tokens_in_flight: int = 0
    prefix_hit_rate: float = 0.0
    capacity: float = 1.0
    load: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class SliceLoad:
    """Load one pod attributed to one slice, with the hottest keys (key, weight) in the same unit as ``load``."""

    slice: Slice
    load: float
    top_keys: tuple[tuple[int, float], ...] = ()
    requests: int = 0
    misrouted: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class RequestOutcomes:
    """A pod's request outcomes since it started (cumulative, like Prometheus counters; a restart starts again at
    0): requests finished or failed, the failed ones (5xx), and first-token latencies per ``TTFT_BUCKETS_MS`` bucket
    (counts per bucket, not cumulative across buckets). What the leader judges a rollout's SLO on."""

    requests: int = 0
    errors: int = 0
    ttft_ms_buckets: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class LoadReport:
    """What one pod tells the assigner every report interval."""

    pod_id: str
    target: str
    engine: EngineLoad = dataclasses.field(default_factory=EngineLoad)
    slices: tuple[SliceLoad, ...] = ()
    seq: int = 0
    unix_ms: int = 0
    outcomes: RequestOutcomes | None = None
    #: Slices this pod was asked to warm and has warmed (or gave up on): the leader clears their warming marks.
    warm: tuple[Slice, ...] = ()
    #: Set by a ``validate`` that passed on a report whose every part is immutable (tuples, frozen dataclasses), so
    #: a later ``validate`` of the same object (the round's, after the assigner's service checked the report on
    #: arrival) returns at once. Not an init field: ``dataclasses.replace`` makes a report that is checked again.
    _valid: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)

    def validate(self) -> LoadReport:
        """Raise LoadReportError (naming the field) unless the report is usable; return self. A report that passed
        once and cannot change (its sequences are tuples) is not checked again."""
        if self._valid:
            return self
        if not isinstance(self.pod_id, str) or not self.pod_id:
            raise LoadReportError("pod_id must be a non-empty pod id", field="pod_id")
        if not isinstance(self.target, str):
            raise LoadReportError("target must be a string", field="target")
        e = self.engine
        if not isinstance(e, EngineLoad):
            raise LoadReportError("engine must be an EngineLoad", field="engine")
        for name in ("running", "waiting", "tokens_in_flight"):
            v = getattr(e, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise LoadReportError(f"engine.{name} must be an int >= 0, got {v!r}", field=f"engine.{name}")
        for name in ("kv_usage", "prefix_hit_rate"):
            v = getattr(e, name)
            if not _is_number(v) or not 0.0 <= v <= 1.0:
                raise LoadReportError(f"engine.{name} must be in [0, 1], got {v!r}", field=f"engine.{name}")
        if not _is_number(e.capacity) or not math.isfinite(e.capacity) or e.capacity <= 0:
            raise LoadReportError(
                f"engine.capacity must be a finite number > 0 (1.0 = reference pod), got {e.capacity!r}",
                field="engine.capacity",
            )
        if not _is_number(e.load) or not 0 <= e.load <= MAX_LOAD:
            raise LoadReportError(
                f"engine.load must be a number in [0, {MAX_LOAD:g}], got {e.load!r}", field="engine.load"
            )
        for name in ("seq", "unix_ms"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise LoadReportError(f"{name} must be an int >= 0, got {v!r}", field=name)
        o = self.outcomes
        if o is not None:
            counts = (o.requests, o.errors, *o.ttft_ms_buckets)
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in counts) or o.errors > o.requests:
                raise LoadReportError("outcomes must be counts >= 0 with errors <= requests", field="outcomes")
            if len(o.ttft_ms_buckets) > len(TTFT_BUCKETS_MS):
                raise LoadReportError(
                    f"outcomes.ttft_ms_buckets holds at most {len(TTFT_BUCKETS_MS)} buckets", field="outcomes"
                )
        if len(self.warm) > MAX_SLICES_PER_REPORT or not all(type(s) is Slice for s in self.warm):
            raise LoadReportError(f"warm must hold at most {MAX_SLICES_PER_REPORT} Slices", field="warm")
        slices = self.slices
        if len(slices) > MAX_SLICES_PER_REPORT:
            raise LoadReportError(
                f"a report may carry at most {MAX_SLICES_PER_REPORT} slices, got {len(slices)}; aggregate or "
                "drop the coldest",
                field="slices",
            )
        immutable = type(slices) is tuple and type(self.warm) is tuple
        if o is not None and type(o.ttft_ms_buckets) is not tuple:
            immutable = False
        for i, sl in enumerate(slices):
            # fast path: well-typed entries need a handful of comparisons (NaN and inf fail the range check)
            if (
                type(sl) is SliceLoad
                and type(sl.slice) is Slice
                and type(sl.load) is float
                and 0.0 <= sl.load <= MAX_LOAD
                and type(sl.requests) is int
                and sl.requests >= 0
                and type(sl.misrouted) is int
                and sl.misrouted >= 0
            ):
                if sl.top_keys and not _check_top_keys(i, sl):
                    immutable = False
                continue
            _check_slice_load(i, sl)
            immutable = False
        if immutable:
            object.__setattr__(self, "_valid", True)
        return self

    def check_disjoint(self) -> LoadReport:
        """Raise LoadReportError unless the report names each key range once (what a pod sends: the slices it
        holds). Duplicated or overlapping slices would count one load twice. Separate from ``validate`` because
        the policy also accepts merged reports whose ranges overlap."""
        _check_disjoint(self.slices)
        return self


def _check_disjoint(slices: tuple[SliceLoad, ...]) -> None:
    order = sorted(range(len(slices)), key=lambda i: (slices[i].slice.lo, slices[i].slice.hi))
    for a, b in itertools.pairwise(order):
        if slices[b].slice.lo < slices[a].slice.hi:
            first, second = min(a, b), max(a, b)
            what = "repeats" if slices[a].slice == slices[b].slice else "overlaps"
            raise LoadReportError(
                f"slices[{second}] {slices[second].slice} {what} slices[{first}] {slices[first].slice}; "
                "report each key range once",
                field=f"slices[{second}]",
            )


def _check_slice_load(i: int, sl: object) -> None:
    if not isinstance(sl, SliceLoad):
        raise LoadReportError(f"slices[{i}] must be a SliceLoad", field=f"slices[{i}]")
    if not isinstance(sl.slice, Slice):
        raise LoadReportError(f"slices[{i}].slice must be a Slice", field=f"slices[{i}].slice")
    load = sl.load
    if not _is_number(load) or not math.isfinite(load) or not 0 <= load <= MAX_LOAD:
        raise LoadReportError(
            f"slices[{i}].load must be a number in [0, {MAX_LOAD:g}], got {load!r}", field=f"slices[{i}].load"
        )
    for name in ("requests", "misrouted"):
        v = getattr(sl, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise LoadReportError(f"slices[{i}].{name} must be an int >= 0, got {v!r}", field=f"slices[{i}].{name}")
    if sl.top_keys:
        _check_top_keys(i, sl)


def _check_top_keys(i: int, sl: SliceLoad) -> bool:
    """Raise LoadReportError unless ``sl.top_keys`` are well-formed; whether every pair is a tuple."""
    top = sl.top_keys
    if not isinstance(top, tuple):
        raise LoadReportError(f"slices[{i}].top_keys must be a tuple of (key, weight)", field=f"slices[{i}].top_keys")
    if len(top) > MAX_TOP_KEYS:
        raise LoadReportError(
            f"slices[{i}].top_keys may hold at most {MAX_TOP_KEYS} keys", field=f"slices[{i}].top_keys"
        )
    s = sl.slice
    lo, hi = s.lo, s.hi
    pairs = True
    for j, kw in enumerate(top):
        if type(kw) is not tuple:
            pairs = False
        try:
            k, w = kw
        except (TypeError, ValueError):
            raise LoadReportError(
                f"slices[{i}].top_keys[{j}] must be a (key, weight) pair", field=f"slices[{i}].top_keys"
            ) from None
        if type(k) is not int and (not isinstance(k, int) or isinstance(k, bool)):
            raise LoadReportError(
                f"slices[{i}].top_keys[{j}] key must be an int in [0, 2**64), got {k!r}", field=f"slices[{i}].top_keys"
            )
        if not lo <= k < hi:
            raise LoadReportError(
                f"slices[{i}].top_keys[{j}] key {k} lies outside its slice {s}; report keys by the slice holding them",
                field=f"slices[{i}].top_keys",
            )
        if not (type(w) is float or _is_number(w)) or not 0.0 <= w <= MAX_LOAD:
            raise LoadReportError(
                f"slices[{i}].top_keys[{j}] weight must be a number in [0, {MAX_LOAD:g}], got {w!r}",
                field=f"slices[{i}].top_keys",
            )
    return pairs


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


__all__ = [
    "MAX_LOAD", "MAX_SLICES_PER_REPORT", "MAX_TOP_KEYS", "TTFT_BUCKETS_MS", "EngineLoad", "LoadReport",
    "RequestOutcomes", "SliceLoad",
]  # fmt: skip
