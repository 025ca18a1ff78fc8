"""Fencing a deposed leader (issue 10 finding 8): etcd writes carry the leader key's identity, and the
embedded store's snapshot file is locked so two assigners cannot lead on it."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from sharder.etcd_server import EtcdCluster
from sharder.store.base import LeaderInfo, StoreError, Versioned
from sharder.store.embedded import EmbeddedStore
from sharder.store.etcd import EtcdStore

A = LeaderInfo("a", "127.0.0.1:1")
B = LeaderInfo("b", "127.0.0.1:2")


@pytest.mark.etcd
async def test_etcd_write_of_a_deposed_leader_is_refused(make_etcd_cluster: Callable[..., EtcdCluster]) -> None:
    cluster = make_etcd_cluster(size=1)
    a = EtcdStore(list(cluster.endpoints), prefix="/fence")
    b = EtcdStore(list(cluster.endpoints), prefix="/fence")
    await a.start()
    await b.start()
    try:
        assert await a.campaign(A, ttl_s=30)
        assert await a.compare_and_swap("t", 0, Versioned("t", 1, b"from-a-1"))
        # a's lease ends (expiry while a was paused, or revoked) and b is elected; a has not noticed yet
        a_lease = a._leader_lease
        assert a_lease is not None
        await b.client.revoke_lease(a_lease)
        assert await b.campaign(B, ttl_s=30)
        assert a.is_leader(), "a's own view still says leader (its keepalive has not run): the dangerous window"
        wrote = await a.compare_and_swap("t", 1, Versioned("t", 2, b"from-deposed-a"))
        assert not wrote
        cur = await b.get("t")
        assert cur is not None and cur.generation == 1 and cur.data == b"from-a-1"
        assert not a.is_leader(), "a refused (fenced) write tells a it is no longer leader"
        assert await b.compare_and_swap("t", 1, Versioned("t", 2, b"from-b-2"))
    finally:
        await a.close()
        await b.close()


async def test_embedded_snapshot_file_is_locked_by_one_store(tmp_path: pathlib.Path) -> None:
    snap = tmp_path / "store.json"
    first = EmbeddedStore(str(snap))
    await first.start()
    second = EmbeddedStore(str(snap))
    with pytest.raises(StoreError, match="locked"):
        await second.start()
    await first.close()
    third = EmbeddedStore(str(snap))  # released on close
    await third.start()
    await third.close()
