"""Phase 3: fill every slice up to min_replicas on eligible active pods, least loaded first (ties: fewest slices)."""

from __future__ import annotations

from sharder.policy.round_state import LoadHeap, RoundState


def fill(state: RoundState) -> None:
    """Give each slice with fewer than min(min_replicas, eligible pods) replicas the least loaded eligible pods
    it does not hold yet (a pod leaving the slice may come back). Equal loads (an idle target: all zero) go to
    the pod holding the fewest slices, then the lowest pod id, so replicas spread evenly by count. Not limited
    by the churn budget."""
    need = min(state.config.min_replicas, len(state.eligible))
    if need == 0:
        return
    short = sorted((rec for rec in state.recs if len(rec.replicas) < need), key=lambda r: (-r.load, r.lo))
    if not short:
        return
    heap = LoadHeap(state, 1.0, state.eligible, by_count=True)
    try:
        for rec in short:
            while len(rec.replicas) < need:
                skipped: list[str] = []
                chosen = None
                while True:
                    p = heap.pop()
                    if p is None:
                        break
                    if p in rec.replicas:
                        skipped.append(p)
                        continue
                    chosen = p
                    break
                for p in skipped:
                    heap.push(p)
                if chosen is None:  # cannot happen while need <= eligible pods
                    break
                state.add_replica(rec, chosen)  # pushes the new entries of every touched pod
                state.stats.fills += 1
    finally:
        heap.detach()


__all__ = ["fill"]
