"""Phase 6: move slices from pods above (1+tolerance) x mean load to the least loaded pods, within the churn budget;
then (after dereplication) move cold slices to pods that hold far fewer slices than their fair share, so pods
that join an idle or lightly loaded target get slices before load appears."""

from __future__ import annotations

import bisect
import heapq

from sharder.policy.calm import cache_value, cold_limit, worth_moving
from sharder.policy.round_state import LoadHeap, Rec, RoundState

EPS = 1e-12
MAX_RECEIVER_TRIES = 8
# count balancing: at most this fraction of all replica placements (but at least MIN_COUNT_MOVES, so small targets
# settle in a few rounds) changes per round, so one round never reshuffles everything even when the slices carry
# no load (zero-load moves spend no churn budget)
COUNT_MOVE_FRACTION = 0.10
MIN_COUNT_MOVES = 4
MAX_DONOR_TRIES = 8
MAX_PRICED_TRIES = 32  # candidate slices a donor offers one receiver before the calm pricing gives up
MAX_COUNT_MISSES = 32  # loaded slices count balancing tries on one (receiver, donor) pair before it gives up
INF = float("inf")


class _Holdings:
    """Per-pod slices sorted by their per-replica share, built lazily (only donors need them)."""

    def __init__(self, state: RoundState) -> None:
        self.state = state
        self.index: dict[str, list[Rec]] | None = None
        self.sorted: dict[str, tuple[list[float], list[Rec]]] = {}

    def _build_index(self) -> dict[str, list[Rec]]:
        index: dict[str, list[Rec]] = {p: [] for p in self.state.eligible}
        cool_since = self.state.cool_since
        for rec in self.state.recs:
            if rec.load > 0 and not rec.pinned and rec.since < cool_since:
                for p in rec.replicas:
                    index[p].append(rec)
        return index

    def of(self, p: str) -> tuple[list[float], list[Rec]]:
        got = self.sorted.get(p)
        if got is None:
            if self.index is None:
                self.index = self._build_index()
            share_of = self.state.share_of
            items = sorted(self.index[p], key=lambda r: (share_of(r, p), r.lo))
            got = ([share_of(r, p) for r in items], items)
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
            s = self.state.share_of(rec, p)
            i = bisect.bisect_right(shares, s)
            shares.insert(i, s)
            items.insert(i, rec)
        elif self.index is not None:
            self.index[p].append(rec)


def _pick(
    state: RoundState, shares: list[float], items: list[Rec], limit: float, donor: str, receiver: str
) -> int:
    """Index of the largest share <= ``limit`` whose slice ``receiver`` does not hold, that did not move this
    round and (calm) is worth its cache; -1 when none."""
    i = bisect.bisect_right(shares, limit) - 1
    priced = 0
    while i >= 0:
        rec = items[i]
        if not rec.moved and receiver not in rec.replicas:
            if worth_moving(state, rec, donor, receiver, shares[i]):
                return i
            priced += 1
            if priced >= MAX_PRICED_TRIES:
                return -1
        i -= 1
    return -1


def _pick_overshoot(
    state: RoundState, shares: list[float], items: list[Rec], upper: float, donor: str, receiver: str
) -> int:
    """Smallest share <= ``upper`` (a move that still lowers the maximum) worth its cache; -1 when none."""
    end = bisect.bisect_right(shares, upper)
    priced = 0
    for i in range(end):
        rec = items[i]
        if not rec.moved and receiver not in rec.replicas:
            if worth_moving(state, rec, donor, receiver, shares[i]):
                return i
            priced += 1
            if priced >= MAX_PRICED_TRIES:
                return -1
    return -1


def rebalance(state: RoundState) -> None:
    """While some pod is above (1 + imbalance_tolerance) x its capacity-weighted mean and budget is left, move
    one of its slices to the least loaded pod: the largest slice share that fits both the donor's excess and
    the receiver's room (every such move gains the same two units of imbalance per unit of churn, so the
    largest needs the fewest moves), else the smallest that still lowers the maximum without pushing the
    receiver above the tolerance. Moves are make-before-break (the donor stays ``leaving`` one round).

    Calm: runs only while ``calm.gate`` says so, sheds down to ``imbalance_target``, leaves cooling slices alone
    and makes only moves worth the cache they throw away (``calm.worth_moving``). A pod's share of a slice is
    its replica-true load (``RoundState.share_of``)."""
    mean = state.mean_ref()
    if mean <= 0 or len(state.eligible) < 2 or not state.acting:
        return
    tol = state.balance_to
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
                i = _pick(state, shares, items, limit, d, r)
                if i < 0:
                    # overshoot: lower the donor without putting the receiver above its tolerance or above the
                    # donor's new load
                    top = min(
                        state.budget,
                        (1.0 + tol) * mean * cap[r] - load[r],
                        (load[d] - load[r]) / 2.0,
                    )
                    if top > EPS:
                        i = _pick_overshoot(state, shares, items, top, d, r)
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
    slices, slices already changed this round and slices with a pod leaving stay where they are.

    Calm: on a target carrying load it starts only when some pod holds half (at least two) fewer slices than its
    fair share, or half (at least two) more than the ceiling, so the few slices that splits and merges shift do
    not trigger it (an idle target, with no cache to lose, keeps the narrow band); once started
    (``state.counting``, carried to the next round) it goes on until the counts are back in the narrow band
    above; when only the upper side is out of the wide band (no pod starves, the splits of hot slices piled
    slices up on the pods serving them) it starts only in a round that balances load (``state.acting``). It moves
    only cold slices (``calm.cold_limit``)
    that are not cooling down (a slice with no load at all may move while cooling)."""
    eligible = state.eligible
    e = len(eligible)
    if e < 2:
        return
    cfg = state.config
    count = state.count
    placements = sum(count[p] for p in eligible)
    fair = placements // e
    ceil = -(-placements // e)
    floor = min(cfg.min_slices_per_pod, fair)
    low, high = max(fair - 1, floor), ceil + 1
    if min(count[p] for p in eligible) >= low and max(count[p] for p in eligible) <= high:
        state.counting = False
        return
    if cfg.calm and not state.counting and state.total_load > EPS:
        # an idle target (no load at all) has no cache to lose: it keeps the narrow band
        wide_low, wide_high = max(min(fair, 1), fair - max(2, fair // 2), floor), ceil + max(2, ceil // 2)
        # with no pod starving (a pod that joined or came back does), the slices that splits piled up on the pods
        # serving hot slices move in a round that balances load, not round after round
        if min(count[p] for p in eligible) >= wide_low and (
            max(count[p] for p in eligible) <= wide_high or not state.acting
        ):
            return
    state.counting = cfg.calm
    _move_counts(state, fair, ceil)
    if min(count[p] for p in eligible) >= low and max(count[p] for p in eligible) <= high:
        state.counting = False


def _move_counts(state: RoundState, fair: int, ceil: int) -> None:
    eligible = state.eligible
    count = state.count
    placements = sum(count[p] for p in eligible)
    moves_left = count_move_cap(placements)
    mean = state.mean_ref()
    cold = cold_limit(state)
    share_of = state.share_of
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
    ends: dict[str, int] = {}
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
                keyed = sorted(((cache_value(state, x, d), share_of(x, d), x.lo), x) for x in held[d])
                items = [x for _, x in keyed]
                coldest[d] = items
                start[d] = 0
                # only cold slices (calm) are candidates
                ends[d] = bisect.bisect_right([k[0] for k, _ in keyed], cold + EPS) if cold < INF else len(items)
            i = start[d]
            while i < len(items) and items[i].moved:
                i += 1
            start[d] = i
            pick = None
            budget = state.budget
            misses = 0
            for j in range(i, ends[d]):
                rec = items[j]
                if rec.moved or r in rec.replicas:
                    continue
                share = share_of(rec, d)
                if share > EPS and (
                    share > budget or (load[r] + share) / cap_r > max(mean, (load[d] - share) / cap[d]) + EPS
                ):
                    # the receiver cannot take this much load; larger shares fail too, and the coldest come
                    # first, so a run of misses ends the scan (it used to walk every slice of the donor)
                    misses += 1
                    if misses >= MAX_COUNT_MISSES:
                        break
                    continue
                pick = rec
                break
            if pick is None:
                continue
            share = share_of(pick, d)
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


def count_move_cap(placements: int) -> int:
    """Most slices count balancing moves in one round: max(MIN_COUNT_MOVES, COUNT_MOVE_FRACTION x placements)."""
    return max(MIN_COUNT_MOVES, int(COUNT_MOVE_FRACTION * placements))


def _holdings_by_pod(state: RoundState) -> dict[str, list[Rec]]:
    """Per eligible pod, the slices it may give away in count balancing (not pinned, unchanged this round,
    nobody leaving, not cooling down unless it carries no load: no session loses a cache with it)."""
    out: dict[str, list[Rec]] = {p: [] for p in state.eligible}
    cool_since = state.cool_since
    for rec in state.recs:
        if rec.pinned or rec.moved or rec.leaving or (rec.since >= cool_since and rec.load > EPS):
            continue
        for p in rec.replicas:
            out[p].append(rec)
    return out


__all__ = ["balance_counts", "count_move_cap", "rebalance"]
