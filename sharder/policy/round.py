"""The resharding round: runs the phases in order on a working copy and returns the next generation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sharder.assignment import Assignment, RoundStats, SliceAssignment, assignment_pods
from sharder.config import TargetConfig
from sharder.errors import ConfigError, InvariantError
from sharder.keyspace import Slice
from sharder.load import LoadReport
from sharder.pods import Pod, serves
from sharder.policy.calm import gate, imbalance
from sharder.policy.dereplicate import dereplicate
from sharder.policy.drop import drop_pods
from sharder.policy.fill import fill
from sharder.policy.memory import EMPTY, PolicyMemory, remember, smooth
from sharder.policy.merge import merge_cold
from sharder.policy.move import balance_counts, rebalance
from sharder.policy.pin import apply_overrides
from sharder.policy.reports import attribute, check_reports
from sharder.policy.round_state import Rec, RoundState
from sharder.policy.slice_counts import keep_band
from sharder.policy.split import split_hot
from sharder.policy.warm import mark_warming


def reshard(
    assignment: Assignment,
    pods: Iterable[Pod],
    reports: Sequence[LoadReport],
    *,
    config: TargetConfig | None = None,
    now_ms: int = 0,
    memory: PolicyMemory | None = None,
) -> Assignment:
    """One policy round: the assignment of generation ``assignment.generation + 1``.

    Pure and deterministic: the same inputs give the same output; nothing is read from a clock or a random
    source. Phases, in order: attribute reports to slices; smooth loads with the memory (calm); drop
    dead/ineligible pods (draining ones leave make-before-break); apply overrides; fill to ``min_replicas``;
    decide whether this round balances (calm: a streak of imbalanced rounds, then down to the target); split
    hot slices (replicate one-key ones);
    merge cold neighbours; move load from pods above (1+tolerance) x mean within the churn budget;
    dereplicate cooled slices; move cold slices to pods holding far fewer slices than their fair share (count
    balancing, so pods joining an idle target get slices); keep slices per pod within the band; mark the
    replicas that gained a slice as warming (``sharder.policy.warm``; cleared by the leader).

    ``pods`` is the full current pod list (with states); a pod absent from it is treated as dead. ``config``
    replaces the assignment's config (same target). ``memory`` (default: ``assignment.memory``) is what the
    previous round left for this one; the result carries the next in its ``memory``. A caller that drops a
    result (say, because its placement did not change) should hand that result's memory to the next round,
    or calm balancing never sees a streak of rounds. Invalid input raises before anything is computed:
    ConfigError, UnknownPodError (a report from a pod not in ``pods``), LoadReportError, InvariantError
    (duplicate pod ids).
    """
    cfg = assignment.config if config is None else config
    cfg.validate()
    if cfg.target != assignment.target:
        raise ConfigError(
            f"config is for target {cfg.target!r} but the assignment is for {assignment.target!r}", field="target"
        )
    if not isinstance(now_ms, int) or isinstance(now_ms, bool) or now_ms < 0:
        raise ConfigError(f"now_ms must be an int >= 0, got {now_ms!r}", field="now_ms")
    pod_list = list(pods)
    pod_map: dict[str, Pod] = {}
    for p in pod_list:
        if not isinstance(p, Pod):
            raise InvariantError(f"pods must hold Pod objects, got {type(p).__name__}", field="pods")
        if p.id in pod_map:
            raise InvariantError(f"pod id {p.id!r} appears twice in pods", field="pods")
        pod_map[p.id] = p
    good = check_reports(reports, pod_map, cfg)
    listed = assignment_pods(cfg, pod_list)

    gen = assignment.generation + 1
    target, elig_labels = cfg.target, cfg.eligibility
    eligible = sorted(p.id for p in pod_list if serves(p, target, elig_labels))
    capacity = dict.fromkeys(eligible, 1.0)
    for r in good:
        if r.pod_id in capacity:
            capacity[r.pod_id] = r.engine.capacity

    recs = [
        Rec((s := sa.slice).lo, s.hi, s, sa.replicas, sa.leaving, sa.load, sa.since_generation, sa)
        for sa in assignment.slices
    ]
    mem = memory if memory is not None else assignment.memory if assignment.memory is not None else EMPTY
    state = RoundState(cfg, gen, recs, pod_map, eligible, capacity)
    state.counting = mem.counting
    attribute(state.recs, good)
    if cfg.calm:
        smooth(state.recs, mem, cfg.load_smoothing)
    drop_pods(state, assignment.pods)
    apply_overrides(state, assignment.overrides)
    state.recompute()
    state.budget = cfg.churn_budget * state.total_load
    fill(state)
    over_rounds, acting = gate(state, mem)
    split_hot(state)
    merge_cold(state)
    rebalance(state)
    load_moves = state.stats.moves
    dereplicate(state)
    balance_counts(state)
    keep_band(state)
    if cfg.calm and acting and load_moves > 0:
        # one round of load moves per episode: the moved sessions' load shows in the reports only over the next
        # rounds (running sessions finish where their cache is, the smoothing fades the donor's share), so acting
        # on again would move more for an imbalance already being fixed; a new episode needs a new streak
        over_rounds, acting = 0, False

    return Assignment(
        target=assignment.target,
        generation=gen,
        slices=mark_warming(assignment, _freeze(state.recs), pod_map, enabled=cfg.warm_deadline_s > 0),
        pods=listed,
        config=cfg,
        overrides=assignment.overrides,
        stats=_stats(state),
        created_unix_ms=now_ms,
        memory=remember(state, over_rounds, acting, mem.rounds),
    )


def _freeze(recs: list[Rec]) -> tuple[SliceAssignment, ...]:
    SA = SliceAssignment
    out: list[SliceAssignment] = []
    append = out.append
    for rec in recs:
        o = rec.orig
        if (
            o is not None
            and rec.slice is o.slice
            and rec.replicas is o.replicas
            and rec.leaving is o.leaving
            and rec.load == o.load
            and rec.since == o.since_generation
        ):
            append(o)
        else:
            s = rec.slice if rec.slice is not None else Slice(rec.lo, rec.hi)
            append(SA(s, rec.replicas, rec.leaving, rec.load, rec.since))
    return tuple(out)


def _stats(state: RoundState) -> RoundStats:
    s = state.stats
    total = state.total_load
    return RoundStats(
        moves=s.moves,
        splits=s.splits,
        merges=s.merges,
        replications=s.replications,
        dereplications=s.dereplications,
        fills=s.fills,
        churn=s.churn / total if total > 0 else 0.0,
        imbalance=imbalance(state),
        dropped_pods=s.dropped_pods,
    )


__all__ = ["reshard"]
