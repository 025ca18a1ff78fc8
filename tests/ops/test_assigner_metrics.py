"""The assigner's /metrics against a real assigner process with three slicelets and a watching clerk."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable

import pytest

from sharder.clerk import Clerk
from sharder.slicelet import Slicelet
from tests.assigner.conftest import Assigner, get, make_slicelet
from tests.ops.conftest import scrape
from tests.waiting import until

pytestmark = pytest.mark.slow


def get_json(url: str) -> tuple[int, object]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, json.loads(r.read())


async def test_assigner_serves_round_placement_and_store_metrics(
    start_assigner: Callable[..., Assigner], slicelets: list[Slicelet]
) -> None:
    a = start_assigner(extra=("--metrics-port", "0"))
    url = a.proc.addresses["metrics"]
    for i in range(3):
        s = make_slicelet(f"p{i}", 9100 + i, [a.addr])
        slicelets.append(s)
        await s.start()
    clerk = Clerk([a.addr], target="t")
    await clerk.start()
    try:
        await clerk.wait_ready(10)

        async def placed_on_all() -> bool:
            asg = await get(a.stub)
            m = await asyncio.to_thread(scrape, url)
            per_pod = {dict(k[1])["pod"]: v for k, v in m.items() if k[0] == "brunoise_assigner_slices_per_pod"}
            want: dict[str, int] = {}
            for sl in asg.slices:
                for p in sl.replicas:
                    want[p] = want.get(p, 0) + 1
            gen = m.get(("brunoise_assigner_generation", (("target", "t"),)))
            return len(want) == 3 and per_pod == want and gen == asg.generation

        await until(placed_on_all, 30, "slices_per_pod and generation agree with GetAssignment", interval_s=0.2)
        m = await asyncio.to_thread(scrape, url)
        assert m[("brunoise_assigner_leader", ())] == 1.0
        assert m[("brunoise_assigner_store_up", ())] == 1.0
        status, body = await asyncio.to_thread(get_json, url.replace("/metrics", "/ready"))
        assert status == 200 and body == {"ready": True, "leader": True}
        assert m[("brunoise_assigner_watchers", ())] >= 1.0  # the clerk's stream
        assert m[("brunoise_assigner_rounds_total", ())] >= 1.0
        assert m[("brunoise_assigner_round_duration_seconds_count", ())] == m[("brunoise_assigner_rounds_total", ())]
        assert m[("brunoise_assigner_round_duration_seconds_sum", ())] > 0.0
        assert m[("brunoise_assigner_round_commits_total", (("target", "t"),))] >= 1.0
        assert m[("brunoise_assigner_pods", (("target", "t"),))] == 3.0
        # three pods joining one at a time: later rounds spread slices to them (moves, replications or fills)
        placed = sum(m.get((f"brunoise_assigner_{k}_total", (("target", "t"),)), 0.0) for k in ("moves", "replications", "fills"))
        assert placed >= 1.0
        assert m[("brunoise_assigner_store_latency_seconds_count", (("op", "ping"),))] >= 1.0
        assert m[("brunoise_assigner_store_latency_seconds_count", (("op", "compare_and_swap"),))] >= 1.0
        # the clerk's stream was written generations committed after it subscribed: their lag is measured
        lagged = await until(
            lambda: asyncio.to_thread(
                lambda: scrape(url).get(("brunoise_assigner_watch_lag_seconds_count", ()), 0.0) >= 1.0
            ), 30, "a watch lag observation", interval_s=0.2,
        )  # fmt: skip
        assert lagged
        w = await asyncio.to_thread(scrape, url)
        mean_lag = w[("brunoise_assigner_watch_lag_seconds_sum", ())] / w[("brunoise_assigner_watch_lag_seconds_count", ())]
        assert 0.0 <= mean_lag < 5.0  # one process on loopback: well under a second unless the machine stalls
        imbalance = m[("brunoise_assigner_imbalance_ratio", (("target", "t"),))]
        assert imbalance == 0.0 or imbalance >= 1.0  # max/mean: 0 only without load
        assert 0.0 <= m[("brunoise_assigner_churn_ratio", (("target", "t"),))] <= 1.0
    finally:
        await clerk.stop()
