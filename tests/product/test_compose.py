"""Structure of docker-compose.yml and the Dockerfile (no Docker engine needed): services, commands, health, deps."""

from __future__ import annotations

import importlib
import json
import pathlib
import re
import tomllib
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

ETCD = ["etcd-1", "etcd-2", "etcd-3"]
ASSIGNERS = ["assigner-1", "assigner-2"]
ROUTERS = ["router-1", "router-2"]
RUNTIMES = ["runtime-1", "runtime-2", "runtime-3"]
VLLM = ["vllm-1", "vllm-2", "vllm-3"]
GPU_RUNTIMES = ["gpu-runtime-1", "gpu-runtime-2", "gpu-runtime-3"]
BRUNOISE = ASSIGNERS + ROUTERS + RUNTIMES + GPU_RUNTIMES
ONE_SHOT = ["credentials"]
_DEFAULT_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _interpolate(s: str) -> str:
    """What compose does with ${VAR:-default} when VAR is unset."""
    return _DEFAULT_VAR.sub(lambda m: m.group(2), s)


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc["command"]
    assert isinstance(cmd, list), "use the exec (list) form so arguments are not re-split by a shell"
    return [_interpolate(str(c)) for c in cmd]


def _flag_values(cmd: list[str], flag: str) -> list[str]:
    out = [cmd[i + 1] for i, c in enumerate(cmd[:-1]) if c == flag]
    out += [c.split("=", 1)[1] for c in cmd if c.startswith(flag + "=")]
    return out


def test_every_service_is_there(services: dict[str, dict[str, Any]]) -> None:
    for name in ETCD + ASSIGNERS + ROUTERS + RUNTIMES + VLLM + GPU_RUNTIMES:
        assert name in services, f"service {name} missing"
    for name in VLLM + GPU_RUNTIMES:
        assert services[name].get("profiles") == ["gpu"], f"{name} belongs to the gpu profile only"
    for name in ETCD + ASSIGNERS + ROUTERS + RUNTIMES:
        assert not services[name].get("profiles"), f"{name} must start without a profile"


def test_images(services: dict[str, dict[str, Any]]) -> None:
    for name in ETCD:
        assert re.fullmatch(r"quay\.io/coreos/etcd:v3\.5\.\d+", services[name]["image"])
    for name in VLLM:
        assert services[name]["image"].startswith("vllm/vllm-openai:")
    for name in BRUNOISE:
        svc = services[name]
        assert svc["image"] == "brunoise:latest"
        assert svc["build"]["context"] == "." and svc["build"].get("dockerfile", "Dockerfile") == "Dockerfile"


def test_etcd_cluster_flags(services: dict[str, dict[str, Any]]) -> None:
    clusters, tokens = set(), set()
    for name in ETCD:
        cmd = _command(services[name])
        assert cmd[0] == "etcd"
        assert _flag_values(cmd, "--name") == [name]
        assert _flag_values(cmd, "--initial-advertise-peer-urls") == [f"http://{name}:2380"]
        assert _flag_values(cmd, "--advertise-client-urls") == [f"http://{name}:2379"]
        assert _flag_values(cmd, "--initial-cluster-state") == ["new"]
        assert _flag_values(cmd, "--data-dir")
        (initial,) = _flag_values(cmd, "--initial-cluster")
        clusters.add(initial)
        tokens.update(_flag_values(cmd, "--initial-cluster-token"))
    assert len(clusters) == 1 and len(tokens) == 1, "every member must agree on --initial-cluster and its token"
    members = dict(m.split("=", 1) for m in clusters.pop().split(","))
    assert members == {n: f"http://{n}:2380" for n in ETCD}


def test_assigners_use_the_etcd_cluster(services: dict[str, dict[str, Any]]) -> None:
    ids = set()
    for name in ASSIGNERS:
        cmd = _command(services[name])
        assert cmd[0] == "brunoise-assigner"
        assert _flag_values(cmd, "--store") == ["etcd"]
        assert sorted(_flag_values(cmd, "--etcd-endpoint")) == [f"{n}:2379" for n in ETCD]
        ids.update(_flag_values(cmd, "--id"))
    assert len(ids) == len(ASSIGNERS), "assigner ids must differ"


def test_runtimes_and_routers_reach_every_assigner(services: dict[str, dict[str, Any]]) -> None:
    want = sorted(f"{a}:50051" for a in ASSIGNERS)
    pod_ids = set()
    for name in ROUTERS + RUNTIMES + GPU_RUNTIMES:
        cmd = _command(services[name])
        assert sorted(_flag_values(cmd, "--assigner")) == want, name
    for name in RUNTIMES + GPU_RUNTIMES:
        cmd = _command(services[name])
        assert cmd[0] == "brunoise-runtime"
        pod_ids.update(_flag_values(cmd, "--pod-id"))
        # the address a pod registers must resolve for routers in other containers
        assert _flag_values(cmd, "--grpc-host") == [name] and _flag_values(cmd, "--http-host") == [name]
    assert len(pod_ids) == len(RUNTIMES) + len(GPU_RUNTIMES)
    for name in RUNTIMES:
        assert _flag_values(_command(services[name]), "--engine") == ["sim"]
    for name in ROUTERS:
        assert _command(services[name])[0] == "brunoise-router"


def test_gpu_profile_runs_vllm_beside_each_runtime(services: dict[str, dict[str, Any]]) -> None:
    for vllm_name, rt_name in zip(VLLM, GPU_RUNTIMES, strict=True):
        vsvc = services[vllm_name]
        cmd = _command(vsvc)
        assert "--enable-prefix-caching" in cmd
        (cfg,) = _flag_values(cmd, "--kv-events-config")
        kv = json.loads(cfg)
        assert kv["enable_kv_cache_events"] is True and kv["publisher"] == "zmq"
        devices = vsvc["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d.get("capabilities", []) for d in devices)
        rcmd = _command(services[rt_name])
        assert _flag_values(rcmd, "--engine") == ["vllm"]
        engine_args = dict(a.split("=", 1) for a in _flag_values(rcmd, "--engine-arg"))
        assert engine_args["base_url"] == f"http://{vllm_name}:8000", f"{rt_name} must talk to {vllm_name}"
        assert engine_args["kv_events_endpoint"] == kv["endpoint"].replace("*", vllm_name)
        assert engine_args.get("block_size") == _flag_values(cmd, "--block-size")[0], "block sizes must agree"
        (model,) = _flag_values(rcmd, "--model")
        assert _flag_values(cmd, "--served-model-name") == [model]
        from runtime.engines.vllm import config_from_args

        cfg = config_from_args(model, engine_args)  # the adapter accepts every key (attach mode, no local vLLM)
        assert cfg.base_url and cfg.kv_events_endpoint and not cfg.kv_events_bind
        assert services[rt_name]["depends_on"][vllm_name]["condition"] == "service_healthy"


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} runs once"
            continue
        hc = svc.get("healthcheck")
        assert hc and isinstance(hc.get("test"), list) and hc["test"][0] in ("CMD", "CMD-SHELL"), name
        test = hc["test"]
        if test[0] == "CMD" and test[1] in ("python", "python3") and test[2] == "-c":
            compile(test[3], f"<healthcheck of {name}>", "exec")  # the probe is valid Python


def test_depends_on_existing_healthy_services(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            if dep in ONE_SHOT:
                assert spec["condition"] == "service_completed_successfully", f"{name} -> {dep}"
                continue
            assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
            assert services[dep].get("healthcheck"), f"{name} waits on {dep}, which has no healthcheck"
            if not svc.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} (no profile) depends on profiled {dep}"
    for name in ASSIGNERS:
        assert set(services[name]["depends_on"]) == {*ETCD, "credentials"}
    for name in ROUTERS:
        assert set(services[name]["depends_on"]) >= set(ASSIGNERS)


def test_ports_are_documented_and_unique(services: dict[str, dict[str, Any]]) -> None:
    host_ports: list[str] = []
    for name, svc in services.items():
        for p in svc.get("ports", []):
            host, _, container = str(p).rpartition(":")
            assert host and container.isdigit(), f"{name}: publish ports as 'HOST:CONTAINER', got {p}"
            host_ports.append(host)
    assert len(host_ports) == len(set(host_ports)), f"host ports collide: {host_ports}"
    text = COMPOSE.read_text()
    for port in host_ports:
        assert port in text.split("services:")[0], f"host port {port} is not documented in the header"
    for name in ROUTERS:
        cmd = _command(services[name])
        published = {str(p).split(":")[-1] for p in services[name]["ports"]}
        assert set(_flag_values(cmd, "--http-port") + _flag_values(cmd, "--grpc-port")) == published


def test_commands_are_console_scripts_with_valid_flags(services: dict[str, dict[str, Any]], scripts: dict[str, str]) -> None:
    for name in BRUNOISE:
        cmd = _command(services[name])
        assert cmd[0] in scripts, f"{name}: {cmd[0]} is not a console script in pyproject.toml"
        module_name = scripts[cmd[0]].split(":")[0]
        module = importlib.import_module(module_name)
        args = cmd[1:]
        try:
            if hasattr(module, "parse_args"):
                module.parse_args(args)
            elif hasattr(module, "parser"):
                module.parser().parse_args(args)
            else:
                pytest.fail(f"{module_name} has neither parse_args() nor parser()")
        except SystemExit as exc:
            pytest.fail(f"{name}: `{' '.join(cmd)}` is rejected by {module_name}'s argparse (exit {exc.code})")


def test_dockerfile_installs_the_project() -> None:
    text = DOCKERFILE.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(ln.startswith("COPY") and "pyproject.toml" in ln for ln in lines)
    for pkg in ("brunoise", "sharder", "runtime", "axon_router"):
        assert any(ln.startswith("COPY") and pkg in ln.split() for ln in lines), f"{pkg} is not copied"
    assert re.search(r"^RUN .*pip install (--no-cache-dir )?\.(\s|$)", text, re.M), "the image must `pip install .`"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


def test_control_plane_is_authenticated_and_not_published_on_all_interfaces(
    services: dict[str, dict[str, Any]],
) -> None:
    """Issue 10: assigners require tokens over TLS; assigner and etcd ports are published on loopback only;
    each pod has its own token (bound to its id), routers a reader token, everyone the CA."""
    from brunoise.cli.credentials import init_credentials  # noqa: F401  (what the credentials service runs)

    cred = _command(services["credentials"])
    assert cred[:3] == ["brunoise", "credentials", "init"]
    assert sorted(_flag_values(cred, "--pod")) == sorted(RUNTIMES + GPU_RUNTIMES)
    assert set(_flag_values(cred, "--host")) >= set(ASSIGNERS), "the server certificate names every assigner"
    for name in ASSIGNERS + ETCD:
        for p in services[name].get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"
    for name in ASSIGNERS:
        cmd = _command(services[name])
        assert _flag_values(cmd, "--credentials") and _flag_values(cmd, "--tls-cert") and _flag_values(cmd, "--tls-key")
        assert "--insecure" not in cmd
    for name in RUNTIMES + GPU_RUNTIMES + ROUTERS:
        env = services[name]["environment"]
        want = "router" if name in ROUTERS else name
        assert env["BRUNOISE_TOKEN_FILE"] == f"/brunoise-secrets/tokens/{want}", name
        assert env["BRUNOISE_TLS_CA"].startswith("/brunoise-secrets/"), name
