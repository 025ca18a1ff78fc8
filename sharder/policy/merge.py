"""Phase 5: merge adjacent cold slices that have the same replicas, keeping the slice count bounded."""

from __future__ import annotations

from sharder.policy.round_state import Rec, RoundState

CALM_MERGE_MARGIN = 0.5


def mergeable(state: RoundState, a: Rec, b: Rec) -> bool:
    """Adjacent ``a`` and ``b`` may become one slice: same replica and leaving sets, no pin, no kept boundary,
    and every replica keeps at least ``min_slices_per_pod`` slices."""
    if a.pinned or b.pinned or a.nosplit or b.nosplit or b.lo in state.keep_bounds:
        return False
    ra, rb = a.replicas, b.replicas
    if ra != rb and (len(ra) != len(rb) or set(ra) != set(rb)):
        return False
    if a.leaving != b.leaving and set(a.leaving) != set(b.leaving):
        return False
    floor = state.config.min_slices_per_pod
    if floor:
        count = state.count
        return all(count[p] > floor for p in ra)
    return True


def join(state: RoundState, a: Rec, b: Rec) -> Rec:
    """``a`` and ``b`` (adjacent, mergeable) as one slice; counts updated, pod loads unchanged."""
    m = Rec(a.lo, b.hi, None, a.replicas, a.leaving, a.load + b.load, max(a.since, b.since))
    if a.keysrc or b.keysrc:
        m.keysrc = [*(a.keysrc or ()), *(b.keysrc or ())]
    m.moved = a.moved or b.moved
    if a.served is not None or b.served is not None:
        m.served = dict(a.served or {})
        for p, v in (b.served or {}).items():
            m.served[p] = m.served.get(p, 0.0) + v
    if a.share is not None or b.share is not None:
        m.share = {p: state.share_of(a, p) + state.share_of(b, p) for p in a.replicas}
    count = state.count
    for p in a.replicas:
        count[p] -= 1
    state.stats.merges += 1
    return m


def merge_cold(state: RoundState) -> None:
    """Merge runs of adjacent slices whose combined load stays below ``merge_threshold`` x mean pod load (below
    ``split_threshold`` by a factor of at least split/merge, so a merged slice does not split again). Calm: the
    loads are smoothed over rounds (a slice must have been cold for several rounds), a merge also stays under
    ``CALM_MERGE_MARGIN`` x the split threshold, and slices cooling down from a split or move do not merge."""
    cfg = state.config
    mean = state.mean_ref()
    if cfg.merge_threshold <= 0 or mean <= 0 or len(state.recs) < 2:
        return
    limit = cfg.merge_threshold * mean
    if cfg.calm:  # a merged slice stays at most half the split threshold, whatever the thresholds
        limit = min(limit, CALM_MERGE_MARGIN * cfg.split_threshold * mean)
    cool_since = state.cool_since
    out: list[Rec] = []
    cur = state.recs[0]
    for nxt in state.recs[1:]:
        ra, rb = cur.replicas, nxt.replicas
        if (
            cur.load + nxt.load < limit
            and cur.since < cool_since  # not cooling
            and nxt.since < cool_since
            # the same replica set; most neighbours differ in their first replica already (no sets built)
            and (ra == rb or ((not ra or ra[0] in rb) and set(ra) == set(rb)))
            and mergeable(state, cur, nxt)
        ):
            cur = join(state, cur, nxt)
        else:
            out.append(cur)
            cur = nxt
    out.append(cur)
    state.recs = out


__all__ = ["join", "merge_cold", "mergeable"]
