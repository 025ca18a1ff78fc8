"""The one Prometheus text reader: sums over label sets, label filters, *_info labels, and what the vLLM adapter
does with a scrape that is not the exposition format."""

from __future__ import annotations

import pytest

from runtime.engines.vllm import VllmConfig, VllmEngine
from sharder.promtext import info_labels, metric_value, samples, sum_by_name

TEXT = """# HELP vllm:prefix_cache_hits_total hits
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{model_name="m",engine="0"} 30.0
vllm:prefix_cache_hits_total{model_name="m",engine="1"} 12.0
# HELP vllm:cache_config_info cache config
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",num_gpu_blocks="2048"} 1.0
# TYPE brunoise_router_picks_total counter
brunoise_router_picks_total{reason="in_subset"} 5
brunoise_router_picks_total{reason="spill"} 2
"""


def test_sums_filters_and_info_labels() -> None:
    sums = sum_by_name(TEXT)
    assert sums["vllm:prefix_cache_hits_total"] == 42.0 and sums["brunoise_router_picks_total"] == 7.0
    assert metric_value(TEXT, "brunoise_router_picks_total", {"reason": "spill"}) == 2.0
    assert metric_value(TEXT, "vllm:prefix_cache_hits_total", {"engine": "1"}) == 12.0
    assert metric_value(TEXT, "no_such_metric") == 0.0
    assert info_labels(TEXT)["vllm:cache_config_info"]["num_gpu_blocks"] == "2048"
    parsed = samples(TEXT)
    assert sum_by_name(parsed) == sums  # parse once, read many ways


def test_text_that_is_not_the_format_is_refused() -> None:
    with pytest.raises(ValueError):
        samples('vllm:prefix_cache_hits_total{model_name="m" 3\n')


def test_the_vllm_adapter_counts_a_malformed_scrape_and_keeps_its_last_reading() -> None:
    engine = VllmEngine(VllmConfig(base_url="http://127.0.0.1:1", kv_events=False))
    engine._ingest_metrics(TEXT)
    assert engine.blocks_total == 2048 and engine.stats.scrapes == 1
    engine._ingest_metrics('vllm:prefix_cache_hits_total{model_name="m" 3\n')
    assert engine.stats.scrape_errors == 1 and engine.stats.scrapes == 1
    assert engine.prefix_cache_counters()[1] == 42.0  # (queries, hits) of the last good scrape


def test_the_vllm_adapters_cache_summary_carries_vllms_block_size() -> None:
    """The router counts a pod's KV cache in the pod's own block size (the adapter starts vLLM with 32)."""
    engine = VllmEngine(VllmConfig(base_url="http://127.0.0.1:1", kv_events=False))
    engine._ingest_metrics(TEXT)
    view = engine.cache_view()
    assert (view.blocks_total, view.block_tokens) == (2048, 16)
    engine._ingest_metrics(TEXT.replace('block_size="16"', 'block_size="32"'))
    assert engine.cache_view().block_tokens == 32, "a later scrape's block size reaches the summary"
