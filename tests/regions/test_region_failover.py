"""Issue 13 acceptance, regions: two regions of two sim runtimes on loopback, an embedded assigner and one router (in b).

Every pod of region a is killed by PID: the unpinned tenant homed in a is served from region b within the
router's health-check time; the pinned tenant homed in a gets 503s and none of its requests reaches region b.
Region a's pods are restarted: the unpinned tenant comes back to a. The figures are printed as a ``REGIONS {json}``
line (``pytest -s``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from brunoise.cli.main import main as brunoise_cli
from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.launch import ManagedProcess, ProcessGroup, python_module
from sharder.promtext import metric_value
from tests.router.conftest import MODEL, ROUTER_ARGS, http_json, post, scrape
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

REGIONS = {"a": ("a0", "a1"), "b": ("b0", "b1")}
HEALTH_INTERVAL_S = 0.5  # ROUTER_ARGS
HEALTH_TIMEOUT_S = 0.4
HEALTH_CHECK_S = HEALTH_INTERVAL_S + HEALTH_TIMEOUT_S  # a dead pod is skipped within one interval plus a timeout
FREE, BANK = "free-tenant", "bank-tenant"  # both homed in a; the bank is pinned there (residency)


def target_of(region: str) -> str:
    return f"chat-{region}"


def region_of(pod: str) -> str:
    """The region of a pod id; "" for none (a response no pod answered)."""
    return next((r for r, pods in REGIONS.items() if pod in pods), "")


class RegionCluster:
    """The assigner, one target per region (eligibility region=<r>), its pods, and a router in region b (so its own
    region is not the first by name: a tenant without a placement shows the router's preference)."""

    def __init__(self, log_dir: pathlib.Path) -> None:
        self.log_dir = log_dir
        self.group = ProcessGroup()
        self.pods: dict[str, ManagedProcess] = {}
        self.assigner: ManagedProcess | None = None
        self.router: ManagedProcess | None = None

    @property
    def assigner_addr(self) -> str:
        assert self.assigner is not None
        return self.assigner.addresses["grpc"]

    @property
    def http(self) -> str:
        assert self.router is not None
        return self.router.addresses["http"]

    def start(self) -> RegionCluster:
        a = ManagedProcess("assigner", python_module("sharder.assigner.main", "--store", "embedded", "--port", "0",
                                                     "--round-interval", "0.5"), log_dir=self.log_dir)  # fmt: skip
        self.assigner = self.group.add(a.start())
        a.wait_ready(60)
        with grpc.insecure_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            for r in REGIONS:
                cfg = slicing_pb2.TargetConfig(target=target_of(r), model=MODEL, min_replicas=1, max_replicas=2,
                                               initial_slices=8, eligibility={"region": r})  # fmt: skip
                wait_until(lambda c=cfg: stub.ConfigureTarget(assigner_pb2.ConfigureTargetRequest(config=c), timeout=5),
                         30, f"ConfigureTarget {cfg.target}")  # fmt: skip
        for pods in REGIONS.values():
            for pid in pods:
                self.start_pod(pid)
        r = ManagedProcess("router", python_module(
            "axon_router.main", "--assigner", self.assigner_addr, "--http-port", "0", "--grpc-port", "0",
            "--region", "b", "--placement-refresh-s", "0.5", *ROUTER_ARGS,
        ), log_dir=self.log_dir)  # fmt: skip
        self.router = self.group.add(r.start())
        for p in [*self.pods.values(), r]:
            p.wait_ready(60)
        self.wait_healthy(4)
        return self

    def start_pod(self, pid: str) -> ManagedProcess:
        r = region_of(pid)
        argv = python_module("runtime.main", "--engine", "sim", "--pod-id", pid, "--target", target_of(r),
                             "--model", MODEL, "--labels", f"region={r}", "--assigner", self.assigner_addr,
                             "--lease-ttl", "3", "--report-interval", "0.5")  # fmt: skip
        self.pods[pid] = self.group.add(ManagedProcess(pid, argv, log_dir=self.log_dir).start())
        return self.pods[pid]

    def kill(self, pid: str) -> None:
        """SIGKILL pod ``pid`` by its process id (a crash: no drain, no goodbye to the assigner)."""
        p = self.pods[pid]
        os.kill(p.pid, signal.SIGKILL)
        assert p.proc is not None
        p.proc.wait(timeout=10)

    def healthy_pods(self) -> set[str]:
        return {p["id"] for p in http_json(self.http + "/debug/pods")["pods"] if p["healthy"]}

    def wait_healthy(self, n: int) -> None:
        def ready() -> bool:
            models = [m["id"] for m in http_json(self.http + "/v1/models")["data"]]
            return MODEL in models and len(self.healthy_pods()) >= n

        wait_until(ready, 60, f"the router to see {n} healthy pods")

    def cli(self, *args: str) -> int:
        """The real `brunoise` CLI against the assigner; its exit code."""
        return brunoise_cli([*args, "--assigner", self.assigner_addr])

    def placements(self) -> dict[str, tuple[str, bool]]:
        with grpc.insecure_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            resp = stub.ListPlacements(assigner_pb2.ListPlacementsRequest(), timeout=5)
        return {p.tenant: (p.home_region, p.pinned) for p in resp.placements}

    def pod_served(self, pids: tuple[str, ...]) -> float:
        """Requests the pods ``pids`` served and prompt tokens they processed, by their own vLLM counters."""
        total = 0.0
        for pid in pids:
            text = scrape(self.pods[pid].addresses["http"])
            total += metric_value(text, "vllm:request_success_total") + metric_value(text, "vllm:prompt_tokens_total")
        return total

    def close(self) -> None:
        self.group.stop_all()


@dataclasses.dataclass(frozen=True)
class Outcome:
    sent: float  # monotonic, when the request was sent
    t: float  # monotonic, when the response came back
    tenant: str
    status: int
    pod: str
    code: str


class Clients:
    """One thread sending a request of each tenant in turn (sessions rotate), recording every outcome."""

    def __init__(self, cluster: RegionCluster, tenants: tuple[str, ...]) -> None:
        self.cluster = cluster
        self.tenants = tenants
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            for tenant in self.tenants:
                self.outcomes.append(send(self.cluster, tenant, f"s{i % 16}"))
            i += 1

    def __enter__(self) -> Clients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def of(self, tenant: str, since: float = 0.0) -> list[Outcome]:
        """``tenant``'s outcomes that came back at ``since`` or later."""
        return [o for o in list(self.outcomes) if o.tenant == tenant and o.t >= since]

    def sent(self, tenant: str, since: float) -> list[Outcome]:
        """``tenant``'s requests sent at ``since`` or later."""
        return [o for o in list(self.outcomes) if o.tenant == tenant and o.sent >= since]


def send(cluster: RegionCluster, tenant: str, session: str) -> Outcome:
    sent = time.monotonic()
    status, h, body = post(
        cluster.http + "/v1/completions",
        {"model": MODEL, "prompt": f"{tenant} {session} hello", "max_tokens": 2},
        {"x-tenant-id": tenant, "x-session-id": session},
        timeout=15,
    )
    code = ""
    if status != 200:
        try:
            code = str(json.loads(body)["error"].get("code") or "")
        except (ValueError, KeyError, TypeError):
            code = "?"
    return Outcome(sent, time.monotonic(), tenant, status, h.get("x-brunoise-pod", ""), code)


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[RegionCluster]:
    cl = RegionCluster(tmp_path)
    try:
        yield cl.start()
    finally:
        cl.close()
        assert not [p.name for p in cl.group.procs if p.alive()], "a child outlived close()"


def test_region_loss_fails_unpinned_tenants_over_and_back_and_keeps_pinned_ones_home(cluster: RegionCluster) -> None:
    assert cluster.cli("tenant", "set-region", FREE, "a") == 0
    assert cluster.cli("tenant", "set-region", BANK, "a", "--pinned") == 0
    assert cluster.cli("tenant", "set-region", "other", "a b") != 0  # not a region label: refused, nothing stored
    assert cluster.placements() == {FREE: ("a", False), BANK: ("a", True)}
    # the router (in b) reads both placements; both tenants are served at home, in a
    wait_until(lambda: all(send(cluster, t, "warm").pod in REGIONS["a"] for t in (FREE, BANK)), 30, "homes in a")
    steady = [send(cluster, t, f"s{i}") for i in range(8) for t in (FREE, BANK)]
    assert all(o.status == 200 and region_of(o.pod) == "a" for o in steady), steady
    # a tenant with no placement goes to the router's own region (b), though a comes first by name
    nomad = [send(cluster, "nomad", f"s{i}") for i in range(8)]
    assert all(o.status == 200 and region_of(o.pod) == "b" for o in nomad), nomad
    a_pods, b_pods = REGIONS["a"], REGIONS["b"]

    with Clients(cluster, (FREE, BANK)) as clients:
        wait_until(lambda: len(clients.of(BANK)) >= 4, 30, "client traffic")
        t_kill = time.monotonic()
        for pid in a_pods:
            cluster.kill(pid)
        t_dead = time.monotonic()  # requests sent from now on cannot reach a
        wait_until(lambda: any(region_of(o.pod) == "b" for o in clients.of(FREE, t_kill)), 30, "failover to b")
        failover_s = min(o.t for o in clients.of(FREE, t_kill) if o.pod and region_of(o.pod) == "b") - t_kill
        # from then on the unpinned tenant is served in b, every request
        t_over = t_kill + failover_s
        wait_until(lambda: len(clients.of(FREE, t_over)) >= 40, 60, "unpinned traffic after the failover")
        after = clients.of(FREE, t_over)
        assert all(o.status == 200 and region_of(o.pod) == "b" for o in after), [o for o in after if o.status != 200]
        wait_until(lambda: any(o.code == "residency_unavailable" for o in clients.of(BANK, t_kill)), 30, "pinned 503")
    lost = [o for o in clients.of(FREE, t_kill) if o.t < t_over and o.status != 200]
    # a request whose attempts in a failed before the router saw a down is tried in b: none is lost
    assert not lost, lost
    bank_outage = clients.sent(BANK, t_dead)  # one sent before may have finished in a as it died
    outage = list(clients.outcomes)
    assert all(o.status == 503 and not o.pod for o in bank_outage), [o for o in bank_outage if o.status != 503]

    # the pinned tenant alone: its requests do not reach region b at all (b's own counters do not move)
    b_before = cluster.pod_served(b_pods)
    alone = [send(cluster, BANK, f"s{i}") for i in range(20)]
    assert all(o.status == 503 and o.code == "residency_unavailable" and not o.pod for o in alone), alone
    assert cluster.pod_served(b_pods) == b_before

    t_restart = time.monotonic()
    with Clients(cluster, (FREE, BANK)) as clients:
        for pid in a_pods:
            cluster.start_pod(pid)
        for pid in a_pods:
            cluster.pods[pid].wait_ready(60)
        t_ready = time.monotonic()
        wait_until(lambda: any(o.pod in a_pods for o in clients.of(FREE, t_restart)), 60, "unpinned back in a")
        back = min(o.t for o in clients.of(FREE, t_restart) if o.pod in a_pods)
        wait_until(lambda: any(o.status == 200 for o in clients.of(BANK, t_ready)), 60, "pinned served again")
        t_back = back
        wait_until(lambda: len(clients.of(FREE, t_back + 2.0)) >= 20, 60, "unpinned traffic after the return")
        settled = clients.of(FREE, t_back + 2.0)
        assert all(o.status == 200 and region_of(o.pod) == "a" for o in settled), settled

    bank_all = [*steady, *outage, *alone, *clients.outcomes]
    bank_in_b = sum(1 for o in bank_all if o.tenant == BANK and region_of(o.pod) == "b")
    assert bank_in_b == 0, "a pinned request was served outside its region"
    metrics = scrape(cluster.http)
    failovers = metric_value(metrics, "brunoise_router_region_failovers_total", {"from_region": "a", "to_region": "b"})
    cross = metric_value(metrics, "brunoise_router_cross_region_requests_total", {"from_region": "b", "to_region": "a"})
    residency_503 = metric_value(metrics, "brunoise_router_unavailable_total", {"cause": "residency"})
    home_in_a = sum(1 for o in [*steady, *outage, *clients.outcomes] if region_of(o.pod) == "a")
    assert failovers >= 40 and cross >= home_in_a and residency_503 >= len(alone)
    figures = {
        "health_check_s": HEALTH_CHECK_S,
        "failover_s": round(failover_s, 3),
        "return_after_restart_s": round(back - t_restart, 3),
        "return_after_pods_ready_s": round(back - t_ready, 3),
        "unpinned_failed_before_failover": len(lost),
        "unpinned_failed_codes": sorted({o.code for o in lost}),
        "pinned_503_during_outage": len(bank_outage) + len(alone),
        "pinned_503_codes": sorted({o.code for o in [*bank_outage, *alone]}),
        "pinned_served_in_b": bank_in_b,
        "router_region_failovers_a_to_b": failovers,
        "router_cross_region_b_to_a": cross,
        "router_residency_503": residency_503,
    }
    print("REGIONS " + json.dumps(figures))
    assert failover_s <= HEALTH_CHECK_S + 0.5, figures  # within the health-check time (+ a loaded machine's slack)
