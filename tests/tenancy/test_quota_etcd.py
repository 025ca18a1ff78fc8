"""Quotas on etcd with two assigners: killing the one the routers draw allotments from loses nothing.

The ledger is in etcd and every change is a compare-and-swap, so the surviving replica (leader or not) serves the
routers' next refill; the tenant stays within its limit + 2 allotments across the kill.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator

import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc
from sharder.etcd_server import EtcdCluster
from tests.chaos.conftest import ChaosCluster
from tests.etcd_plugin import etcd_cluster, etcd_prefix  # noqa: F401 - fixtures
from tests.router.conftest import ROUTER_ARGS
from tests.tenancy.support import chat, send_at_rate

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

RPS = 10.0
ALLOTMENT_S = 0.5
CHUNK = 5


@pytest.fixture
def ecluster(tmp_path: pathlib.Path, etcd_cluster: EtcdCluster, etcd_prefix: str) -> Iterator[ChaosCluster]:  # noqa: F811
    cl = ChaosCluster(tmp_path, etcd=etcd_cluster, prefix=etcd_prefix, n_assigners=2,
                      router_args=(*ROUTER_ARGS, "--quotas"), secure=False)  # fmt: skip (quota RPC auth: tests/security)
    try:
        cl.start()
        yield cl
    finally:
        cl.close()
        assert not [p.name for p in cl.group.procs if p.alive()], "a child outlived close()"


def test_allotments_survive_the_loss_of_the_assigner_that_granted_them(ecluster: ChaosCluster) -> None:
    cl = ecluster
    tenant = "failover"
    with grpc.insecure_channel(cl.assigner_addrs[0]) as ch:
        stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
        lim = assigner_pb2.QuotaLimits(tenant=tenant, requests_per_s=RPS, allotment_s=ALLOTMENT_S)
        stub.SetQuota(assigner_pb2.SetQuotaRequest(limits=lim), timeout=5)
    marks: dict[str, float] = {}

    def fault(second: int) -> None:
        if second == 3:
            marks["kill"] = time.monotonic()
            cl.assigners[0].kill9()  # the routers' first choice for every quota call

    rs = send_at_rate(cl.router_urls(), lambda i: chat(tenant, f"f{i}", session=f"s{i % 9}"), 3 * RPS, 8.0,
                      on_second=fault)  # fmt: skip
    bad = [(r.status, r.body[:200]) for r in rs if r.status not in (200, 429)]
    assert not bad, bad
    admitted = [r for r in rs if r.status == 200]
    span = rs[-1].at - rs[0].at
    after = [r for r in admitted if r.at >= marks["kill"] + 1.0]
    after_span = rs[-1].at - (marks["kill"] + 1.0)
    with grpc.insecure_channel(cl.assigner_addrs[1]) as ch:
        stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
        q = stub.GetQuota(assigner_pb2.GetQuotaRequest(tenant=tenant), timeout=5)
    print(f"QUOTA-ETCD-FAILOVER sent={len(rs)} admitted={len(admitted)} limit={RPS * span:.1f} "
          f"bound={RPS * span + 2 * CHUNK:.1f} admitted_after_kill={len(after)} over_s={after_span:.1f} "
          f"allotments_in_store={len(q.allotments)}")  # fmt: skip
    assert len(admitted) <= RPS * span + 2 * CHUNK
    assert len(after) >= 0.6 * RPS * after_span, "the other assigner serves the refills at once"
    assert len(q.allotments) <= 2
