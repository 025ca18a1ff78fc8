"""The pure pick on the benchmark's workload (Zipf tenants sharing system prompts): a fixed 2-replica assignment,
an infinite cache per pod and requests that hold their pod for a while. Shows what each part of the pick buys."""

from __future__ import annotations

import collections
import dataclasses
import heapq
import json
import statistics
from typing import NamedTuple

import pytest

from axon_router.cost import PickInput
from axon_router.knobs import Knobs
from axon_router.pick import Candidates, CostPick
from axon_router.pod_view import PodView, Ticket
from axon_router.routing_key import CHAT, parse_openai
from bench.workload import WorkloadConfig, generate
from sharder.assignment import initial_assignment
from sharder.config import TargetConfig
from sharder.pods import Pod

#: How long a request holds its pod in this model (about the benchmark's end-to-end p50).
HOLD_S = 0.4


class Outcome(NamedTuple):
    hit: float  # prefix chunks found on the chosen pod / chunks asked for
    max_over_mean: float  # requests on the busiest pod / mean requests per pod
    pods_per_session: float


@pytest.fixture(scope="module")
def workload() -> list[tuple[float, str, bytes]]:
    wl = generate(WorkloadConfig())
    return [
        (
            r.t,
            r.session_id,
            json.dumps({"model": "m", "messages": list(r.messages), "max_tokens": r.max_tokens}).encode(),
        )
        for r in wl.requests
    ]


def simulate(requests: list[tuple[float, str, bytes]], knobs: Knobs) -> Outcome:
    pods = [Pod(f"p{i}", f"127.0.0.1:{9000 + i}") for i in range(4)]
    a = initial_assignment(TargetConfig("t", min_replicas=2, max_replicas=2, initial_slices=64), pods)
    views = {p.id: PodView(p.id, "http://unused") for p in pods}
    pick = CostPick(knobs)
    hit = asked = 0
    served: collections.Counter[str] = collections.Counter()
    sessions: dict[str, set[str]] = collections.defaultdict(set)
    running: list[tuple[float, int, str, Ticket]] = []
    for n, (t, sid, body) in enumerate(requests):
        while running and running[0][0] <= t:
            _, _, pid, ticket = heapq.heappop(running)
            views[pid].end(ticket)
        r = parse_openai(CHAT, body, {"x-session-id": sid}, knobs, t)
        pin = PickInput(r.slice_key, r.prefix_hashes, r.prompt_tokens, r.max_tokens, r.session_chunks)
        subset = list(a.lookup(r.slice_key).replicas)
        first = pick.choose_replicas(pin, Candidates(subset, []), views, t).first()
        assert first is not None and first[0] == "subset"
        s = first[1]
        v = s.pod
        hit += v.matched_chunks(r.prefix_hashes, t, 1e9)
        asked += len(r.prefix_hashes)
        v.remember(r.prefix_hashes, t)
        ticket = v.begin(r.prompt_tokens + r.max_tokens, s.miss_tokens)
        v.first_token(ticket)
        heapq.heappush(running, (t + HOLD_S, n, v.id, ticket))
        served[v.id] += 1
        sessions[sid].add(v.id)
    loads = [served[p.id] for p in pods]
    return Outcome(hit / asked, max(loads) / statistics.mean(loads), statistics.mean(len(p) for p in sessions.values()))


def test_grouped_keys_sticky_and_capped_keep_sessions_whole_and_pods_balanced(
    workload: list[tuple[float, str, bytes]],
) -> None:
    k = Knobs()
    grouped = simulate(workload, k)
    flat = simulate(workload, dataclasses.replace(k, key_layout="flat"))
    assert grouped.pods_per_session == 1.0 and flat.pods_per_session == 1.0
    assert grouped.max_over_mean <= 1.25, grouped
    assert grouped.hit > flat.hit, (grouped, flat)  # first turns find their tenant's prompt


def test_without_the_cap_the_prefix_piles_up(workload: list[tuple[float, str, bytes]]) -> None:
    """Failure mode: the cheapest pod is always the one holding the prefix, so half the pods stay idle. The cap
    alone: the balance rule (off here) would spread new sessions by their pods' outstanding requests too."""
    capped = simulate(workload, Knobs(balance_slack_s=0.0))
    uncapped = simulate(workload, Knobs(load_cap=0.0, balance_slack_s=0.0))
    assert uncapped.max_over_mean > 1.5 > capped.max_over_mean, (uncapped, capped)


def test_without_stickiness_sessions_hop(workload: list[tuple[float, str, bytes]]) -> None:
    """Failure mode: a session's next turn goes to whichever pod is under the cap, not the one holding it."""
    sticky = simulate(workload, Knobs())
    loose = simulate(workload, Knobs(sticky=False))
    assert loose.pods_per_session > 1.1 > sticky.pods_per_session, (loose, sticky)
    assert loose.hit < sticky.hit
