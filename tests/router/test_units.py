"""Unit tests of the router's pure parts: pod view accounting, picker, failover, admission, request parsing."""

from __future__ import annotations

import random

import pytest

from axon_router.admission import Admission, Outcome, Priority
from axon_router.cost import Limits, PickInput, Scored, tie_rank
from axon_router.errors import BadRequest, DeadlineExceeded
from axon_router.failover import Breaker, BreakerState, HealthTracker, backoff_s
from axon_router.knobs import Knobs
from axon_router.pick import Candidates, CostPick
from axon_router.pod_view import PodView
from axon_router.routing_key import CHAT, COMPLETIONS, parse_openai, prefix_key
from sharder.keyspace import group_slice_key, slice_key
from sharder.prefix import prefix_hashes

K = Knobs()
#: The cost alone (no stickiness, no load cap): what these tests of the cost model pick by.
COST_ONLY = Knobs(sticky=False, load_cap=0.0, miss_weight=0.0, balance_slack_s=0.0)  # the lowest estimated TTFT alone


class CostPicker:
    """The lowest-cost pick of ``CostPick`` over one list of pods (the subset), as the cost tests need it."""

    def __init__(self, knobs: Knobs) -> None:
        self.policy = CostPick(knobs)

    def choose(self, pods: list[PodView], req: PickInput, now: float, limits: Limits | None) -> Scored | None:
        views = {p.id: p for p in pods}
        first = self.policy.choose_replicas(req, Candidates([p.id for p in pods], [], limits), views, now).first()
        return first[1] if first else None


def pod(pid: str) -> PodView:
    return PodView(pid, f"http://{pid}", labels={"region": "eu"})


def pin(key: int = 1, text: str = "", max_tokens: int = 16) -> PickInput:
    return PickInput(key, prefix_hashes(text), len(text) // 4 + 1, max_tokens)


# ------------------------------------------------------------------------------------------------ pod view
def test_load_never_reads_zero_between_reports() -> None:
    p = pod("a")
    e = p.poll_started()
    p.apply_report(e, 10.0, running=2, waiting=1, tokens_in_flight=300, kv_usage=0.5)
    assert p.outstanding(10.1, 3.0) == (3, 300)
    t1 = p.begin(100)
    t2 = p.begin(50)
    assert p.outstanding(10.2, 3.0) == (5, 450)  # report + own dispatches since
    e2 = p.poll_started()  # the next report will include t1, t2
    t3 = p.begin(10)  # dispatched after the poll was sent: not in that report
    p.apply_report(e2, 10.3, running=5, waiting=0, tokens_in_flight=460, kv_usage=0.5)
    assert p.outstanding(10.3, 3.0) == (6, 470)
    p.end(t1)
    p.end(t2)
    p.end(t3)
    p.end(t3)  # idempotent
    assert p.inflight == 0 and p.since_reqs == 0
    assert p.outstanding(10.3, 3.0) == (5, 460)  # until the next report says otherwise


def test_stale_report_falls_back_to_own_inflight() -> None:
    p = pod("a")
    p.apply_report(p.poll_started(), 0.0, running=9, waiting=9, tokens_in_flight=9999, kv_usage=0.9)
    t = p.begin(40)
    assert p.outstanding(100.0, 3.0) == (1, 40)
    assert p.kv_usage(100.0, 3.0) == 0.0
    p.end(t)
    assert p.outstanding(100.0, 3.0) == (0, 0)


def test_own_inflight_is_a_floor() -> None:
    p = pod("a")
    ts = [p.begin(10) for _ in range(4)]
    e = p.poll_started()
    p.apply_report(e, 1.0, running=0, waiting=0, tokens_in_flight=0, kv_usage=0.0)  # report lags
    assert p.outstanding(1.0, 3.0) == (4, 40)
    for t in ts:
        p.end(t)


def test_prefix_memory_and_cache() -> None:
    text = "x" * 64 * 5
    hs = prefix_hashes(text)
    p = pod("a")
    assert p.matched_chunks(hs, 0.0, 60.0) == 0
    p.set_cache(64, hs[:2])
    assert p.matched_chunks(hs, 0.0, 60.0) == 2
    p.remember(hs, 1.0)
    assert p.matched_chunks(hs, 2.0, 60.0) == 5
    assert p.matched_chunks(hs, 100.0, 60.0) == 2  # memory expired, cache summary still counts


def test_a_failed_dispatch_takes_back_the_prefix_it_remembered() -> None:
    """Failure mode: ``begin`` remembers a prompt as the pod's at dispatch; when the pod then refused it (an error
    status, or no connection), the router still believed the pod held it for ``prefix_memory_s``, and sent the
    prefix's next requests there to a miss. What was remembered before the dispatch stays."""
    hs = prefix_hashes("z" * 64 * 6)
    p = pod("a")
    p.remember(hs[:2], 1.0)  # an earlier request sent the first two chunks here
    t = p.begin(100, 64, hs, 5.0)
    assert p.matched_chunks(hs, 5.1, 60.0) == 6
    p.fail(t)
    assert p.matched_chunks(hs, 5.2, 60.0) == 2, "the earlier request's chunks stay"
    assert p.matched_chunks(hs, 61.5, 60.0) == 0, "at their own time, not the failed dispatch's"
    assert (p.inflight, p.prefill_reqs) == (0, 0)
    t1, t2 = p.begin(100, 64, hs, 7.0), p.begin(100, 64, hs, 8.0)
    p.fail(t1)
    assert p.matched_chunks(hs, 8.1, 60.0) == 6, "a later dispatch of the same prompt keeps it remembered"
    p.end(t2)
    t3 = p.begin(100, 64, hs, 9.0)
    p.first_token(t3)
    p.fail(t3)
    assert p.matched_chunks(hs, 9.1, 60.0) == 6, "past its first token the pod has computed it"


def test_a_later_cache_summary_outranks_the_memory_of_what_was_sent() -> None:
    """Failure mode: a pod evicted a session's context (or restarted), and for a minute the router still believed
    it held it, from its own memory of sending it there, over the pod's reports that it did not."""
    hs = prefix_hashes("y" * 64 * 6)
    p = pod("a")
    p.remember(hs, 10.0)
    p.set_cache(64, hs, at=10.5)  # reported held
    assert p.matched_chunks(hs, 12.0, 60.0, 5.0) == 6
    p.set_cache(64, hs[:2], at=14.0)  # the pod evicted the tail, but the summary is too soon to outrank the memory
    assert p.matched_chunks(hs, 14.0, 60.0, 5.0) == 6
    p.set_cache(64, hs[:2], at=16.0)  # five seconds on, the pod has had every chance to report the rest
    assert p.matched_chunks(hs, 16.0, 60.0, 5.0) == 2
    assert p.matched_chunks(hs, 16.0, 60.0) == 6  # without the trust bound, the memory outranks the report
    p.set_cache(64, frozenset(), at=17.0)  # restarted, empty
    assert p.matched_chunks(hs, 17.0, 60.0, 5.0) == 0
    p.remember(hs[:3], 17.5)  # sent there again since: the memory bridges until the next summaries
    assert p.matched_chunks(hs, 18.0, 60.0, 5.0) == 3


def test_a_pod_that_restarted_is_not_believed_to_hold_what_it_was_sent_before() -> None:
    """Failure mode: the router trusted what it had sent a pod for ``prefix_memory_trust_s`` (5 s) after the pod's
    first summary, restarted or not; the bench's pods restart in under a second, so the router sent sessions back
    to a pod whose new process held nothing of them (20-25k-token prefills at the agentic bench's restarts). A
    summary from a new incarnation, or with a bumped epoch (the engine cleared its cache), drops the memory of what
    was sent until the previous summary; what was sent since may have reached the new cache and stays."""
    hs = prefix_hashes("r" * 64 * 6)
    p = pod("a")
    p.remember(hs, 2.0)
    p.set_cache(64, hs, at=3.0, incarnation=7)
    p.set_cache(64, frozenset(), at=4.0, incarnation=8)  # the new process's first summary: empty
    assert p.matched_chunks(hs, 4.0, 60.0, 5.0) == 0
    p.remember(hs[:4], 4.5)
    p.set_cache(64, frozenset(), at=5.0, incarnation=8)  # the same process: its summary may lag what was sent
    assert p.matched_chunks(hs, 5.0, 60.0, 5.0) == 4
    p.set_cache(64, frozenset(), at=6.0, incarnation=8, epoch=1)  # the engine cleared its cache
    assert p.matched_chunks(hs, 6.0, 60.0, 5.0) == 0
    p.remember(hs, 6.5)
    p.set_cache(64, hs[:2], at=7.0, incarnation=8, epoch=1)
    assert p.matched_chunks(hs, 7.0, 60.0, 5.0) == 6


def test_prefix_memory_is_bounded() -> None:
    p = PodView("a", "http://a", memory_max=10)
    p.remember(list(range(100)), 0.0)
    assert p.matched_chunks([95, 96, 97, 98, 99], 0.0, 60.0) == 5
    assert p.matched_chunks([0], 0.0, 60.0) == 0
    for key in range(20):  # and so are the sessions it counts as living there
        p.remember([1000 + key], 1.0, slice_key=key)
    assert [k for k, _, _ in p.resident_sizes()] == list(range(10, 20)) and p.resident_chunks() == 10


# ------------------------------------------------------------------------------------------------ picker
def test_picker_prefers_cache_holder_then_load() -> None:
    text = "shared system prompt " * 40
    req = pin(7, text)
    a, b = pod("a"), pod("b")
    b.remember(req.prefix_hashes, 0.0)
    pk = CostPicker(COST_ONLY)
    s = pk.choose([a, b], req, 0.0, None)
    assert s is not None and s.pod is b and s.hit_chunks == len(req.prefix_hashes)
    # the holder is swamped: the other pod wins despite the miss
    for _ in range(40):
        b.begin(2000)
    s = pk.choose([a, b], req, 0.0, None)
    assert s is not None and s.pod is a


def test_cache_misses_spread_not_one_pod() -> None:
    """Failure mode: every miss sent to the one pod that looks idle. Own in-flight accounting spreads them."""
    pods = [pod(f"p{i}") for i in range(3)]
    pk = CostPicker(COST_ONLY)
    chosen: list[str] = []
    for i in range(30):
        req = pin(i, f"unique prompt {i} " * 30)
        s = pk.choose(pods, req, 0.0, None)
        assert s is not None
        s.pod.begin(req.prompt_tokens + req.max_tokens, s.miss_tokens)
        chosen.append(s.pod.id)
    counts = {p.id: chosen.count(p.id) for p in pods}
    assert max(counts.values()) - min(counts.values()) <= 2, counts


def test_prefill_ahead_is_own_pending_first_tokens_plus_reported_waiting() -> None:
    p = pod("a")
    t1 = p.begin(600, prefill=500)
    t2 = p.begin(300, prefill=200)
    assert p.prefill_ahead(0.0, 3.0) == (2, 700)  # no report yet: own requests without a first token
    p.first_token(t1)
    p.first_token(t1)  # idempotent
    assert p.prefill_ahead(0.0, 3.0) == (1, 200)
    e = p.poll_started()
    p.apply_report(e, 1.0, running=2, waiting=2, tokens_in_flight=4000, kv_usage=0.1)  # t2 is in that report
    assert p.prefill_ahead(1.0, 3.0) == (2, 2000)  # reported waiting (mean tokens each); t2 not counted twice
    t3 = p.begin(100, prefill=50)
    assert p.prefill_ahead(1.0, 3.0) == (3, 2050)  # plus own dispatches since the report
    for t in (t2, t3):
        p.end(t)  # end also settles the prefill accounting
    assert p.prefill_reqs == 0 and p.prefill_tokens == 0 and p.since_prefill_reqs == 0
    assert p.prefill_ahead(10.0, 3.0) == (0, 0)  # stale report: own accounting only


def test_decoding_requests_do_not_outweigh_a_cached_prefix() -> None:
    """Continuous batching: requests already decoding barely delay a first token; the session's prefix wins."""
    text = "a long conversation so far " * 60
    req = pin(7, text)
    a, b = pod("a"), pod("b")
    a.remember(req.prefix_hashes, 0.0)
    for _ in range(8):
        t = a.begin(2000)
        a.first_token(t)  # decoding
    s = CostPicker(COST_ONLY).choose([a, b], req, 0.0, None)
    assert s is not None and s.pod is a
    # real prefill work queued ahead on the holder does move it
    a.begin(2000, prefill=20000)
    s = CostPicker(COST_ONLY).choose([a, b], req, 0.0, None)
    assert s is not None and s.pod is b


def test_tie_break_is_stable_and_spreads_keys() -> None:
    pods = [pod(f"p{i}") for i in range(3)]
    pk = CostPicker(COST_ONLY)
    wins: dict[str, int] = {}
    for key in range(300):
        s1 = pk.choose(pods, pin(key), 0.0, None)
        s2 = pk.choose(list(reversed(pods)), pin(key), 0.0, None)  # another replica, another order
        assert s1 is not None and s2 is not None and s1.pod.id == s2.pod.id
        assert s1.pod.id == min(pods, key=lambda p: tie_rank(key, p.id)).id
        wins[s1.pod.id] = wins.get(s1.pod.id, 0) + 1
    assert len(wins) == 3 and min(wins.values()) > 60


def test_picker_respects_limits() -> None:
    a = pod("a")
    for _ in range(5):
        a.begin(10)
    assert CostPicker(COST_ONLY).choose([a], pin(), 0.0, Limits(5, 100.0)) is None
    assert CostPicker(COST_ONLY).choose([a], pin(), 0.0, Limits(6, 100.0)) is not None
    assert CostPicker(COST_ONLY).choose([a], pin(), 0.0, Limits(100, 0.0)) is None


# ------------------------------------------------------------------------------------------------ admission
def test_admission_in_subset_spill_shed_and_priority() -> None:
    k = Knobs(admit_max_outstanding=4, batch_admit_fraction=0.5)
    adm, pk = Admission(k), CostPick(k)
    sub, out = [pod("s")], [pod("o")]
    views = {p.id: p for p in [*sub, *out, pod("x")]}
    ins, outs = ["s"], ["o"]
    assert adm.decide(pk, ins, outs, views, pin(), 0.0, Priority.INTERACTIVE).outcome is Outcome.IN_SUBSET
    for _ in range(4):
        sub[0].begin(1)
    d = adm.decide(pk, ins, outs, views, pin(), 0.0, Priority.INTERACTIVE)
    assert d.outcome is Outcome.SPILL and d.pick is not None and d.pick.pod.id == "o"
    for _ in range(2):
        out[0].begin(1)
    # out has 2: over the batch limit (2), under the interactive one (4)
    assert adm.decide(pk, ins, outs, views, pin(), 0.0, Priority.BATCH).outcome is Outcome.SHED
    assert adm.decide(pk, ins, outs, views, pin(), 0.0, Priority.INTERACTIVE).outcome is Outcome.SPILL
    for _ in range(2):
        out[0].begin(1)
    assert adm.decide(pk, ins, outs, views, pin(), 0.0, Priority.INTERACTIVE).outcome is Outcome.SHED
    assert adm.decide(pk, [], [], views, pin(), 0.0, Priority.INTERACTIVE).outcome is Outcome.UNAVAILABLE
    assert adm.decide(pk, [], ["x"], views, pin(), 0.0, Priority.INTERACTIVE).outcome is Outcome.FALLBACK


# ------------------------------------------------------------------------------------------------ failover
def test_breaker_opens_half_opens_and_closes() -> None:
    b = Breaker()
    assert b.available(0.0)
    assert not b.failure(0.0, 3, 1.0, 8.0)
    assert not b.failure(0.0, 3, 1.0, 8.0)
    assert b.failure(0.0, 3, 1.0, 8.0) and b.state is BreakerState.OPEN
    assert not b.available(0.5)
    assert b.available(1.0)
    assert b.acquire(1.0)
    assert b.state.name == "HALF_OPEN"
    assert not b.available(1.0)  # one probe at a time
    assert b.failure(1.1, 3, 1.0, 8.0) and b.open_for == 2.0  # failed probe: open twice as long
    assert not b.available(2.0) and b.available(3.1)
    b.acquire(3.1)
    assert b.success()
    assert b.state.name == "CLOSED" and b.available(3.1)


def test_breaker_success_resets_consecutive_count() -> None:
    b = Breaker()
    for _ in range(10):
        b.failure(0.0, 3, 1.0, 8.0)
        b.success()
    assert b.state is BreakerState.CLOSED


def test_health_hysteresis() -> None:
    h = HealthTracker()
    assert h.observe(False, 2, 2) is None
    assert h.observe(False, 2, 2) is False
    assert h.observe(True, 2, 2) is None
    assert h.observe(True, 2, 2) is True


def test_backoff_is_jittered_and_capped() -> None:
    rng = random.Random(1)
    vals = [backoff_s(a, 0.01, 0.05, rng) for a in range(1, 10) for _ in range(20)]
    assert all(0 <= v <= 0.05 for v in vals)
    assert len(set(vals)) > 100


# ------------------------------------------------------------------------------------------------ parsing
def _parse(body: bytes, headers: dict[str, str] | None = None, path: str = COMPLETIONS):  # type: ignore[no-untyped-def]
    return parse_openai(path, body, headers or {}, K, 0.0)


def test_routing_key_precedence() -> None:
    body = b'{"model":"m","prompt":"hello","session_id":"s1","user":"u1"}'
    r = _parse(body, {"x-user-id": "u9", "x-tenant-id": "t"})  # the tenant is the group, not the session
    assert r.slice_key == group_slice_key("t", "u9") and r.group_source == "x-tenant-id"
    assert _parse(body, {"x-session-id": "h", "x-user-id": "u9"}).slice_key == slice_key("h")
    r = _parse(body)
    assert r.key_source == "session_id" and r.slice_key == slice_key("s1")
    r = _parse(b'{"model":"m","prompt":"hello","user":"u1"}')
    assert r.key_source == "user" and r.slice_key == slice_key("u1")
    r = _parse(b'{"model":"m","prompt":"hello"}')
    assert r.key_source == "prefix"


def test_prefix_key_groups_shared_prefixes() -> None:
    system = "You are a helpful assistant. " * 20
    k1, _ = prefix_key(system + "question one", K)
    k2, _ = prefix_key(system + "another question entirely", K)
    k3, _ = prefix_key("different " * 60, K)
    assert k1 == k2 != k3
    msgs = (
        b'{"model":"m","messages":[{"role":"system","content":"'
        + system.encode()
        + b'"},{"role":"user","content":"%s"}]}'
    )
    a, b = _parse(msgs % b"a", path=CHAT), _parse(msgs % b"b", path=CHAT)
    assert a.group == b.group is not None and a.slice_key >> 32 == b.slice_key >> 32  # one group, one range


@pytest.mark.parametrize(
    ("body", "headers", "param"),
    [
        (b"{not json", {}, None),
        (b"[1, 2]", {}, None),
        (b"\xff\xfe{}", {}, None),
        (b'{"prompt":"x"}', {}, "model"),
        (b'{"model":"m"}', {}, "prompt"),
        (b'{"model":"m","prompt":"x","max_tokens":-1}', {}, "max_tokens"),
        (b'{"model":"m","prompt":"x","max_tokens":true}', {}, "max_tokens"),
        (b'{"model":"m","prompt":"x","stream":"yes"}', {}, "stream"),
        (b'{"model":"m","prompt":"x","session_id":5}', {}, "session_id"),
        (b'{"model":"m","prompt":"x"}', {"x-priority": "urgent"}, "x-priority"),
        (b'{"model":"m","prompt":"x"}', {"x-brunoise-region": "eu west"}, "x-brunoise-region"),
        (b'{"model":"m","prompt":"x"}', {"x-session-id": "a" * 1000}, "x-session-id"),
        (b'{"model":"m","prompt":"x"}', {"x-brunoise-timeout-ms": "soon"}, "x-brunoise-timeout-ms"),
    ],
)
def test_bad_input(body: bytes, headers: dict[str, str], param: str | None) -> None:
    with pytest.raises(BadRequest) as ei:
        _parse(body, headers)
    assert ei.value.status == 400
    if param:
        assert ei.value.param == param


def test_bad_chat_messages() -> None:
    for body in (
        b'{"model":"m"}',
        b'{"model":"m","messages":[]}',
        b'{"model":"m","messages":[1]}',
        b'{"model":"m","messages":[{"content":"x"}]}',
    ):
        with pytest.raises(BadRequest):
            _parse(body, path=CHAT)


def test_expired_deadline() -> None:
    with pytest.raises(DeadlineExceeded) as ei:
        _parse(b'{"model":"m","prompt":"x"}', {"x-brunoise-deadline-ms": "1000"})
    assert ei.value.status == 408
    r = _parse(b'{"model":"m","prompt":"x"}', {"x-brunoise-timeout-ms": "1500"})
    assert r.deadline == pytest.approx(1.5)


def test_every_pick_outcome_is_counted_under_its_own_reason() -> None:
    """Failure mode: an overflow pick (outside the subset, over the fleet cap) was counted as a fallback."""
    from prometheus_client import generate_latest

    from axon_router.admission import Decision
    from axon_router.metrics import RouterMetrics
    from axon_router.router import count_pick
    from sharder.promtext import metric_value

    m = RouterMetrics(Knobs())
    for o in (Outcome.IN_SUBSET, Outcome.HELD, Outcome.OVERFLOW, Outcome.SPILL, Outcome.FALLBACK):
        count_pick(m, Decision(o, None, "held" if o is Outcome.HELD else "cost" if o is Outcome.IN_SUBSET else ""))
    text = generate_latest(m.registry).decode()
    for o in ("in_subset", "held", "overflow", "spill", "fallback"):
        assert metric_value(text, "brunoise_router_picks_total", {"reason": o}) == 1.0, o
    assert metric_value(text, "brunoise_router_pick_rule_total", {"rule": "held"}) == 1.0
