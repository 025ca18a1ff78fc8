"""Chaos fixtures: the cluster of real processes with kill/stop/continue/restart handles, and each scenario's checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest

from axon_router.auth import hash_key
from brunoise.cli.credentials import init_credentials
from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.etcd_server import EtcdCluster
from sharder.launch import ManagedProcess, python_module
from sharder.security.client import ClientAuth
from sharder.security.tokens import new_token
from tests.chaos.load import Figures, Load
from tests.chaos.watch import Watcher
from tests.etcd_plugin import etcd_cluster, etcd_prefix, make_etcd_cluster  # noqa: F401 - fixtures
from tests.router.conftest import REGIONS, ROUTER_ARGS, TARGET, TARGET_CONFIG, Cluster, http_json
from tests.waiting import wait_until

#: Leader lease of the chaos assigners: failover takes about this long.
LEASE_S = 1.5
ROUND_S = 0.5
#: Pod lease (the runtimes' --lease-ttl in tests.router.conftest): a pod stopped longer than this is dropped.
POD_LEASE_S = 3.0
#: The routers' idle watchdog: a pod silent this long mid-stream is stalled and its stream ended by the router
#: (the default, 30 s, is longer than a scenario).
STREAM_IDLE_S = 3.0
#: The router suite's router flags plus the short idle watchdog.
CHAOS_ROUTER_ARGS = (*ROUTER_ARGS, "--stream-idle-timeout-s", str(STREAM_IDLE_S))


class ChaosCluster(Cluster):
    """The router suite's cluster (3 sim runtimes, 2 routers, slices pinned round-robin) with ``n_assigners``
    assigners on etcd (``etcd`` given) or one on the embedded store (``snapshot``: its snapshot file).
    Every runtime and router knows every assigner. ``close()`` continues stopped processes, then stops all.

    Secure as deployed (``secure``, the default): the assigners serve TLS and require tokens (``brunoise
    credentials init``: a pod token per runtime, the reader token for routers and watchers, an admin token for
    the test), the routers require an API key (``api_headers``: the load and every probe send it), and the
    target comes from the assigners' ``--targets-file``, so an assigner that lost its store
    re-creates it from configuration. ``secure=False``: open loopback assigners creating targets from reports."""

    def __init__(
        self,
        log_dir: pathlib.Path,
        *,
        etcd: EtcdCluster | None = None,
        prefix: str = "/chaos",
        n_assigners: int = 1,
        snapshot: pathlib.Path | None = None,
        router_args: Sequence[str] = CHAOS_ROUTER_ARGS,
        runtime_args: Sequence[str] = (),
        secure: bool = True,
    ) -> None:
        super().__init__(log_dir, n_routers=2, runtime_args=runtime_args, router_args=router_args)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.secure = secure
        self.security = self.log_dir / "security"
        self.admin_auth = ClientAuth()
        self.reader_auth = ClientAuth()
        if secure:
            pods = [f"pod{i}" for i in range(len(REGIONS))]
            init_credentials(self.security, ["127.0.0.1", "localhost"], pods, admins=("test",), readers=("router",))
            ca = (self.security / "pki" / "ca.pem").read_bytes()
            self.admin_auth = ClientAuth(token=self._token("test"), ca_pem=ca)
            self.reader_auth = ClientAuth(token=self._token("router"), ca_pem=ca)
            (self.security / "targets.json").write_text(json.dumps([TARGET_CONFIG]))
            api_key = new_token()  # the clients' key for the routers' OpenAI API (the keys file holds its digest)
            (self.security / "api-keys.json").write_text(json.dumps({hash_key(api_key): {"name": "chaos-load"}}))
            self.api_headers = {"authorization": f"Bearer {api_key}"}
        if etcd is None and n_assigners != 1:
            raise ValueError("several assigners need a shared store: pass etcd")
        self.etcd = etcd
        self.prefix = prefix
        self.n_assigners = n_assigners
        self.snapshot = snapshot
        self.assigners: list[ManagedProcess] = []
        self.assigner_ports: list[int] = []
        self.stopped: set[int] = set()  # pids frozen with sigstop

    # credentials ----------------------------------------------------------------------------------
    def _token(self, principal: str) -> str:
        return (self.security / "tokens" / principal).read_text().strip()

    def credential_flags(self, principal: str) -> list[str]:
        if not self.secure:
            return []
        flags = ["--token-file", str(self.security / "tokens" / principal), "--tls-ca", str(self.security / "pki" / "ca.pem")]
        if principal == "router":
            flags += ["--api-keys-file", str(self.security / "api-keys.json")]
        return flags

    def assigner_channel(self, address: str) -> grpc.Channel:
        """TLS with the admin token on every call (the test is the cluster's operator)."""
        a = self.admin_auth
        if a.ca_pem is None or a.token is None:
            return grpc.insecure_channel(address)
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=a.ca_pem), grpc.access_token_call_credentials(a.token)
        )
        return grpc.secure_channel(address, creds)

    # assigners ------------------------------------------------------------------------------------
    def _assigner_argv(self, i: int, port: int) -> list[str]:
        argv = ["--id", f"assigner{i}", "--port", str(port), "--round-interval", str(ROUND_S), "--lease-ttl", str(LEASE_S),
                "--report-interval", "0.5"]  # fmt: skip
        if self.secure:
            d = self.security
            argv += ["--credentials", str(d / "credentials.json"), "--tls-cert", str(d / "pki" / "server.pem"),
                     "--tls-key", str(d / "pki" / "server.key"), "--targets-file", str(d / "targets.json")]  # fmt: skip
        else:
            argv += ["--targets-from-reports"]
        if self.etcd is not None:
            argv += ["--store", "etcd", "--etcd-prefix", self.prefix]
            for e in self.etcd.endpoints:
                argv += ["--etcd-endpoint", e]
        else:
            argv += ["--store", "embedded"]
            if self.snapshot is not None:
                argv += ["--snapshot", str(self.snapshot)]
        return python_module("sharder.assigner.main", *argv)

    def start_assigner(self, i: int, port: int = 0) -> ManagedProcess:
        """Start assigner ``i`` (on ``port``, 0: any) and wait until it serves; it replaces any earlier one."""
        p = self.group.add(ManagedProcess(f"assigner{i}", self._assigner_argv(i, port), log_dir=self.log_dir).start())
        p.wait_ready(60)
        port_now = int(p.addresses["grpc"].rsplit(":", 1)[1])
        if i < len(self.assigners):
            self.assigners[i] = p
            self.assigner_ports[i] = port_now
        else:
            self.assigners.append(p)
            self.assigner_ports.append(port_now)
        return p

    def restart_assigner(self, i: int) -> ManagedProcess:
        """Start assigner ``i`` again on the same port (clients keep its address) and the same store."""
        assert not self.assigners[i].alive(), "stop or kill it first"
        return self.start_assigner(i, self.assigner_ports[i])

    def start_assigners(self) -> None:
        for i in range(self.n_assigners):
            self.start_assigner(i)
        self.assigner = self.assigners[0]

    @property
    def assigner_addrs(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.assigner_ports]

    def assigner_flags(self) -> list[str]:
        return [flag for a in self.assigner_addrs for flag in ("--assigner", a)]

    def leader_index(self, timeout_s: float = 15.0) -> int:
        """Index of the assigner every live one names as leader (polled until they agree)."""

        def agreed() -> int | None:
            named: set[str] = set()
            for a in self.assigners:
                if not self.running(a):
                    continue
                with self.assigner_channel(a.addresses["grpc"]) as ch:
                    stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
                    named.add(stub.ListTargets(assigner_pb2.ListTargetsRequest(), timeout=1).leader_id)
            ids = [a.addresses["id"] for a in self.assigners]
            if len(named) == 1 and (leader := named.pop()) in ids:
                return ids.index(leader) + 1  # truthy even for index 0
            return None

        found: int = wait_until(agreed, timeout_s, "the assigners to agree on a leader")
        return found - 1

    @property
    def assigner_addr(self) -> str:
        """The leader's address (admin writes go there)."""
        if len(self.assigners) == 1:
            return self.assigners[0].addresses["grpc"]
        return self.assigners[self.leader_index()].addresses["grpc"]

    def get_assignment(self) -> slicing_pb2.Assignment:
        """The target's assignment as the leader serves it."""
        with self.assigner_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            a: slicing_pb2.Assignment = stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5)
            return a

    def stored_generation(self) -> int:
        return int(self.get_assignment().generation)

    def bump_generation(self, retry: bool = True) -> int:
        """Commit a new generation through the leader (ConfigureTarget with a toggled tolerance, placement left
        to the policy); returns the generation committed. Retries until a leader accepts it unless ``retry`` is
        False (then grpc.RpcError when no leader took it)."""

        def once() -> int:
            with self.assigner_channel(self.assigner_addr) as ch:
                stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
                cur = stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5)
                cfg = slicing_pb2.TargetConfig()
                cfg.CopyFrom(cur.config)
                cfg.imbalance_tolerance = 0.11 if abs(cfg.imbalance_tolerance - 0.10) < 1e-6 else 0.10
                resp = stub.ConfigureTarget(assigner_pb2.ConfigureTargetRequest(config=cfg), timeout=5)
                return int(resp.assignment.generation)

        if not retry:
            return once()
        got: int = wait_until(once, 15, "a leader to commit a generation", interval_s=0.1)
        return got

    def live_pod_ids(self) -> set[str]:
        """Pods whose registration (lease) the leader holds now."""
        with self.assigner_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            resp = stub.ListPods(assigner_pb2.ListPodsRequest(target=TARGET), timeout=5)
            return {st.pod.id for st in resp.pods}

    # routers --------------------------------------------------------------------------------------
    def router_urls(self) -> list[str]:
        return [r.addresses["http"] for r in self.routers]

    def live_routers(self) -> dict[int, str]:
        """pid -> HTTP base URL of every router process that is alive."""
        return {r.pid: r.addresses["http"] for r in self.routers if self.running(r)}

    def restart_router(self, i: int) -> ManagedProcess:
        """Start router ``i`` again on its old ports (clients keep its address), with cold pod views."""
        old = self.routers[i]
        assert not old.alive(), "stop or kill it first"
        http_port = old.addresses["http"].rsplit(":", 1)[1]
        grpc_port = old.addresses["grpc"].rsplit(":", 1)[1]
        name = f"router{i}-restarted"
        r = ManagedProcess(
            name,
            python_module("axon_router.main", *self.assigner_flags(), *self.credential_flags("router"), "--http-port",
                          http_port, "--grpc-port", grpc_port, *self.router_args),
            log_dir=self.log_dir,
        )  # fmt: skip
        self.group.add(r.start())
        r.wait_ready(60)
        self.routers[i] = r
        return r

    # signals --------------------------------------------------------------------------------------
    def sigstop(self, p: ManagedProcess) -> None:
        """Freeze ``p`` (SIGSTOP): it keeps its sockets but answers nothing."""
        os.kill(p.pid, signal.SIGSTOP)
        self.stopped.add(p.pid)

    def sigcont(self, p: ManagedProcess) -> None:
        self.stopped.discard(p.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)

    def running(self, p: ManagedProcess) -> bool:
        """Alive and not frozen by the test."""
        return p.alive() and p.pid not in self.stopped

    def pod_at_routers(self, pod_id: str) -> list[dict[str, Any] | None]:
        """What each running router's /debug/pods says of ``pod_id`` (None: the router has no view of it)."""
        out: list[dict[str, Any] | None] = []
        for i, r in enumerate(self.routers):
            if self.running(r):
                pods = http_json(self.http(i) + "/debug/pods", headers=self.api_headers)["pods"]
                out.append(next((p for p in pods if p["id"] == pod_id), None))
        return out

    def pod_skipped_everywhere(self, pod_id: str) -> bool:
        """Whether no running router would send ``pod_id`` new traffic (unhealthy, circuit open, or unknown)."""
        return all(p is None or not p["healthy"] or p["breaker"] == "open" for p in self.pod_at_routers(pod_id))

    def pod_healthy_everywhere(self, pod_id: str) -> bool:
        return all(p is not None and p["healthy"] for p in self.pod_at_routers(pod_id))

    def close(self) -> None:
        for p in self.group.procs:  # a stopped process cannot take SIGTERM
            if p.alive():
                os.kill(p.pid, signal.SIGCONT)
        self.group.stop_all()


@pytest.fixture
def make_cluster(tmp_path: pathlib.Path) -> Iterator[Callable[..., ChaosCluster]]:
    """``make_cluster(**kwargs)`` starts a ChaosCluster; every process it started is stopped after the test."""
    made: list[ChaosCluster] = []

    def make(**kwargs: Any) -> ChaosCluster:
        cl = ChaosCluster(tmp_path / f"cluster{len(made)}", **kwargs)
        made.append(cl)
        t0 = time.monotonic()
        cl.start()
        print(f"\ncluster up in {time.monotonic() - t0:.1f}s: assigners {cl.assigner_addrs}, routers {cl.router_urls()}")
        return cl

    try:
        yield make
    finally:
        for cl in made:
            cl.close()
            assert not [p.name for p in cl.group.procs if p.alive()], "a child outlived close()"


@pytest.fixture
async def watchers() -> AsyncIterator[list[Watcher]]:
    """Watchers a test appends here are stopped after it."""
    made: list[Watcher] = []
    try:
        yield made
    finally:
        for w in made:
            await w.stop()


@pytest.fixture
async def loads() -> AsyncIterator[list[Load]]:
    """Loads a test appends here are stopped after it (if the test did not)."""
    made: list[Load] = []
    try:
        yield made
    finally:
        for ld in made:
            if not ld.stopped_at:
                await ld.stop()


class Scenario:
    """One scenario's load and watcher, and the checks every scenario ends with.

    ``begin()`` starts a Watcher on every assigner (and sampling every live router) and the Load, and waits until
    it flows. ``finish()`` stops the load, commits one more generation and waits for the watcher's clerk and every
    live router to reach it (a frozen clerk fails here), records and emits the figures, then asserts: nothing
    unexpected, no request lost, no invariant broken, no generation backwards, routing gap under ``max_gap_s``.
    """

    def __init__(self, cl: ChaosCluster, name: str, **load_kwargs: Any) -> None:
        self.cl = cl
        self.name = name
        self.watcher = Watcher(name, cl.assigner_addrs, cl.live_routers, auth=cl.reader_auth)
        self.load = Load(cl.router_urls, tag=name, headers=cl.api_headers, **load_kwargs)
        self.fault_at = 0.0
        self.final_generation = -1
        self.catch_up_s: float | None = None

    async def begin(self, flowing_after: int = 20) -> Scenario:
        await self.watcher.start()
        await self.load.start(flowing_after)
        return self

    def fault(self) -> float:
        """Mark the moment of the fault (figures measure from it)."""
        self.fault_at = time.monotonic()
        return self.fault_at

    async def stop(self) -> None:
        """Stop the load; commit one more generation and wait until the watcher's clerk and every live router
        hold exactly the assigner's current generation (a violation otherwise)."""
        await self.load.stop()
        try:
            self.final_generation = await asyncio.to_thread(self.cl.bump_generation)
            self.catch_up_s = round(await self.watcher.wait_in_step(self.cl.stored_generation, 15), 3)
        except AssertionError as e:
            self.watcher.violations.append(str(e))

    async def finish(
        self, *, max_gap_s: float, failover_s: float | None = None, min_ok: int = 50, **extra: Any
    ) -> Figures:
        """``stop()`` unless done, emit the figures (with ``extra``), then assert what every scenario must hold."""
        if not self.load.stopped_at:
            await self.stop()
        figures = self.load.figures(
            self.name,
            generations_seen=len(self.watcher.generations),
            first_generation=self.watcher.generations[0] if self.watcher.generations else None,
            final_generation=self.final_generation,
            catch_up_s=self.catch_up_s,
            router_samples=self.watcher.router_samples,
            **extra,
        )
        figures.failover_s = None if failover_s is None else round(failover_s, 3)
        figures.emit()
        assert not self.load.unexpected, self.load.unexpected[:5]
        assert self.load.lost == 0, f"{self.load.lost} requests lost: {self.load.lost_reasons[:5]}"
        assert not self.watcher.violations, self.watcher.violations[:5]
        assert figures.longest_gap_s <= max_gap_s, f"routing stopped for {figures.longest_gap_s:.2f}s (bound {max_gap_s}s)"
        assert self.load.ok >= min_ok, f"only {self.load.ok} requests succeeded"
        return figures


@pytest.fixture
async def scenario(watchers: list[Watcher], loads: list[Load]) -> AsyncIterator[Callable[..., Scenario]]:
    """``scenario(cluster, name, **load_kwargs)``: a Scenario whose load and watcher are stopped after the test."""

    def make(cl: ChaosCluster, name: str, **load_kwargs: Any) -> Scenario:
        sc = Scenario(cl, name, **load_kwargs)
        watchers.append(sc.watcher)
        loads.append(sc.load)
        return sc

    yield make
