"""Phase 8: keep every pod's slice count within [min_slices_per_pod, max_slices_per_pod] by splitting and merging."""

from __future__ import annotations

from sharder.policy.merge import join, mergeable
from sharder.policy.round_state import Rec, RoundState
from sharder.policy.split import cut, median_point

MAX_BAND_SPLITS_PER_POD = 64


def keep_band(state: RoundState) -> None:
    """Pods above ``max_slices_per_pod`` get adjacent mergeable slices merged, coldest pairs first; pods below
    ``min_slices_per_pod`` get their hottest (then widest) slices split at the load median, as long as no
    co-replica goes above the maximum. Neither changes placement, so neither spends churn."""
    cfg = state.config
    count = state.count
    while any(c > cfg.max_slices_per_pod for c in count.values()) and _merge_down(state):
        pass
    if cfg.min_slices_per_pod and any(c < cfg.min_slices_per_pod for c in count.values()):
        _split_up(state)


def _merge_down(state: RoundState) -> bool:
    """One pass of merges of disjoint pairs; False when nothing could merge."""
    mx = state.config.max_slices_per_pod
    count = state.count
    recs = state.recs
    # candidate pairs (i, i+1) touching an over-full pod, coldest first
    pairs = sorted(
        (recs[i].load + recs[i + 1].load, i)
        for i in range(len(recs) - 1)
        if any(count[p] > mx for p in recs[i].replicas)
    )
    gone: set[int] = set()
    merged_into: dict[int, Rec] = {}
    for _, i in pairs:
        if i in gone or i + 1 in gone:
            continue
        a, b = merged_into.get(i, recs[i]), merged_into.get(i + 1, recs[i + 1])
        if not any(count[p] > mx for p in a.replicas) or not mergeable(state, a, b):
            continue
        merged_into[i] = join(state, a, b)
        gone.add(i + 1)
    if gone:
        state.recs = [merged_into.get(i, r) for i, r in enumerate(recs) if i not in gone]
    return bool(gone)


def _split_up(state: RoundState) -> None:
    cfg = state.config
    mn, mx = cfg.min_slices_per_pod, cfg.max_slices_per_pod
    count = state.count
    recs = state.recs
    need = {p for p, c in count.items() if c < mn}
    holders: dict[str, list[int]] = {p: [] for p in need}
    for i, rec in enumerate(recs):
        for p in rec.replicas:
            if p in need:
                holders[p].append(i)
    cuts: dict[int, int] = {}  # rec index -> extra pieces
    for p in sorted(need):
        idx = sorted(holders[p], key=lambda i: (-recs[i].load, -(recs[i].hi - recs[i].lo), recs[i].lo))
        budget = MAX_BAND_SPLITS_PER_POD
        k = 0
        while count[p] < mn and idx and budget > 0:
            i = idx[k % len(idx)]
            rec = recs[i]
            pieces = cuts.get(i, 0) + 2
            if rec.nosplit or rec.pinned or rec.hi - rec.lo < pieces or any(count[q] + 1 > mx for q in rec.replicas):
                idx.remove(i)
                continue
            cuts[i] = pieces - 1
            for q in rec.replicas:
                count[q] += 1
            budget -= 1
            k += 1
    if not cuts:
        return
    out: list[Rec] = []
    for i, rec in enumerate(recs):
        n = cuts.get(i)
        if not n:
            out.append(rec)
            continue
        for q in rec.replicas:  # cut() counts them again below
            count[q] -= n
        out.extend(_cut_into(state, rec, n + 1))
    state.recs = out


def _cut_into(state: RoundState, rec: Rec, pieces: int) -> list[Rec]:
    out: list[Rec] = []
    cur = rec
    for left_pieces in range(pieces, 1, -1):
        keys = sorted(cur.top_keys().items())
        # cut off 1/left_pieces of the remaining load at the left
        mp = median_point(cur.lo, cur.hi, cur.load, keys) if left_pieces == 2 else None
        if mp is None:
            at = cur.lo + max(1, (cur.hi - cur.lo) // left_pieces)
            if not cur.lo < at < cur.hi:
                break
            left_load = cur.load / left_pieces
        else:
            at, left_load = mp
        a, cur = cut(state, cur, at, left_load)
        out.append(a)
    out.append(cur)
    return out


__all__ = ["keep_band"]
