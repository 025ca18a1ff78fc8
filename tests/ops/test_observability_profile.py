"""The compose `observability` profile: Prometheus scrapes ports the services really serve metrics on, Grafana gets
the dashboard and a datasource, the OpenTelemetry collector receives OTLP (no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ["observability"]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def flag(cmd: list[Any], name: str) -> str | None:
    cmd = [str(c) for c in cmd]
    return cmd[cmd.index(name) + 1] if name in cmd else None


def metrics_port(svc: dict[str, Any]) -> str | None:
    """The port a brunoise service serves /metrics on, read from its command."""
    cmd = svc.get("command", [])
    exe = str(cmd[0]) if cmd else ""
    return {
        "brunoise-assigner": flag(cmd, "--metrics-port"),
        "brunoise-router": flag(cmd, "--http-port"),
        "brunoise-runtime": flag(cmd, "--http-port"),
    }.get(exe)


def test_observability_services_are_profiled_and_mount_files_that_exist() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana", "otel-collector"):
        assert services[name]["profiles"] == PROFILE, name
        for v in services[name].get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
    grafana_mounts = [v.split(":")[1] for v in services["grafana"]["volumes"]]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/brunoise.yaml").read_text())
    dash_dir = provider["providers"][0]["options"]["path"]
    assert any(m.startswith(dash_dir + "/") and m.endswith(".json") for m in grafana_mounts)
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_every_brunoise_service_on_its_metrics_port() -> None:
    services = compose()["services"]
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scraped = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    want = {f"{name}:{metrics_port(svc)}" for name, svc in services.items() if metrics_port(svc)}
    assert {"assigner-1:9090", "assigner-2:9090", "router-1:8000"} <= want
    assert want == scraped


def test_collector_receives_otlp_and_services_can_be_pointed_at_it() -> None:
    data = compose()
    col = yaml.safe_load((ROOT / "deploy/otel/collector.yaml").read_text())
    assert col["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert "otlp" in col["service"]["pipelines"]["traces"]["receivers"]
    env = data["x-brunoise"]["environment"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env
