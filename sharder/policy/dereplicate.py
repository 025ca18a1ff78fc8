"""Phase 7: remove replicas of slices whose per-replica load has fallen (down to min_replicas)."""

from __future__ import annotations

from sharder.policy.round_state import RoundState


def dereplicate(state: RoundState) -> None:
    """A slice with more than ``min_replicas`` replicas loses the replica that served the least of its load
    (the one whose cache holds the least of its sessions; ties: the most loaded pod) when its
    per-replica load is below ``dereplicate_threshold`` x mean pod load and the remaining replicas stay below
    ``split_threshold`` (hysteresis against re-replication). The removed pod stays ``leaving`` one round.
    Each removal spends the victim's own share of the load from the churn budget; an idle target dereplicates
    for free. Calm: a slice still cooling down from its last change keeps its replicas."""
    cfg = state.config
    if cfg.dereplicate_threshold <= 0:
        return
    floor = max(cfg.min_replicas, 1)
    mean = state.mean_ref()
    low = cfg.dereplicate_threshold * mean
    high = cfg.split_threshold * mean
    for rec in state.recs:
        if len(rec.replicas) <= floor or rec.pinned or rec.moved or state.cooling(rec):
            continue
        while len(reps := rec.replicas) > floor:
            r = len(reps)
            share = rec.load / r
            if rec.load > 0 and not (share < low and rec.load / (r - 1) <= high):
                break
            served = rec.served or {}
            victim = min(reps, key=lambda p: (served.get(p, 0.0), -state.norm(p), p))
            spent = state.share_of(rec, victim)
            if spent > state.budget:
                break
            state.remove_replica(rec, victim)
            state.budget -= spent
            state.stats.churn += spent
            state.stats.dereplications += 1
            rec.moved = True


__all__ = ["dereplicate"]
