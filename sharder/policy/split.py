"""Phase 4: split hot slices at their load median; replicate slices dominated by one key instead."""

from __future__ import annotations

import math

from sharder.policy.pin import portion, split_rec_proportional
from sharder.policy.round_state import LoadHeap, Rec, RoundState

MAX_SPLIT_DEPTH = 8  # one slice becomes at most 2**8 slices per round


def median_point(lo: int, hi: int, load: float, keys: list[tuple[int, float]]) -> tuple[int, float] | None:
    """Where to cut [lo, hi) so both halves carry about half the load, and the load left of the cut.

    ``keys`` are the slice's hot keys (sorted, inside the range); the load they do not explain is assumed to
    follow them (the cut is their weighted median), or spread evenly over the range when there are none. None
    when the slice cannot be cut (width 1)."""
    width = hi - lo
    if width < 2:
        return None
    kw = sum(w for _, w in keys)
    # The load the hot keys do not explain is assumed to lie where they do (scaled up with them), not spread over
    # the whole range: keys are not uniform over a slice (a grouped layout puts a group's sessions in one narrow
    # range), so a uniform spread would cut in empty space and leave the load on one side. No keys: uniform.
    rest = 0.0 if kw > 0 else max(0.0, load)
    total = rest + kw
    if total <= 0:
        return lo + width // 2, 0.0
    half = total / 2
    density = rest / width
    pos, cum = lo, 0.0
    for k, w in keys:
        if density > 0:
            seg = density * (k - pos)
            if cum + seg >= half:
                at = min(max(pos + math.ceil((half - cum) / density), lo + 1), hi - 1)
                return at, _scale(cum + density * (at - pos), total, load)
            cum += seg
        if cum + w >= half:
            cands: list[tuple[float, int, float]] = []
            if lo < k:
                cands.append((abs(cum - half), k, cum))
            if k + 1 < hi:
                cands.append((abs(cum + w - half), k + 1, cum + w))
            if not cands:
                return None
            _, at, left = min(cands)
            return at, _scale(left, total, load)
        cum += w
        pos = k + 1
    if density > 0 and pos < hi:
        at = min(max(pos + math.ceil((half - cum) / density), lo + 1), hi - 1)
        return at, _scale(cum + density * max(0, at - pos), total, load)
    return lo + width // 2, _scale(cum, total, load)


def _scale(left: float, total: float, load: float) -> float:
    return min(load, max(0.0, load * left / total)) if total > 0 else 0.0


def cut(state: RoundState, rec: Rec, at: int, left_load: float) -> tuple[Rec, Rec]:
    """Split ``rec`` at ``at`` with ``left_load`` on the left; both halves keep the replicas (no churn: every key
    keeps its replica set). Calm: both halves start a cooldown (no merge or move right after a split)."""
    left, right = split_rec_proportional(rec, at)
    left.load = left_load
    right.load = max(0.0, rec.load - left_load)
    portion(rec, left, right)
    if state.config.calm:
        left.since = right.since = state.generation
    count = state.count
    for p in rec.replicas:
        count[p] += 1
    state.stats.splits += 1
    return left, right


def can_cut(state: RoundState, rec: Rec, cuts: int = 1) -> bool:
    if rec.hi - rec.lo < 2 or rec.nosplit:
        return False
    mx = state.config.max_slices_per_pod
    count = state.count
    return all(count[p] + cuts <= mx for p in rec.replicas)


class _Replicator:
    """Adds replicas to hot slices on the least loaded eligible pods (hot-key replication)."""

    def __init__(self, state: RoundState) -> None:
        self.state = state
        self.heap: LoadHeap | None = None
        self.limit = min(state.config.max_replicas, len(state.eligible))

    def replicate(self, rec: Rec, threshold: float) -> None:
        """Calm: only while balancing is on (``calm.gate``) and not on a slice cooling down from a change."""
        st = self.state
        if rec.pinned or not rec.replicas or not st.acting or st.cooling(rec):
            return
        while len(rec.replicas) < self.limit and rec.load / len(rec.replicas) > threshold:
            if self.heap is None:
                self.heap = LoadHeap(st, 1.0, st.eligible)
            skipped: list[str] = []
            chosen = None
            while (p := self.heap.pop()) is not None:
                if p in rec.replicas:
                    skipped.append(p)
                else:
                    chosen = p
                    break
            for p in skipped:
                self.heap.push(p)
            if chosen is None:
                return
            st.add_replica(rec, chosen)
            st.stats.replications += 1

    def close(self) -> None:
        if self.heap is not None:
            self.heap.detach()


def split_hot(state: RoundState) -> None:
    """Split every slice whose load exceeds ``split_threshold`` x mean pod load at its load median (repeatedly,
    up to MAX_SPLIT_DEPTH levels per round, within ``max_slices_per_pod``). A slice where one key carries more
    than ``hot_key_fraction`` of the load has that key cut out into its own one-key slice when the rest is
    still hot; a one-key (or MergeOverride-protected) hot slice is replicated up to ``max_replicas`` instead."""
    cfg = state.config
    mean = state.mean_ref()
    if mean <= 0:
        return
    threshold = cfg.split_threshold * mean
    if not any(rec.load > threshold for rec in state.recs):
        return
    frac = cfg.hot_key_fraction
    rep = _Replicator(state)
    out: list[Rec] = []
    try:
        for rec in state.recs:
            if rec.load <= threshold:
                out.append(rec)
                continue
            stack = [(rec, 0)]
            while stack:
                r, depth = stack.pop()
                if r.load <= threshold:
                    out.append(r)
                    continue
                keys = sorted(r.top_keys().items())
                top_k, top_w = max(keys, key=lambda kw: (kw[1], -kw[0])) if keys else (0, 0.0)
                if depth >= MAX_SPLIT_DEPTH:
                    out.append(r)
                    continue
                if keys and top_w > frac * r.load:
                    # dominated by one key: isolate it when the rest is still hot, else replicate
                    if r.hi - r.lo > 1 and r.load - top_w > threshold and can_cut(state, r, 2):
                        pieces: list[Rec] = []
                        cur = r
                        if top_k > cur.lo:
                            a, cur = cut(state, cur, top_k, _proportional_left(cur, top_k))
                            pieces.append(a)
                        if top_k + 1 < cur.hi:
                            b, c = cut(state, cur, top_k + 1, _proportional_left(cur, top_k + 1))
                            pieces += [b, c]
                        else:
                            pieces.append(cur)
                        stack.extend((pc, depth + 1) for pc in reversed(pieces))
                    else:
                        rep.replicate(r, threshold)
                        out.append(r)
                    continue
                if not can_cut(state, r):
                    if r.nosplit or r.hi - r.lo < 2:
                        rep.replicate(r, threshold)
                    out.append(r)
                    continue
                mp = median_point(r.lo, r.hi, r.load, keys)
                if mp is None:
                    rep.replicate(r, threshold)
                    out.append(r)
                    continue
                left, right = cut(state, r, mp[0], mp[1])
                stack.append((right, depth + 1))
                stack.append((left, depth + 1))
    finally:
        rep.close()
    state.recs = out


def _proportional_left(rec: Rec, at: int) -> float:
    left, _ = split_rec_proportional(rec, at)
    return left.load


__all__ = ["MAX_SPLIT_DEPTH", "cut", "median_point", "split_hot"]
