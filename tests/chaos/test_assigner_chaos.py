"""The leader assigner under fault (kill -9; SIGSTOP longer than its lease) on a real 3-member etcd, under load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from sharder.etcd_server import EtcdCluster
from tests.chaos.conftest import LEASE_S, ChaosCluster, Scenario
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

#: Routers keep routing on their last assignment while no assigner leads: the load must not notice.
MAX_GAP_S = 1.5
#: A new leader within this long after the old one died or froze (one lease TTL plus campaign polling).
MAX_FAILOVER_S = 3 * LEASE_S


def _new_leader(cl: ChaosCluster, old: int, timeout_s: float) -> int:
    """Poll until the live assigners agree on a leader other than ``old``."""

    def other() -> int | None:
        i = cl.leader_index(timeout_s=1.0)
        return i + 1 if i != old else None

    got: int = wait_until(other, timeout_s, f"a leader other than assigner{old}", interval_s=0.05)
    return got - 1


async def test_leader_assigner_kill9(
    make_cluster: Callable[..., ChaosCluster],
    scenario: Callable[..., Scenario],
    etcd_cluster: EtcdCluster,
    etcd_prefix: str,
) -> None:
    cl = make_cluster(etcd=etcd_cluster, prefix=etcd_prefix, n_assigners=2)
    sc = await scenario(cl, "assigner-leader-kill9").begin()
    old = await asyncio.to_thread(cl.leader_index)
    await asyncio.sleep(0.5)
    t0 = sc.fault()
    cl.assigners[old].kill9()
    new = await asyncio.to_thread(_new_leader, cl, old, 15)
    failover = time.monotonic() - t0
    await sc.load.run_for(1.0)
    # the dead one comes back on its address as a follower; nobody's generation moves backwards
    await asyncio.to_thread(cl.restart_assigner, old)
    await sc.load.run_for(1.0)
    assert await asyncio.to_thread(cl.leader_index) == new, "the restarted assigner took the lead back"
    await sc.finish(max_gap_s=MAX_GAP_S, failover_s=failover, old_leader=old, new_leader=new)
    assert failover < MAX_FAILOVER_S


async def test_leader_assigner_sigstop_beyond_lease(
    make_cluster: Callable[..., ChaosCluster],
    scenario: Callable[..., Scenario],
    etcd_cluster: EtcdCluster,
    etcd_prefix: str,
) -> None:
    cl = make_cluster(etcd=etcd_cluster, prefix=etcd_prefix, n_assigners=2)
    sc = await scenario(cl, "assigner-leader-sigstop").begin()
    old = await asyncio.to_thread(cl.leader_index)
    frozen = cl.assigners[old]
    await asyncio.sleep(0.5)
    t0 = sc.fault()
    cl.sigstop(frozen)
    try:
        new = await asyncio.to_thread(_new_leader, cl, old, 15)
        failover = time.monotonic() - t0
        # a generation committed by the new leader while the old one is frozen: the old one must not undo it
        gen_while_frozen = await asyncio.to_thread(cl.bump_generation)
        await asyncio.sleep(max(0.0, 2 * LEASE_S - (time.monotonic() - t0)))
    finally:
        cl.sigcont(frozen)
    stopped_s = time.monotonic() - t0
    # the old leader wakes up past its lease: it must step down, not write on its stale view
    assert await asyncio.to_thread(cl.leader_index) == new
    await sc.load.run_for(1.5)
    assert await asyncio.to_thread(cl.leader_index) == new
    assert await asyncio.to_thread(cl.stored_generation) >= gen_while_frozen
    await sc.finish(max_gap_s=MAX_GAP_S, failover_s=failover, stopped_s=round(stopped_s, 3), lease_s=LEASE_S)
    assert failover < MAX_FAILOVER_S

