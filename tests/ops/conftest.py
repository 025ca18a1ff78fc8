"""Fixtures for the operations suite: the assigner suite's process fixtures, and scraping /metrics."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.assigner.conftest import slicelets, start_assigner
from tests.etcd_plugin import make_etcd_cluster

__all__ = ["make_etcd_cluster", "scrape", "slicelets", "start_assigner"]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``url`` as {(sample name, sorted labels): value} (prometheus_client's parser)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
