"""Routers under fault: kill -9, SIGSTOP, and a restart with cold pod views, while clients send a steady load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.chaos.conftest import ChaosCluster, Scenario

pytestmark = pytest.mark.slow

#: Longest time without any successful response the clients may see while one of two routers is down.
MAX_GAP_S = 2.0


async def test_router_kill9_clients_fail_over(
    make_cluster: Callable[..., ChaosCluster], scenario: Callable[..., Scenario]
) -> None:
    cl = make_cluster()
    sc = await scenario(cl, "router-kill9").begin()
    victim = cl.routers[0].addresses["http"]
    await asyncio.sleep(1.0)
    t0 = sc.fault()
    cl.routers[0].kill9()
    await sc.load.run_for(3.0)
    failover = sc.load.first_failover_after(t0)
    ok_before = sc.load.ok_by_router.get(victim, 0)
    fig = await sc.finish(max_gap_s=MAX_GAP_S, failover_s=failover)
    assert failover is not None and failover < 1.5, "clients of the dead router did not fail over"
    assert sc.load.client_failovers >= 1
    assert fig.extra["ok_by_router"].get(victim, 0) == ok_before  # nothing more answered by the dead one


async def test_router_sigstop_clients_fail_over(
    make_cluster: Callable[..., ChaosCluster], scenario: Callable[..., Scenario]
) -> None:
    cl = make_cluster()
    sc = await scenario(cl, "router-sigstop", attempt_timeout_s=1.0).begin()
    stopped = cl.routers[0]
    await asyncio.sleep(1.0)
    t0 = sc.fault()
    cl.sigstop(stopped)
    await sc.load.run_for(3.0)
    cl.sigcont(stopped)
    resumed_at = time.monotonic()
    before = sc.load.ok_by_router.get(stopped.addresses["http"], 0)
    await sc.load.run_for(3.0)  # clients come back to it once their "bad" mark expires
    after = sc.load.ok_by_router.get(stopped.addresses["http"], 0)
    failover = sc.load.first_failover_after(t0)
    await sc.finish(max_gap_s=MAX_GAP_S, failover_s=failover, resumed_after_s=round(resumed_at - t0, 3))
    assert failover is not None and failover < 2.5, "clients of the stopped router did not fail over"
    assert after > before, "the continued router took no traffic again"


async def test_restarted_router_under_load(
    make_cluster: Callable[..., ChaosCluster], scenario: Callable[..., Scenario]
) -> None:
    cl = make_cluster()
    sc = await scenario(cl, "router-restart").begin()
    url = cl.routers[0].addresses["http"]
    await asyncio.sleep(1.0)
    t0 = sc.fault()
    cl.routers[0].kill9()
    restarted = await asyncio.to_thread(cl.restart_router, 0)
    ready_at = time.monotonic()
    before = sc.load.ok_by_router.get(url, 0)
    # a cold router: no load reports, no cache view, health unknown; it must still serve without losing requests
    await sc.load.run_for(4.0)
    served = sc.load.ok_by_router.get(url, 0) - before
    await sc.finish(
        max_gap_s=MAX_GAP_S, failover_s=sc.load.first_failover_after(t0), restart_s=round(ready_at - t0, 3),
        served_after_restart=served,
    )  # fmt: skip
    assert restarted.alive()
    assert served >= 10, f"the restarted router served only {served} requests"
