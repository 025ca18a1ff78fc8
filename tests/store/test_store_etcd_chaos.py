"""The etcd store against a real 3-member cluster that loses members: kill -9 one, stop all, start again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from sharder.etcd_server import EtcdCluster
from sharder.store.base import LeaderInfo, StoreUnavailable, Versioned
from sharder.store.etcd import EtcdStore
from tests.waiting import until

pytestmark = pytest.mark.etcd

DEADLINE_S = 3.0
REQUEST_TIMEOUT_S = 1.0


def v(gen: int, target: str = "t") -> Versioned:
    return Versioned(target, gen, f"gen-{gen}".encode())


@pytest.fixture
def cluster(make_etcd_cluster: Callable[..., EtcdCluster]) -> EtcdCluster:
    return make_etcd_cluster(3)


@pytest.fixture
async def store(cluster: EtcdCluster) -> AsyncIterator[EtcdStore]:
    s = EtcdStore(cluster.endpoints, prefix="/chaos", request_timeout_s=REQUEST_TIMEOUT_S, deadline_s=DEADLINE_S)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def test_kill_one_member_operations_continue(cluster: EtcdCluster, store: EtcdStore) -> None:
    assert await store.compare_and_swap("t", 0, v(1))
    await store.put_meta("k", b"v")
    got: list[Versioned] = []

    async def watch() -> None:
        async for x in store.watch("t"):
            got.append(x)
            if x.generation == 12:
                return

    watcher = asyncio.create_task(watch())
    await until(lambda: _true(len(got) == 1), 10, "watch started")
    # kill the raft leader: the hardest member to lose
    leader = cluster.leader_index()
    assert leader is not None
    cluster.kill_member(leader)
    t0 = time.monotonic()
    assert await store.compare_and_swap("t", 1, v(2)), "CAS after losing the leader member"
    first_write_s = time.monotonic() - t0
    for g in range(3, 11):
        assert await store.compare_and_swap("t", g - 1, v(g))
    assert await store.get("t") == v(10)
    assert await store.get_meta("k") == b"v"
    await store.put_pod("p", b"x", ttl_s=5)
    assert await store.list_pods() == {"p": b"x"}
    assert await store.ping()
    # kill one more of the survivors' kind? no: restart the dead one and keep writing
    cluster.start_member(leader)
    assert await store.compare_and_swap("t", 10, v(11))
    assert await store.compare_and_swap("t", 11, v(12))
    await asyncio.wait_for(watcher, 15)
    assert [x.generation for x in got] == list(range(1, 13)), "the watch kept every generation in order"
    print(f"first CAS after kill -9 of the etcd leader: {first_write_s:.2f}s")


async def _true(x: bool) -> bool:
    return x


async def test_stop_all_members_unavailable_then_recovers(cluster: EtcdCluster, store: EtcdStore) -> None:
    for g in range(1, 4):
        assert await store.compare_and_swap("t", g - 1, v(g))
    await store.put_meta("drain/p1", b"1")
    assert await store.campaign(LeaderInfo("a", "127.0.0.1:9"), ttl_s=2)
    got: list[Versioned] = []

    async def watch() -> None:
        async for x in store.watch("t"):
            got.append(x)
            if x.generation == 4:
                return

    watcher = asyncio.create_task(watch())
    await until(lambda: _true(len(got) == 1), 10, "watch started")

    cluster.stop_all()
    t_stop = time.monotonic()

    async def not_leader() -> bool:
        return not store.is_leader()

    await until(not_leader, 2 + 1, "leadership dropped while the store is down")
    lost_s = time.monotonic() - t_stop
    t0 = time.monotonic()
    assert not await store.ping()
    ping_s = time.monotonic() - t0
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get("t")
    get_s = time.monotonic() - t0
    assert get_s <= DEADLINE_S + REQUEST_TIMEOUT_S + 0.5
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.compare_and_swap("t", 3, v(4))
    cas_s = time.monotonic() - t0
    assert cas_s <= DEADLINE_S + REQUEST_TIMEOUT_S + 0.5

    cluster.start_all()
    t0 = time.monotonic()
    await until(store.ping, 15, "ping after restart")
    recover_s = time.monotonic() - t0
    assert await store.get("t") == v(3), "data intact after a full restart"
    assert await store.get_meta("drain/p1") == b"1"
    assert [h.generation for h in await store.history("t")] == [3, 2, 1]
    assert await store.compare_and_swap("t", 3, v(4))
    await asyncio.wait_for(watcher, 15)
    assert [x.generation for x in got] == [3, 4], "the watch resumed after the outage"
    # leadership can be won again (the old lease expired or was kept across the restart and is ours)
    other = EtcdStore(cluster.endpoints, prefix="/chaos", request_timeout_s=REQUEST_TIMEOUT_S, deadline_s=DEADLINE_S)
    await other.start()
    try:

        async def someone_leads() -> bool:
            return await other.campaign(LeaderInfo("b", "127.0.0.1:8"), ttl_s=2)

        await until(someone_leads, 10, "a new leader after the restart")
    finally:
        await other.close()
    print(
        f"all members stopped: ping False in {ping_s:.2f}s, get raised in {get_s:.2f}s, CAS raised in {cas_s:.2f}s, "
        f"is_leader False {lost_s:.2f}s after the stop; ping True {recover_s:.2f}s after start_all"
    )
