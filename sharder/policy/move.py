"""Phase 6: move slices from pods above (1+tolerance) x mean load to the least loaded pods, within the churn budget."""

from __future__ import annotations

import bisect

from sharder.policy.state import LoadHeap, Rec, RoundState

EPS = 1e-12
MAX_RECEIVER_TRIES = 8


class _Holdings:
    """Per-pod slices sorted by their per-replica share, built lazily (only donors need them)."""

    def __init__(self, state: RoundState) -> None:
        self.state = state
        self.index: dict[str, list[Rec]] | None = None
        self.sorted: dict[str, tuple[list[float], list[Rec]]] = {}

    def _build_index(self) -> dict[str, list[Rec]]:
        index: dict[str, list[Rec]] = {p: [] for p in self.state.eligible}
        for rec in self.state.recs:
            if rec.load > 0 and not rec.pinned:
                for p in rec.replicas:
                    index[p].append(rec)
        return index

    def of(self, p: str) -> tuple[list[float], list[Rec]]:
        got = self.sorted.get(p)
        if got is None:
            if self.index is None:
                self.index = self._build_index()
            items = sorted(self.index[p], key=lambda r: (r.load / len(r.replicas), r.lo))
            got = ([r.load / len(r.replicas) for r in items], items)
            self.sorted[p] = got
        return got

    def remove(self, p: str, rec: Rec) -> None:
        got = self.sorted.get(p)
        if got is not None:
            shares, items = got
            i = items.index(rec)
            del shares[i]
            del items[i]

    def add(self, p: str, rec: Rec) -> None:
        got = self.sorted.get(p)
        if got is not None:
            shares, items = got
            s = rec.load / len(rec.replicas)
            i = bisect.bisect_right(shares, s)
            shares.insert(i, s)
            items.insert(i, rec)
        elif self.index is not None:
            self.index[p].append(rec)


def _pick(shares: list[float], items: list[Rec], limit: float, receiver: str) -> int:
    """Index of the largest share <= ``limit`` whose slice ``receiver`` does not hold and that did not move
    this round; -1 when none."""
    i = bisect.bisect_right(shares, limit) - 1
    while i >= 0:
        rec = items[i]
        if not rec.moved and receiver not in rec.replicas:
            return i
        i -= 1
    return -1


def _pick_overshoot(shares: list[float], items: list[Rec], upper: float, receiver: str) -> int:
    """Smallest share <= ``upper`` (a move that still lowers the maximum); -1 when none."""
    end = bisect.bisect_right(shares, upper)
    for i in range(end):
        rec = items[i]
        if not rec.moved and receiver not in rec.replicas:
            return i
    return -1


def rebalance(state: RoundState) -> None:
    """While some pod is above (1 + imbalance_tolerance) x its capacity-weighted mean and budget is left, move
    one of its slices to the least loaded pod: the largest slice share that fits both the donor's excess and
    the receiver's room (every such move gains the same two units of imbalance per unit of churn, so the
    largest needs the fewest moves), else the smallest that still lowers the maximum without pushing the
    receiver above the tolerance. Moves are make-before-break (the donor stays ``leaving`` one round)."""
    cfg = state.config
    mean = state.mean_ref()
    if mean <= 0 or len(state.eligible) < 2:
        return
    tol = cfg.imbalance_tolerance
    cap = state.capacity
    load = state.load
    upper_norm = (1.0 + tol) * mean
    if max(state.norm(p) for p in state.eligible) <= upper_norm + EPS:
        return
    donors = LoadHeap(state, -1.0, state.eligible)
    receivers = LoadHeap(state, 1.0, state.eligible)
    holdings = _Holdings(state)
    stuck: set[str] = set()
    try:
        while state.budget > EPS:
            d = donors.pop()
            if d is None:
                break
            if d in stuck:
                continue
            if state.norm(d) <= upper_norm + EPS:
                break
            shares, items = holdings.of(d)
            excess = load[d] - mean * cap[d]
            tried: list[str] = []
            moved = False
            for _ in range(MAX_RECEIVER_TRIES):
                r = receivers.pop()
                if r is None:
                    break
                tried.append(r)
                if r == d:
                    continue
                room = mean * cap[r] - load[r]
                if room <= EPS:
                    break
                limit = min(excess, room, state.budget)
                i = _pick(shares, items, limit + EPS, r)
                if i < 0:
                    # overshoot: lower the donor without putting the receiver above its tolerance or above the
                    # donor's new load
                    top = min(
                        state.budget,
                        (1.0 + tol) * mean * cap[r] - load[r],
                        (load[d] - load[r]) / 2.0,
                    )
                    if top > EPS:
                        i = _pick_overshoot(shares, items, top, r)
                if i < 0:
                    continue
                rec = items[i]
                share = shares[i]
                del shares[i]
                del items[i]
                state.replace_replica(rec, d, r)
                rec.moved = True
                holdings.add(r, rec)
                state.budget -= share
                state.stats.churn += share
                state.stats.moves += 1
                moved = True
                tried.pop()  # the receiver's new entry was pushed when its load changed
                break
            for r in tried:
                receivers.push(r)
            if not moved:
                stuck.add(d)  # the donor's new entry was pushed when its load changed, if it moved
    finally:
        donors.detach()
        receivers.detach()


__all__ = ["rebalance"]
