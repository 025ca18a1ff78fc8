"""``brunoise-router --workers N``: N processes on one port (SO_REUSEPORT), each with its own clerk, that agree
on picks; stopping the router stops every worker."""

from __future__ import annotations

import os
import pathlib
import signal
import uuid
from collections.abc import Iterator

import pytest

from tests.router.conftest import MODEL, ROUTER_ARGS, Cluster, post
from tests.runtime.procs import alive


def children(pid: int) -> list[int]:
    text = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cl = Cluster(tmp_path_factory.mktemp("router-workers"), n_routers=1, router_args=(*ROUTER_ARGS, "--workers", "2"))
    try:
        cl.start()
        yield cl
    finally:
        cl.close()


def test_workers_share_the_port_and_agree_on_picks(workers: Cluster) -> None:
    sup = workers.routers[0]
    assert sup.addresses["workers"] == "2"
    procs = children(sup.pid)
    assert len(procs) == 2 and all(alive(p) for p in procs), procs
    url = workers.http(0)
    # every request on a new connection (urllib), so the kernel spreads them over both workers
    served: dict[str, set[str]] = {}
    for i in range(20):
        sid = f"w-{uuid.uuid4().hex[:8]}"
        body = {"model": MODEL, "prompt": f"fresh prompt {sid} {i} " * 8, "max_tokens": 2}
        for _ in range(3):
            status, headers, _ = post(url + "/v1/completions", body, {"x-session-id": sid})
            assert status == 200
            served.setdefault(sid, set()).add(headers["x-brunoise-pod"])
    split = [sid for sid, pods in served.items() if len(pods) > 1]
    assert len(split) <= 2, f"sessions whose requests the workers sent to different pods: {split}"


def test_sigterm_to_the_router_drains_and_stops_every_worker(workers: Cluster) -> None:
    sup = workers.routers[0]
    procs = children(sup.pid)
    assert sup.proc is not None
    os.kill(sup.pid, signal.SIGTERM)  # the supervisor alone: it passes the signal on to its workers
    assert sup.proc.wait(timeout=60) == 0
    assert not any(alive(p) for p in procs), procs
