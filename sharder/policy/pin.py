"""Phase 2: apply the manual overrides (boundaries kept, ranges kept whole, slices pinned to pods)."""

from __future__ import annotations

import bisect

from sharder.keyspace import KEYSPACE_END
from sharder.overrides import MergeOverride, MoveOverride, Override, SplitOverride
from sharder.policy.round_state import Rec, RoundState, scaled


def split_rec_proportional(rec: Rec, at: int) -> tuple[Rec, Rec]:
    """Cut ``rec`` at ``at`` (lo < at < hi) with load split by width (hot keys by containment)."""
    keys = rec.top_keys()
    width = rec.hi - rec.lo
    kl = sum(w for k, w in keys.items() if k < at)
    kr = sum(w for k, w in keys.items() if k >= at)
    rest = max(0.0, rec.load - kl - kr)
    left_load = kl + rest * ((at - rec.lo) / width)
    right_load = max(0.0, rec.load - left_load)
    return _children(rec, at, left_load, right_load, keys)


def _children(rec: Rec, at: int, left_load: float, right_load: float, keys: dict[int, float]) -> tuple[Rec, Rec]:
    left = Rec(rec.lo, at, None, rec.replicas, rec.leaving, left_load, rec.since)
    right = Rec(at, rec.hi, None, rec.replicas, rec.leaving, right_load, rec.since)
    lk = tuple((k, w) for k, w in keys.items() if k < at)
    rk = tuple((k, w) for k, w in keys.items() if k >= at)
    if lk:
        left.keysrc = [lk]
    if rk:
        right.keysrc = [rk]
    for c in (left, right):
        c.pinned, c.nosplit, c.moved = rec.pinned, rec.nosplit, rec.moved
    portion(rec, left, right)
    return left, right


def portion(parent: Rec, left: Rec, right: Rec) -> None:
    """Give the halves of a cut their parts of the parent's served loads and replica shares, in proportion to
    the load each half carries."""
    if parent.served is None and parent.share is None:
        return
    f = left.load / parent.load if parent.load > 0 else 0.5
    left.served, right.served = scaled(parent.served, f), scaled(parent.served, 1.0 - f)
    left.share, right.share = scaled(parent.share, f), scaled(parent.share, 1.0 - f)


def _ensure_boundary(recs: list[Rec], at: int) -> list[Rec]:
    if at <= 0 or at >= KEYSPACE_END:
        return recs
    los = [r.lo for r in recs]
    i = bisect.bisect_right(los, at) - 1
    rec = recs[i]
    if rec.lo == at:
        return recs
    left, right = split_rec_proportional(rec, at)
    return [*recs[:i], left, right, *recs[i + 1 :]]


def apply_overrides(state: RoundState, overrides: tuple[Override, ...]) -> None:
    """Split at every SplitOverride point and MergeOverride end, merge every MergeOverride range into one
    slice (the hottest part's replicas win; the others leave make-before-break) and pin every MoveOverride's
    slice to its still-eligible pods (the first override wins when two land in one slice)."""
    if not overrides:
        return
    recs = state.recs
    gen = state.generation
    for o in overrides:
        if isinstance(o, SplitOverride):
            recs = _ensure_boundary(recs, o.at)
            state.keep_bounds.add(o.at)
        elif isinstance(o, MergeOverride):
            recs = _ensure_boundary(_ensure_boundary(recs, o.lo), o.hi)
            state.keep_bounds.add(o.lo)
            state.keep_bounds.add(o.hi)
    for o in overrides:
        if not isinstance(o, MergeOverride):
            continue
        los = [r.lo for r in recs]
        i = bisect.bisect_left(los, o.lo)
        j = bisect.bisect_left(los, o.hi) if o.hi < KEYSPACE_END else len(recs)
        part = recs[i:j]
        if len(part) > 1:
            main = max(part, key=lambda r: (r.load, -r.lo))
            merged = Rec(o.lo, o.hi, None, main.replicas, (), sum(r.load for r in part), main.since)
            leaving: list[str] = []
            for r in part:
                for p in (*r.replicas, *r.leaving):
                    if p not in merged.replicas and p not in leaving:
                        leaving.append(p)
                if r.keysrc:
                    for ks in r.keysrc:
                        merged.add_keys(ks)
            merged.leaving = tuple(leaving)
            if any(r.replicas != main.replicas for r in part):
                merged.since = gen
            state.stats.merges += len(part) - 1
            recs = [*recs[:i], merged, *recs[j:]]
            part = [merged]
        for r in part:
            r.nosplit = True
    los = [r.lo for r in recs]
    ok = state.eligible_set
    for o in overrides:
        if not isinstance(o, MoveOverride):
            continue
        rec = recs[bisect.bisect_right(los, o.key) - 1]
        if rec.pinned:
            continue
        want = tuple(p for p in o.pods if p in ok)[: state.config.max_replicas]
        if not want:
            continue
        rec.pinned = True
        if want != rec.replicas:
            leaving = [p for p in rec.leaving if p not in want]
            leaving += [p for p in rec.replicas if p not in want and p not in leaving]
            rec.leaving = tuple(leaving)
            rec.replicas = want
            rec.since = gen
    state.recs = recs


__all__ = ["apply_overrides", "portion", "split_rec_proportional"]
