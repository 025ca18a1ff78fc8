"""The KV pull hint: which peer the pure ``pull_source`` names for a picked pod, and the header's one parser."""

from __future__ import annotations

import pytest

from axon_router.cost import PickInput, Scored, tie_rank
from axon_router.knobs import Knobs
from axon_router.pick import Candidates, CostPick, Ranking, pull_source
from axon_router.pod_view import PodView
from sharder import kv_pull
from sharder.headers import KV_PULL_HEADER
from sharder.keyspace import KEYSPACE_END
from sharder.prefix import prefix_hashes

HISTORY = "a long agent session: " + "tool output line " * 400  # ~6.8 KB: ~100 chunks
KEY = (0x1234ABCD << 32) | 0x00C0FFEE


def _setup(held_by: dict[str, str], served: str | None = None) -> tuple[PickInput, dict[str, PodView]]:
    """Pods a, b, c; ``held_by`` pod -> the prompt text the router saw it given; ``served``: the pod this router sent
    the session's last turn to."""
    vs = {i: PodView(i, f"http://{i}") for i in ("a", "b", "c")}
    for pod, text in held_by.items():
        vs[pod].remember(prefix_hashes(text), 0.0, KEY if pod == served else None)
    text = HISTORY + " and the next turn"
    return PickInput(KEY, prefix_hashes(text), len(text) // 4, 16, 10_000), vs


def _ranked(req: PickInput, vs: dict[str, PodView], chosen: str) -> tuple[Ranking, Scored]:
    """The ranking with ``chosen`` as the pick (as a retry or a cap would make it)."""
    ranking = CostPick(Knobs()).choose_replicas(req, Candidates(list(vs), []), vs, 0.0)
    pick = next(s for t in ranking.tiers for s in t.ranked if s.pod.id == chosen)
    return ranking, pick


def test_a_pick_away_from_the_sessions_holder_names_it_with_the_sessions_own_key() -> None:
    req, vs = _setup({"a": HISTORY}, served="a")
    ranking, pick = _ranked(req, vs, "b")
    hint = pull_source(ranking, pick, KEY, 32, grouped=True)
    assert hint == kv_pull.PullHint("a", KEY, KEY + 1)


def test_a_holder_that_never_served_the_session_is_read_by_the_group_or_not_at_all() -> None:
    req, vs = _setup({"a": HISTORY})  # a shared prefix (a document, a system prompt) the router sent a before
    ranking, pick = _ranked(req, vs, "b")
    lo = (KEY >> 32) << 32
    assert pull_source(ranking, pick, KEY, 32, grouped=True) == kv_pull.PullHint("a", lo, lo + (1 << 32))
    assert pull_source(ranking, pick, KEY, 32, grouped=False) is None


def test_no_hint_when_off_below_the_threshold_or_when_the_pick_holds_the_most() -> None:
    req, vs = _setup({"a": HISTORY}, served="a")
    ranking, on_b = _ranked(req, vs, "b")
    assert pull_source(ranking, on_b, KEY, 0, grouped=True) is None
    held = len(prefix_hashes(HISTORY))
    assert pull_source(ranking, on_b, KEY, held + 1, grouped=True) is None
    assert pull_source(ranking, on_b, KEY, held, grouped=True) is not None
    ranking, on_a = _ranked(req, vs, "a")
    assert pull_source(ranking, on_a, KEY, 1, grouped=True) is None


def test_the_most_holding_peer_wins_and_equal_holders_go_by_the_stable_rank() -> None:
    req, vs = _setup({"a": HISTORY[:2000], "c": HISTORY}, served="a")
    ranking, pick = _ranked(req, vs, "b")
    hint = pull_source(ranking, pick, KEY, 16, grouped=True)
    assert hint is not None and hint.pod_id == "c"
    req, vs = _setup({"a": HISTORY, "c": HISTORY})
    ranking, pick = _ranked(req, vs, "b")
    hint = pull_source(ranking, pick, KEY, 16, grouped=True)
    assert hint is not None and hint.pod_id == min(("a", "c"), key=lambda p: tie_rank(KEY, p))


def test_the_header_round_trips_and_every_malformed_value_is_refused_by_name() -> None:
    hint = kv_pull.PullHint("pod-0003", KEY, KEY + 1)
    assert kv_pull.parse(hint.header()) == hint
    assert kv_pull.parse(f"p 0 {KEYSPACE_END}") == kv_pull.PullHint("p", 0, KEYSPACE_END)
    for bad in ("", "pod-1", "pod-1 1", "pod-1 1 2 3", "pod/1 1 2", "pod-1 -1 2", "pod-1 2 2", "pod-1 3 2",
                f"pod-1 0 {KEYSPACE_END + 1}", "pod-1 0x1 2", "p " + "1" * 400 + " 2"):  # fmt: skip
        with pytest.raises(kv_pull.BadHint, match=KV_PULL_HEADER):
            kv_pull.parse(bad)


def test_a_pulls_wait_is_bounded_and_takes_half_the_time_its_request_has_left() -> None:
    now = 1_000_000.0
    assert kv_pull.wait_budget_s(None, now) == kv_pull.MAX_WAIT_S
    assert kv_pull.wait_budget_s("garbage", now) == kv_pull.MAX_WAIT_S
    assert kv_pull.wait_budget_s(str(int((now + 60) * 1000)), now) == kv_pull.MAX_WAIT_S
    assert kv_pull.wait_budget_s(str(int((now + 1) * 1000)), now) == 0.5
    assert kv_pull.wait_budget_s(str(int((now - 1) * 1000)), now) == 0.0
