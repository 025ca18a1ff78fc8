"""The fleet simulator: determinism, conservation, outcomes a one-pod fleet makes obvious, failures."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from axon_router.knobs import Knobs
from bench.workload import WorkloadConfig, workload_oracle
from bench.workload import generate as generate_workload
from brunoise.simulate.fleet import Fleet, FleetSpec
from brunoise.simulate.source import (
    BenchSource,
    PhaseSpan,
    SimRequest,
    SimSession,
    Source,
    bench_source,
    from_messages,
    preset_sizing,
)
from runtime.engines.sim import BLOCK_TOKENS
from runtime.warm import warm_budget_bytes
from sharder.kv_pull import PullHint
from sharder.prefix import TEXT_BYTES_PER_TOKEN

SMALL = {"warmup_s": 1.0, "steady_s": 2.0, "hot_s": 1.5, "restart_s": 3.0, "session_rate": 2.0, "think_s": 0.4}


def small_source(seed: int = 0, pods: int = 3) -> BenchSource:
    return bench_source("chat_tenant", quick=True, seed=seed, pods=pods, overrides=SMALL)


def spec(**kw: object) -> FleetSpec:
    base: dict[str, object] = {"pods": 3, "kv_blocks": 1024, "max_model_len": 4096}
    base.update(kw)
    return FleetSpec(**base)  # type: ignore[arg-type]


class ListSource(Source):
    """Given requests, each a session of its own (so they are sent at their times, not after each other)."""

    def __init__(self, reqs: list[SimRequest], name: str = "list") -> None:
        self.reqs = reqs
        self.name = name
        end = max(r.t for r in reqs) + 1.0
        self.phases = (PhaseSpan("steady", 0.0, end),)
        self.duration_s = end

    def sessions(self) -> Iterator[SimSession]:
        for i, r in enumerate(self.reqs):
            yield SimSession(f"{r.session}#{i}", r.t, [dataclasses.replace(r)])


@pytest.mark.parametrize("engine", ["step", "fluid"])
def test_same_seed_same_run_and_another_seed_differs(engine: str) -> None:
    a = Fleet(spec(engine=engine), small_source(seed=1)).run().summary
    b = Fleet(spec(engine=engine), small_source(seed=1)).run().summary
    c = Fleet(spec(engine=engine), small_source(seed=2)).run().summary
    assert a == b
    assert a["requests"] > 20
    assert (c["requests"], c["hit_rate"]) != (a["requests"], a["hit_rate"])


@pytest.mark.parametrize("engine", ["step", "fluid"])
def test_every_request_completes_or_is_counted_as_an_error(engine: str) -> None:
    src = small_source(pods=3)
    expected = sum(len(s.requests) for s in src.sessions())
    # a pod dies mid-run (no drain) on top of the rolling restart: some requests retry, some may fail
    res = Fleet(spec(engine=engine, deaths=((2.5, 1),)), src).run().summary
    assert res["requests"] == expected
    assert res["ok"] + res["error_count"] == expected
    assert sum(res["per_phase"][p]["requests"] for p in res["per_phase"]) == expected
    assert res["restarts"][0]["event"] == "restart" or any(r["event"] == "death" for r in res["restarts"])
    assert any(r["event"] == "death" for r in res["restarts"])


def _sequential(reqs: list[SimRequest], gap_s: float = 5.0) -> list[SimRequest]:
    return [dataclasses.replace(r, t=i * gap_s) for i, r in enumerate(reqs)]


@pytest.mark.parametrize("engine", ["step", "fluid"])
def test_one_pod_with_room_for_everything_hits_exactly_the_oracle(engine: str) -> None:
    """One pod whose cache holds every block, requests one at a time: it IS the infinite shared cache."""
    cfg = WorkloadConfig(seed=3, warmup_s=0.0, steady_s=4.0, hot_s=0.0, restart_s=0.0, session_rate=2.0, pods=0)
    wl = generate_workload(cfg)
    reqs = [
        from_messages(r.session_id, r.turn, r.t, r.phase, r.tenant, r.tenant_id, r.messages, r.max_tokens)
        for r in wl.requests
    ]
    res = Fleet(spec(pods=1, engine=engine, kv_blocks=100_000), ListSource(_sequential(reqs))).run().summary
    orc = workload_oracle(wl)
    assert res["ok"] == len(reqs)
    assert res["hit_rate"] == pytest.approx(orc.hit_rate, abs=1e-12)
    assert res["oracle_hit_rate"] == pytest.approx(orc.hit_rate, abs=1e-12)


def _ab_request(c: str, turn: int) -> SimRequest:
    """Turn ``turn`` of session "s": prompt A or B (by ``c``), each 40 full chunks (640 tokens) + a partial block."""
    text = c * 64 * 40 + "tail"
    return from_messages("s", turn, 0.0, "steady", 0, "", ({"role": "user", "content": text},), 4)


def _one_pod(order: str, kv_blocks: int, engine: str = "step") -> dict[str, Any]:
    """One pod, prompts A and B in ``order`` one at a time; 60 blocks: one prompt (~42 blocks with its output)
    fits, two do not; 200: both do."""
    reqs = [_ab_request(c, i) for i, c in enumerate(order)]
    fleet = Fleet(spec(pods=1, engine=engine, kv_blocks=kv_blocks, max_model_len=900), ListSource(_sequential(reqs)))
    return fleet.run().summary


@pytest.mark.parametrize("engine", ["step", "fluid"])
def test_one_pod_lru_keeps_what_fits_and_evicts_the_oldest(engine: str) -> None:
    """A cache with room for one prompt: A, A hits the second time; A, B, A misses the third time (evicted)."""

    def run(order: str, kv_blocks: int = 60) -> dict[str, Any]:
        return _one_pod(order, kv_blocks, engine)

    def run_big(order: str) -> dict[str, Any]:
        return run(order, 200)

    first = _ab_request("a", 0)
    full, tokens = len(first.hashes), first.prompt_tokens
    aa = run("aa")
    assert aa["hit_rate"] == pytest.approx(full * 16 / (2 * tokens))
    # B evicts A's blocks from the free queue's head: a finished request's blocks are freed tail first, so A's
    # tail goes and its leading blocks survive (vLLM's order): the third request hits a strict prefix of A
    aba = run("aba")
    hit_tokens = round(aba["hit_rate"] * 3 * tokens)
    assert 0 < hit_tokens < full * 16 and hit_tokens % 16 == 0
    assert aba["oracle_hit_rate"] == pytest.approx(full * 16 / (3 * tokens))
    # with room for both, nothing is evicted: A hits in full the third time
    assert run_big("aba")["hit_rate"] == pytest.approx(full * 16 / (3 * tokens))


def test_flat_layout_spreads_a_tenants_sessions_the_grouped_one_keeps_them_together() -> None:
    """Grouped keys put a tenant's sessions in one slice (one subset); flat keys hash each session anywhere."""
    from axon_router.routing_key import routing_key
    from sharder.assignment import initial_assignment
    from sharder.config import TargetConfig
    from sharder.pods import Pod

    src = small_source()
    a = initial_assignment(TargetConfig("sim"), [Pod(f"p{i}", f"a{i}", target="sim") for i in range(8)])
    slices: dict[str, dict[str, set[int]]] = {"grouped": {}, "flat": {}}
    for layout in slices:
        k = Knobs(key_layout=layout)
        for s in src.sessions():
            r = s.requests[0]
            rk = routing_key(
                k, list(r.hashes[:256]), "", r.stable_bytes, ("x-session-id", r.session), ("x-tenant-id", r.tenant)
            )
            slices[layout].setdefault(r.tenant, set()).add(a.index_of(rk.slice_key))
    assert all(len(v) == 1 for v in slices["grouped"].values())
    assert any(len(v) > 1 for v in slices["flat"].values())


def test_more_pods_share_the_same_traffic() -> None:
    src = lambda: small_source(pods=1)  # noqa: E731
    one = Fleet(spec(pods=1, restarts=False), src()).run().summary
    four = Fleet(spec(pods=4, restarts=False), src()).run().summary
    assert one["requests"] == four["requests"]
    assert one["pod_requests"] == [one["ok"]]
    assert len(four["pod_requests"]) == 4 and sum(four["pod_requests"]) == four["ok"]
    assert four["assigner"]["rounds"] > 0


def test_staggered_registration_starts_with_every_pod_holding_a_slice() -> None:
    """As bench/compare.py's pools: the first pod gets every slice, the rest join before traffic starts."""
    f = Fleet(spec(pods=5), small_source(pods=5))
    held = f._held(f.assignment)
    assert sorted(held) == [p.id for p in f.pods]
    assert len(held["pod-0"]) == len(f.assignment.slices)  # the first pod still holds every slice
    even = Fleet(spec(pods=5, registration="even"), small_source(pods=5))
    counts = sorted(len(v) for v in even._held(even.assignment).values())
    assert counts[-1] - counts[0] <= 1


def test_the_registrations_warm_up_marks_clear_before_traffic_as_the_bench_pods_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pods that join after the first are marked warming on the slices they are filled onto. On the bench they
    warm at once (their donor has served nothing) and the leader clears the marks within a round, before traffic.
    The simulator must too: a mark left standing keeps new sessions off the pod (warming replicas take no new
    session while a warm one can) and, at the first committed round seconds later, copies the first pod's prompts
    onto every other pod."""
    f = Fleet(spec(pods=4), small_source(pods=4))
    assert sum(len(sa.warming) for sa in f.assignment.slices) > 0  # the registration marks the joiners
    seen: list[tuple[float, int, int]] = []
    orig = Fleet._round

    def rnd(self: Fleet, t: float) -> None:
        orig(self, t)
        seen.append((t, sum(len(sa.warming) for sa in self.assignment.slices), self.warm_n))

    monkeypatch.setattr(Fleet, "_round", rnd)
    f.run()
    first_t, first_marks, first_sent = seen[0]
    assert first_t <= 0.5 and first_marks == 0  # cleared by the first round
    assert first_sent == 0  # and nothing was warmed for them: the donor had served nothing


def test_faster_pods_answer_sooner_and_several_routers_conserve_requests() -> None:
    slow = Fleet(spec(restarts=False), small_source()).run().summary
    fast = Fleet(spec(restarts=False, capacities=(2.0,)), small_source()).run().summary
    assert fast["requests"] == slow["requests"]
    assert fast["ttft_p50_ms"] < slow["ttft_p50_ms"]
    mixed = Fleet(spec(capacities=(1.0, 3.0), routers=3), small_source()).run().summary
    assert mixed["routers"] == 3 and mixed["capacities"] == [1.0, 3.0]
    assert mixed["ok"] + mixed["error_count"] == mixed["requests"] == slow["requests"]


def test_prefetched_sessions_come_from_a_second_process_in_the_same_order() -> None:
    from brunoise.simulate.source import Prefetched

    inner = small_source()
    direct = [(s.session, [r.hashes for r in s.requests]) for s in inner.sessions()]
    pre = Prefetched(inner, batch=3, depth=2)
    got = [(s.session, [r.hashes for r in s.requests]) for s in pre.sessions()]
    assert got == direct and len(direct) > 5
    a = Fleet(spec(), inner).run().summary
    b = Fleet(spec(), Prefetched(small_source(), batch=4)).run().summary
    assert a == b


@pytest.mark.parametrize("engine", ["step", "fluid"])
def test_a_stop_mid_step_returns_the_requests_whose_finish_was_not_yet_reported(engine: str) -> None:
    """A step is applied when it starts and reported at its end: a request that finished inside the step the stop
    interrupts was never seen to finish, so the stop must hand it back (it once vanished, and the run never ended)."""
    from brunoise.simulate.engines import make_engine
    from runtime.engines.sim import SimConfig, virtual_request

    seen: list[tuple[str, str]] = []
    e = make_engine(engine, SimConfig(kv_blocks=256, max_model_len=2048), lambda r, t: seen.append(("first", r.id)),  # type: ignore[attr-defined]
                    lambda r, t: seen.append(("finish", r.id)))  # type: ignore[attr-defined]  # fmt: skip
    req = virtual_request("a", 64, tuple(range(4)), 1, 0.0, 0)
    e.submit(req, 0.0)
    due = e.next_time()
    assert due is not None and due > 0.0
    gone = e.abort_all()  # stopped before the step that finishes "a" is reported
    assert [getattr(r, "id", None) for r in gone] == ["a"]
    assert seen == []
    assert e.next_time() is None


def test_a_request_lost_by_an_engine_ends_the_run_as_unfinished(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run is bounded: a request whose finish never comes is counted as an error once the run is past its
    source by ``OVERRUN_S``, instead of the rounds ticking on forever."""
    import brunoise.simulate.fleet as fleet_mod

    src = small_source(pods=3)
    expected = sum(len(s.requests) for s in src.sessions())
    keep = fleet_mod.Fleet._on_finish

    def lose_one(self: Fleet, p: Any, ereq: Any, t: float) -> None:
        if ereq.id == "r5":
            p.set_inflight(t, -1)
            return  # the engine finished it, the fleet never hears
        keep(self, p, ereq, t)

    monkeypatch.setattr(fleet_mod, "OVERRUN_S", 30.0)
    monkeypatch.setattr(fleet_mod.Fleet, "_on_finish", lose_one)
    res = Fleet(spec(), src).run().summary
    assert res["errors"].get("unfinished", 0) >= 1
    assert res["ok"] + res["error_count"] == res["requests"] <= expected


def test_warm_up_marks_are_warmed_from_the_donors_prompts_and_cleared() -> None:
    """The simulator warms as the system does: a replica that gains a slice prefills its donors' hottest prompts
    (at warm-up priority, kept out of the hit rate) and its mark clears once they are done; with
    ``warm_deadline_s`` 0 nothing is marked or warmed."""
    from sharder.config import TargetConfig

    src = small_source(pods=3)
    on = Fleet(spec(), src)
    res_on = on.run().summary
    assert on.warm_reports > 0  # the rolling restart and the balancing moved slices, and their new replicas warmed
    assert on.warm_n > 0 and all(not p.warm_jobs for p in on.pods)
    assert sum(p.warm_queries for p in on.pods) > 0  # the warm prefills' tokens, taken out of the hit rate
    assert all(not sa.warming for sa in on.assignment.slices) or on.warm_since  # a mark left is still on the clock
    off = Fleet(spec(config=TargetConfig("sim", warm_deadline_s=0.0)), small_source(pods=3))
    res_off = off.run().summary
    assert off.warm_n == 0 and off.warm_reports == 0 and not off.warm_done
    assert all(not sa.warming for sa in off.assignment.slices)
    assert res_on["requests"] == res_off["requests"]


def test_a_pod_warms_one_piece_at_a_time_and_never_ahead_of_a_waiting_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the runtime's one ``Warmer`` a pod: a pod that gains many slices at once (the rolling restart gives a
    restarted pod back its share) has at most one warm-up piece in its engine at a time, and sends none while a
    live request waits there (before, every mark had a piece in flight: a restarted pod prefilled 16 at once and
    a live request behind them waited 0.5 s)."""
    import brunoise.simulate.engines as engines_mod
    import brunoise.simulate.fleet as fleet_mod

    peak: dict[int, int] = {}
    waiting_at_send: list[int] = []
    submit = engines_mod.StepEngine.submit

    def counting_submit(self: Any, req: Any, t: float) -> None:
        if str(req.id).startswith("w"):
            waiting_at_send.append(self.load(t).waiting)
        submit(self, req, t)

    event = fleet_mod.Fleet._engine_event

    def watching_event(self: Any, p: Any, e: Any, t: float) -> None:
        peak[p.index] = max(peak.get(p.index, 0), len(p.warm_jobs))
        event(self, p, e, t)

    monkeypatch.setattr(engines_mod.StepEngine, "submit", counting_submit)
    monkeypatch.setattr(fleet_mod.Fleet, "_engine_event", watching_event)
    src = bench_source("chat_tenant", quick=False, seed=0, pods=4, overrides={})
    fleet = Fleet(spec(pods=4, engine="step"), src)
    fleet.run()
    assert len(waiting_at_send) > 20  # the restarts and the balancing warmed many slices
    assert max(peak.values()) == 1
    assert set(waiting_at_send) == {0}


def test_a_range_warmed_once_does_not_clear_a_later_mark_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the slicelet, a pod reports a warmed range only while some mark of its own inside it remains
    (``Slicelet._on_warming``), and a restart forgets it. The simulator kept every range a pod had ever warmed, so
    a pod that gained a slice again (a restarted pod taking its share back, a slice moved back) had the new mark
    cleared in the round it appeared, by a warm report from an earlier episode, and warmed nothing: 40 % of the
    marks of a docs run. A mark can be reported warm in its first round only by a race the slicelet has too (a
    range still reported for another mark inside it)."""
    import brunoise.simulate.fleet as fleet_mod
    from sharder.policy.warm import clear_warming as clear

    new_marks: list[int] = []
    cleared_at_once: list[int] = []
    runs: list[Fleet] = []

    def spying_clear(a: Any, warm: Any, expired: Any = ()) -> Any:
        out = clear(a, warm, expired)
        since = runs[-1].warm_since
        new = {(sa.slice.lo, p) for sa in a.slices for p in sa.warming if (sa.slice.lo, p) not in since}
        kept = {(sa.slice.lo, p) for sa in out.slices for p in sa.warming}
        new_marks.append(len(new))
        cleared_at_once.append(len(new - kept - set(expired)))
        return out

    monkeypatch.setattr(fleet_mod, "clear_warming", spying_clear)
    src = bench_source("docs", quick=False, seed=0, pods=4, overrides={})
    runs.append(Fleet(spec(pods=4, engine="step", kv_blocks=1536, max_model_len=8192), src))
    runs[-1].run()
    assert sum(new_marks) > 100  # the rolling restart and the balancing marked many replicas warming
    assert sum(cleared_at_once) <= 0.02 * sum(new_marks)


def test_restarts_run_one_at_a_time_as_the_bench_runs_them() -> None:
    """The bench restarts its pods one after another (``restart_pod`` is awaited before the next is due), so a
    long drain delays the next restart. The simulator started each at its planned time, and with the small
    source's 0.75 s between restarts and 1.5 s down each, two or three pods were out at once."""
    src = small_source(pods=3)
    fleet = Fleet(spec(), src)
    fleet.run()
    log = [r for r in fleet.restart_log if r.get("event") == "restart"]
    assert len(log) == 3
    planned = sorted(ev.t for ev in src.restarts)
    for k, (a, b) in enumerate(itertools.pairwise(log)):
        back = float(a["t"]) + float(a["down_s"])
        assert float(b["t"]) == pytest.approx(max(back, planned[k + 1]))


def test_the_routers_see_a_draining_pod_as_draining(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the router's ``TargetTable`` does from each generation's pod list, a simulated router marks the views of
    draining pods draining (the pick treats them apart). The simulator never did, so its pick kept sessions on
    a draining pod where the router's did not, and the sim's restart phase looked better than the bench's."""
    import brunoise.simulate.fleet as fleet_mod

    seen: list[tuple[set[str], set[str]]] = []
    publish = fleet_mod.Fleet._publish

    def watching(self: Any, a: Any, t: float) -> None:
        publish(self, a, t)
        for r in self.routers:
            if r.assignment is a:
                want = {p.id for p in a.pods if p.state.value == "draining"}
                seen.append((want, {i for i, v in r.views.items() if v.draining}))

    monkeypatch.setattr(fleet_mod.Fleet, "_publish", watching)
    Fleet(spec(), small_source(pods=3)).run()
    assert any(want for want, _ in seen)  # the rolling restart drained pods
    assert all(want == got for want, got in seen)


def test_a_restart_lets_the_sessions_held_on_the_draining_pod_finish_as_the_bench_does() -> None:
    """Failure mode (stop 23): the simulator gave a restart 3 s to empty the pod of slices and 3 s more to go idle,
    then stopped it with requests running, while the routers keep a draining pod's sessions on it for
    ``drain_keep_s`` (5 s): agentic's streams broke at restarts (25 over six full-length seeds) where the bench's,
    which waits as an operator's ``brunoise drain --wait`` does (``bench/compare.py``: 20 s), broke none."""
    kv, mml = preset_sizing("agentic")
    src = bench_source("agentic", quick=True, seed=1, pods=4, overrides={})
    fleet = Fleet(FleetSpec(pods=4, kv_blocks=kv, max_model_len=mml), src)
    res = fleet.run().summary
    restarts = [r for r in fleet.restart_log if r.get("event") == "restart"]
    assert len(restarts) == 4
    assert all(r["busy_at_stop"] == 0 for r in restarts), restarts
    assert res["error_count"] == 0, res["errors"]


def test_warm_ups_read_what_a_donor_holds_as_the_bench_pods_kv_connector_does() -> None:
    """The bench's pods have a KV connector (``bench/compare.py``: 10 GB/s), and a warm-up reads the prompts a
    donor still holds (the runtime's ``Warmer`` and ``hold_kv``) instead of prefilling 16 KB of them: the
    simulator's warm-ups only prefilled. Without a connector they still do."""
    kv, mml = preset_sizing("agentic")
    runs = {}
    for gbps in (10.0, 0.0):
        src = bench_source("agentic", quick=True, seed=1, pods=4, overrides={})
        runs[gbps] = Fleet(FleetSpec(pods=4, kv_blocks=kv, max_model_len=mml, kv_transfer_gb_per_s=gbps), src)
        runs[gbps].run()
    read, prefill = runs[10.0], runs[0.0]
    assert read.warm_reads > 0 and read.warm_reads <= read.warm_n
    assert prefill.warm_reads == 0 and prefill.warm_n > 0
    # a read copies a long session whole, where a prefill warm-up copies at most its budget (16 KB) of a slice
    prefill_budget = warm_budget_bytes(kv, block_tokens=BLOCK_TOKENS) // TEXT_BYTES_PER_TOKEN
    assert read.warm_read_tokens / read.warm_reads > prefill_budget


def test_a_request_counts_in_the_phase_it_was_sent_in() -> None:
    """As bench/compare.py counts it: a turn its session planned in one phase but sent in the next (the session ran
    behind its schedule) counts in the phase it was sent in, for its requests, TTFT and oracle alike. The
    simulator used the planned phase, so its phases' figures and its oracle-relative restart/steady ratio
    described other requests than the pods' counters between the same phase marks."""
    a = "a" * 64 * 20
    late = from_messages("s", 0, 3.0, "steady", 0, "", ({"role": "user", "content": a},), 4)  # planned "steady"

    class TwoPhases(ListSource):
        def __init__(self) -> None:
            super().__init__([late])
            self.phases = (PhaseSpan("steady", 0.0, 2.0), PhaseSpan("hot_tenant", 2.0, self.duration_s))

    res = Fleet(spec(pods=1), TwoPhases()).run().summary
    hot, steady = res["per_phase"]["hot_tenant"], res["per_phase"]["steady"]
    assert (hot["requests"], steady["requests"]) == (1, 0)
    assert hot["ttft_p50_ms"] is not None and steady["ttft_p50_ms"] is None
    assert hot["oracle"] == 0.0 and steady["oracle"] is None


def test_pods_per_session_leaves_out_the_turns_sent_while_pods_restart() -> None:
    """As bench/compare.py counts it (every router must move a session whose pod restarts): pods per session over
    the turns sent outside the restart phase, and ``pods_per_session_all`` over every turn, each checked here
    against the run's request log (which pod served which turn, in which phase it was sent)."""
    res = Fleet(spec(request_log=True), small_source(seed=2, pods=3)).run().summary
    log = res["request_log"]
    assert len(log) == res["requests"]
    for phase, p in res["per_phase"].items():  # the log's phases are the ones the figures count in
        assert sum(1 for row in log if row[3] == phase) == p["requests"]

    def mean_pods(skip_restart: bool) -> float:
        by: dict[str, set[str]] = {}
        for _, session, _, phase, _, _, pod, _, _, error, _, _ in log:
            if not error and not (skip_restart and phase == "restart"):
                by.setdefault(session, set()).add(pod)
        return sum(map(len, by.values())) / len(by)

    assert any(row[3] == "restart" for row in log)
    assert res["pods_per_session"] == pytest.approx(mean_pods(skip_restart=True))
    assert res["pods_per_session_all"] == pytest.approx(mean_pods(skip_restart=False))
    assert res["pods_per_session_all"] > res["pods_per_session"]  # the restarts moved sessions: the two differ
    ok = [row for row in log if not row[9]]
    assert ok and all(row[5] is not None and row[5] >= 0 and 0 <= row[8] <= row[7] and row[11] for row in ok)
    assert "request_log" not in Fleet(spec(), small_source(seed=2, pods=3)).run().summary  # opt-in


def test_the_step_engine_reads_a_peers_kv_in_virtual_time_and_runs_other_requests_meanwhile() -> None:
    """A warm-up read (``remote_tokens``) waits off the batch for the bytes to cross at ``kv_transfer_gb_per_s``,
    lands in the prefix cache without computing the prompt, and a request that arrives meanwhile runs at once."""
    from brunoise.simulate.engines import make_engine
    from runtime.engines.sim import BLOCK_TOKENS, SimConfig, virtual_request

    cfg = SimConfig(kv_blocks=256, max_model_len=4096, kv_transfer_gb_per_s=1.0)
    firsts: dict[str, float] = {}
    e = make_engine("step", cfg, lambda r, t: firsts.setdefault(r.id, t), lambda r, t: None)  # type: ignore[attr-defined]
    assert e.kv_transfer
    tokens = 64 * BLOCK_TOKENS
    hashes = tuple(range(1000, 1064))
    read = virtual_request("read", tokens, hashes, 1, 0.0)
    read.remote_tokens = tokens
    e.submit(read, 0.0)
    land = (tokens - BLOCK_TOKENS) * cfg.kv_bytes_per_token / 1e9  # all but the block holding the last token
    assert e.next_time() == pytest.approx(land)  # nothing runs until the read lands
    other = virtual_request("other", BLOCK_TOKENS + 1, tuple(range(1)), 1, land / 10)
    e.submit(other, land / 10)  # arrives while the read is in flight: it does not wait for it
    t = land / 10
    for _ in range(100):
        nt = e.next_time()
        if nt is None:
            break
        t = nt
        e.advance(t)
    assert firsts["other"] < land
    prefill_s = tokens * cfg.per_prefill_token_s
    assert land <= firsts["read"] < land + prefill_s / 4  # read, not computed: one block's step after it lands
    assert all(h in e.kv.cached for h in hashes[: tokens // BLOCK_TOKENS - 1])


def test_kv_pull_hints_read_a_moved_sessions_history_only_through_a_connector() -> None:
    """A session the pick sends away from the pod holding its history (for room, for speed) reads it from that pod
    when the router names it (``kv_pull_min_chunks``) and both pods have a KV connector; with the knob at 0 no hint is
    sent, and without a connector a hint reads nothing."""
    blocks, max_len = preset_sizing("agentic")

    def run(min_chunks: int, gbps: float = 10.0) -> dict[str, Any]:
        knobs = dataclasses.replace(Knobs(), kv_pull_min_chunks=min_chunks)
        src = bench_source("agentic", quick=False, seed=0, pods=4, overrides={})
        fs = spec(pods=4, kv_blocks=blocks, max_model_len=max_len, knobs=knobs, kv_transfer_gb_per_s=gbps)
        return Fleet(fs, src).run().summary

    on, off, bare = run(128), run(0), run(128, gbps=0.0)
    assert on["kv_pulls"]["hinted"] > 0 and 0 < on["kv_pulls"]["read"] <= on["kv_pulls"]["hinted"]
    assert on["kv_pulls"]["read_tokens"] >= 128 * on["kv_pulls"]["read"]  # each read at least the threshold's worth
    assert off["kv_pulls"] == {"hinted": 0, "read": 0, "read_tokens": 0}
    assert bare["kv_pulls"]["read"] == 0
    assert on["requests"] == off["requests"] == bare["requests"]


def test_a_kv_pull_reads_the_peers_whole_prompt_as_its_own_request_before_the_client_request() -> None:
    """Failure mode (stop 29): the simulator let the client request itself read the part of its prompt a peer held,
    where the runtime (``Warmer.pull``) first reads the peer's whole latest prompt among the hint's keys (a group's
    can be another session's longer history, all of it taking KV room) in a prompt-only request of its own, and only
    then sends the client request, whose hit is what of that read is still cached when it is scheduled. The
    simulator now does the same: the read is a request of the donor prompt's length, with ``remote_tokens``."""
    # chat_tenant's prompts fit the pods' caches many times over, so some pod still holds a whole latest prompt when
    # the run ends (agentic's long histories evict each other: whether one survives depends on the last placements)
    blocks, max_len = preset_sizing("chat_tenant")
    src = bench_source("chat_tenant", quick=True, seed=0, pods=4, overrides={})
    f = Fleet(spec(pods=4, kv_blocks=blocks, max_model_len=max_len, kv_transfer_gb_per_s=10.0), src)
    f.run()
    assert f.assignment is not None
    found = [
        (d, r, key, e)
        for d in f.pods for key, e in reversed(d.prompts.items()) if d.holds(tuple(e[1]))
        for r in f.pods if r is not d and d.id in f._peers(r.id)
    ]  # fmt: skip
    assert found, "some pod holds a prompt a peer may read"
    donor, reader, key, (_, hashes, tokens) = found[0]
    first_half = tuple(hashes[: len(hashes) // 2])  # a request sharing only the first half of the donor's prompt
    read = f._pull(reader, PullHint(donor.id, key, key + 1), first_half, 99.0)
    assert read is not None and len(read.tokens) == tokens and read.remote_tokens == tokens
    assert read.arrival == 99.0
    assert f._pull(reader, PullHint(reader.id, key, key + 1), first_half, 99.0) is None, "not its own peer"


def test_the_oracles_hits_are_split_by_where_they_were_at_the_pick() -> None:
    """The infinite cache's hits of each request, at the pick: on the pod picked, only on another pod (what the
    placement loses unless a KV pull reads it) or on none (what the pool's capacity loses); shares of the oracle's
    hits, per phase and whole. One pod: never another; room for one prompt (A, B, A): the third A's leading
    blocks still on the pod, the rest evicted; a three-pod chat run: some of each."""
    roomy = _one_pod("aba", 200)
    assert roomy["oracle_held"] == {"picked": 1.0, "other": 0.0, "none": 0.0}
    assert roomy["per_phase"]["steady"]["oracle_held"] == roomy["oracle_held"]
    tight = _one_pod("aba", 60)  # B evicted A's tail blocks: A's leading ones survive (test_one_pod_lru_...)
    held = tight["oracle_held"]
    assert held["other"] == 0.0 and 0.0 < held["picked"] < 1.0 and held["none"] > 0.0
    assert held["picked"] == pytest.approx(tight["hit_over_oracle"], abs=1e-3)  # nothing queued: picked = hit
    assert _one_pod("ab", 200)["oracle_held"] is None  # no request the oracle hits
    three = Fleet(spec(engine="step"), small_source()).run().summary
    whole = three["oracle_held"]
    assert sum(whole.values()) == pytest.approx(1.0, abs=1e-3) and whole["picked"] > 0.5
    assert whole["other"] > 0.0  # a new session balanced away from the pod holding its tenant's prompt
    assert Fleet(spec(oracle=False), small_source()).run().summary["oracle_held"] is None


def test_a_request_retried_after_its_pod_died_is_placed_once() -> None:
    """Failure mode: a request whose pod died before its first token was placed again at its retry, so its
    oracle hit counted twice in ``oracle_held``. Every oracle hit chunk is placed exactly once."""
    fleet = Fleet(spec(deaths=((5.0, 1),)), small_source(seed=2))
    res = fleet.run()
    assert res.summary["retries"] > 0  # the death caught requests before their first token
    placed = sum(sum(acc) for acc in res.ph_held.values())
    hit_tokens = sum(acc[1] for acc in res.ph_oracle.values())
    assert placed * BLOCK_TOKENS == hit_tokens
