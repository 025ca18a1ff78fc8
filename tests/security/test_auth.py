"""Authentication and TLS on a real assigner process: certificates made here, tokens by role, every RPC guarded."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.assigner.main import parse_args
from sharder.clerk import Clerk
from sharder.launch import ManagedProcess, python_module
from sharder.load import EngineLoad
from sharder.pods import Pod
from sharder.security.client import ClientAuth
from sharder.security.tls import generate_tls
from sharder.security.tokens import ASSIGNER_RPC_ROLES, Role, credentials_doc, new_token
from sharder.slicelet import Slicelet
from tests.assigner.conftest import Assigner
from tests.waiting import until

pytestmark = pytest.mark.slow

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
RPCS = sorted(m.name for m in assigner_pb2.DESCRIPTOR.services_by_name["Assigner"].methods)


class Secured:
    """One assigner with credentials and TLS, and a ClientAuth per role."""

    def __init__(self, proc: ManagedProcess, ca: bytes, tokens: dict[str, str]) -> None:
        self.proc = proc
        self.addr = proc.addresses["grpc"]
        self.ca = ca
        self.tokens = tokens

    def auth(self, name: str | None) -> ClientAuth:
        return ClientAuth(token=self.tokens[name] if name else None, ca_pem=self.ca)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    d = tmp_path_factory.mktemp("secured")
    tls = generate_tls(d / "pki")
    tokens = {n: new_token() for n in ("ops", "router", "p0", "p1")}
    doc = credentials_doc(
        {
            "ops": (Role.ADMIN, "", tokens["ops"]),
            "router": (Role.READER, "", tokens["router"]),
            "p0": (Role.POD, "p0", tokens["p0"]),
            "p1": (Role.POD, "p1", tokens["p1"]),
        }
    )
    assert all(tok not in json.dumps(doc) for tok in tokens.values()), "only digests are stored"
    (d / "credentials.json").write_text(json.dumps(doc))
    env = {**os.environ, "PYTHONPATH": ROOT}
    for k in ("BRUNOISE_TOKEN", "BRUNOISE_TLS_CA"):
        env.pop(k, None)
    argv = python_module(
        "sharder.assigner.main", "--id", "secure", "--round-interval", "0.3", "--report-interval", "0.2",
        "--credentials", str(d / "credentials.json"), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
        "--target", "t=m",
    )  # fmt: skip
    proc = ManagedProcess("secure", argv, env=env, log_dir=d)
    proc.start()
    try:
        proc.wait_ready(30)
        yield Secured(proc, tls.ca.read_bytes(), tokens)
    finally:
        proc.stop()
        print(proc.log_tail(30))


def _request(rpc: str) -> Any:
    """A well-formed request for each Assigner RPC (what an attacker would send)."""
    pod = slicing_pb2.Pod(id="p0", address="127.0.0.1:9999", http_address="http://evil:1", target="t")
    return {
        "Watch": assigner_pb2.WatchRequest(target="t"),
        "Report": assigner_pb2.ReportRequest(pod=pod),
        "ListTargets": assigner_pb2.ListTargetsRequest(),
        "ConfigureTarget": assigner_pb2.ConfigureTargetRequest(
            config=slicing_pb2.TargetConfig(target="t", min_replicas=1, max_replicas=1)
        ),
        "GetAssignment": assigner_pb2.GetAssignmentRequest(target="t"),
        "ExplainKey": assigner_pb2.ExplainKeyRequest(target="t", app_key="k"),
        "History": assigner_pb2.HistoryRequest(target="t"),
        "ListPods": assigner_pb2.ListPodsRequest(),
        "Drain": assigner_pb2.DrainRequest(pod_id="p0"),
        "SetOverride": assigner_pb2.SetOverrideRequest(
            target="t", override=slicing_pb2.Override(id="x", split=slicing_pb2.SplitOverride(at=1 << 63))
        ),
        "ClearOverrides": assigner_pb2.ClearOverridesRequest(target="t"),
        "SetQuota": assigner_pb2.SetQuotaRequest(limits=assigner_pb2.QuotaLimits(tenant="acme", requests_per_s=1)),
        "GetQuota": assigner_pb2.GetQuotaRequest(tenant="acme"),
        "ListQuotas": assigner_pb2.ListQuotasRequest(),
        "AcquireAllotment": assigner_pb2.AcquireAllotmentRequest(tenant="acme", holder="evil", need_requests=1),
        "ReturnAllotment": assigner_pb2.ReturnAllotmentRequest(tenant="acme"),
        "ReportKeyFault": assigner_pb2.ReportKeyFaultRequest(target="t", slice_key=1, pod_id="p0", cause="network"),
        "ListQuarantines": assigner_pb2.ListQuarantinesRequest(),
        "ClearQuarantine": assigner_pb2.ClearQuarantineRequest(all=True),
        "StartRollout": assigner_pb2.StartRolloutRequest(model="m", blue="t", green="t2"),
        "ChangeRollout": assigner_pb2.ChangeRolloutRequest(model="m", action=assigner_pb2.ChangeRolloutRequest.ROLLBACK),
        "ListRollouts": assigner_pb2.ListRolloutsRequest(),
        "SetPlacement": assigner_pb2.SetPlacementRequest(
            placement=assigner_pb2.TenantPlacement(tenant="acme", home_region="eu", pinned=True)
        ),
        "ListPlacements": assigner_pb2.ListPlacementsRequest(),
    }[rpc]


def _wrong_role(rpc: str) -> str:
    """A valid token whose role may not call ``rpc``."""
    roles = ASSIGNER_RPC_ROLES[rpc]
    if Role.POD in roles:
        return "router"  # a reader may not report
    if Role.READER in roles:
        return "p0"  # a pod may not read assignments
    return "router"  # a reader may not write


async def _call(s: Secured, who: str | None, rpc: str, request: Any) -> Any:
    auth = s.auth(who)
    async with auth.aio_channel(s.addr) as ch:
        stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
        call = getattr(stub, rpc)(request, timeout=5, metadata=auth.metadata)
        if rpc == "Watch":
            return await call.read()
        return await call


async def _snapshot(s: Secured) -> tuple[int, list[str], list[str], list[str]]:
    a = await _call(s, "ops", "GetAssignment", assigner_pb2.GetAssignmentRequest(target="t"))
    pods = await _call(s, "ops", "ListPods", assigner_pb2.ListPodsRequest())
    return a.generation, [p.id for p in a.pods], [o.id for o in a.overrides], [p.pod.id for p in pods.pods]


def test_the_role_table_covers_every_assigner_rpc() -> None:
    assert sorted(ASSIGNER_RPC_ROLES) == RPCS


@pytest.mark.parametrize("rpc", RPCS)
async def test_every_rpc_refuses_missing_or_wrong_credentials(secured: Secured, rpc: str) -> None:
    await _call(secured, "p0", "Report", assigner_pb2.ReportRequest(pod=pod_p0()))  # the target has one pod
    before = await _snapshot(secured)
    for who, bad in ((None, None), ("bogus", "not-a-real-token")):
        auth = ClientAuth(token=bad, ca_pem=secured.ca)
        async with auth.aio_channel(secured.addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            call = getattr(stub, rpc)(_request(rpc), timeout=5, metadata=auth.metadata)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await (call.read() if rpc == "Watch" else call)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (who, err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(secured, _wrong_role(rpc), rpc, _request(rpc))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    assert await _snapshot(secured) == before, "a refused call changed nothing"


def pod_p0() -> slicing_pb2.Pod:
    return slicing_pb2.Pod(id="p0", address="127.0.0.1:9000", target="t", labels={"model": "m"})


async def test_a_pod_token_registers_only_its_own_pod(secured: Secured) -> None:
    ok = await _call(secured, "p0", "Report", assigner_pb2.ReportRequest(pod=pod_p0()))
    assert ok.state == slicing_pb2.POD_STATE_ACTIVE
    impostor = slicing_pb2.Pod(id="p1", address="127.0.0.1:6666", target="t", labels={"model": "m"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(secured, "p0", "Report", assigner_pb2.ReportRequest(pod=impostor))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "p0" in (err.value.details() or "")
    load_for_other = assigner_pb2.ReportRequest(pod=pod_p0(), load=slicing_pb2.LoadReport(pod_id="p1", target="t"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(secured, "p0", "Report", load_for_other)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    pods = await _call(secured, "ops", "ListPods", assigner_pb2.ListPodsRequest())
    assert "p1" not in {p.pod.id for p in pods.pods}


async def test_a_pod_token_drains_only_its_own_pod(secured: Secured) -> None:
    """A runtime's graceful shutdown drains itself with its own pod token; it cannot drain another pod."""
    await _call(secured, "p0", "Report", assigner_pb2.ReportRequest(pod=pod_p0()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(secured, "p0", "Drain", assigner_pb2.DrainRequest(pod_id="p1"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "p0" in (err.value.details() or "")
    drained = await _call(secured, "p0", "Drain", assigner_pb2.DrainRequest(pod_id="p0"))
    assert drained.pod.state == slicing_pb2.POD_STATE_DRAINING
    back = await _call(secured, "p0", "Drain", assigner_pb2.DrainRequest(pod_id="p0", undrain=True))
    assert back.pod.state == slicing_pb2.POD_STATE_ACTIVE


async def test_a_report_never_creates_a_target(secured: Secured) -> None:
    elsewhere = slicing_pb2.Pod(id="p1", address="127.0.0.1:9001", target="not-configured", labels={"model": "m"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(secured, "p1", "Report", assigner_pb2.ReportRequest(pod=elsewhere))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "not-configured" in (err.value.details() or "")

    async def listed() -> list[str]:
        resp = await _call(secured, "router", "ListTargets", assigner_pb2.ListTargetsRequest())
        return [t.target for t in resp.targets]

    # the configured target exists once the election grace is over or its first pod reported
    assert await until(listed, 10, "the configured target") == ["t"]
    pods = await _call(secured, "ops", "ListPods", assigner_pb2.ListPodsRequest())
    assert "p1" not in {p.pod.id for p in pods.pods}, "nothing was stored for the refused report"


async def test_tls_round_trip_with_clerk_slicelet_admin_and_audit(secured: Secured) -> None:
    # health stays open (no token) but still over TLS
    async with secured.auth(None).aio_channel(secured.addr) as ch:
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[no-untyped-call]
        assert h.status == health_pb2.HealthCheckResponse.SERVING
    # a plaintext client cannot talk to the TLS listener at all
    async with grpc.aio.insecure_channel(secured.addr) as plain:
        stub = assigner_pb2_grpc.AssignerStub(plain)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListTargets(assigner_pb2.ListTargetsRequest(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    pod = Pod(id="p1", address="127.0.0.1:9001", labels={"model": "m"}, target="t")
    sl = Slicelet(pod, [secured.addr], engine_load=lambda: EngineLoad(running=1, load=1.0),
                  report_interval_s=0.2, auth=secured.auth("p1"))  # fmt: skip
    clerk = Clerk([secured.addr], target="t", auth=secured.auth("router"))
    await sl.start()
    await clerk.start()
    try:
        await sl.wait_registered(10)
        await until(lambda: (a := clerk.assignment("t")) is not None and a.pod("p1") is not None, 10, "p1 via clerk")
        drained = await _call(secured, "ops", "Drain", assigner_pb2.DrainRequest(pod_id="p1"))
        assert drained.pod.state == slicing_pb2.POD_STATE_DRAINING
        hist = await _call(secured, "router", "History", assigner_pb2.HistoryRequest(target="t"))
        records = [r for e in hist.entries for r in e.audit]
        assert any(r.who == "admin:ops" and "drain pod 'p1'" in r.action and r.unix_ms > 0 for r in records), records
        await _call(secured, "ops", "Drain", assigner_pb2.DrainRequest(pod_id="p1", undrain=True))
    finally:
        await clerk.stop()
        await sl.stop()


def test_an_open_assigner_refuses_a_non_loopback_address() -> None:
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("BRUNOISE_CREDENTIALS", None)
    r = subprocess.run(
        [sys.executable, "-m", "sharder.assigner.main", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "refusing to serve on 0.0.0.0" in r.stderr and "--insecure" in r.stderr


async def test_an_open_assigner_creates_targets_from_reports_only_when_told(
    start_assigner: Callable[..., Assigner],
) -> None:
    """Finding 7: every report could create a target. Even an open loopback assigner now needs the explicit
    ``--targets-from-reports`` (development and tests) before a pod's report creates one."""
    a = start_assigner(targets_from_reports=False)
    junk = slicing_pb2.Pod(id="p9", address="127.0.0.1:9009", target="junk", labels={"model": "m"})

    async def refused() -> grpc.aio.AioRpcError | None:
        try:
            await a.stub.Report(assigner_pb2.ReportRequest(pod=junk), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e if e.code() != grpc.StatusCode.FAILED_PRECONDITION else None  # no leader yet: again
        return None

    err = await until(refused, 10, "the leader to answer the report")
    assert err.code() == grpc.StatusCode.NOT_FOUND and "junk" in (err.details() or "")
    assert not (await a.stub.ListTargets(assigner_pb2.ListTargetsRequest(), timeout=5)).targets
    b = start_assigner(targets_from_reports=True)
    await until(lambda: b.stub.Report(assigner_pb2.ReportRequest(pod=junk), timeout=5), 10, "a leader to take the report")
    await until(lambda: _targets(b), 10, "the reported target to be created")
    assert await _targets(b) == ["junk"]


async def _targets(a: Assigner) -> list[str]:
    resp = await a.stub.ListTargets(assigner_pb2.ListTargetsRequest(), timeout=5)
    return [t.target for t in resp.targets]


@pytest.mark.parametrize(
    "argv",
    [["--credentials", "creds.json"], ["--host", "0.0.0.0", "--insecure"]],
    ids=["with-credentials", "non-loopback"],
)
def test_targets_from_reports_is_refused_outside_an_open_loopback_assigner(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--targets-from-reports", *argv])
    assert exit_.value.code == 2 and "--targets-from-reports is for an open loopback assigner" in capsys.readouterr().err
