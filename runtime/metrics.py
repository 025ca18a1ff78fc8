"""Per-engine Prometheus metrics under vLLM's names (``vllm:...``, label ``model_name``), in a private registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# vLLM exposes no ``*_created`` series; neither do we (this switch is process-wide in prometheus_client).
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

#: vLLM's buckets (vllm/v1/metrics/loggers.py) so dashboards built for vLLM read ours unchanged.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
E2E_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip

FINISH_REASONS: tuple[str, ...] = ("stop", "length", "abort")


class EngineMetrics:
    """The vLLM metric families of one engine. Gauges are set by the engine just before exposition."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.model_name = model_name
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        r = self.registry
        self._running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", labels, registry=r
        )
        self._waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels, registry=r
        )
        self._kv_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=r
        )
        self._queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels,
            registry=r,
        )
        self._hits = Counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", labels, registry=r
        )
        self._preemptions = Counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", labels, registry=r
        )
        self._prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r)
        self._generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r
        )
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels,
            buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", labels,
            buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels,
            buckets=E2E_BUCKETS, registry=r,
        )  # fmt: skip
        # The labelled children, created now so every family shows up (at zero) before the first request, and
        # kept: a labels() lookup per token would dominate the simulated engine's step.
        m = model_name
        self._c_running = self._running.labels(m)
        self._c_waiting = self._waiting.labels(m)
        self._c_kv_usage = self._kv_usage.labels(m)
        self._c_queries = self._queries.labels(m)
        self._c_hits = self._hits.labels(m)
        self._c_preemptions = self._preemptions.labels(m)
        self._c_prompt_tokens = self._prompt_tokens.labels(m)
        self._c_generation_tokens = self._generation_tokens.labels(m)
        self._c_success = {reason: self._success.labels(m, reason) for reason in FINISH_REASONS}
        self._c_ttft = self._ttft.labels(m)
        self._c_itl = self._itl.labels(m)
        self._c_e2e = self._e2e.labels(m)

    def set_state(self, *, running: int, waiting: int, kv_usage: float) -> None:
        self._c_running.set(running)
        self._c_waiting.set(waiting)
        self._c_kv_usage.set(kv_usage)

    def prefix_cache(self, queries: int, hits: int) -> None:
        self._c_queries.inc(queries)
        self._c_hits.inc(hits)

    def preempted(self, n: int = 1) -> None:
        self._c_preemptions.inc(n)

    def prompt_tokens(self, n: int) -> None:
        if n:
            self._c_prompt_tokens.inc(n)

    def generation_tokens(self, n: int) -> None:
        if n:
            self._c_generation_tokens.inc(n)

    def time_to_first_token(self, seconds: float) -> None:
        self._c_ttft.observe(seconds)

    def inter_token_latency(self, seconds: float) -> None:
        self._c_itl.observe(seconds)

    def finished(self, reason: str, e2e_seconds: float) -> None:
        child = self._c_success.get(reason)
        if child is None:
            child = self._c_success[reason] = self._success.labels(self.model_name, reason)
        child.inc()
        self._c_e2e.observe(e2e_seconds)

    def text(self) -> str:
        """The Prometheus text exposition of this engine's registry."""
        return prometheus_client.generate_latest(self.registry).decode("utf-8")


#: The supervision counters an engine adapter keeps (VllmStats field -> exported help text).
LIFECYCLE_COUNTERS: dict[str, str] = {
    "deaths": "Times the engine process died or stopped answering health checks after being ready.",
    "restarts": "Times the supervisor restarted the engine process.",
    "failed_starts": "Engine process starts that did not become healthy.",
}


class _LifecycleCollector(Collector):
    def __init__(self, model_name: Callable[[], str], counts: Callable[[], Mapping[str, int]]) -> None:
        self.model_name = model_name
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        now = self.counts()
        for field, doc in LIFECYCLE_COUNTERS.items():
            fam = CounterMetricFamily(f"brunoise_runtime_engine_{field}", doc, labels=["model_name"])
            fam.add_metric([self.model_name()], float(now.get(field, 0)))
            yield fam


class EngineLifecycleMetrics:
    """``brunoise_runtime_engine_{deaths,restarts,failed_starts}_total`` of a supervised engine process, read from
    the adapter's own counters at exposition (so they never drift from them); ``model_name`` is read then too."""

    def __init__(self, model_name: Callable[[], str], counts: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_LifecycleCollector(model_name, counts))

    def text(self) -> str:
        return prometheus_client.generate_latest(self.registry).decode("utf-8")
