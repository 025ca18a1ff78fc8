"""Mutable working state of one policy round: slice records, pod loads and counts, lazy load heaps."""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Iterable
from itertools import chain
from typing import cast

from sharder.assignment import SliceAssignment
from sharder.config import TargetConfig
from sharder.keyspace import Slice
from sharder.pods import Pod

TopKeys = tuple[tuple[int, float], ...]


class _Deferred(enum.Enum):
    """``Rec._share`` before its first read: the replica-true shares, worked out from ``served`` when asked."""

    FROM_SERVED = 0


class Rec:
    """One slice being worked on (mutable; turned back into a SliceAssignment at the end of the round)."""

    __slots__ = (
        "_share",
        "hi",
        "keysrc",
        "leaving",
        "lo",
        "load",
        "moved",
        "nosplit",
        "orig",
        "pinned",
        "replicas",
        "served",
        "since",
        "slice",
    )

    def __init__(
        self,
        lo: int,
        hi: int,
        slice_: Slice | None,
        replicas: tuple[str, ...],
        leaving: tuple[str, ...],
        load: float,
        since: int,
        orig: SliceAssignment | None = None,
    ) -> None:
        self.lo = lo
        self.hi = hi
        self.slice = slice_  # the original Slice object while the range is unchanged (reused in the output)
        self.replicas = replicas
        self.leaving = leaving
        self.load = load
        self.since = since
        self.orig = orig  # the SliceAssignment it came from (reused when nothing changed)
        self.keysrc: list[TopKeys] | None = None  # reported hot keys, merged on demand
        self.pinned = False  # a MoveOverride pins it: no moves, replications or dereplications
        self.nosplit = False  # inside a MergeOverride range
        self.moved = False  # its replica set changed by a budgeted action this round
        self.served: dict[str, float] | None = None  # load each pod reported for exactly this range (smoothed)
        self._share: dict[str, float] | _Deferred | None = None

    @property
    def share(self) -> dict[str, float] | None:
        """Replica-true load of each replica (None: equal shares). ``RoundState.recompute`` defers the dict to the
        first read, as most slices never need theirs in a round: nothing changes ``served``, ``load`` or
        ``replicas`` of a slice after that but RoundState's replica changes, which read the share first."""
        s = self._share
        if s is _Deferred.FROM_SERVED:
            s = self._share = true_shares(self)
        return s

    @share.setter
    def share(self, value: dict[str, float] | None) -> None:
        self._share = value

    def add_keys(self, keys: TopKeys) -> None:
        if keys:
            if self.keysrc is None:
                self.keysrc = [keys]
            else:
                self.keysrc.append(keys)

    def top_keys(self) -> dict[int, float]:
        """Reported hot keys inside the slice, weights summed over reports."""
        out: dict[int, float] = {}
        if self.keysrc:
            lo, hi = self.lo, self.hi
            for keys in self.keysrc:
                for k, w in keys:
                    if lo <= k < hi:
                        out[k] = out.get(k, 0.0) + w
        return out


class Stats:
    """Mutable counters of the round (RoundStats at the end)."""

    __slots__ = ("churn", "dereplications", "dropped_pods", "fills", "merges", "moves", "replications", "splits")

    def __init__(self) -> None:
        self.moves = 0
        self.splits = 0
        self.merges = 0
        self.replications = 0
        self.dereplications = 0
        self.fills = 0
        self.churn = 0.0  # absolute load moved by budgeted actions
        self.dropped_pods = 0


class LoadHeap:
    """Heap of eligible pods by capacity-normalised load (``sign`` +1: least loaded first, -1: most loaded),
    with lazy invalidation through the state's per-pod versions. Equal loads go by pod id, or, with
    ``by_count``, first by the number of slices the pod holds (fewest first for ``sign`` +1), so that an idle
    target (every load zero) spreads replicas evenly by count."""

    def __init__(self, state: RoundState, sign: float, pods: Iterable[str], *, by_count: bool = False) -> None:
        self.state = state
        self.sign = sign
        self.by_count = by_count
        ver = state.ver
        count = state.count
        self.heap: list[tuple[float, float, str, int]] = [
            (sign * state.norm(p), sign * count[p] if by_count else 0.0, p, ver[p]) for p in pods
        ]
        heapq.heapify(self.heap)
        state.heaps.append(self)

    def push(self, p: str) -> None:
        st = self.state
        sign = self.sign
        heapq.heappush(self.heap, (sign * st.norm(p), sign * st.count[p] if self.by_count else 0.0, p, st.ver[p]))

    def pop(self) -> str | None:
        """Remove and return the best valid pod (the caller pushes it back with ``push`` if it stays usable)."""
        heap, ver = self.heap, self.state.ver
        while heap:
            _, _, p, v = heapq.heappop(heap)
            if ver.get(p) == v:
                return p
        return None

    def detach(self) -> None:
        self.state.heaps.remove(self)


class RoundState:
    """Everything a phase reads and changes. Pod loads are raw (sum of load / replicas); ``norm`` divides by
    the pod's capacity."""

    def __init__(
        self,
        config: TargetConfig,
        generation: int,
        recs: list[Rec],
        pods: dict[str, Pod],
        eligible: list[str],
        capacity: dict[str, float],
    ) -> None:
        self.config = config
        self.generation = generation
        self.recs = recs
        self.pods = pods
        self.eligible = eligible  # ids of eligible ACTIVE pods, sorted
        self.eligible_set = frozenset(eligible)
        self.capacity = capacity
        self.load: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.ver: dict[str, int] = {}
        self.heaps: list[LoadHeap] = []
        self.stats = Stats()
        self.total_load = 0.0
        self.total_capacity = sum(capacity[p] for p in eligible)
        self.keep_bounds: set[int] = set()  # boundaries no merge may remove (overrides)
        self.budget = 0.0  # absolute load that budgeted actions may still move this round
        self.acting = True  # load balancing (moves, replication for balance) runs this round (calm.gate)
        self.balance_to = config.imbalance_tolerance  # pods above (1 + this) x mean shed load
        self.counting = False  # calm count balancing is under way (carried between rounds)
        # a slice changed at or after this generation is cooling down (never, without calm)
        self.cool_since = generation - config.cooldown_rounds + 1 if config.calm else generation + 1

    # --- bookkeeping --------------------------------------------------------------------------------------
    def recompute(self) -> None:
        """Pod loads and slice counts from scratch (replicas are eligible pods once the drop phase ran). With
        ``replica_true_load`` a replica counts what it reported serving from the slice (``Rec.served``); the
        rest of the slice's load goes in equal parts to the replicas that did not report on it (to all
        replicas when every one did: that is traffic a leaving pod still took)."""
        load = dict.fromkeys(self.eligible, 0.0)
        total = 0.0
        true_load = self.config.replica_true_load
        deferred = _Deferred.FROM_SERVED  # an enum member read costs more than a local one
        recs = self.recs
        for rec in recs:
            part = rec.load
            total += part
            reps = rec.replicas
            n = len(reps)
            if not n:
                continue
            if true_load and n > 1 and (served := rec.served):
                reported = list(map(served.get, reps))
                if None not in reported:  # every replica reported (the common case): no list of shares built
                    got = cast("list[float]", reported)  # a string: no type object built per slice
                    scale, extra = reported_parts(part, sum(got), n)
                    for p, v in zip(reps, got, strict=False):  # equal lengths; strict=True costs here
                        load[p] += v * scale + extra
                    rec._share = deferred  # true_shares(rec), built if a phase asks for it
                    continue
                shares = replica_loads(rec)
                if shares is not None:
                    for p, v in zip(reps, shares, strict=False):
                        load[p] += v
                    rec._share = deferred
                    continue
            rec.share = None
            even = part / n
            for p in reps:
                load[p] += even
        count = dict.fromkeys(self.eligible, 0)
        count.update(Counter(chain.from_iterable(rec.replicas for rec in recs)))  # counted in C
        self.load = load
        self.count = count
        self.total_load = total
        self.ver = dict.fromkeys(self.eligible, 0)

    def share_of(self, rec: Rec, p: str) -> float:
        """The load replica ``p`` carries of ``rec``."""
        share = rec.share
        return share[p] if share is not None else rec.load / len(rec.replicas)

    def cooling(self, rec: Rec) -> bool:
        """Calm only: ``rec`` changed (moved, split, replicas added or removed) less than ``cooldown_rounds``
        generations ago, so only invariant repairs may touch it (hot loops inline ``rec.since >= cool_since``)."""
        return rec.since >= self.cool_since

    def mean_ref(self) -> float:
        """Mean load of a reference pod (capacity 1.0): total load / total eligible capacity."""
        return self.total_load / self.total_capacity if self.total_capacity > 0 else 0.0

    def norm(self, p: str) -> float:
        return self.load[p] / self.capacity[p]

    def _touch(self, p: str) -> None:
        self.ver[p] += 1
        for h in self.heaps:
            h.push(p)

    # --- replica changes (keep loads, counts and heaps right) ---------------------------------------------
    def add_replica(self, rec: Rec, p: str) -> None:
        """Add ``p``; the slice's load is assumed to spread evenly over its replicas from now on."""
        reps = rec.replicas
        new_share = rec.load / (len(reps) + 1)
        load = self.load
        for q in reps:
            load[q] += new_share - self.share_of(rec, q)
            self._touch(q)
        rec.share = None
        rec.replicas = (*reps, p)
        load[p] += new_share
        self.count[p] += 1
        self._touch(p)
        if p in rec.leaving:
            rec.leaving = tuple(x for x in rec.leaving if x != p)
        rec.since = self.generation

    def remove_replica(self, rec: Rec, p: str, *, to_leaving: bool = True) -> None:
        """Remove ``p``; its share of the load goes in equal parts to the remaining replicas."""
        old_share = self.share_of(rec, p)
        share = rec.share
        rec.replicas = reps = tuple(x for x in rec.replicas if x != p)
        self.load[p] -= old_share
        self.count[p] -= 1
        self._touch(p)
        if reps:
            extra = old_share / len(reps)
            load = self.load
            for q in reps:
                load[q] += extra
                self._touch(q)
            if share is not None and len(reps) > 1:
                rec.share = {q: share[q] + extra for q in reps}
            else:
                rec.share = None
        else:
            rec.share = None
        if to_leaving and p not in rec.leaving:
            rec.leaving = (*rec.leaving, p)
        rec.since = self.generation

    def replace_replica(self, rec: Rec, old: str, new: str) -> None:
        """Make-before-break move: ``new`` takes ``old``'s place (and its share of the load), ``old`` leaves
        after this generation."""
        reps = rec.replicas
        amount = self.share_of(rec, old)
        share = rec.share
        if share is not None:
            share = dict(share)
            share[new] = share.pop(old)
            rec.share = share
        rec.replicas = tuple(new if x == old else x for x in reps)
        self.load[old] -= amount
        self.load[new] += amount
        self.count[old] -= 1
        self.count[new] += 1
        self._touch(old)
        self._touch(new)
        leaving = rec.leaving
        if new in leaving:
            leaving = tuple(x for x in leaving if x != new)
        if old not in leaving:
            leaving = (*leaving, old)
        rec.leaving = leaving
        rec.since = self.generation


def true_shares(rec: Rec) -> dict[str, float] | None:
    """Each replica's part of ``rec.load`` from what it reported serving (``rec.served``); None when no replica
    reported on exactly this range. Replicas without a report split the unexplained rest evenly; reports that
    add up to more than the slice's load are scaled down to it."""
    shares = replica_loads(rec)
    return None if shares is None else dict(zip(rec.replicas, shares, strict=True))


def reported_parts(load: float, told: float, n: int) -> tuple[float, float]:
    """(scale, extra): each of a slice's ``n`` replicas, all of which reported, carries what it reported x scale +
    extra of the slice's ``load``, given the ``told`` sum of their reports. More told than the load (a leaving pod's
    share, smoothing): every report scaled down to fit; less: the rest in equal parts."""
    if told > load:
        return (load / told if told > 0 else 0.0), 0.0
    return 1.0, max(0.0, load - told) / n


def replica_loads(rec: Rec) -> list[float] | None:
    """``true_shares`` as a list in replica order (a replica's part depends only on the pod, so a pod listed twice
    gets the same part twice)."""
    served = rec.served
    if not served:
        return None
    reps = rec.replicas
    load = rec.load
    reported = list(map(served.get, reps))
    if None not in reported:  # the common case: every replica reported
        got = cast("list[float]", reported)
        scale, extra = reported_parts(load, sum(got), len(reps))
        return [v * scale + extra for v in got]
    missing = reported.count(None)
    if missing == len(reps):
        return None
    told = sum(v for v in reported if v is not None)
    if told > load:
        scale = load / told if told > 0 else 0.0
        return [v * scale if v is not None else 0.0 for v in reported]
    each = max(0.0, load - told) / missing
    return [v if v is not None else each for v in reported]


def scaled(d: dict[str, float] | None, f: float) -> dict[str, float] | None:
    """``d`` with every value times ``f`` (None stays None): a child slice's part of its parent's loads."""
    return None if d is None else {k: v * f for k, v in d.items()}


__all__ = [
    "LoadHeap",
    "Rec",
    "RoundState",
    "Stats",
    "TopKeys",
    "replica_loads",
    "reported_parts",
    "scaled",
    "true_shares",
]
