"""Fixtures for the operations suite: the assigner suite's process fixtures, and scraping /metrics."""

from __future__ import annotations

import urllib.request

from sharder.promtext import samples
from tests.assigner.conftest import slicelets, start_assigner
from tests.etcd_plugin import make_etcd_cluster

__all__ = ["make_etcd_cluster", "scrape", "slicelets", "start_assigner"]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``url`` as {(sample name, sorted labels): value} (the project's one parser, sharder.promtext)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples(text)}
