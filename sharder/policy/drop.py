"""Phase 1: drop dead, vanished and ineligible pods; hand draining pods' slices over (make-before-break)."""

from __future__ import annotations

from sharder.pods import Pod, PodState, eligible
from sharder.policy.round_state import RoundState


def drop_pods(state: RoundState, previous_pods: tuple[Pod, ...]) -> None:
    """Remove replicas that are not eligible ACTIVE pods. Draining replicas move to ``leaving`` (they keep
    serving for one more generation while the fill phase adds replacements); dead, unknown or ineligible ones
    go at once. Pods that were already ``leaving`` leave now, unless the slice has no replica at all (then the
    still-serving ones stay until a replacement exists), and a draining one stays while every replica of the
    slice is still warming (warm-up on reshard: a replacement with no warm replica beside it fills its cache from
    the draining pod's prompts, and a drain stops the pod once it holds no slice; the leader clears a mark at
    ``warm_deadline_s`` at the latest), or while some replica still warms and the draining pod served load from
    the slice (``Rec.served``): the warm replicas beside the replacement are warm for the slice, not for the
    sessions and documents the draining pod alone holds, which the replacement copies from it (leaving donors
    first) while the draining pod keeps serving them. A draining pod that served nothing there leaves at once.
    Replicas beyond ``max_replicas`` leave too."""
    pods = state.pods
    ok = state.eligible_set
    gen = state.generation
    cfg = state.config
    mx = cfg.max_replicas
    state.stats.dropped_pods = sum(
        1 for p in previous_pods if (q := pods.get(p.id)) is None or q.state is PodState.DEAD
    )
    for rec in state.recs:
        reps = rec.replicas
        old_leaving = rec.leaving
        reps_ok = ok.issuperset(reps)
        if not old_leaving and reps_ok and len(reps) <= mx:
            continue
        new_leaving: list[str] = []
        if not reps_ok:
            keep: list[str] = []
            for p in reps:
                if p in ok:
                    keep.append(p)
                else:
                    pod = pods.get(p)
                    if pod is not None and pod.state is PodState.DRAINING and _serving(pod, state):
                        new_leaving.append(p)
            rec.replicas = reps = tuple(keep)
            rec.since = gen
        if len(reps) > mx:
            new_leaving.extend(reps[mx:])
            rec.replicas = reps = reps[:mx]
            rec.since = gen
        # a draining pod stays while every replica still warms (nothing else is warm), or while some replica warms
        # and the pod served load here (its cache, which the replacement copies, holds this slice's sessions)
        marks = rec.orig.warming if rec.orig is not None else ()
        copying = bool(reps) and bool(marks) and not set(marks).isdisjoint(reps)
        if old_leaving and (not reps or copying):
            all_warming = set(reps) <= set(marks)
            served = rec.served or {}
            for p in old_leaving:
                pod = pods.get(p)
                if (
                    pod is not None and _serving(pod, state) and p not in new_leaving
                    and (not reps or (pod.state is PodState.DRAINING and (all_warming or served.get(p, 0.0) > 0.0)))
                ):  # fmt: skip
                    new_leaving.append(p)
        rec.leaving = tuple(new_leaving)


def _serving(pod: Pod, state: RoundState) -> bool:
    cfg = state.config
    return (
        pod.state is not PodState.DEAD
        and (not pod.target or pod.target == cfg.target)
        and eligible(pod, cfg.eligibility)
    )


__all__ = ["drop_pods"]
