"""Prometheus metrics of one assigner (rounds, placement, leadership, watchers, store latency) and its /metrics server."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sharder.assignment import Assignment

from .hub import WatchHub

_ROUND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WARM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class AssignerMetrics:
    """All assigner metric families on a private registry (several assigners can live in one test process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "brunoise_assigner_"
        self.generation = Gauge(p + "generation", "Newest assignment generation this replica holds", ["target"],
                                registry=r)
        self.round_duration = Histogram(
            p + "round_duration_seconds", "Duration of one policy round over every target (leader only)",
            buckets=_ROUND_BUCKETS, registry=r,
        )
        self.rounds = Counter(p + "rounds", "Policy rounds run (leader only)", registry=r)
        self.commits = Counter(p + "round_commits", "Rounds that committed a new generation, by target", ["target"],
                               registry=r)
        self.moves = Counter(p + "moves", "Replica moves committed by policy rounds", ["target"], registry=r)
        self.splits = Counter(p + "splits", "Slice splits committed by policy rounds", ["target"], registry=r)
        self.merges = Counter(p + "merges", "Slice merges committed by policy rounds", ["target"], registry=r)
        self.replications = Counter(p + "replications", "Replicas added by policy rounds", ["target"], registry=r)
        self.fills = Counter(p + "fills", "Replicas added to bring slices up to min_replicas (not budgeted)", ["target"],
                             registry=r)
        self.dereplications = Counter(p + "dereplications", "Replicas removed by policy rounds", ["target"],
                                      registry=r)
        self.churn = Gauge(p + "churn_ratio", "Fraction of the target's load moved by the last committed round",
                           ["target"], registry=r)
        self.imbalance = Gauge(p + "imbalance_ratio",
                               "Max over mean capacity-normalised pod load after the last committed round",
                               ["target"], registry=r)
        self.slices_per_pod = Gauge(p + "slices_per_pod", "Slices each pod serves (replicas) in the leader's view",
                                    ["target", "pod"], registry=r)
        self.pods = Gauge(p + "pods", "Pods in the target's assignment", ["target"], registry=r)
        self.leader = Gauge(p + "leader", "1 while this replica is the leader", registry=r)
        self.watchers = Gauge(p + "watchers", "Open Watch streams on this replica", registry=r)
        self.watch_lag = Histogram(
            p + "watch_lag_seconds",
            "From a generation's commit to its write on a Watch stream of this replica (what clerks wait, "
            "less the network)",
            buckets=_STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.store_up = Gauge(p + "store_up", "1 while the store answers pings (gRPC health SERVING)", registry=r)
        self.store_latency = Histogram(p + "store_latency_seconds", "Store operation latency, by operation", ["op"],
                                       buckets=_STORE_BUCKETS, registry=r)
        self.warmups_started = Counter(p + "warmups_started", "Replicas marked warming (they gained a slice)",
                                       ["target"], registry=r)
        self.warmups_completed = Counter(p + "warmups_completed", "Warming marks cleared by the pod's warm report",
                                         ["target"], registry=r)
        self.warmups_timed_out = Counter(p + "warmups_timed_out",
                                         "Warming marks cleared by warm_deadline_s before the pod reported warm",
                                         ["target"], registry=r)
        self.warmup_duration = Histogram(p + "warmup_duration_seconds",
                                         "From a replica's warming mark to its clearing (report or deadline)",
                                         buckets=_WARM_BUCKETS, registry=r)
        self.warming = Gauge(p + "warming_replicas", "Replicas warming now, by target", ["target"], registry=r)
        self._pods_seen: dict[str, set[str]] = collections.defaultdict(set)
        self.store_ok = False

    def set_store_up(self, ok: bool) -> None:
        """What the health watch concluded about the store (drives ``/ready`` and ``store_up``)."""
        self.store_ok = ok
        self.store_up.set(1.0 if ok else 0.0)

    @contextmanager
    def store_op(self, op: str) -> Iterator[None]:
        """Time one store operation (success or failure alike)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.store_latency.labels(op).observe(time.perf_counter() - t0)

    def round_committed(self, a: Assignment) -> None:
        """Count what the round that produced ``a`` did and record the placement it left."""
        t, s = a.target, a.stats
        self.commits.labels(t).inc()
        self.moves.labels(t).inc(s.moves)
        self.splits.labels(t).inc(s.splits)
        self.merges.labels(t).inc(s.merges)
        self.replications.labels(t).inc(s.replications)
        self.dereplications.labels(t).inc(s.dereplications)
        self.fills.labels(t).inc(s.fills)
        self.churn.labels(t).set(s.churn)
        self.imbalance.labels(t).set(s.imbalance)

    def placement(self, a: Assignment) -> None:
        counts: dict[str, int] = {p.id: 0 for p in a.pods}
        for sa in a.slices:
            for pod in sa.replicas:
                counts[pod] = counts.get(pod, 0) + 1
        for gone in self._pods_seen[a.target] - set(counts):
            self.slices_per_pod.remove(a.target, gone)
        self._pods_seen[a.target] = set(counts)
        for pod, n in counts.items():
            self.slices_per_pod.labels(a.target, pod).set(n)
        self.pods.labels(a.target).set(len(a.pods))

    def refresh(self, *, led: Iterable[Assignment] | None, hub: WatchHub) -> None:
        """Set the gauges read from state just before exposition; ``led``: the leader's current assignments, None
        on a follower (placement is the leader's view: a follower shows none rather than a stale one)."""
        self.leader.set(0.0 if led is None else 1.0)
        self.watchers.set(hub.watchers)
        for e in hub.entries():
            self.generation.labels(e.target).set(e.generation)
        if led is None:
            for target, pods in self._pods_seen.items():
                for pod in pods:
                    self.slices_per_pod.remove(target, pod)
                self.pods.remove(target)
            self._pods_seen.clear()
            return
        for a in led:
            self.placement(a)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(
    metrics: AssignerMetrics, led: Callable[[], Iterable[Assignment] | None], hub: WatchHub, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Serve ``GET /metrics`` and ``GET /ready`` (200 while the store answers, as gRPC health SERVING; plain HTTP
    for kubelet probes, which speak no TLS) on ``host:port`` (0: any free port); the runner and the bound port."""

    async def ready(_: web.Request) -> web.Response:
        ok = metrics.store_ok
        return web.json_response({"ready": ok, "leader": led() is not None}, status=200 if ok else 503)

    async def handle(_: web.Request) -> web.Response:
        metrics.refresh(led=led(), hub=hub)
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, int(runner.addresses[0][1])
