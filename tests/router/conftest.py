"""Real-process fixtures for the router tests: embedded assigner, 3 sim runtimes, 2 routers, stopped by PID."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest

from axon_router.knobs import Knobs
from axon_router.routing_key import CHAT, parse_openai
from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.launch import ManagedProcess, ProcessGroup, python_module
from tests.waiting import wait_until

MODEL = "sim-model"
TARGET = "chat"
REGIONS = ("eu", "eu", "us")
#: Fast failure detection for tests (a pod is skipped within one health interval plus a timeout).
#: The target the tests configure: 12 slices, 1..2 replicas; no splits, merges or dereplication, so the pinned
#: 12 slices stay exactly as wait_assigned pins them and a key's subset cannot change under a test.
TARGET_CONFIG: dict[str, Any] = {
    "target": TARGET, "model": MODEL, "min_replicas": 1, "max_replicas": 2, "imbalance_tolerance": 0.10,
    "churn_budget": 0.10, "split_threshold": 1e9, "merge_threshold": 0.0, "dereplicate_threshold": 0.0,
    "hot_key_fraction": 0.5, "min_slices_per_pod": 0, "max_slices_per_pod": 1000, "initial_slices": 12,
}  # fmt: skip
ROUTER_ARGS = ("--health-interval-s", "0.5", "--health-timeout-s", "0.4", "--load-poll-interval-s", "0.2",
               "--cache-poll-interval-s", "0.4", "--max-body-bytes", "65536", "--retry-backoff-s", "0.005")  # fmt: skip


def _policy_args() -> list[str]:
    try:
        import sharder.policy as pol

        if hasattr(pol, "reshard"):
            return []
    except ImportError:
        pass
    return ["--policy", "tests.assigner.standin_policy:reshard"]


def http_json(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
        return json.loads(r.read())


def post(
    url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def routed_key(body: Any, headers: dict[str, str], path: str = CHAT) -> int:
    """The SliceKey the routers (default knobs) give this request: the pure parse they run."""
    return parse_openai(path, json.dumps(body).encode(), headers, Knobs(), 0.0).slice_key


class Cluster:
    """One local cluster; ``routers[i].addresses`` has "http" and "grpc"."""

    def __init__(
        self,
        log_dir: pathlib.Path,
        *,
        n_routers: int = 2,
        runtime_args: Sequence[str] = (),
        router_args: Sequence[str] = ROUTER_ARGS,
    ) -> None:
        self.log_dir = log_dir
        self.group = ProcessGroup()
        self.runtimes: dict[str, ManagedProcess] = {}
        self.routers: list[ManagedProcess] = []
        self.runtime_args = list(runtime_args)
        self.router_args = list(router_args)
        self.api_headers: dict[str, str] = {}  # what a client sends the routers (a secured subclass: its API key)
        self.n_routers = n_routers
        self.assigner: ManagedProcess | None = None

    @property
    def assigner_addr(self) -> str:
        assert self.assigner is not None
        return self.assigner.addresses["grpc"]

    def assigner_flags(self) -> list[str]:
        """``--assigner ADDR`` for every assigner a runtime or router should know (subclasses may run several)."""
        return ["--assigner", self.assigner_addr]

    def credential_flags(self, principal: str) -> list[str]:
        """Flags that give a runtime (its pod id) or a router ("router") its credentials (none: open)."""
        return []

    def assigner_channel(self, address: str) -> grpc.Channel:
        """An admin's channel to an assigner (a secured subclass adds TLS and its token)."""
        return grpc.insecure_channel(address)

    def start_assigners(self) -> None:
        """Start the assigner (embedded store) and wait until it serves."""
        a = ManagedProcess(
            "assigner",
            python_module(
                "sharder.assigner.main",
                "--store",
                "embedded",
                "--port",
                "0",
                "--round-interval",
                "0.5",
                *_policy_args(),
            ),
            log_dir=self.log_dir,
        )
        self.assigner = self.group.add(a.start())
        a.wait_ready(60)

    def start_runtime(self, pid: str, region: str) -> ManagedProcess:
        """Start sim runtime ``pid`` (not waiting for it to be ready); it replaces any earlier one of that id."""
        argv = python_module("runtime.main", "--engine", "sim", "--pod-id", pid, "--target", TARGET, "--model", MODEL,
                             "--labels", f"region={region}", *self.assigner_flags(), *self.credential_flags(pid), "--lease-ttl", "3", "--report-interval", "0.5",
                             *self.runtime_args)  # fmt: skip
        self.runtimes[pid] = self.group.add(ManagedProcess(pid, argv, log_dir=self.log_dir).start())
        return self.runtimes[pid]

    def start(self) -> Cluster:
        self.start_assigners()
        self.configure_target()
        for i, region in enumerate(REGIONS):
            self.start_runtime(f"pod{i}", region)
        for _ in range(self.n_routers):
            self.add_router(self.router_args, wait=False)
        for p in [*self.runtimes.values(), *self.routers]:
            p.wait_ready(60)
        self.wait_assigned()
        for r in self.routers:
            self.wait_router(r)
        return self

    def configure_target(self, max_replicas: int = 2) -> None:
        """Create the target before pods register: TARGET_CONFIG with 1..max_replicas replicas (retried until a
        leader)."""
        cfg = slicing_pb2.TargetConfig(**{**TARGET_CONFIG, "max_replicas": max_replicas})
        with self.assigner_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            wait_until(
                lambda: stub.ConfigureTarget(assigner_pb2.ConfigureTargetRequest(config=cfg), timeout=5),
                30,
                "ConfigureTarget",
            )

    def wait_assigned(self) -> None:
        """Pin the slices round-robin onto the pods (move overrides: a deterministic spread, whatever the
        policy would do at idle), then wait until every runtime holds slices and every slice has a replica."""
        with self.assigner_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]

            def registered() -> Any:
                a = stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5)
                return a if set(self.runtimes) <= {p.id for p in a.pods} else None

            a = wait_until(registered, 60, "every runtime registered")
            pods = sorted(self.runtimes)
            for i, sl in enumerate(a.slices):
                ov = slicing_pb2.Override(
                    id=f"spread-{i}", move=slicing_pb2.MoveOverride(key=sl.slice.lo, pods=[pods[i % len(pods)]])
                )
                stub.SetOverride(assigner_pb2.SetOverrideRequest(target=TARGET, override=ov), timeout=5)

            def spread() -> bool:
                a = stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5)
                held = {p for s in a.slices for p in s.replicas}
                return set(self.runtimes) <= held and all(s.replicas for s in a.slices)

            wait_until(spread, 60, "slices on every pod")

    def add_router(self, args: Sequence[str], wait: bool = True) -> ManagedProcess:
        name = f"router{len(self.routers)}"
        r = self.group.add(
            ManagedProcess(
                name,
                python_module(
                    "axon_router.main", *self.assigner_flags(), *self.credential_flags("router"), "--http-port", "0",
                    "--grpc-port", "0", *args,
                ),
                log_dir=self.log_dir,
            ).start()
        )
        self.routers.append(r)
        if wait:
            r.wait_ready(60)
            self.wait_router(r)
        return r

    def wait_router(self, r: ManagedProcess, pods: int = 3) -> None:
        def ready() -> bool:
            models = [m["id"] for m in http_json(r.addresses["http"] + "/v1/models", headers=self.api_headers)["data"]]
            states = http_json(r.addresses["http"] + "/debug/pods", headers=self.api_headers)["pods"]
            return MODEL in models and sum(1 for p in states if p["healthy"]) >= pods

        wait_until(ready, 60, f"{r.name} to see the target and {pods} healthy pods")

    def http(self, i: int = 0) -> str:
        return self.routers[i].addresses["http"]

    def grpc(self, i: int = 0) -> str:
        return self.routers[i].addresses["grpc"]

    def pod_http(self, pod_id: str) -> str:
        return self.runtimes[pod_id].addresses["http"]

    def subset(self, key: str | int, i: int = 0) -> set[str]:
        """The subset of an app key (hashed flat) or of a SliceKey (an int, e.g. from ``routed_key``)."""
        q = f"slice_key={key}" if isinstance(key, int) else f"key={urllib.parse.quote(key)}"
        d = http_json(self.http(i) + f"/debug/lookup?model={MODEL}&{q}", headers=self.api_headers)
        return set(d["replicas"]) | set(d["leaving"])

    def pod_state(self, pod_id: str, i: int = 0) -> dict[str, Any]:
        return next(p for p in http_json(self.http(i) + "/debug/pods", headers=self.api_headers)["pods"] if p["id"] == pod_id)

    def stop_pod(self, pod_id: str) -> None:
        os.kill(self.runtimes[pod_id].pid, signal.SIGSTOP)

    def cont_pod(self, pod_id: str) -> None:
        os.kill(self.runtimes[pod_id].pid, signal.SIGCONT)

    def close(self) -> None:
        for p in self.runtimes.values():  # a stopped process cannot take SIGTERM
            if p.alive():
                os.kill(p.pid, signal.SIGCONT)
        self.group.stop_all()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return str(r.read().decode())


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cl = Cluster(tmp_path_factory.mktemp("router-cluster"))
    try:
        cl.start()
        yield cl
    finally:
        cl.close()
        assert not [p.name for p in cl.group.procs if p.alive()], "a child outlived close()"
