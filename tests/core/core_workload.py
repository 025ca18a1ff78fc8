"""Synthetic workloads for the core tests: key-space load densities and the load reports pods would send."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

from sharder.assignment import Assignment
from sharder.keyspace import KEYSPACE_END
from sharder.load import EngineLoad, LoadReport, SliceLoad


class Workload:
    """``background`` load spread evenly over the keyspace plus point loads on ``hot`` keys."""

    def __init__(self, background: float, hot: Sequence[tuple[int, float]] = ()) -> None:
        self.background = background
        self.hot = sorted(hot)
        self.hot_keys = [k for k, _ in self.hot]

    @property
    def total(self) -> float:
        return self.background + sum(w for _, w in self.hot)

    def slice_load(self, lo: int, hi: int) -> tuple[float, tuple[tuple[int, float], ...]]:
        load = self.background * ((hi - lo) / KEYSPACE_END)
        i = bisect.bisect_left(self.hot_keys, lo)
        j = bisect.bisect_left(self.hot_keys, hi)
        keys = tuple(self.hot[i:j])
        return load + sum(w for _, w in keys), keys

    def reports(self, a: Assignment, capacity: dict[str, float] | None = None) -> list[LoadReport]:
        """What every replica would report: an even share of each slice it holds (routers spread a slice's
        traffic over its replicas), with the hot keys scaled the same way."""
        per_pod: dict[str, list[SliceLoad]] = {}
        for sa in a.slices:
            if not sa.replicas:
                continue
            load, keys = self.slice_load(sa.slice.lo, sa.slice.hi)
            r = len(sa.replicas)
            top = tuple((k, w / r) for k, w in keys[:8])
            for p in sa.replicas:
                per_pod.setdefault(p, []).append(SliceLoad(sa.slice, load / r, top))
        cap = capacity or {}
        return [
            LoadReport(
                pod_id=p,
                target=a.target,
                engine=EngineLoad(capacity=cap.get(p, 1.0), load=sum(s.load for s in sls)),
                slices=tuple(sls),
            )
            for p, sls in sorted(per_pod.items())
        ]


def zipf_workload(rng: random.Random, total: float, n_keys: int, s: float = 1.1, background: float = 0.3) -> Workload:
    """``total`` load: ``background`` share spread evenly, the rest over ``n_keys`` random keys with Zipf weights."""
    weights = [1.0 / (i + 1) ** s for i in range(n_keys)]
    norm = sum(weights)
    hot_total = total * (1.0 - background)
    keys = [rng.randrange(KEYSPACE_END) for _ in range(n_keys)]
    return Workload(total * background, [(k, hot_total * w / norm) for k, w in zip(keys, weights, strict=True)])
