"""Failover, admission and residency through real processes: health, spill-over, shedding, labels."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sharder.promtext import metric_value
from tests.router.conftest import MODEL, ROUTER_ARGS, Cluster, http_json, post, scrape
from tests.waiting import until, wait_until

pytestmark = pytest.mark.slow

HEALTH_INTERVAL_S = 0.5
HEALTH_TIMEOUT_S = 0.4


def keys_for(cluster: Cluster, pod: str, n: int, prefix: str = "k") -> list[str]:
    """Session keys whose subset is exactly {pod}."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        k = f"{prefix}-{uuid.uuid4().hex[:6]}-{i}"
        if cluster.subset(k) == {pod}:
            out.append(k)
        i += 1
        assert i < 2000
    return out


def served_by(
    cluster: Cluster, key: str, router: int = 0, headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    status, h, _ = post(
        cluster.http(router) + "/v1/completions",
        {"model": MODEL, "prompt": f"hello from {key}", "max_tokens": 2},
        {"x-session-id": key, **(headers or {})},
    )
    return status, h.get("x-brunoise-pod", ""), h.get("x-brunoise-pick", "")


def test_unhealthy_pod_stops_receiving_traffic_and_gets_it_back(cluster: Cluster) -> None:
    victim = "pod1"
    keys = keys_for(cluster, victim, 6, "health")
    before = [served_by(cluster, k) for k in keys]
    assert all(pod == victim for _, pod, _ in before), (before, cluster.pod_state(victim))
    cluster.stop_pod(victim)
    try:
        t0 = time.monotonic()
        wait_until(lambda: not cluster.pod_state(victim)["healthy"], 5, f"{victim} marked unhealthy")
        detect_s = time.monotonic() - t0
        print(f"unhealthy detected after {detect_s:.2f}s (interval {HEALTH_INTERVAL_S}s + timeout {HEALTH_TIMEOUT_S}s)")
        assert detect_s <= HEALTH_INTERVAL_S + HEALTH_TIMEOUT_S + 0.5
        for k in keys:
            status, pod, pick = served_by(cluster, k)
            assert status == 200 and pod != victim and pick == "fallback", (status, pod, pick)
    finally:
        cluster.cont_pod(victim)
    wait_until(lambda: cluster.pod_state(victim)["healthy"], 5, f"{victim} healthy again")
    assert all(served_by(cluster, k)[1] == victim for k in keys)


def test_residency_is_never_relaxed(cluster: Cluster) -> None:
    us = "pod2"  # the only pod labelled region=us
    keys = [f"resid-{i}" for i in range(12)]
    assert {cluster.subset(k).pop() for k in keys} != {us}  # most of these sessions live elsewhere
    for k in keys:
        status, pod, _ = served_by(cluster, k, headers={"x-brunoise-region": "us"})
        assert status == 200 and pod == us
    status, _, _ = served_by(cluster, "resid-x", headers={"x-brunoise-region": "ap"})
    assert status == 503
    cluster.stop_pod(us)
    try:
        wait_until(lambda: not cluster.pod_state(us)["healthy"], 5, f"{us} marked unhealthy")
        for k in keys[:4]:
            status, h, body = post(
                cluster.http(0) + "/v1/completions",
                {"model": MODEL, "prompt": "x", "max_tokens": 1},
                {"x-session-id": k, "x-brunoise-region": "us"},
            )
            assert status == 503 and "x-brunoise-pod" not in h, (status, h)
            assert json.loads(body)["error"]["type"] == "service_unavailable"
        # the same sessions without the label are fine elsewhere
        assert served_by(cluster, keys[0])[0] == 200
    finally:
        cluster.cont_pod(us)
    wait_until(lambda: cluster.pod_state(us)["healthy"], 5, f"{us} healthy again")


def idle(url: str) -> bool:
    states = http_json(url + "/debug/pods")["pods"]
    if any(p["outstanding"] for p in states):
        raise AssertionError(states)
    return True


def one_each(url: str) -> bool:
    states = http_json(url + "/debug/pods")["pods"]
    if any(p["outstanding"] != 1 for p in states):
        raise AssertionError(states)
    return True


@contextlib.asynccontextmanager
async def long_streams(
    session: aiohttp.ClientSession, url: str, keys: list[str], priority: str = "interactive"
) -> AsyncIterator[list[str]]:
    """Open one long streaming request per key; yield the pods serving them once each has its first token."""
    resps = []
    try:
        for k in keys:
            body = {
                "model": MODEL,
                "prompt": f"long stream {k}",
                "max_tokens": 3000,
                "stream": True,
                "ignore_eos": True,
            }
            r = await session.post(
                url + "/v1/completions", json=body, headers={"x-session-id": k, "x-priority": priority}
            )
            assert r.status == 200, await r.text()
            await r.content.readline()
            resps.append(r)
        yield [r.headers["x-brunoise-pod"] for r in resps]
    finally:
        for r in resps:
            r.close()


async def test_spill_over_then_batch_shed_first(cluster: Cluster) -> None:
    tight = cluster.add_router(
        [*ROUTER_ARGS, "--admit-max-outstanding", "2", "--batch-admit-fraction", "0.5", "--admit-ttft-slo-s", "100"]
    )
    url = tight.addresses["http"]
    pods = sorted(cluster.runtimes)
    keys = {p: keys_for(cluster, p, 3, f"sat-{p}") for p in pods}
    try:
        async with aiohttp.ClientSession() as s:
            # 1. saturate pod0's subset: two long streams; the third session turn spills outside the subset
            spill0 = metric_value(scrape(url), "brunoise_router_picks_total", {"reason": "spill"})
            async with long_streams(s, url, keys["pod0"][:2]) as got:
                assert got == ["pod0", "pod0"]
                status, h, _ = post(
                    url + "/v1/completions",
                    {"model": MODEL, "prompt": "spill me", "max_tokens": 1},
                    {"x-session-id": keys["pod0"][2]},
                )
                assert status == 200 and h["x-brunoise-pick"] == "spill" and h["x-brunoise-pod"] != "pod0", h
            assert metric_value(scrape(url), "brunoise_router_picks_total", {"reason": "spill"}) == spill0 + 1
            # 2. one stream on every pod: batch (limit 1) is shed, interactive (limit 2) still admitted
            await until(lambda: idle(url), 10, "pods idle (the closed streams ended)")
            async with long_streams(s, url, [keys[p][0] for p in pods]) as got:
                assert got == pods
                status, h, body = post(
                    url + "/v1/completions",
                    {"model": MODEL, "prompt": "batch job", "max_tokens": 1},
                    {"x-session-id": "b1", "x-priority": "batch"},
                )
                assert status == 429 and int(h["retry-after"]) >= 1, (status, h)
                assert json.loads(body)["error"]["type"] == "rate_limit_error"
                status, _, _ = post(
                    url + "/v1/completions",
                    {"model": MODEL, "prompt": "interactive", "max_tokens": 1},
                    {"x-session-id": "i1"},
                )
                assert status == 200
                # the short request is done, but a load report taken while it ran may still count it:
                # wait until every pod reads exactly its one open stream before saturating further
                await until(lambda: one_each(url), 10, "every pod at one outstanding stream")
                # 3. two streams on every pod: interactive is shed too
                async with long_streams(s, url, [keys[p][1] for p in pods]) as got2:
                    assert sorted(got2) == pods
                    status, h, _ = post(
                        url + "/v1/completions",
                        {"model": MODEL, "prompt": "interactive", "max_tokens": 1},
                        {"x-session-id": "i2"},
                    )
                    assert status == 429 and "retry-after" in h
            text = scrape(url)
            assert metric_value(text, "brunoise_router_shed_total", {"priority": "batch"}) >= 1
            assert metric_value(text, "brunoise_router_shed_total", {"priority": "interactive"}) >= 1
    finally:
        tight.stop()
        cluster.routers.remove(tight)
