"""Warm-up units: the router's new-session rule for warming replicas, the runtime's prompt log and its answer."""

from __future__ import annotations

import dataclasses

import pytest

from axon_router.knobs import Knobs
from axon_router.pod_view import PodView
from axon_router.targets import new_session_replicas
from brunoise_api.v1 import runtime_pb2, slicing_pb2
from runtime.warm import PromptLog, hot_prompts_response, warm_actions
from sharder.assignment import SliceAssignment
from sharder.keyspace import Slice

K = Knobs()
S = Slice(0, 2**64)


def _views(**outstanding: int) -> dict[str, PodView]:
    views = {}
    for pid, n in outstanding.items():
        v = PodView(pid, f"http://{pid}")
        v.apply_report(0, 0.0, n, 0, 0, 0.0)
        views[pid] = v
    return views


def test_a_warming_replica_gets_no_new_session_a_warm_one_under_the_cap_holds_more_of() -> None:
    sa = SliceAssignment(S, ("a", "b"), warming=("b",))
    views = _views(a=1, b=0)
    views["a"].set_cache(64, frozenset({1}))  # the group's system prompt: b is copying it
    assert list(new_session_replicas(sa, views, [1, 2], 1, 0.1, K)) == ["a"]


def test_a_warming_replica_takes_a_new_session_no_warm_replica_holds_any_of() -> None:
    """Failure mode (docs, whose every query is a new session): a replica warming its slice (a restarted pod that
    came back, a move) was kept off every new query for up to ``warm_deadline_s``, also those over a document no
    pod held: no hit was gained, and the other pods queued that pod's share (brunoise-only full docs runs: 77.2 /
    77.8 % hit before, 80.2 / 80.3 % after, with the change to failed dispatches in the same runs)."""
    sa = SliceAssignment(S, ("a", "b"), warming=("b",))
    views = _views(a=1, b=0)
    assert list(new_session_replicas(sa, views, [1, 2], 1, 0.1, K)) == ["a", "b"]
    assert list(new_session_replicas(sa, views, [], 1, 0.1, K)) == ["a", "b"], "no prefix at all: the same"


def test_a_warming_replica_takes_new_sessions_when_the_warm_ones_are_over_the_cap() -> None:
    sa = SliceAssignment(S, ("a", "b"), warming=("b",))
    # cap = ceil(1.25 x (8 + 0 + 1) / 2) = 6: a (8 outstanding) is over it
    assert new_session_replicas(sa, _views(a=8, b=0), [1], 1, 0.1, K) == ("a", "b")


def test_a_slice_whose_replicas_all_warm_stays_routable() -> None:
    sa = SliceAssignment(S, ("b",), warming=("b",))
    assert new_session_replicas(sa, _views(b=0), [1], 1, 0.1, K) == ("b",)


def test_a_move_still_warming_sends_new_sessions_to_the_pod_leaving_the_slice() -> None:
    sa = SliceAssignment(S, ("b",), leaving=("a",), warming=("b",))
    views = _views(a=1, b=0)
    views["a"].set_cache(64, frozenset({1, 2}))
    assert list(new_session_replicas(sa, views, [1, 2], 1, 0.1, K)) == ["a"]  # a holds the cache, b fills
    views["b"].set_cache(64, frozenset({11, 12}))
    assert list(new_session_replicas(sa, views, [11, 12, 13], 2, 0.1, K)) == ["a", "b"]  # sticky on b
    # the leaving pod over the cap: every replica (never only the leaving pod when it is overloaded)
    assert new_session_replicas(sa, _views(a=8, b=0), [1], 1, 0.1, K) == ("b",)
    # once b is warm the mark is gone and the leaving pod gets nothing new
    assert new_session_replicas(SliceAssignment(S, ("b",), leaving=("a",)), views, [1], 1, 0.1, K) == ("b",)


def test_a_session_already_on_the_warming_replica_stays_there() -> None:
    sa = SliceAssignment(S, ("a", "b"), warming=("b",))
    views = _views(a=0, b=0)
    views["b"].set_cache(64, frozenset({11, 12}))
    assert list(new_session_replicas(sa, views, [11, 12, 13], 2, 0.1, K)) == ["a", "b"]  # holds 2 chunks: sticky
    views["a"].set_cache(64, frozenset({99}))
    assert list(new_session_replicas(sa, views, [99, 12], 1, 0.1, K)) == ["a"]  # b holds nothing of this one, a does


def test_a_warming_replica_holding_a_long_document_takes_a_fresh_query_over_it() -> None:
    """Failure mode (docs restart phase): the only pod holding a document warmed the document's slice (it came
    back, or the warm-up copied the document there), and a query with a fresh id, whose own chunks nobody holds,
    was kept off it and prefilled the document again on a warm replica."""
    sa = SliceAssignment(S, ("a", "b"), warming=("b",))
    doc = list(range(100, 160))  # 60 chunks of 64 bytes: ~960 tokens
    query = [*doc, 7, 8]
    views = _views(a=0, b=0)
    views["b"].set_cache(64, frozenset(doc))
    assert list(new_session_replicas(sa, views, query, len(query), 0.1, K)) == ["a", "b"]
    views["a"].set_cache(64, frozenset(doc[:30]))  # a warm replica holds less of it: b still takes it
    assert list(new_session_replicas(sa, views, query, len(query), 0.1, K)) == ["a", "b"]
    views["a"].set_cache(64, frozenset(doc))  # as much: b as well (the warm-up has done its part)
    assert list(new_session_replicas(sa, views, query, len(query), 0.1, K)) == ["a", "b"]
    views["b"].set_cache(64, frozenset(doc[:30]))  # less: no reason to load b
    assert list(new_session_replicas(sa, views, query, len(query), 0.1, K)) == ["a"]


def test_no_warming_means_every_replica() -> None:
    sa = SliceAssignment(S, ("a", "b"))
    assert new_session_replicas(sa, _views(a=5, b=0), [1], 1, 0.1, K) is sa.replicas


def test_prompt_log_keeps_the_latest_prompt_per_key_hottest_first_and_bounded() -> None:
    log = PromptLog(max_keys=3, max_bytes=1000, entry_bytes=400)
    log.record(10, "a" * 100, None)
    log.record(20, None, (("system", "s" * 50), ("user", "u")))
    log.record(10, "a" * 120, None)  # key 10: served twice, latest prompt kept
    log.record(30, "c" * 500, None)  # over entry_bytes: not kept
    assert len(log) == 2 and log.bytes == 120 + len("system") + 50 + len("user") + 1
    hot = log.hottest(0, 100)
    assert [(k, n) for k, n, _, _ in hot] == [(10, 2.0), (20, 1.0)]
    assert hot[0][2] == "a" * 120
    assert [k for k, *_ in log.hottest(15, 25)] == [20]  # only the range asked for
    assert [k for k, *_ in log.hottest(0, 100, max_prompts=1)] == [10]
    # a reader asks for the most recently served first (a long finished session was served most)
    recent = PromptLog()
    for k in (1, 1, 1, 2):
        recent.record(k, f"session {k}", None)
    assert [k for k, *_ in recent.hottest(0, 10)] == [1, 2]
    assert [k for k, *_ in recent.hottest(0, 10, recent_first=True)] == [2, 1]
    for k in (40, 50, 60):  # the oldest keys go once past max_keys
        log.record(k, "x", None)
    assert sorted(k for k, *_ in log.hottest(0, 100)) == [40, 50, 60]
    big = PromptLog(max_keys=10, max_bytes=250, entry_bytes=200)
    for k in range(5):
        big.record(k, "y" * 100, None)
    assert big.bytes <= 250 and sorted(k for k, *_ in big.hottest(0, 10)) == [3, 4]


def test_hot_prompts_answer_carries_prompts_and_chat_messages() -> None:
    log = PromptLog()
    log.record(5, "plain prompt", None)
    log.record(6, None, (("user", "hi"),))
    log.record(6, None, (("user", "hi"), ("assistant", "yo"), ("user", "more")))
    req = runtime_pb2.HotPromptsRequest(slice=slicing_pb2.Slice(lo=0, hi=0))  # hi 0 = the end of the keyspace
    resp = hot_prompts_response("pod-x", log, req)
    assert resp.pod_id == "pod-x"
    first, second = resp.prompts
    assert first.slice_key == 6 and first.weight == 2.0
    assert [(m.role, m.content) for m in first.messages.messages] == [("user", "hi"), ("assistant", "yo"), ("user", "more")]
    assert second.WhichOneof("input") == "prompt" and second.prompt == "plain prompt"


def test_brunoise_slices_shows_the_warming_state(capsys: pytest.CaptureFixture[str]) -> None:
    from brunoise.cli.admin import _print_slices
    from brunoise.cli.client import slice_dict
    from sharder import codec
    from sharder.assignment import initial_assignment
    from sharder.config import TargetConfig
    from sharder.pods import Pod

    a = initial_assignment(TargetConfig("t", min_replicas=2, initial_slices=2), [Pod("a", "x"), Pod("b", "y")])
    a = dataclasses.replace(a, slices=(dataclasses.replace(a.slices[0], warming=("b",)), a.slices[1]))
    msg = codec.assignment_to_proto(a)
    _print_slices(msg)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "a,b" in line]
    assert "warming" in rows[0] and "b*" in rows[0] and "stable" in rows[1]
    assert slice_dict(msg.slices[0])["warming"] == ["b"] and slice_dict(msg.slices[1])["warming"] == []


def test_a_warm_up_never_copies_more_than_its_share_of_the_kv_cache() -> None:
    """A warm prefill evicts what the cache held: on a pod whose cache holds a few long documents a 16 KB copy is
    most of it. The budget per slice is ``WARM_KV_SHARE`` of the cache, and ``WARM_BYTES`` at most."""
    from runtime.engines.sim import BLOCK_TOKENS, SimConfig, SimEngine
    from runtime.warm import WARM_BYTES, WARM_KV_SHARE, Warmer, WarmMetrics
    from sharder.prefix import TEXT_BYTES_PER_TOKEN

    def budget(blocks: int) -> int:
        engine = SimEngine(SimConfig(kv_blocks=blocks, max_model_len=blocks * BLOCK_TOKENS))
        return Warmer(engine, done=lambda s: None, metrics=WarmMetrics()).budget_bytes()

    small = budget(256)
    assert small == int(WARM_KV_SHARE * 256 * BLOCK_TOKENS * TEXT_BYTES_PER_TOKEN) < WARM_BYTES
    assert budget(1 << 16) == WARM_BYTES  # a big cache: the fixed cap binds


def test_the_warm_budget_counts_the_engines_own_block_size() -> None:
    """vLLM's block_size need not be 16 (the vLLM adapter starts it with 32): 256 blocks of 32 tokens hold twice
    what 256 blocks of 16 do, and the share of the cache a warm-up may copy is twice as many bytes."""
    from runtime.warm import WARM_BYTES, warm_budget_bytes

    assert warm_budget_bytes(256, block_tokens=32) == 2 * warm_budget_bytes(256, block_tokens=16) < WARM_BYTES
    assert warm_budget_bytes(256) == warm_budget_bytes(256, block_tokens=16), "not known: 16"


def test_warm_actions_read_what_a_donor_holds_and_prefill_the_rest_within_the_budget() -> None:
    """With a connector: held prompts are read whole whatever their size; the others are prefilled in order while
    they fit the prefill budget (a later, smaller one may still fit); without one, every prompt is prefilled."""
    prompts = [(500, True), (300, False), (900, False), (200, False), (5000, True)]
    assert warm_actions(prompts, read=True, prefill_budget=600) == [True, False, None, False, True]
    assert warm_actions(prompts, read=False, prefill_budget=0) == [False] * len(prompts)
    assert warm_actions([], read=True, prefill_budget=100) == []
