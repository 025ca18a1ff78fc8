"""Chaos suite (after Dicer's): 1000 seeded scenarios of pod failures, load swings and a hot key; the policy must
settle within a few rounds to a bounded imbalance."""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest
from core_workload import Workload

from sharder.assignment import check_invariants, initial_assignment
from sharder.config import TargetConfig
from sharder.keyspace import KEYSPACE_END
from sharder.pods import Pod, PodState
from sharder.policy import reshard

SCENARIOS = 1000
SETTLE_ROUNDS = 5
# calm waits for a streak of act_after_rounds imbalanced rounds and lets changed slices cool down first, so it
# settles more slowly: a scenario can start with slices just under the split threshold that fit no receiver
# until merges and splits reshape them (measured worst max-mean: 0.246 at 12 rounds, 0.253 at 15, 0.137 at 20)
SETTLE_ROUNDS_CALM = 20
N_PODS = 8
# (max - mean) / capacity after settling, for pods of capacity 1.0 and total load up to 120% of capacity
BOUND_WORST = 0.25
BOUND_P99 = 0.15
BOUND_MEDIAN = 0.08


def _percentiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {f"p{q}": s[min(len(s) - 1, int(q / 100 * len(s)))] for q in (50, 90, 99)} | {"max": s[-1]}


@pytest.mark.parametrize("calm", [False, True], ids=["act-every-round", "calm"])
def test_chaos_settles_to_bounded_imbalance(calm: bool) -> None:
    cfg = TargetConfig("chaos", min_replicas=1, max_replicas=4, initial_slices=32, churn_budget=0.15, calm=calm)
    settle = SETTLE_ROUNDS_CALM if calm else SETTLE_ROUNDS
    pods = [Pod(f"p{i}", f"10.0.0.{i}:1") for i in range(N_PODS)]
    a = initial_assignment(cfg, pods)
    spreads: list[float] = []
    spreads_hot: list[float] = []
    churns: list[float] = []
    for seed in range(SCENARIOS):
        rng = random.Random(seed)
        healthy = rng.randint(6, 8)
        down = set(rng.sample(range(N_PODS), N_PODS - healthy))
        ps = [
            dataclasses.replace(p, state=rng.choice([PodState.DEAD, PodState.DRAINING])) if i in down else p
            for i, p in enumerate(pods)
        ]
        total = rng.uniform(0.0, 1.2) * healthy
        hot = seed % 2 == 0
        wl = Workload(total * 0.5, [(rng.randrange(KEYSPACE_END), total * 0.5)]) if hot else Workload(total)
        for i in range(settle):
            known = {p.id for p in ps if p.state is not PodState.DEAD}
            b = reshard(a, ps, [r for r in wl.reports(a) if r.pod_id in known], now_ms=seed * 100 + i)
            check_invariants(b, ps)
            assert b.stats.churn <= cfg.churn_budget + 1e-9
            churns.append(b.stats.churn)
            a = b
        loads = a.pod_loads()
        active = [loads.get(p.id, 0.0) for p in ps if p.state is PodState.ACTIVE]
        mean = sum(active) / len(active)
        spread = (max(active) - mean) / 1.0
        spreads.append(spread)
        if hot:
            spreads_hot.append(spread)
    dist = _percentiles(spreads)
    print(f"\n(max-mean)/capacity over {SCENARIOS} scenarios: {dist}")
    print(f"  with a 50% hot key: {_percentiles(spreads_hot)}")
    print(
        f"  churn per round: mean {statistics.fmean(churns):.4f}, max {max(churns):.4f}; final slices {len(a.slices)}"
    )
    assert dist["max"] <= BOUND_WORST
    assert dist["p99"] <= BOUND_P99
    assert dist["p50"] <= BOUND_MEDIAN
