"""Phase 6: move slices from pods above (1+tolerance) x mean load to the least loaded pods, within the churn budget;
then (after dereplication) move cold slices to pods that hold far fewer slices than their fair share, so pods
that join an idle or lightly loaded target get slices before load appears."""

from __future__ import annotations

import bisect
import heapq

from sharder.policy.state import LoadHeap, Rec, RoundState

EPS = 1e-12
MAX_RECEIVER_TRIES = 8
# count balancing: at most this fraction of all replica placements (but at least MIN_COUNT_MOVES, so small targets
# settle in a few rounds) changes per round, so one round never reshuffles everything even when the slices carry
# no load (zero-load moves spend no churn budget)
COUNT_MOVE_FRACTION = 0.10
MIN_COUNT_MOVES = 4
MAX_DONOR_TRIES = 8


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
                # EPS slack for the excess and the room, none for the budget (it may be tiny on a quiet target)
                limit = min(min(excess, room) + EPS, state.budget)
                i = _pick(shares, items, limit, r)
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


def balance_counts(state: RoundState) -> None:
    """Count balancing, secondary to the load balancing of ``rebalance``. With P replica placements over E
    eligible pods (fair share F = P // E, C = ceil(P / E)), it acts when some pod holds fewer than F - 1 slices
    (or fewer than min(min_slices_per_pod, F)) or more than C + 1. Then, fewest-slices pod first, each
    receiver gets slices from the pods holding the most, while the donor holds at least two more than the
    receiver and the receiver is below F or the donor above C; coldest slice first (least load the donor itself
    reported serving for it, then least per-replica load, so little cache is lost). Moves are make-before-break
    like the load moves (the donor stays ``leaving`` one round). A slice that carries load moves only within the churn budget and only when the receiver's new
    (capacity-normalised) load stays at or below the larger of the mean and the donor's new load: the maximum
    load never rises and the load spread never widens, so ``rebalance`` has nothing to undo (a loaded move
    lowers the spread of loads, a zero-load move only that of counts). Zero-load slices cost no budget. At most ``count_move_cap(P)`` slices move per round. Pinned
    slices, slices already changed this round and slices with a pod leaving stay where they are."""
    eligible = state.eligible
    e = len(eligible)
    if e < 2:
        return
    count = state.count
    placements = sum(count[p] for p in eligible)
    fair = placements // e
    ceil = -(-placements // e)
    low = max(fair - 1, min(state.config.min_slices_per_pod, fair))
    if min(count[p] for p in eligible) >= low and max(count[p] for p in eligible) <= ceil + 1:
        return
    moves_left = count_move_cap(placements)
    mean = state.mean_ref()
    cap = state.capacity
    load = state.load
    # receivers: fewest slices first; donors: most slices first (lazy entries, checked against the live counts)
    receivers = [(count[p], p) for p in eligible]
    heapq.heapify(receivers)
    donors = [(-count[p], p) for p in eligible]
    heapq.heapify(donors)
    held: dict[str, list[Rec]] | None = None
    coldest: dict[str, list[Rec]] = {}
    start: dict[str, int] = {}
    while moves_left > 0 and receivers:
        c, r = heapq.heappop(receivers)
        if c != count[r]:
            continue  # stale
        cap_r = cap[r]
        tried: list[tuple[int, str]] = []
        moved = False
        done = False
        while len(tried) < MAX_DONOR_TRIES and donors:
            entry = heapq.heappop(donors)
            negc, d = entry
            if -negc != count[d]:
                continue  # stale
            tried.append(entry)
            dc = count[d]
            if dc < c + 2 or (c >= fair and dc <= ceil):
                # when the donor holding the most slices cannot give to the receiver holding the fewest, no
                # donor can give to any receiver
                done = len(tried) == 1
                break
            if held is None:
                held = _holdings_by_pod(state)
            items = coldest.get(d)
            if items is None:
                items = sorted(held[d], key=lambda x: (_served_by(x, d), x.load / len(x.replicas), x.lo))
                coldest[d] = items
                start[d] = 0
            i = start[d]
            while i < len(items) and items[i].moved:
                i += 1
            start[d] = i
            pick = None
            budget = state.budget
            for j in range(i, len(items)):
                rec = items[j]
                if rec.moved or r in rec.replicas:
                    continue
                share = rec.load / len(rec.replicas)
                if share > EPS and (
                    share > budget or (load[r] + share) / cap_r > max(mean, (load[d] - share) / cap[d]) + EPS
                ):
                    continue
                pick = rec
                break
            if pick is None:
                continue
            share = pick.load / len(pick.replicas)
            state.replace_replica(pick, d, r)
            pick.moved = True
            if share > EPS:
                state.budget -= share
                state.stats.churn += share
            state.stats.moves += 1
            moves_left -= 1
            moved = True
            tried.pop()
            heapq.heappush(donors, (-count[d], d))
            break
        for entry in tried:
            heapq.heappush(donors, entry)
        if moved:
            heapq.heappush(receivers, (count[r], r))
            heapq.heappush(donors, (-count[r], r))  # its older donor entry is stale now
        elif done:
            break


def _served_by(rec: Rec, p: str) -> float:
    """The load ``p`` reported for ``rec`` this round (its even share when nobody reported on exactly this range):
    what moving ``p``'s replica away costs in warm cache."""
    served = rec.served
    if served is None:
        return rec.load / len(rec.replicas)
    return served.get(p, 0.0)


def count_move_cap(placements: int) -> int:
    """Most slices count balancing moves in one round: max(MIN_COUNT_MOVES, COUNT_MOVE_FRACTION x placements)."""
    return max(MIN_COUNT_MOVES, int(COUNT_MOVE_FRACTION * placements))


def _holdings_by_pod(state: RoundState) -> dict[str, list[Rec]]:
    """Per eligible pod, the slices it may give away in count balancing (not pinned, unchanged this round,
    nobody leaving)."""
    out: dict[str, list[Rec]] = {p: [] for p in state.eligible}
    for rec in state.recs:
        if rec.pinned or rec.moved or rec.leaving:
            continue
        for p in rec.replicas:
            out[p].append(rec)
    return out


__all__ = ["balance_counts", "count_move_cap", "rebalance"]
