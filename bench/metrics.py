"""What the benchmark computes from pod scrapes and samples: counters, percentiles, time-averaged in-flight."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sharder.kv_pull import OUTCOMES as PULL_OUTCOMES
from sharder.promtext import metric_value, samples, sum_by_name

_M_QUERIES = "vllm:prefix_cache_queries_total"
_M_HITS = "vllm:prefix_cache_hits_total"
_M_PROMPT = "vllm:prompt_tokens_total"
_M_SUCCESS = "vllm:request_success_total"
# A pod's warm-up prefills (runtime.warm) are counted by vLLM's counters too; the benchmark measures the clients'
# traffic, so they are taken out (what warm-up cost is in the same counters, reported apart).
_W_QUERIES = "brunoise_runtime_warmup_prefix_cache_queries_total"
_W_HITS = "brunoise_runtime_warmup_prefix_cache_hits_total"
_W_REQUESTS = "brunoise_runtime_warmup_requests_total"
# A request's KV pull (a router's hint, runtime.warm.Warmer.pull), by outcome (sharder.kv_pull.OUTCOMES).
_PULLS = "brunoise_runtime_kv_pulls_total"


@dataclasses.dataclass(frozen=True, slots=True)
class Counters:
    """The pod counters the benchmark reads (cumulative, in tokens or requests; the KV pull hints a pod acted on by
    outcome, a ``pulls_<outcome>`` field for each of ``PULL_OUTCOMES``)."""

    queries: float = 0.0
    hits: float = 0.0
    prompt_tokens: float = 0.0
    requests: float = 0.0
    pulls_read: float = 0.0
    pulls_none: float = 0.0
    pulls_failed: float = 0.0
    pulls_timeout: float = 0.0
    pulls_unknown_peer: float = 0.0
    pulls_no_connector: float = 0.0
    pulls_no_time: float = 0.0

    def __add__(self, o: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(o), strict=True)))

    def __sub__(self, o: Counters) -> Counters:
        return Counters(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(o), strict=True)))

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries > 0 else 0.0

    def pulls(self) -> dict[str, float]:
        """The KV pull hints acted on, by outcome."""
        return {o: getattr(self, f"pulls_{o}") for o in PULL_OUTCOMES}


def counters_of(text: str) -> Counters:
    """The counters we need, summed over all label sets of a pod's Prometheus text exposition."""
    parsed = samples(text)
    sums = sum_by_name(parsed)
    wq = sums.get(_W_QUERIES, 0.0)
    return Counters(
        sums.get(_M_QUERIES, 0.0) - wq,
        sums.get(_M_HITS, 0.0) - sums.get(_W_HITS, 0.0),
        sums.get(_M_PROMPT, 0.0) - wq,
        sums.get(_M_SUCCESS, 0.0) - sums.get(_W_REQUESTS, 0.0),
        **{f"pulls_{o}": metric_value(parsed, _PULLS, {"outcome": o}) for o in PULL_OUTCOMES},
    )


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[k]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 2)


#: One in-flight sample: bench seconds since the start of the replay, then each pod's running + waiting requests
#: (None where the pod did not answer in time; a pod that is down counts 0: it carries nothing).
InflightSample = tuple[float, Sequence[float | None]]


def inflight_stats(samples: Sequence[InflightSample], start: float, end: float) -> dict[str, object]:
    """Each pod's time-averaged in-flight requests over [start, end) and the busiest pod's over the mean.

    Samples are taken at a fixed interval, so the mean of a pod's samples in the window is its time average;
    a pod's missing samples are left out of its own mean.
    """
    sums: list[float] = []
    counts: list[int] = []
    n = 0
    for t, values in samples:
        if not start <= t < end:
            continue
        n += 1
        if len(sums) < len(values):
            sums += [0.0] * (len(values) - len(sums))
            counts += [0] * (len(values) - len(counts))
        for i, v in enumerate(values):
            if v is not None:
                sums[i] += v
                counts[i] += 1
    means = [s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)]
    mean = sum(means) / len(means) if means else 0.0
    return {
        "samples": n,
        "per_pod_mean": [round(m, 3) for m in means],
        "max_over_mean": (max(means) / mean) if mean > 0 else None,
    }


def sticky_inflight_best(
    sessions: Iterable[Sequence[tuple[float, float]]], pods: int, start: float, end: float
) -> float | None:
    """The in-flight max/mean over [start, end) that a router keeping each session on one pod could reach, with
    hindsight: each session's in-flight time in the window (its requests' send-to-end intervals, clipped to it)
    packed onto ``pods`` pods longest first (greedy LPT, whose busiest pod is within 4/3 of the best placement's).
    It takes the requests' durations as they were and ignores that sessions must move when a pod restarts; None
    without load. Near 1, the imbalance a router shows is its own placement's; a few long sessions on a few pods
    put it well above 1, and the best placement is then at least 3/4 of it."""
    weights = [w for spans in sessions if (w := sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)) > 0]
    if not weights or pods < 1:
        return None
    loads = [0.0] * pods
    for w in sorted(weights, reverse=True):
        loads[loads.index(min(loads))] += w
    return max(loads) / (sum(loads) / pods)


def moves_per_round(history: Sequence[Mapping[str, Any]], lo_ms: float, hi_ms: float, interval_s: float) -> float:
    """Slice moves per assigner round in [lo_ms, hi_ms) of Unix time: the moves of the generations committed then
    over the rounds that fit (rounds that change nothing commit no generation, so they are counted by time)."""
    moves = sum(int(h["moves"]) for h in history if lo_ms <= h["unix_ms"] < hi_ms)
    rounds = max(1.0, (hi_ms - lo_ms) / 1000.0 / interval_s)
    return moves / rounds
