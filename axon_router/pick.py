"""The pure pick: ``choose_replicas`` ranks a request's candidate pods into tiers (subset, then spill or fallback)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from axon_router.cost import CostModel, Limits, PickInput, Scored, tie_rank
from axon_router.knobs import Knobs
from axon_router.pod_view import PodView
from sharder.keyspace import key_group_range
from sharder.kv_pull import PullHint

HELD = "held"  # the pod outside the subset that holds the session's cache (its slice moved away), when sticky
SUBSET = "subset"
OVERFLOW = "overflow"  # pods outside the subset under the fleet-wide cap, when every subset pod is over it
SPILL = "spill"  # pods outside the subset, when every subset pod is over its admission limits
FALLBACK = "fallback"  # pods outside the subset, when no subset pod is usable at all

#: How the first pod of the subset tier was chosen.
RULE_STICKY = "sticky"  # the pod holding the session's cache, kept (its TTFT is within the prefill it saves)
RULE_COST = "cost"  # the lowest estimated TTFT, under the load cap
RULE_BALANCE = "balance"  # a new session: the least loaded pod (balance_key) within balance_slack_s of the best TTFT
RULE_ESCAPE = "cap_escape"  # over the load cap (by <= cap_escape_requests), holding a prefix worth > cap_escape_s
RULE_CAPPED = "capped"  # the lowest estimated TTFT was over the load cap; the best pod under it
RULE_OVER_CAP = "over_cap"  # no admissible subset pod under the cap (the others are over their limits)
RULE_HELD = "held"  # the session's cache is held outside the subset only, and that pod's TTFT is worth keeping
#: the pod holding the session's cache is crowded (kv_room), or too slow to keep it while the fastest pod has no
#: room for it (move_needs_room): the best subset pod it fits on
RULE_ROOM = "kv_room"
RULE_NO_ROOM = "no_room"  # the session's pod is slower, but no faster subset pod has KV room for it: kept there
#: Every rule (``x-brunoise-pick-rule``, ``brunoise_router_pick_rule_total{rule}``).
PICK_RULES = (
    RULE_STICKY, RULE_COST, RULE_BALANCE, RULE_ESCAPE, RULE_CAPPED, RULE_OVER_CAP, RULE_HELD, RULE_ROOM,
    RULE_NO_ROOM,
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Candidates:
    """The usable pods of a request, by id: ``subset`` (its slice's replicas, or the leaving ones when no
    replica is usable) and ``outside`` (label-eligible pods outside the subset); ``limits``: the admission
    limits a pod must be under (None: none, e.g. for a retry)."""

    subset: Sequence[str]
    outside: Sequence[str]
    limits: Limits | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Tier:
    """One tier of the ranking: its name (subset, spill, fallback) and its pods, best first."""

    name: str
    ranked: tuple[Scored, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Ranking:
    """The tiers of a request in preference order (only non-empty ones) and the rule that put the first
    pod of the first tier first; no tier at all: every candidate is over its limits (or there is none)."""

    tiers: tuple[Tier, ...]
    rule: str = ""

    def first(self) -> tuple[str, Scored] | None:
        """(tier name, pod) of the best candidate, or None."""
        for t in self.tiers:
            if t.ranked:
                return t.name, t.ranked[0]
        return None

    def ids(self) -> list[list[str]]:
        """The ranked pod ids of each tier (for logs and tests)."""
        return [[s.pod.id for s in t.ranked] for t in self.tiers]


class PickPolicy(Protocol):
    """A pick policy: pure and deterministic, a function of its arguments only (no clock, no randomness), so
    router replicas with the same views rank alike."""

    def choose_replicas(
        self, request: PickInput, candidates: Candidates, views: Mapping[str, PodView], now: float
    ) -> Ranking: ...


def rank_by_cost(scored: Iterable[Scored], slice_key: int, eps: float) -> list[Scored]:
    """Lowest ``Scored.rank`` (estimated TTFT plus the work added) first; ranks within ``eps`` of the first of
    their run tie, ordered by ``tie_rank``."""
    by_rank = sorted(scored, key=lambda s: s.rank)
    out: list[Scored] = []
    i = 0
    while i < len(by_rank):
        j = i + 1
        while j < len(by_rank) and by_rank[j].rank <= by_rank[i].rank + eps:
            j += 1
        out.extend(sorted(by_rank[i:j], key=lambda s: tie_rank(slice_key, s.pod.id)))
        i = j
    return out


def load_cap(outstanding: Sequence[int], c: float, rounded: bool = True) -> float:
    """Bounded-load cap (consistent hashing with bounded loads): ceil(c x (total + 1) / n) requests, the new
    one included; infinite when ``c`` is 0 (off). At least one pod is always under it when c >= 1. ``rounded``
    False: c x (total + 1) / n itself (``fleet_gap``'s comparison, where rounding up hid a hot subset)."""
    if c <= 0 or not outstanding:
        return math.inf
    cap = c * (sum(outstanding) + 1) / len(outstanding)
    return float(math.ceil(cap)) if rounded else cap


def balance_key(s: Scored) -> float:
    """How loaded the balance rule finds a pod: its recent load (``PodView.load_avg``, running + waiting averaged over
    ``load_halflife_s``), but never less than the requests it has outstanding now. The average lags a placement: a
    session placed on an idle pod half a second ago has its first turn running there while the average has barely
    moved, and a pod idle since its own session's turn ended still shows that turn; by the average alone the next
    new session followed the first (agentic, simulator seeds 0-107: 0.10 more pods per session)."""
    return max(s.pod.load_avg, float(s.outstanding))


def _front(first: Scored, ranked: list[Scored]) -> list[Scored]:
    """``ranked`` with ``first`` moved to the front (the rest in their order)."""
    return [first, *(s for s in ranked if s is not first)]


class CostPick:
    """Rank by ``Scored.rank`` (``CostModel``: estimated TTFT plus the prefill a request adds, x ``miss_weight``)
    with a bounded-load cap and sticky sessions; "cost" below is that rank, except in the sticky rule and the
    admission limits, which compare the estimated TTFT.

    Subset tier: the admissible subset pods (under ``candidates.limits``), ranked
      1. the pod holding the session's cache (the most leading chunks, at least ``session_chunks``), when
         ``sticky`` and its cost is at most the best cost plus the prefill time it saves over that best pod;
         unless that pod is crowded (its resident sessions need more than ``kv_room`` of its KV cache): then the
         pod under the load cap with the lowest cost where the session fits within ``kv_room``, if any; and when
         the holder is too slow to keep the session, it moves only to a faster pod it fits on within ``kv_room``
         (``move_needs_room``, off by default): with none, the holder keeps it;
      2. then the pods under the load cap (``load_cap`` x the subset's mean outstanding requests, the new one
         included) by cost: a new session never goes to a pod at or above the cap while another can take it;
      3. then the pods at or above the cap, by cost.
    Held tier, first (``sticky_outside``): when no subset pod holds the session's cache but an admissible outside
    pod does (its slice moved away since the session began; a draining pod for ``drain_keep_s``), that pod alone,
    if its cost is at most the best subset cost plus the prefill it saves (the sticky rule), and unless it is
    crowded while the session fits on the subset's first pod.
    Overflow tier, before the subset (``fleet_cap``): a new session whose subset pods are all above the fleet-wide
    bounded-load cap (every candidate's outstanding requests, +1 of slack) goes to the outside pods under it; with
    ``fleet_gap`` (off by default), whose subset's mean is above ``fleet_cap`` x the fleet's mean, to the outside
    pods with ``fleet_gap`` fewer requests than every subset pod.
    Spill tier (some subset pod is usable but none admissible) or fallback tier (none usable): the admissible
    outside pods by cost. Costs within ``tie_epsilon_s`` tie and the tie goes to the lowest stable hash of
    (SliceKey, pod), so the order, overflow included, is the same on every router replica with the same views.
    """

    def __init__(self, knobs: Knobs, cost: CostModel | None = None) -> None:
        self.k = knobs
        self.cost = cost or CostModel(knobs)

    def choose_replicas(
        self, request: PickInput, candidates: Candidates, views: Mapping[str, PodView], now: float
    ) -> Ranking:
        lim = candidates.limits
        score = self.cost.score
        sub = [score(views[i], request, now) for i in candidates.subset if i in views]
        out = [score(views[i], request, now) for i in candidates.outside if i in views]
        if lim is not None:
            ok_sub = [s for s in sub if s.outstanding < lim.max_outstanding and s.cost <= lim.ttft_slo_s]
            ok_out = [s for s in out if s.outstanding < lim.max_outstanding and s.cost <= lim.ttft_slo_s]
        else:
            ok_sub, ok_out = sub, out
        tiers: list[Tier] = []
        rule = ""
        if ok_sub:
            ranked, rule = self._rank_subset(request, ok_sub, [s.outstanding for s in sub])
            if self.k.sticky and self.k.sticky_outside and ok_out:
                held = self._held(request, ranked, ok_out, rule == RULE_STICKY, now)
                if held is not None:
                    tiers.append(Tier(HELD, (held,)))
                    rule = RULE_HELD
            if self.k.fleet_cap > 0 and ok_out and rule not in (RULE_STICKY, RULE_ESCAPE, RULE_HELD):
                under = self._overflow(ranked, ok_out, [s.outstanding for s in sub] + [s.outstanding for s in out])
                if under:
                    tiers.append(Tier(OVERFLOW, tuple(rank_by_cost(under, request.slice_key, self.k.tie_epsilon_s))))
            tiers.append(Tier(SUBSET, tuple(ranked)))
        if ok_out:
            name = SPILL if candidates.subset else FALLBACK
            tiers.append(Tier(name, tuple(rank_by_cost(ok_out, request.slice_key, self.k.tie_epsilon_s))))
        return Ranking(tuple(tiers), rule)

    def _overflow(self, ranked: list[Scored], ok_out: list[Scored], loads: Sequence[int]) -> list[Scored]:
        """The outside pods a new session overflows to, never away from a subset pod holding a long shared document
        (the cap's escape, again). ``fleet_gap`` 0: when every subset pod is above the bounded-load cap
        (``load_cap`` of every candidate's outstanding requests, rounded up) + ``fleet_cap_slack``, the outside pods
        under it. ``fleet_gap`` >= 1: when the subset's mean outstanding requests + 1 are above ``fleet_cap`` x the
        fleet's mean (the new request included, not rounded), the outside pods with at least ``fleet_gap`` fewer
        requests than every subset pod."""
        k = self.k
        least = min(s.outstanding for s in ranked)
        if k.fleet_gap > 0:
            subset_mean = sum(s.outstanding for s in ranked) / len(ranked)
            if subset_mean + 1 <= load_cap(loads, k.fleet_cap, rounded=False):
                return []
            room: float = least - k.fleet_gap + 1  # an outside pod takes it at outstanding + 1 <= room
        else:
            room = load_cap(loads, k.fleet_cap) + k.fleet_cap_slack
            if least + 1 <= room:
                return []
        return [s for s in ok_out if s.outstanding + 1 <= room and not self._escapes(ranked[0], s)]

    def _held(
        self, req: PickInput, ranked: list[Scored], ok_out: list[Scored], sticky: bool, now: float
    ) -> Scored | None:
        """The outside pod holding the session's cache (or a shared prefix worth more than ``cap_escape_s`` of
        prefill, a long document whose slice moved away) beyond what the subset's first pod holds, when sending
        the request there costs less than the prefill it saves; None otherwise. ``sticky``: the subset's first
        pod holds the session too (a warm-up copied it there after a move); the pod outside that served the
        session keeps it while it holds as much and is not slower by more than ``sticky_slack_s``. A draining
        pod qualifies for ``drain_keep_s`` after the router saw it draining, as HAProxy's ``drain`` state does
        (sticky sessions only, no new ones): it keeps the sessions whose cache it holds while the warm-up copies
        them to their new replicas, instead of each one prefilling its whole history again on a replica the
        moment the drain begins; one whose new replica holds it already (all but ``cap_escape_s`` of prefill: a
        replica holding only its first turn does not) goes there (not ``sticky``)."""
        need = max(1, req.session_chunks)
        first = ranked[0]
        keep_s = self.k.drain_keep_s

        def kept(s: Scored) -> bool:
            return s.pod.drain_kept(now, keep_s)

        if sticky:
            # not a draining pod: once the new replica holds the session, the session moves at no cost, and the
            # sooner the draining pod empties, the sooner the drain ends; but holding the session's first turn
            # (``need``) is not holding its history: a draining pod whose cache of it saves more than
            # cap_escape_s of prefill over the new replica's keeps it until a warm-up has copied it
            key = req.slice_key
            last = first.pod.served_at(key)
            holders = [
                s for s in ok_out
                if (s.hit_chunks >= first.hit_chunks and s.pod.served_at(key) > last)
                and (not s.pod.draining or (kept(s) and self._escapes(s, first)))
            ]  # fmt: skip
        else:
            # the session's own cache, or (like the cap's escape) a shared prefix saving more than cap_escape_s
            holders = [
                s for s in ok_out
                if kept(s) and s.hit_chunks > first.hit_chunks
                and (s.hit_chunks >= need or self._escapes(s, first))
            ]  # fmt: skip
        if not holders:
            return None
        h = min(holders, key=lambda s: (-s.hit_chunks, tie_rank(req.slice_key, s.pod.id)))
        if self._releases(h, req.slice_key) and self._fits(first, req):
            return None
        return h if self._keeps(h, first) else None

    def _room(self, pod: PodView) -> float:
        """Prompt chunks the sessions living on ``pod`` may need before it is crowded: ``kv_room`` of its KV
        cache (0 when off or when its size is unknown), in the block size it reports (else ``kv_block_tokens``)."""
        k = self.k
        block = pod.kv_block_tokens or k.kv_block_tokens
        return k.kv_room * pod.kv_blocks * block * k.bytes_per_token / pod.cache_chunk_bytes

    def _releases(self, s: Scored, slice_key: int) -> bool:
        """``s``'s pod is crowded (the sessions living there need more than ``kv_room`` of its KV cache; never
        when off or when its KV cache size is unknown) and session ``slice_key`` is the one to let go: of the
        sessions at least half of whose prompt no other session there shares (what leaving frees must be worth
        the prefill it costs: not a query over a shared document), the smallest whose leaving alone ends the
        crowding, or the largest when none would. One session at a time, the cheapest that helps."""
        pod = s.pod
        room = self._room(pod)
        excess = pod.resident_chunks() - room
        if room <= 0 or excess <= 0:
            return False
        own = [(u, key) for key, n, u in pod.resident_sizes() if 2 * u >= n]
        if not own:
            return False
        enough = [c for c in own if c[0] >= excess]
        return (min(enough) if enough else max(own))[1] == slice_key

    def _fits(self, s: Scored, req: PickInput) -> bool:
        """The request's session fits on ``s``'s pod beside the sessions living there, within ``kv_room``."""
        pod = s.pod
        room = self._room(pod)
        need = (req.prompt_tokens + req.max_tokens) * self.k.bytes_per_token / pod.cache_chunk_bytes
        return room > 0 and pod.resident_chunks() + need <= room

    def _escapes(self, holder: Scored, other: Scored) -> bool:
        """The cap's escape: ``holder`` saves more than ``cap_escape_s`` of prefill over ``other`` (a long shared
        document), so it wins over balance (the subset's load cap, the overflow tier, the held tier's reach past
        the session's own cache). Never when ``cap_escape_s`` is 0."""
        k = self.k
        if k.cap_escape_s <= 0:
            return False
        return (other.miss_tokens - holder.miss_tokens) / k.prefill_tokens_per_s > k.cap_escape_s

    def _keeps(self, holder: Scored, other: Scored) -> bool:
        """The sticky rule: ``holder`` keeps the session unless ``other``'s estimated TTFT is lower by more than
        the prefill the holder saves over it (x ``sticky_weight``), or by ``sticky_slack_s`` where that is more."""
        k = self.k
        saved_s = k.sticky_weight * max(0, other.miss_tokens - holder.miss_tokens) / k.prefill_tokens_per_s
        return holder.cost <= other.cost + max(saved_s, k.sticky_slack_s) + k.tie_epsilon_s

    def _rank_subset(self, req: PickInput, ok: list[Scored], loads: Sequence[int]) -> tuple[list[Scored], str]:
        k = self.k
        key = req.slice_key
        eps = k.tie_epsilon_s
        cap = load_cap(loads, k.load_cap)
        under = [s for s in ok if s.outstanding + 1 <= cap]
        over = [s for s in ok if s.outstanding + 1 > cap]
        ranked = rank_by_cost(under, key, eps) + rank_by_cost(over, key, eps)
        best = rank_by_cost(ok, key, eps)[0]
        rule = RULE_COST if under and ranked[0] is best else RULE_CAPPED if under else RULE_OVER_CAP
        if under and k.balance_slack_s > 0 and len(under) > 1:
            # where a new session lands is where it stays: the least loaded pod (``balance_key``) among those about as
            # fast as the best (its rank within balance_slack_s)
            head = ranked[0]
            near = [s for s in ranked[: len(under)] if s.rank <= head.rank + k.balance_slack_s]
            b = min(near, key=lambda s: (balance_key(s), s.rank, tie_rank(key, s.pod.id)))
            if b is not head:
                ranked = _front(b, ranked)
                rule = RULE_BALANCE
        if rule in (RULE_CAPPED, RULE_BALANCE) and over and k.cap_escape_s > 0:
            # the cap's escape: the pod holding the longest prefix, over the cap by at most cap_escape_requests,
            # still wins when the prefill it saves over the pod the cap (and the balance rule) chose is worth more
            # than cap_escape_s (a long shared document) and its rank is no worse, within one engine step: waiting
            # behind its queue costs no more than the prefill the other pod would add
            h = max(over, key=lambda s: (s.hit_chunks, -tie_rank(key, s.pod.id)))
            first = ranked[0]
            if (
                h.outstanding + 1 <= cap + k.cap_escape_requests
                and self._escapes(h, first)
                and h.rank <= first.rank + k.step_s
            ):
                ranked = _front(h, ranked)
                rule = RULE_ESCAPE
        if k.sticky:
            need = max(1, req.session_chunks)
            holders = [s for s in ok if s.hit_chunks >= need]
            if holders:
                # equal holders (a warm-up copied the session's prompt): the one this router last sent it to
                h = min(holders, key=lambda s: (-s.hit_chunks, -s.pod.served_at(key), tie_rank(key, s.pod.id)))
                if self._releases(h, key):
                    room = [s for s in under if s is not h and self._fits(s, req)]
                    if room:
                        r = rank_by_cost(room, key, eps)[0]
                        return _front(r, ranked), RULE_ROOM
                if h is best or self._keeps(h, best):
                    return _front(h, ranked), RULE_STICKY
                if k.move_needs_room and ranked[0] is not h and self._room(h.pod) > 0:
                    # the escape: only to a faster pod with room for the session, else it stays where its cache is
                    to = next((s for s in ranked if not self._keeps(h, s) and self._fits(s, req)), None)
                    if to is None:
                        return _front(h, ranked), RULE_NO_ROOM
                    if to is not ranked[0]:
                        return _front(to, ranked), RULE_ROOM
        return ranked, rule


def pull_source(ranking: Ranking, chosen: Scored, slice_key: int, min_chunks: int, grouped: bool) -> PullHint | None:
    """Where the pod ``chosen`` should read the request's prefix from before computing it (``sharder.kv_pull``): the
    ranked pod holding the most of its leading chunks, when that is at least ``min_chunks`` more than ``chosen``
    holds (0: never). The keys to read are the session's own (the holder served ``slice_key``: its latest prompt
    holds the history) or, in the ``grouped`` layout, its group's (a shared system prompt or document); with neither,
    none. Pure: ties go to the stable (key, pod) rank, as the pick's do."""
    if min_chunks <= 0:
        return None
    floor = chosen.hit_chunks + min_chunks
    holders = [s for t in ranking.tiers for s in t.ranked if s.pod is not chosen.pod and s.hit_chunks >= floor]
    if not holders:
        return None
    best = min(holders, key=lambda s: (-s.hit_chunks, tie_rank(slice_key, s.pod.id)))
    if best.pod.served_at(slice_key) > -math.inf:
        return PullHint(best.pod.id, slice_key, slice_key + 1)  # the session's own latest prompt holds its history
    if grouped:
        g = key_group_range(slice_key)  # any of the group's prompts holds its shared prefix
        return PullHint(best.pod.id, g.lo, g.hi)
    return None


__all__ = [
    "FALLBACK",
    "HELD",
    "PICK_RULES",
    "SPILL",
    "SUBSET",
    "Candidates",
    "CostPick",
    "PickPolicy",
    "Ranking",
    "Tier",
    "load_cap",
    "pull_source",
    "rank_by_cost",
]
