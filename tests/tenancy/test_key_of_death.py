"""Key of death with real processes: a prompt that crashes every engine it reaches (the sim's --fault-marker).

Routers run with --key-quarantine; every slice has 2 replicas (max_replicas 2) on 3 pods. The poison key's first
request crashes one subset pod, is retried inside its subset only, crashes the second and is then quarantined:
it touched 2 pods (max_replicas), the third pod survives, and another tenant's requests sent meanwhile all succeed.
A session of the poison's tenant that was streaming on a crashed pod is suspected with it, and is served by the
third pod afterwards (not refused because its subset is down).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import pathlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.promtext import metric_value
from tests.router.conftest import ROUTER_ARGS, TARGET, Cluster, post, routed_key, scrape
from tests.tenancy.support import chat, send_at_rate
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

MARKER = "POISON-7f3a"


class PairCluster(Cluster):
    """The router suite's cluster with every slice pinned to two pods: i -> (pod i%3, pod (i+1)%3)."""

    def wait_assigned(self) -> None:
        with grpc.insecure_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]

            def registered() -> slicing_pb2.Assignment | None:
                a = stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5)
                return a if set(self.runtimes) <= {p.id for p in a.pods} else None

            a = wait_until(registered, 60, "every runtime registered")
            pods = sorted(self.runtimes)
            for i, sl in enumerate(a.slices):
                pair = [pods[i % 3], pods[(i + 1) % 3]]
                ov = slicing_pb2.Override(id=f"pair-{i}", move=slicing_pb2.MoveOverride(key=sl.slice.lo, pods=pair))
                stub.SetOverride(assigner_pb2.SetOverrideRequest(target=TARGET, override=ov), timeout=5)

            def paired() -> bool:
                a = stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5)
                return all(len(s.replicas) == 2 for s in a.slices)

            wait_until(paired, 60, "two replicas on every slice")


@pytest.fixture(scope="module")
def pcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PairCluster]:
    cl = PairCluster(
        pathlib.Path(tmp_path_factory.mktemp("kod-cluster")),
        # leases outlive the test's steps: the crashed pods stay assigned (routers see them down), as they do
        # for a real lease's TTL
        runtime_args=("--fault-marker", MARKER, "--lease-ttl", "60"),
        router_args=(*ROUTER_ARGS, "--key-quarantine", "--quarantine-cooldown-s", "60"),
    )
    try:
        cl.start()
        yield cl
    finally:
        cl.close()
        assert not [p.name for p in cl.group.procs if p.alive()], "a child outlived close()"


def test_poison_key_touches_at_most_max_replicas_pods_and_is_quarantined(pcluster: PairCluster) -> None:
    cl = pcluster
    poison_body, poison_headers = chat("evil", f"please {MARKER} now", session="victim")
    key = routed_key(poison_body, poison_headers)

    def paired() -> set[str] | None:
        s = cl.subset(key)
        return s if len(s) == 2 and cl.subset(key, 1) == s else None

    subset: set[str] = wait_until(paired, 30, "both routers to see the key's two replicas")
    bystander = next(iter(set(cl.runtimes) - subset))
    # an innocent session on the poison's subset, streaming when the poison crashes its pod
    sessions = (chat("evil", "a long answer please", 4000, session=f"innocent-{i}") for i in range(200))
    inn_body, inn_headers = next((b, h) for b, h in sessions if cl.subset(routed_key(b, h)) == subset)
    inn_key = routed_key(inn_body, inn_headers)
    assert inn_key != key
    req = urllib.request.Request(
        cl.http(0) + "/v1/chat/completions",
        data=json.dumps({**inn_body, "stream": True, "ignore_eos": True}).encode(),
        headers={"content-type": "application/json", **inn_headers},
    )
    stream = urllib.request.urlopen(req, timeout=60)
    assert stream.status == 200 and stream.readline().startswith(b"data: {"), "the innocent stream started"

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as bg:
        others = bg.submit(
            send_at_rate, [cl.http(0), cl.http(1)], lambda i: chat("good", f"fine {i}", session=f"g{i}"), 8, 6.0
        )
        wait_until(lambda: others.running(), 5, "the other tenant's load to start")
        status, _, raw = post(cl.http(0) + "/v1/chat/completions", poison_body, poison_headers)
        assert status == 503, (status, raw[:300])
        err = json.loads(raw)["error"]
        assert err["code"] == "key_quarantined", err
        # the other router refuses it too, from the shared record (it polls the assigner), never trying a pod
        wait_until(
            lambda: post(cl.http(1) + "/v1/chat/completions", poison_body, poison_headers)[0] == 503,
            10,
            "router1 to refuse the quarantined key",
        )
        good = others.result()
    with stream:
        try:
            rest = stream.read()  # the stream breaks with its pod (its tokens are never retried elsewhere)
        except http.client.IncompleteRead as e:
            rest = e.partial
    assert b"data: [DONE]" not in rest, "the innocent stream outlived its crashed pod"

    crashed = {pid for pid, p in cl.runtimes.items() if not p.alive()}
    failed = [(r.status, r.body[:200]) for r in good if r.status != 200]
    print(f"KEY-OF-DEATH subset={sorted(subset)} crashed={sorted(crashed)} bystander_alive={cl.runtimes[bystander].alive()} "
          f"other_tenant_sent={len(good)} other_tenant_failed={len(failed)}")  # fmt: skip
    assert crashed == subset, "the poison key reached its 2 subset pods (max_replicas) and no other"
    assert cl.runtimes[bystander].alive()
    assert not failed, failed

    with grpc.insecure_channel(cl.assigner_addr) as ch:
        stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
        q = stub.ListQuarantines(assigner_pb2.ListQuarantinesRequest(target=TARGET), timeout=5)
        rec = next(r for r in q.keys if r.slice_key == key)
        assert rec.state == "quarantined" and set(rec.pods) == subset

        def innocent_suspected() -> bool:
            q = stub.ListQuarantines(assigner_pb2.ListQuarantinesRequest(target=TARGET, suspected=True), timeout=5)
            return any(r.slice_key == inn_key and r.state == "suspected" for r in q.keys)

        wait_until(innocent_suspected, 10, "the innocent session's key suspected (its stream broke with the crash)")
    # its subset is down: it goes to the one pod beyond it that every router ranks first for it, not a 503
    for i in (0, 1):
        assert cl.subset(inn_key, i) == subset, "the crashed pods' leases have not expired"
        status, headers, raw = post(cl.http(i) + "/v1/chat/completions", {**inn_body, "max_tokens": 4}, inn_headers)
        assert status == 200 and headers.get("x-brunoise-pod") == bystander, (status, raw[:300])

    # a router started now knows the quarantine before it serves (it lives with the assignment, in the store)
    r = cl.add_router(cl.router_args, wait=False)
    r.wait_ready(60)
    assert metric_value(scrape(r.addresses["http"]), "brunoise_router_quarantined_keys") == 1

    # visible and clearable from the CLI
    cli = [sys.executable, "-m", "brunoise.cli.main"]
    env = {k: v for k, v in os.environ.items() if k not in ("BRUNOISE_TOKEN", "BRUNOISE_TLS_CA")}
    env["BRUNOISE_STATE_DIR"] = str(cl.log_dir / "cli-state")  # never another `cluster up`'s credentials
    listed = subprocess.run([*cli, "quarantine", "list", "-a", cl.assigner_addr, "-o", "json"], capture_output=True,
                            text=True, timeout=60, check=True, env=env)  # fmt: skip
    keys = json.loads(listed.stdout)["keys"]
    assert [(k["slice_key"], k["state"], sorted(k["pods"])) for k in keys] == [
        (f"{key:016x}", "quarantined", sorted(subset))
    ]
    cleared = subprocess.run([*cli, "quarantine", "clear", TARGET, f"{key:016x}", "-a", cl.assigner_addr, "-o", "json"],
                             capture_output=True, text=True, timeout=60, check=True, env=env)  # fmt: skip
    assert json.loads(cleared.stdout) == {"cleared": 1}
    wait_until(
        lambda: metric_value(scrape(cl.http(1)), "brunoise_router_quarantined_keys") == 0, 10, "routers to drop it"
    )
