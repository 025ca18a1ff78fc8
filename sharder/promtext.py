"""Reading the Prometheus text exposition: the project's one parser (``prometheus_client``'s) and sums over it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> list[Sample]:
    """Every sample of a text exposition (``name`` is the sample's own, e.g. ``x_total``, ``x_bucket``); raises
    ValueError on text that is not the exposition format."""
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def _samples(source: str | Iterable[Sample]) -> Iterable[Sample]:
    return samples(source) if isinstance(source, str) else source


def sum_by_name(source: str | Iterable[Sample]) -> dict[str, float]:
    """The sum of every sample per sample name (over all label sets)."""
    out: dict[str, float] = {}
    for s in _samples(source):
        out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def metric_value(source: str | Iterable[Sample], name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when there are none)."""
    want = dict(labels or {})
    return sum(
        s.value for s in _samples(source) if s.name == name and all(s.labels.get(k) == v for k, v in want.items())
    )


def info_labels(source: str | Iterable[Sample]) -> dict[str, dict[str, str]]:
    """The labels of each ``*_info`` sample by name (the last one wins)."""
    return {s.name: dict(s.labels) for s in _samples(source) if s.name.endswith("_info")}
