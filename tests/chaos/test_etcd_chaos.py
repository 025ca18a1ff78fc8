"""etcd under fault while clients send a steady load: kill -9 of a member, and a compaction during a Watch."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from sharder.etcd_server import EtcdCluster
from tests.chaos.conftest import ChaosCluster, Scenario
from tests.chaos.watch import Watcher

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

MAX_GAP_S = 1.5
#: A commit goes through again within this long after the raft leader member died (election ~0.5 s + retries).
MAX_COMMIT_AFTER_LOSS_S = 5.0
#: A follower assigner that resumes behind a compaction resyncs its clerks within this long.
MAX_RESYNC_S = 5.0


def _etcd_post(cluster: EtcdCluster, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to etcd's JSON gateway on the first live member."""
    for m in cluster.members:
        if not m.alive():
            continue
        req = urllib.request.Request(m.client_url + path, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                out: dict[str, Any] = json.loads(r.read())
                return out
        except urllib.error.HTTPError as e:
            return {"http_error": e.code, "body": e.read().decode(errors="replace")}
    raise AssertionError("no live etcd member")


def _revision(cluster: EtcdCluster) -> int:
    return int(_etcd_post(cluster, "/v3/maintenance/status", {})["header"]["revision"])


async def test_etcd_member_kill9(
    make_cluster: Callable[..., ChaosCluster],
    scenario: Callable[..., Scenario],
    make_etcd_cluster: Callable[..., EtcdCluster],
) -> None:
    etcd = make_etcd_cluster(3)
    cl = make_cluster(etcd=etcd, n_assigners=2)
    sc = await scenario(cl, "etcd-member-kill9").begin()
    victim = await asyncio.to_thread(etcd.leader_index)
    assert victim is not None
    await asyncio.sleep(0.5)
    t0 = sc.fault()
    etcd.kill_member(victim)  # the raft leader: the hardest member to lose
    gen = await asyncio.to_thread(cl.bump_generation)
    commit_s = time.monotonic() - t0
    await sc.load.run_for(1.0)
    await asyncio.to_thread(etcd.start_member, victim)
    await sc.load.run_for(1.0)
    await sc.finish(max_gap_s=MAX_GAP_S, failover_s=commit_s, killed_member=victim, generation_after_loss=gen)
    assert commit_s < MAX_COMMIT_AFTER_LOSS_S


async def test_etcd_compaction_during_watch(
    make_cluster: Callable[..., ChaosCluster],
    scenario: Callable[..., Scenario],
    make_etcd_cluster: Callable[..., EtcdCluster],
    watchers: list[Watcher],
) -> None:
    """A follower assigner frozen while etcd moves on, its etcd connections cut (each member restarted in turn) and
    the history compacted past where its watch stood: on waking it must resync from the current revision (its
    clerks then get the newest generation), not wait forever on a watch etcd cannot serve."""
    etcd = make_etcd_cluster(3)
    cl = make_cluster(etcd=etcd, n_assigners=2)
    sc = await scenario(cl, "etcd-compaction-during-watch").begin()
    leader = await asyncio.to_thread(cl.leader_index)
    follower = cl.assigners[1 - leader]
    # a clerk that can only learn from the follower
    fw = Watcher("follower-clerk", [follower.addresses["grpc"]])
    watchers.append(fw)
    await fw.start()
    before = fw.generation
    await asyncio.sleep(0.5)
    t0 = sc.fault()
    cl.sigstop(follower)
    try:
        rev_stopped = await asyncio.to_thread(_revision, etcd)
        for i in range(etcd.size):  # cut every connection the follower had (its watch stream is on one of them)
            etcd.kill_member(i)
            await asyncio.to_thread(etcd.start_member, i)
        for _ in range(3):
            gen = await asyncio.to_thread(cl.bump_generation)
        rev = await asyncio.to_thread(_revision, etcd)
        compacted = await asyncio.to_thread(_etcd_post, etcd, "/v3/kv/compaction", {"revision": rev, "physical": True})
        assert "http_error" not in compacted, compacted
        old = await asyncio.to_thread(_etcd_post, etcd, "/v3/kv/range", {"key": "Lw==", "revision": rev_stopped})
        assert "compacted" in json.dumps(old), f"history before {rev} should be gone: {old}"
    finally:
        cl.sigcont(follower)
    woke = time.monotonic()
    resync_s = await fw.wait_generation(gen, 20, routers=False)
    await sc.load.run_for(0.5)
    await sc.finish(
        max_gap_s=MAX_GAP_S, failover_s=resync_s, stopped_s=round(woke - t0, 3), revision_when_stopped=rev_stopped,
        compacted_at=rev, follower_generation_before=before, follower_generation_after=fw.generation,
    )  # fmt: skip
    assert rev > rev_stopped
    assert not fw.violations, fw.violations
    assert resync_s < MAX_RESYNC_S
