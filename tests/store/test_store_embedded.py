"""Embedded-store specifics: snapshot file across restarts, slow-watcher skipping, handles, the open_store factory."""

from __future__ import annotations

import asyncio
import json
import pathlib

import pytest

from sharder.store import open_store
from sharder.store.base import LeaderInfo, StoreError, Versioned
from sharder.store.embedded import EmbeddedStore
from sharder.store.etcd import EtcdStore, grpc_target
from tests.store.store_helpers import FakeClock


def v(gen: int, target: str = "t") -> Versioned:
    return Versioned(target, gen, bytes([gen % 256]) * 3)


async def test_snapshot_restart_keeps_generations_and_meta(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "store" / "snap.json")
    s = EmbeddedStore(snapshot_path=path, history_limit=3)
    await s.start()
    for g in range(1, 6):
        assert await s.compare_and_swap("t", g - 1, v(g))
    assert await s.compare_and_swap("u/x", 0, v(9, "u/x"))
    await s.put_meta("drain/p1", b"1")
    await s.put_pod("p", b"pod", ttl_s=30)
    await s.close()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["snap.json", "snap.json.lock"], "no temp file left"

    r = EmbeddedStore(snapshot_path=path, history_limit=3)
    await r.start()
    assert await r.get("t") == v(5)
    assert [h.generation for h in await r.history("t")] == [5, 4, 3]
    assert await r.list_targets() == ["t", "u/x"]
    assert await r.get_meta("drain/p1") == b"1"
    assert await r.list_pods() == {}, "pods are not persisted: they re-register"
    assert not await r.compare_and_swap("t", 0, v(1)), "a restart must not let generations start over"
    assert await r.compare_and_swap("t", 5, v(6))
    await r.delete_meta("drain/p1")
    await r.close()

    r2 = EmbeddedStore(snapshot_path=path, history_limit=3)
    await r2.start()
    assert (await r2.get("t")) == v(6)
    assert await r2.get_meta("drain/p1") is None
    await r2.close()


async def test_corrupt_snapshot_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "snap.json"
    path.write_text("{not json")
    with pytest.raises(StoreError, match=r"snap\.json"):
        await EmbeddedStore(snapshot_path=str(path)).start()
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(StoreError, match="version"):
        await EmbeddedStore(snapshot_path=str(path)).start()


async def test_failed_snapshot_write_leaves_state_unchanged(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "dir"
    s = EmbeddedStore(snapshot_path=str(d / "snap.json"))
    await s.start()
    assert await s.compare_and_swap("t", 0, v(1))
    d.rename(tmp_path / "moved")
    d.write_text("a file where the snapshot directory was")  # the next write fails, even as root
    with pytest.raises(StoreError, match="snapshot"):
        await s.compare_and_swap("t", 1, v(2))
    with pytest.raises(StoreError, match="snapshot"):
        await s.put_meta("k", b"v")
    assert await s.get("t") == v(1)
    assert await s.get_meta("k") is None
    d.unlink()
    (tmp_path / "moved").rename(d)
    assert await s.compare_and_swap("t", 1, v(2))
    await s.close()


async def test_slow_watcher_skips_ahead_never_backwards() -> None:
    s = EmbeddedStore(watch_buffer=4)
    await s.start()
    assert await s.compare_and_swap("t", 0, v(1))
    it = s.watch("t")
    seen = [(await it.__anext__()).generation]
    g = 1
    for burst in (3, 10, 1, 7, 30):  # some bursts fit the buffer, some overflow it
        for _ in range(burst):
            assert await s.compare_and_swap("t", g, v(g + 1))
            g += 1
        while seen[-1] < g:
            seen.append((await asyncio.wait_for(it.__anext__(), 5)).generation)
    await it.aclose()  # type: ignore[attr-defined]
    assert seen == sorted(set(seen))
    assert seen[-1] == g
    assert seen[:4] == [1, 2, 3, 4], "a burst that fits the buffer is delivered whole"
    assert len(seen) < g, "an overflowing burst was skipped"
    await s.close()


async def test_watch_of_a_closed_handle_ends_but_shared_store_lives() -> None:
    primary = EmbeddedStore()
    await primary.start()
    h = primary.handle()
    assert await primary.compare_and_swap("t", 0, v(1))
    it = h.watch("t")
    assert (await it.__anext__()).generation == 1
    nxt = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0)
    await h.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(nxt, 5)
    with pytest.raises(StoreError):
        await h.get("t")
    assert await primary.get("t") == v(1)
    assert await primary.ping() and not await h.ping()
    await primary.close()
    assert not await primary.ping()


async def test_leader_lease_follows_injected_clock() -> None:
    clock = FakeClock()
    primary = EmbeddedStore(clock=clock)
    await primary.start()
    a, b = primary.handle(), primary.handle()
    assert await a.campaign(LeaderInfo("a", "x"), ttl_s=10)
    clock.advance(9)
    assert a.is_leader()
    a.simulate_crash()
    clock.advance(1.01)
    assert not a.is_leader()
    assert await a.leader() is None
    assert await b.campaign(LeaderInfo("b", "y"), ttl_s=10)
    await a.close()
    assert b.is_leader(), "closing another handle leaves the leader alone"
    await primary.close()
    assert not b.is_leader(), "closing the store ends every handle's leadership"


async def test_bad_arguments() -> None:
    s = EmbeddedStore(clock=FakeClock())
    await s.start()
    with pytest.raises(ValueError):
        await s.put_pod("p", b"", ttl_s=0)
    with pytest.raises(ValueError):
        await s.campaign(LeaderInfo("a", "x"), ttl_s=-1)
    with pytest.raises(ValueError):
        EmbeddedStore(history_limit=0)
    await s.close()


def test_open_store_factory() -> None:
    assert isinstance(open_store("embedded", history_limit=3), EmbeddedStore)
    e = open_store("etcd", endpoints="127.0.0.1:1, 127.0.0.1:2", prefix="/p")
    assert isinstance(e, EtcdStore)
    assert e.target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError, match="endpoints"):
        open_store("etcd")
    with pytest.raises(ValueError, match="unknown store kind"):
        open_store("redis")


def test_grpc_target() -> None:
    assert grpc_target(["http://127.0.0.1:2379", "localhost:2380"]) == "ipv4:127.0.0.1:2379,127.0.0.1:2380"
    with pytest.raises(ValueError):
        grpc_target(["no-port"])
    with pytest.raises(ValueError):
        grpc_target([])
