"""The Grafana dashboard queries only metrics the code exports (names collected from the live metric registries)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from axon_router.knobs import Knobs
from axon_router.metrics import RouterMetrics
from runtime.metrics import EngineLifecycleMetrics, EngineMetrics
from sharder.assigner.metrics import AssignerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "brunoise.json"

#: PromQL words that look like identifiers: functions are followed by "(", these are not always.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar",
}  # fmt: skip
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names(registries: list[CollectorRegistry]) -> set[str]:
    """Every series name the registries expose, including families with no labelled child yet."""
    names: set[str] = set()
    for reg in registries:
        for fam in reg.collect():
            names.update(fam.name + s for s in _SUFFIXES.get(fam.type, ("",)))
            names.update(s.name for s in fam.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, label lists, ranges and strings removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    out = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue
        out.add(word)
    return out


def all_exprs(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(panels: object) -> None:
        for p in panels if isinstance(panels, list) else []:
            for t in p.get("targets", []):
                found.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    return found


def test_metric_names_parser_sees_through_promql() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, op) (rate(a_b_bucket{x="y"}[5m]))) / on (t) group_left c:d_total'
    assert metric_names(expr) == {"a_b_bucket", "c:d_total"}


def test_every_dashboard_expression_names_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    registries = [
        AssignerMetrics().registry,
        RouterMetrics(Knobs()).registry,
        EngineMetrics("m").registry,
        EngineLifecycleMetrics(lambda: "m", lambda: {}).registry,
    ]
    exported = exported_names(registries)
    exprs = all_exprs(dash)
    assert len(exprs) >= 20
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"panel {title!r} queries metrics nobody exports: {sorted(unknown)}"
        used |= names
    # each component's panels are there: the assigner's, the router's, the engines' and the adapter's
    for prefix in ("brunoise_assigner_", "brunoise_router_", "vllm:", "brunoise_runtime_engine_"):
        assert any(n.startswith(prefix) for n in used), prefix
    # and every assigner family has a panel (the dashboard is where they are documented for operators)
    families = {fam.name for fam in AssignerMetrics().registry.collect()}
    shown = {f for f in families if any(n == f or n.startswith(f + "_") for n in used)}
    assert shown == families, sorted(families - shown)


def test_dashboard_is_importable_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "brunoise" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
