"""deploy/k8s renders with `kubectl kustomize` and validates offline against the Kubernetes schemas.

ServiceMonitor (a Prometheus Operator CRD) has no schema in kubernetes-validate: it is skipped by kind, explicitly,
and checked here for what matters instead (its ports exist on the Services it selects).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from brunoise.cli.credentials import init_credentials
from sharder.assigner.main import parse_args

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32"
NO_SCHEMA_KINDS = {"ServiceMonitor"}  # CRDs: kubernetes-validate knows only the built-in kinds
WORKLOADS = {"Deployment", "StatefulSet"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The base and the example overlay, rendered; the overlay with credentials made as its README says."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(ROOT / "deploy" / "k8s", tree, ignore=shutil.ignore_patterns("credentials"))
    overlay = tree / "overlays" / "example"
    assert init_credentials(overlay / "credentials", ["brunoise-assigner"], ["brunoise-gpu-0", "brunoise-gpu-1"])
    return {"base": render(tree / "base"), "example": render(overlay)}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("which", ["base", "example"])
def test_every_object_validates_against_the_kubernetes_schema(
    rendered: dict[str, list[dict[str, Any]]], which: str
) -> None:
    docs = rendered[which]
    skipped = []
    for d in docs:
        if d["kind"] in NO_SCHEMA_KINDS:
            skipped.append(d["metadata"]["name"])
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert sorted(skipped) == ["brunoise-assigner", "brunoise-gpu", "brunoise-router"]
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy"} <= kinds  # fmt: skip


def test_the_validator_is_strict() -> None:
    """A control: an unknown field in a container is an error, so the test above can fail."""
    sts = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                 "spec": {"containers": [{"name": "c", "image": "i", "livenessProbe": {"grpcc": {"port": 1}}}]}}},
    }  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(copy.deepcopy(sts), K8S_VERSION, strict=True)


def test_assigners_elect_a_leader_on_etcd_and_probes_cover_every_container(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in [k for k in os.environ if k.startswith("BRUNOISE_ASSIGNER_")]:
        monkeypatch.delenv(k)
    docs = rendered["example"]
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOADS}
    assigner = workloads["brunoise-assigner"]
    assert assigner["spec"]["replicas"] >= 2
    args = assigner["spec"]["template"]["spec"]["containers"][0]["args"]
    # the replica's flags and its ConfigMap'd settings file parse as the assigner itself would parse them
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("brunoise-assigner-config")]
    config = tmp_path / "assigner.yaml"
    config.write_text(cm["data"]["assigner.yaml"])
    argv = [a.replace("$(POD_NAME)", "brunoise-assigner-0") for a in args]
    argv = [f"--config={config}" if a.startswith("--config=") else a for a in argv]
    parsed = parse_args(argv)
    assert parsed.store == "etcd" and len(parsed.etcd_endpoint) == 3 and parsed.metrics_port == 9090
    assert parsed.credentials and parsed.tls_cert and not parsed.insecure
    assert parsed.host == "brunoise-assigner-0.brunoise-assigner-headless" and parsed.id == "brunoise-assigner-0"
    gpu = workloads["brunoise-gpu"]["spec"]["template"]["spec"]
    assert [c["name"] for c in gpu["containers"]] == ["vllm", "runtime"]  # the runtime beside vLLM
    for name, w in workloads.items():
        for c in w["spec"]["template"]["spec"]["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, f"{name}/{c['name']}"
    # router and runtime: ready on /ready (draining, no healthy pod), alive on /health; their gRPC health mirrors
    # readiness, so a liveness probe on it would restart a draining pod
    probes = {c["name"]: (c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"])
              for w in workloads.values() for c in w["spec"]["template"]["spec"]["containers"]
              if c["name"] in ("router", "runtime")}  # fmt: skip
    assert probes == {"router": ("/ready", "/health"), "runtime": ("/ready", "/health")}
    assert assigner["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_grace_periods_cover_the_prestop_drain(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for w in (d for d in rendered["example"] if d["kind"] in WORKLOADS):
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"]:
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
            if cmd and cmd[0] == "sleep":
                assert spec["terminationGracePeriodSeconds"] > int(cmd[1]), w["metadata"]["name"]
    gpu = next(d for d in rendered["example"] if d["metadata"]["name"] == "brunoise-gpu" and d["kind"] == "StatefulSet")
    containers = {c["name"]: c for c in gpu["spec"]["template"]["spec"]["containers"]}
    (drain,) = [a.split("=", 1)[1] for a in containers["runtime"]["args"] if a.startswith("--drain-timeout-s=")]
    vllm_stays = containers["vllm"]["lifecycle"]["preStop"]["exec"]["command"][1]
    assert float(drain) == float(vllm_stays)  # vLLM outlives the runtime's drain
    assert gpu["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > float(drain)


def test_selectors_secrets_and_monitors_point_at_real_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["example"]
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in WORKLOADS]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in by_kind(docs, kind):
            sel = d["spec"].get("selector", d["spec"].get("podSelector", {}))["matchLabels"]
            assert any(matches(sel, p) for p in pods), f"{kind} {d['metadata']['name']} selects no pod"
    services = by_kind(docs, "Service")
    for sm in by_kind(docs, "ServiceMonitor"):
        picked = [s for s in services if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        ports = {p["name"] for s in picked for p in s["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in ports, f"ServiceMonitor {sm['metadata']['name']}: no Service port {ep['port']}"
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    for w in (d for d in docs if d["kind"] in WORKLOADS):
        for v in w["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, v
    tokens = next(s for n, s in secrets.items() if n.startswith("brunoise-pod-tokens"))
    gpu = next(d for d in docs if d["metadata"]["name"] == "brunoise-gpu" and d["kind"] == "StatefulSet")
    assert set(tokens["data"]) == {f"brunoise-gpu-{i}" for i in range(gpu["spec"]["replicas"])}
