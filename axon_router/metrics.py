"""Prometheus metrics of one router: requests, errors, latencies, every pick/admission/failover decision, pods."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from axon_router.knobs import Knobs

_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RouterMetrics:
    """All metrics on a private registry (several routers can live in one test process)."""

    def __init__(self, knobs: Knobs | None = None) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "brunoise_router_"
        self.requests = Counter(
            p + "requests",
            "Requests finished, by front end, status code, model and target (both empty before the target is known)",
            ["frontend", "code", "model", "target"],
            registry=r,
        )
        self.errors = Counter(p + "errors", "Requests that ended in an error, by error code", ["code"], registry=r)
        self.ttft = Histogram(
            p + "ttft_seconds",
            "Time to first token (or full response) seen by the router, by model and target",
            ["model", "target"],
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            p + "latency_seconds", "Total request latency in the router", buckets=_LAT_BUCKETS, registry=r
        )
        self.picks = Counter(
            p + "picks", "Pod picks by reason: in_subset, held (the session's pod outside its moved subset), overflow (outside the subset, over the fleet cap), spill, fallback, retry", ["reason"], registry=r
        )
        self.sheds = Counter(p + "shed", "Requests shed (429) by priority", ["priority"], registry=r)
        self.fair_sheds = Counter(
            p + "fair_shed", "Requests shed while their tenant was above its fair share (tighter limits)", registry=r
        )
        self.quota_denied = Counter(
            p + "quota_denied", "Requests refused by their tenant's quota (429 quota_exceeded)", registry=r
        )
        self.key_faults = Counter(
            p + "key_faults",
            "Attempts that failed with a pod fault, reported against their key, by cause",
            ["cause"],
            registry=r,
        )
        self.quarantined_keys = Gauge(
            p + "quarantined_keys", "Keys refused (key_quarantined) for a cool-down", registry=r
        )
        self.suspected_keys = Gauge(p + "suspected_keys", "Keys kept inside their subset after a pod fault", registry=r)
        self.quarantine_refusals = Counter(
            p + "quarantine_refusals", "Requests refused because their key is quarantined", registry=r
        )
        self.unavailable = Counter(
            p + "unavailable", "Requests with no eligible healthy pod (503), by cause", ["cause"], registry=r
        )
        self.retries = Counter(
            p + "retries", "Attempts retried on another pod before the first token, by cause", ["cause"], registry=r
        )
        self.broken_streams = Counter(
            p + "broken_streams", "Streams that failed after tokens were sent (not retried)", registry=r
        )
        self.idempotency_conflicts = Counter(
            p + "idempotency_conflicts", "Requests refused because the same request id was in flight", registry=r
        )
        self.routing_group_source = Counter(
            p + "routing_group_source",
            "Where the group part of the SliceKey came from: x-tenant-id, tenant (gRPC), prefix, none",
            ["source"],
            registry=r,
        )
        self.pick_rule = Counter(
            p + "pick_rule",
            "Subset picks by the rule that decided them: sticky (kept on the pod holding the session's cache), "
            "cost (lowest estimated TTFT under the load cap), capped (lowest TTFT was over the load cap), over_cap",
            ["rule"],
            registry=r,
        )
        self.routing_key_source = Counter(
            p + "routing_key_source", "Where the routing key came from", ["source"], registry=r
        )
        self.pod_inflight = Gauge(p + "pod_inflight", "Requests this router has in flight per pod", ["pod"], registry=r)
        self.pod_healthy = Gauge(p + "pod_healthy", "1 when the pod passes health checks", ["pod"], registry=r)
        self.pod_breaker = Gauge(
            p + "pod_breaker_state", "Circuit breaker: 0 closed, 1 open, 2 half-open", ["pod"], registry=r
        )
        self.health_transitions = Counter(p + "health_transitions", "Pod health changes", ["pod", "to"], registry=r)
        self.breaker_transitions = Counter(
            p + "breaker_transitions", "Circuit breaker changes", ["pod", "to"], registry=r
        )
        self.load_polls = Counter(p + "load_polls", "GetLoad polls by result", ["result"], registry=r)
        self.generation = Gauge(
            p + "assignment_generation", "Assignment generation the router routes on", ["target"], registry=r
        )
        self.staleness = Gauge(
            p + "assignment_staleness_seconds",
            "Seconds since the clerk last heard from the assigner",
            ["target"],
            registry=r,
        )
        self.clerk_connected = Gauge(p + "clerk_connected", "1 when the clerk's watch is connected", registry=r)
        self.cross_region = Counter(
            p + "cross_region_requests",
            "Requests sent to another region than this router's own (--region): from its region to the serving one",
            ["from_region", "to_region"],
            registry=r,
        )
        self.region_failovers = Counter(
            p + "region_failovers",
            "Requests of unpinned groups sent away from their preferred region (home, else the router's), which had "
            "no healthy pod: from the preferred region to the serving one",
            ["from_region", "to_region"],
            registry=r,
        )
        self.prefix_hit_chunks = Histogram(
            p + "expected_prefix_hit_ratio",
            "Expected prefix hit ratio of the picked pod",
            buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=r,
        )
        self.kv_pulls = Counter(
            p + "kv_pull_hints",
            "Requests sent to a pod with a hint naming a peer that holds more of their prefix (kv_pull_min_chunks)",
            registry=r,
        )
        self.knob = Gauge(p + "knob", "Value of each numeric router knob", ["name"], registry=r)
        self.knob_choice = Gauge(
            p + "knob_choice",
            "1 for the chosen value of each router knob that is a word",
            ["name", "value"],
            registry=r,
        )
        if knobs is not None:
            for name, value in knobs.as_dict().items():
                if isinstance(value, str):
                    self.knob_choice.labels(name, value).set(1.0)
                else:
                    self.knob.labels(name).set(float(value))
        # hot-path children, bound once
        self.picks_by_reason = {
            r: self.picks.labels(r) for r in ("in_subset", "held", "overflow", "spill", "fallback", "retry")
        }
        self.picks_retry = self.picks_by_reason["retry"]
        self._req_children: dict[tuple[str, str, str, str], Counter] = {}
        self._ttft_children: dict[tuple[str, str], Histogram] = {}

    def count_request(self, frontend: str, code: str, model: str = "", target: str = "") -> None:
        key = (frontend, code, model, target)
        c = self._req_children.get(key)
        if c is None:
            c = self._req_children[key] = self.requests.labels(frontend, code, model, target)
        c.inc()

    def observe_ttft(self, model: str, target: str, seconds: float) -> None:
        key = (model, target)
        h = self._ttft_children.get(key)
        if h is None:
            h = self._ttft_children[key] = self.ttft.labels(model, target)
        h.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
