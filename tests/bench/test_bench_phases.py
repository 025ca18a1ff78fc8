"""A request belongs to the phase it was sent in: the phases' oracles and pods per session go by the clock."""

from __future__ import annotations

import dataclasses

from bench.client import Result
from bench.compare import pods_per_session
from bench.workload import (
    PHASE_RESTART,
    PHASE_STEADY,
    Session,
    Workload,
    WorkloadConfig,
    generate,
    prompt_tokens,
    sent_oracle,
    workload_oracle,
)

CFG = WorkloadConfig(seed=3, warmup_s=1.0, steady_s=4.0, hot_s=2.0, restart_s=3.0, session_rate=3.0)


def _workload() -> Workload:
    return generate(CFG)


def _steady_session(wl: Workload) -> Session:
    """A session of three turns or more whose last turn is planned in the steady phase."""
    return next(s for s in wl.sessions if len(s.requests) >= 3 and s.requests[-1].phase == PHASE_STEADY)


def _on_schedule(wl: Workload) -> list[Result]:
    """Every request sent at its planned time, each session on a pod of its own."""
    out = []
    for k, s in enumerate(wl.sessions):
        for q in s.requests:
            out.append(Result(q.index, q.phase, status=200, sent_s=q.t, pod=f"pod-{k}"))
    return out


def test_a_turn_sent_late_into_the_restart_phase_counts_there_in_the_oracle() -> None:
    wl = _workload()
    late = _steady_session(wl).requests[-1]
    sent = [(r.sent_s, r.index, r.phase) for r in _on_schedule(wl)]
    planned = sent_oracle(wl, sent)
    assert planned == workload_oracle(wl)  # on schedule: the planned oracle
    end = wl.phases[-1].end
    moved = [(end, i, PHASE_RESTART) if i == late.index else (t, i, ph) for t, i, ph in sent]
    got = sent_oracle(wl, moved)
    n = prompt_tokens(late.prompt)
    assert got.query_tokens == planned.query_tokens
    assert got.per_phase[PHASE_STEADY][0] == planned.per_phase[PHASE_STEADY][0] - n
    assert got.per_phase[PHASE_RESTART][0] == planned.per_phase[PHASE_RESTART][0] + n
    # sent last, its history is all there: the whole prompt but its last chunk is a hit
    assert got.per_phase[PHASE_RESTART][1] > planned.per_phase[PHASE_RESTART][1]


def test_pods_per_session_leaves_out_a_hop_sent_while_pods_restart_though_planned_before() -> None:
    """A closed-loop session behind its schedule sends a turn planned in the steady phase while the pods restart,
    and its pod is restarting, so it lands on another pod: that hop is the restart's, not the router's."""
    wl = _workload()
    sess = _steady_session(wl)
    last = sess.requests[-1]
    results = _on_schedule(wl)
    i = next(k for k, r in enumerate(results) if r.index == last.index)
    results[i] = dataclasses.replace(results[i], phase=PHASE_RESTART, sent_s=wl.phases[-1].start + 0.5, pod="pod-x")
    assert pods_per_session(wl, results) == 1.0
    assert pods_per_session(wl, results, skip_restart=False) == (len(wl.sessions) + 1) / len(wl.sessions)
