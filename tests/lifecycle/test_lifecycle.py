"""Graceful lifecycle with real processes (sim engines): readiness with no healthy pod, rolling SIGTERM restarts."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc
from tests.chaos.load import Load
from tests.router.conftest import REGIONS, ROUTER_ARGS, TARGET, Cluster, http_json
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Routers drain open streams for this long on SIGTERM, runtimes their requests in flight.
DRAIN_S = "10"
#: Real-time simulated engines: a 40-token answer takes ~0.25 s, so a SIGTERM finds streams open.
RUNTIME_ARGS = ("--time-scale", "1", "--drain-timeout-s", DRAIN_S)
ROUTER_LIFECYCLE_ARGS = (*ROUTER_ARGS, "--drain-timeout-s", DRAIN_S)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("lifecycle"), runtime_args=RUNTIME_ARGS, router_args=ROUTER_LIFECYCLE_ARGS)
    try:
        yield c.start()
    finally:
        c.close()


def ready_status(url: str) -> tuple[int, dict[str, object]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/ready", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def grpc_health(addr: str) -> int:
    with grpc.insecure_channel(addr) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(resp.status)


def test_ready_and_grpc_health_fail_with_no_healthy_pod_and_come_back(cluster: Cluster) -> None:
    router = cluster.routers[0]
    http, gaddr = router.addresses["http"], router.addresses["grpc"]
    assert ready_status(http)[0] == 200
    # gRPC health follows readiness within one sync period
    wait_until(lambda: grpc_health(gaddr) == health_pb2.HealthCheckResponse.SERVING, 5, "gRPC SERVING")
    for pid in cluster.runtimes:
        cluster.stop_pod(pid)  # SIGSTOP: the pods stop answering their readiness probes
    try:
        _, body = wait_until(lambda: (s := ready_status(http))[0] == 503 and s, 20, "/ready to fail")
        assert body["ready"] is False and body["healthy_pods"] == 0 and "no healthy pod" in str(body["reason"])
        wait_until(lambda: grpc_health(gaddr) == health_pb2.HealthCheckResponse.NOT_SERVING, 5, "gRPC NOT_SERVING")
        assert http_json(http + "/health")["status"] == "ok"  # liveness: the process itself is fine
    finally:
        for pid in cluster.runtimes:
            cluster.cont_pod(pid)
    wait_until(lambda: ready_status(http)[0] == 200, 20, "/ready to come back")
    wait_until(lambda: grpc_health(gaddr) == health_pb2.HealthCheckResponse.SERVING, 5, "gRPC SERVING again")


def every_runtime_holds_slices(cluster: Cluster) -> bool:
    with grpc.insecure_channel(cluster.assigner_addr) as ch:
        stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
        a = stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5)
    return set(cluster.runtimes) <= {p for s in a.slices for p in s.replicas}


def test_drain_wait_shows_progress_until_the_pod_holds_nothing(cluster: Cluster) -> None:
    cli = str(pathlib.Path(sys.executable).with_name("brunoise"))
    argv = [cli, "drain", "pod2", "--wait", "--timeout-s", "60", "--assigner", cluster.assigner_addr, "-o", "json"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, (r.stdout, r.stderr)
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        progress = [x for x in lines if "slices_held" in x]
        assert lines[0]["pod"]["state"] == "draining"
        assert progress[0]["slices_held"] > 0 and progress[-1] == {**progress[-1], "slices_held": 0, "running": 0}
    finally:
        subprocess.run([cli, "drain", "pod2", "--undo", "--assigner", cluster.assigner_addr], capture_output=True,
                       timeout=30, check=True)  # fmt: skip
    wait_until(lambda: every_runtime_holds_slices(cluster), 30, "pod2 to hold slices again")


def _exit_code_after_sigterm(proc: object, timeout_s: float) -> int | None:
    code: int | None = proc.stop(timeout_s=timeout_s)  # type: ignore[attr-defined]
    return code


async def test_rolling_sigterm_restart_of_every_runtime_then_every_router_loses_nothing(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    for r in cluster.routers:
        cluster.wait_router(r)
    live = lambda: [r.addresses["http"] for r in cluster.routers if r.alive() and "http" in r.addresses]  # noqa: E731
    load = Load(live, workers=8, max_tokens=40, attempt_timeout_s=5.0, tag="rolling")
    await load.start(flowing_after=20, timeout_s=30)
    t0 = time.monotonic()
    runtime_codes: dict[str, int | None] = {}
    router_codes: list[int | None] = []
    try:
        for pid, region in zip(sorted(cluster.runtimes), REGIONS, strict=True):
            old = cluster.runtimes[pid]
            runtime_codes[pid] = await asyncio.to_thread(_exit_code_after_sigterm, old, 30.0)
            new = cluster.start_runtime(pid, region)
            await asyncio.to_thread(new.wait_ready, 60)
            for r in cluster.routers:
                await asyncio.to_thread(cluster.wait_router, r)
            await load.wait_ok(load.ok + 10, 30)
        # each runtime drained itself on SIGTERM; restarted under the same id it undrained itself and serves again
        await asyncio.to_thread(wait_until, lambda: every_runtime_holds_slices(cluster), 30, "slices back on every pod")
        for _ in range(len(cluster.routers)):
            old_r = cluster.routers[0]
            router_codes.append(await asyncio.to_thread(_exit_code_after_sigterm, old_r, 30.0))
            cluster.routers.remove(old_r)
            await asyncio.to_thread(cluster.add_router, ROUTER_LIFECYCLE_ARGS)
            await load.wait_ok(load.ok + 10, 30)
    finally:
        await load.stop()
    # what each runtime had in flight when SIGTERM came (its log): the drain had real work to finish
    open_at_sigterm = [
        int(m.group(1)) for p in cluster.log_dir.glob("pod*.log")
        for m in re.finditer(r"draining: (\d+) requests in flight", p.read_text(errors="replace"))
    ]  # fmt: skip
    figures = load.figures("rolling_sigterm_restart", seconds=round(time.monotonic() - t0, 1),
                           runtime_exit_codes=runtime_codes, router_exit_codes=router_codes,
                           in_flight_at_runtime_sigterm=open_at_sigterm)  # fmt: skip
    figures.emit()
    assert runtime_codes == {pid: 0 for pid in runtime_codes}, runtime_codes
    assert router_codes == [0, 0], router_codes
    assert load.unexpected == [], load.unexpected[:3]
    assert load.lost == 0 and load.broken == 0, (load.lost_reasons[:3], figures)
    assert load.ok > 60, figures
    assert len(open_at_sigterm) == len(runtime_codes) and sum(open_at_sigterm) > 0, open_at_sigterm
