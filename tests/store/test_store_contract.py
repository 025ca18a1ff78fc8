"""The store contract, run against every backend: CAS, history, watch, pod leases, meta, leader election."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest

from sharder.store.base import LeaderInfo, Store, Versioned
from tests.store.store_helpers import HISTORY_LIMIT, Backend
from tests.waiting import until


def v(target: str, gen: int) -> Versioned:
    return Versioned(target, gen, f"{target}@{gen}".encode())


async def write_gens(store: Store, target: str, first: int, last: int) -> None:
    for g in range(first, last + 1):
        assert await store.compare_and_swap(target, g - 1, v(target, g)), f"CAS to {g} failed"


# assignments ---------------------------------------------------------------------------------


async def test_cas_succeeds_and_conflicts(backend: Backend) -> None:
    s = backend.store
    assert await s.get("t") is None
    assert await s.compare_and_swap("t", 0, v("t", 1))
    assert not await s.compare_and_swap("t", 0, v("t", 2)), "prev 0 means 'none yet'"
    assert await s.compare_and_swap("t", 1, v("t", 2))
    assert not await s.compare_and_swap("t", 1, v("t", 3)), "stale prev_generation must conflict"
    assert await s.get("t") == v("t", 2)
    # a second client sees the same and conflicts the same way
    other = await backend.another()
    assert await other.get("t") == v("t", 2)
    assert await other.compare_and_swap("t", 2, v("t", 7))
    assert not await s.compare_and_swap("t", 2, v("t", 3))
    assert await s.get("t") == v("t", 7)
    assert await s.compare_and_swap("t", 7, v("t", 8))


async def test_generation_must_increase(backend: Backend) -> None:
    s = backend.store
    assert await s.compare_and_swap("t", 0, v("t", 5))
    assert not await s.compare_and_swap("t", 5, v("t", 5))
    assert not await s.compare_and_swap("t", 5, v("t", 4))
    assert await s.get("t") == v("t", 5)
    with pytest.raises(ValueError):
        await s.compare_and_swap("t", 5, v("other", 6))


async def test_history_is_bounded_and_newest_first(backend: Backend) -> None:
    s = backend.store
    await write_gens(s, "t", 1, HISTORY_LIMIT + 3)
    hist = await s.history("t")
    assert [h.generation for h in hist] == list(range(HISTORY_LIMIT + 3, 3, -1))
    assert hist[0] == v("t", HISTORY_LIMIT + 3)
    assert [h.generation for h in await s.history("t", limit=2)] == [HISTORY_LIMIT + 3, HISTORY_LIMIT + 2]
    assert await s.history("nothing") == []


async def test_targets_are_independent(backend: Backend) -> None:
    s = backend.store
    assert await s.list_targets() == []
    assert await s.compare_and_swap("b/with slash", 0, v("b/with slash", 3))
    assert await s.compare_and_swap("a", 0, v("a", 1))
    assert await s.list_targets() == ["a", "b/with slash"]
    assert await s.get("b") is None
    assert [h.generation for h in await s.history("b/with slash")] == [3]


# watch ---------------------------------------------------------------------------------------


async def collect(it: object, n: int, out: list[Versioned]) -> None:
    async for item in it:  # type: ignore[attr-defined]
        out.append(item)
        if len(out) >= n:
            return


async def test_watch_delivers_every_generation_in_order(backend: Backend) -> None:
    s = backend.store
    await write_gens(s, "t", 1, 1)
    got: list[Versioned] = []
    task = asyncio.create_task(collect(s.watch("t"), 12, got))
    await until(lambda: _true(len(got) >= 1), 10, "current generation delivered first")
    assert got == [v("t", 1)]
    writer = await backend.another()
    await write_gens(writer, "t", 2, 12)  # within the watch buffer: none skipped
    await asyncio.wait_for(task, 10)
    assert [x.generation for x in got] == list(range(1, 13))
    assert got[-1] == v("t", 12)


async def test_assignments_past_the_etcd_request_limit(backend: Backend) -> None:
    """A fleet-size assignment (megabytes: etcd takes at most 1.5 MiB per request by default) is written, read,
    watched and kept in history like a small one: incompressible and compressible alike."""
    s = backend.store
    rng = random.Random(15)
    big = [
        Versioned("t", g, rng.randbytes(3 << 20) if g % 2 else b"slice-%08d;" * (300_000 + g))
        for g in range(1, HISTORY_LIMIT + 4)
    ]
    got: list[Versioned] = []
    task = asyncio.create_task(collect(s.watch("t"), len(big), got))
    assert await s.compare_and_swap("t", 0, big[0])
    await until(lambda: _true(len(got) >= 1), 10, "the first big generation watched")
    writer = await backend.another()
    for prev, new in itertools.pairwise(big):
        assert await writer.compare_and_swap("t", prev.generation, new), f"CAS of {len(new.data)} bytes"
    await asyncio.wait_for(task, 30)
    assert got == big
    assert await s.get("t") == big[-1]
    assert await s.history("t") == big[::-1][:HISTORY_LIMIT]
    assert not await s.compare_and_swap("t", big[-2].generation, Versioned("t", 99, b"x")), "a stale CAS conflicts"


async def _true(x: bool) -> bool:
    return x


async def test_watch_starts_after_from_generation(backend: Backend) -> None:
    s = backend.store
    await write_gens(s, "t", 1, 3)
    # from an older generation: the current one comes first
    it = s.watch("t", from_generation=1)
    assert (await asyncio.wait_for(it.__anext__(), 10)) == v("t", 3)
    await it.aclose()  # type: ignore[attr-defined]
    # from the current generation: nothing until a newer one is written
    got: list[Versioned] = []
    task = asyncio.create_task(collect(s.watch("t", from_generation=3), 2, got))
    await write_gens(s, "t", 4, 4)
    # 4 arrives either as the current generation or as a change, depending on when the watch got going
    await until(lambda: _true(len(got) == 1), 10, "generation 4")
    await write_gens(s, "t", 5, 5)
    await asyncio.wait_for(task, 10)
    assert [x.generation for x in got] == [4, 5]


async def test_watch_every_target(backend: Backend) -> None:
    s = backend.store
    await write_gens(s, "a", 1, 2)
    await write_gens(s, "b", 1, 1)
    got: list[Versioned] = []
    task = asyncio.create_task(collect(s.watch(None), 6, got))
    await until(lambda: _true(len(got) >= 2), 10, "current generations delivered")
    assert {(x.target, x.generation) for x in got} == {("a", 2), ("b", 1)}
    await write_gens(s, "b", 2, 3)
    await write_gens(s, "c", 1, 1)
    await write_gens(s, "a", 3, 3)
    await asyncio.wait_for(task, 10)
    per_target: dict[str, list[int]] = {}
    for x in got:
        per_target.setdefault(x.target, []).append(x.generation)
    assert per_target == {"a": [2, 3], "b": [1, 2, 3], "c": [1]}


async def test_slow_watcher_does_not_block_writers(backend: Backend) -> None:
    s = backend.store
    await write_gens(s, "t", 1, 1)
    it = s.watch("t")
    assert (await asyncio.wait_for(it.__anext__(), 10)).generation == 1
    n = 100
    t0 = time.monotonic()
    await asyncio.wait_for(write_gens(s, "t", 2, n), 30)  # nobody reads the watch meanwhile
    write_s = time.monotonic() - t0
    seen = [1]
    while seen[-1] < n:
        seen.append((await asyncio.wait_for(it.__anext__(), 10)).generation)
    await it.aclose()  # type: ignore[attr-defined]
    assert seen == sorted(set(seen)), f"generations went backwards or repeated: {seen}"
    assert seen[-1] == n
    print(f"{backend.kind}: {n - 1} CAS writes with a stalled watcher in {write_s:.2f}s; watcher saw {len(seen)}")


async def test_watch_ends_when_store_closes(backend: Backend) -> None:
    s = await backend.another()
    await write_gens(s, "t", 1, 1)
    got: list[Versioned] = []
    task = asyncio.create_task(collect(s.watch("t"), 99, got))
    await until(lambda: _true(len(got) == 1), 10, "first generation")
    await s.close()
    await asyncio.wait_for(task, 10)


# pods ----------------------------------------------------------------------------------------


async def test_pod_lease_expires_without_refresh(backend: Backend) -> None:
    s = backend.store
    await s.put_pod("short", b"s", ttl_s=1)
    await s.put_pod("long", b"l", ttl_s=60)
    assert await s.list_pods() == {"short": b"s", "long": b"l"}
    backend.let_time_pass(1.5)

    async def short_gone() -> bool:
        return "short" not in await s.list_pods()

    t0 = time.monotonic()
    await until(short_gone, 8, "pod lease expiry", interval_s=0.02)
    took = time.monotonic() - t0
    assert await s.list_pods() == {"long": b"l"}
    print(f"{backend.kind}: 1 s pod lease gone {took:.2f}s after the check started")


async def test_pod_refresh_keeps_it_and_updates_data(backend: Backend) -> None:
    s = backend.store
    await s.put_pod("p", b"v1", ttl_s=2)
    # refresh every half ttl for twice the ttl: the pod must stay (on etcd real time has to pass for this)
    for _ in range(4):
        backend.let_time_pass(1.0)
        if backend.kind == "etcd":
            await asyncio.sleep(0.75)  # the passage of time under test, not a synchronisation
        await s.put_pod("p", b"v2", ttl_s=2)
        assert await s.list_pods() == {"p": b"v2"}
    await s.delete_pod("p")
    assert await s.list_pods() == {}
    await s.delete_pod("never-there")


# meta ----------------------------------------------------------------------------------------


async def test_meta_kv(backend: Backend) -> None:
    s = backend.store
    assert await s.get_meta("drain/p1") is None
    await s.put_meta("drain/p1", b"1")
    await s.put_meta("drain/p2", b"2")
    await s.put_meta("config/t", b"c")
    assert await s.get_meta("drain/p1") == b"1"
    assert await s.list_meta("drain/") == {"drain/p1": b"1", "drain/p2": b"2"}
    assert await s.list_meta("") == {"config/t": b"c", "drain/p1": b"1", "drain/p2": b"2"}
    await s.put_meta("drain/p1", b"updated")
    await s.delete_meta("drain/p2")
    await s.delete_meta("drain/absent")
    assert await s.list_meta("drain/") == {"drain/p1": b"updated"}
    other = await backend.another()
    assert await other.get_meta("config/t") == b"c"


async def test_meta_compare_and_swap(backend: Backend) -> None:
    s, other = backend.store, await backend.another()
    assert await s.cas_meta("quota/ledger/t", None, b"v1"), "None: create only when absent"
    assert not await other.cas_meta("quota/ledger/t", None, b"x"), "present: a create must conflict"
    assert not await other.cas_meta("quota/ledger/t", b"stale", b"x")
    assert await other.cas_meta("quota/ledger/t", b"v1", b"v2")
    assert not await s.cas_meta("quota/ledger/t", b"v1", b"v3"), "a CAS on a value replaced meanwhile conflicts"
    assert await s.get_meta("quota/ledger/t") == b"v2"
    # concurrent increments through CAS lose no update
    await s.put_meta("n", b"0")

    async def bump(st: Store) -> None:
        while True:
            cur = await st.get_meta("n")
            assert cur is not None
            if await st.cas_meta("n", cur, str(int(cur) + 1).encode()):
                return

    await asyncio.gather(*(bump(st) for st in (s, other) for _ in range(10)))
    assert await s.get_meta("n") == b"20"


# leader election -----------------------------------------------------------------------------

A = LeaderInfo("a", "127.0.0.1:1")
B = LeaderInfo("b", "127.0.0.1:2")


async def test_leader_is_exclusive_and_resign_hands_over(backend: Backend) -> None:
    a, b = backend.store, await backend.another()
    assert await a.leader() is None
    assert await a.campaign(A, ttl_s=5)
    assert not await b.campaign(B, ttl_s=5)
    assert a.is_leader() and not b.is_leader()
    assert await a.campaign(A, ttl_s=5), "campaigning again while leader stays leader"
    assert await b.leader() == A
    await a.resign()
    assert not a.is_leader()
    assert await b.campaign(B, ttl_s=5)
    assert b.is_leader() and not a.is_leader()
    assert await a.leader() == B
    assert not await a.campaign(A, ttl_s=5)


async def test_leader_close_hands_over(backend: Backend) -> None:
    a, b = await backend.another(), await backend.another()
    assert await a.campaign(A, ttl_s=5)
    await a.close()
    assert await b.campaign(B, ttl_s=5)
    assert await b.leader() == B


async def test_leader_crash_fails_over_within_ttl(backend: Backend) -> None:
    a, b = backend.store, await backend.another()
    ttl = 2.0
    assert await a.campaign(A, ttl_s=ttl)
    assert not await b.campaign(B, ttl_s=ttl)
    crash = getattr(a, "simulate_crash")  # noqa: B009 - test hook of both backends, not in the interface
    crash()
    t0 = time.monotonic()
    backend.let_time_pass(ttl + 0.1)

    async def b_wins() -> bool:
        return await b.campaign(B, ttl_s=ttl)

    await until(b_wins, ttl + 4, "the other candidate wins")
    failover_s = time.monotonic() - t0
    assert b.is_leader()
    assert not a.is_leader()
    assert await a.leader() == B
    print(f"{backend.kind}: leader failover after a crash (ttl {ttl}s) took {failover_s:.2f}s")
    assert failover_s <= ttl + 2.0
