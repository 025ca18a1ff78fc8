"""Per-pod view: load from the last report plus the router's own in-flight accounting since it, and prefix memory."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from axon_router.failover import Breaker, HealthTracker
from axon_router.knobs import Knobs
from sharder.prefix import CHUNK_BYTES

#: The knobs' defaults, for a PodView built without them (the router passes its own).
_DEFAULTS = Knobs()


@dataclasses.dataclass(slots=True)
class Ticket:
    """One request the router has in flight on a pod (returned by ``PodView.begin``)."""

    epoch: int
    tokens: int
    prefill: int = 0
    """Prompt tokens the pod is expected to compute for it (its uncached part), until its first token."""
    done: bool = False
    first: bool = False
    remembered: tuple[tuple[int, float | None], ...] = ()
    """The chain hashes ``begin`` remembered as the pod's, each with the time memory had for it before (None: none),
    and the time it set: what ``fail`` takes back."""
    at: float = 0.0
    """When ``begin`` remembered the prompt (the time it set in memory for each of ``remembered``'s hashes)."""
    slice_key: int | None = None
    """The session (SliceKey) it belongs to, if any: while it runs, the session lives on the pod."""


class PodView:
    """What the router believes about one pod: load, cache, health; no I/O (pollers feed it).

    Load never reads as zero between reports: the estimate is the last report plus every request this
    router dispatched after that report was taken and that is still in flight; and it is never below
    this router's own in-flight count.

    Prefill ahead (what delays a new request's first token) is known exactly for this router's own
    requests: dispatched, no first token yet (``prefill_reqs`` / ``prefill_tokens``, the uncached prompt
    tokens estimated at the pick). The pod's report adds its waiting queue (other routers' requests too).
    """

    __slots__ = (
        "_avg_at",
        "_busy",
        "_epoch",
        "_halflife_s",
        "_memory",
        "_memory_max",
        "_pending",
        "_refs",
        "_resident",
        "_resident_window_s",
        "_served",
        "address",
        "breaker",
        "cache",
        "cache_at",
        "cache_chunk_bytes",
        "cache_id",
        "draining",
        "draining_since",
        "health",
        "healthy",
        "http_address",
        "id",
        "inflight",
        "inflight_gauge",
        "inflight_tokens",
        "kv_block_tokens",
        "kv_blocks",
        "labels",
        "load_avg",
        "prefill_reqs",
        "prefill_tokens",
        "rep_at",
        "rep_kv",
        "rep_running",
        "rep_tokens",
        "rep_waiting",
        "since_prefill_reqs",
        "since_prefill_tokens",
        "since_reqs",
        "since_tokens",
    )

    def __init__(
        self,
        pod_id: str,
        http_address: str,
        address: str = "",
        labels: Mapping[str, str] | None = None,
        *,
        memory_max: int = _DEFAULTS.prefix_memory_max,
        load_halflife_s: float = _DEFAULTS.load_halflife_s,
        resident_window_s: float = _DEFAULTS.resident_window_s,
    ) -> None:
        self.id = pod_id
        self.http_address = http_address.rstrip("/")
        self.address = address
        self.labels: dict[str, str] = dict(labels or {})
        self.draining = False
        self.draining_since: float | None = None  # monotonic time this router first saw it draining
        self.healthy = True  # optimistic until the first check says otherwise
        self.health = HealthTracker()
        self.breaker = Breaker()
        self.inflight_gauge: object | None = None
        # last report
        self.rep_at = -1.0  # monotonic time the report was requested; <0: none yet
        self.rep_running = 0
        self.rep_waiting = 0
        self.rep_tokens = 0
        self.rep_kv = 0.0
        # the pod's recent load: requests running + waiting in its reports, averaged over time (halflife)
        self.load_avg = 0.0
        self._avg_at = -1.0
        self._halflife_s = load_halflife_s
        # own accounting
        self.inflight = 0
        self.inflight_tokens = 0
        self.since_reqs = 0
        self.since_tokens = 0
        self.prefill_reqs = 0  # own requests without a first token yet
        self.prefill_tokens = 0
        self.since_prefill_reqs = 0  # of those, dispatched after the last report was taken
        self.since_prefill_tokens = 0
        self._epoch = 0
        self._pending: dict[int, list[int]] = {}  # epoch -> [reqs, tokens, prefill reqs, prefill tokens]
        # cache
        self.cache: frozenset[int] = frozenset()
        self.cache_chunk_bytes = CHUNK_BYTES
        self.cache_at = -math.inf  # monotonic time the cache summary in ``cache`` was asked for
        self.cache_id: tuple[int, int] | None = None  # (incarnation, epoch) of the pod's cache in that summary
        self.kv_blocks = 0  # the pod's KV cache size in blocks, from its cache summary (0: not known)
        self.kv_block_tokens = 0  # tokens a block holds (vLLM's block_size), from the same (0: knob kv_block_tokens)
        self._memory: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._memory_max = memory_max
        # the SliceKeys (sessions) this router sent here, and when: which pod served a session
        self._served: collections.OrderedDict[int, float] = collections.OrderedDict()
        # the sessions that live here (this router sent their latest turn here, and it still runs or ended within
        # resident_window_s; at most memory_max of them): each one's latest prompt chunks, and how many of them
        # hold each chunk (their union is what the pod must keep)
        self._resident: collections.OrderedDict[int, tuple[float, frozenset[int]]] = collections.OrderedDict()
        self._refs: dict[int, int] = {}
        self._resident_window_s = resident_window_s
        # the sessions with a request of this router in flight here, and how many: they live here however long
        # those requests run (a long prefill behind a queue takes longer than resident_window_s)
        self._busy: dict[int, int] = {}

    # ---------------------------------------------------------------- state in the assignment
    def set_draining(self, draining: bool, now: float) -> None:
        """The pod's state in the latest generation: draining since ``now`` if it was not already."""
        if draining and not self.draining:
            self.draining_since = now
        elif not draining:
            self.draining_since = None
        self.draining = draining

    def drain_kept(self, now: float, keep_s: float) -> bool:
        """Not draining, or draining for at most ``keep_s`` (``Knobs.drain_keep_s``): it may keep its sessions."""
        if not self.draining:
            return True
        since = self.draining_since
        return since is not None and now - since <= keep_s

    # ---------------------------------------------------------------- own in-flight accounting
    def begin(
        self, tokens: int, prefill: int = 0, hashes: Sequence[int] = (), now: float = 0.0, slice_key: int | None = None
    ) -> Ticket:
        """Account one request dispatched at ``now``, of about ``tokens`` tokens (prompt + max new), of which about
        ``prefill`` prompt tokens are not cached on the pod (prefill work until its first token), and remember
        its prompt's chain ``hashes`` as the pod's from now on: it prefills them next, so a request over the same
        prefix picked during that prefill waits behind it here instead of computing it again on another pod
        (remembered only at the first token, a second query over a long document went elsewhere). Of session
        ``slice_key``, if given: the session counts as living here until it ``end``s, however long it runs."""
        if slice_key is not None:
            self._busy[slice_key] = self._busy.get(slice_key, 0) + 1
        before: tuple[tuple[int, float | None], ...] = ()
        if hashes:
            mem = self._memory
            before = tuple((h, mem.get(h)) for h in hashes)
            self.remember(hashes, now)
        e = self._epoch
        slot = self._pending.get(e)
        if slot is None:
            slot = self._pending[e] = [0, 0, 0, 0]
        slot[0] += 1
        slot[1] += tokens
        slot[2] += 1
        slot[3] += prefill
        self.since_reqs += 1
        self.since_tokens += tokens
        self.since_prefill_reqs += 1
        self.since_prefill_tokens += prefill
        self.inflight += 1
        self.inflight_tokens += tokens
        self.prefill_reqs += 1
        self.prefill_tokens += prefill
        return Ticket(e, tokens, prefill, remembered=before, at=now, slice_key=slice_key)

    def first_token(self, t: Ticket) -> None:
        """The request of ``t`` produced its first token (its prefill is done); idempotent."""
        if t.first or t.done:
            return
        t.first = True
        self.prefill_reqs -= 1
        self.prefill_tokens -= t.prefill
        slot = self._pending.get(t.epoch)
        if slot is not None:
            slot[2] -= 1
            slot[3] -= t.prefill
            self.since_prefill_reqs -= 1
            self.since_prefill_tokens -= t.prefill

    def fail(self, t: Ticket) -> None:
        """The request of ``t`` failed before its first token (the pod could not be reached, or answered an error):
        ``end`` it and take back the prefix ``begin`` remembered for it, unless a later dispatch remembered the
        same chunks since (the pod computed nothing of it, and a pod that looked warm for it drew the prefix's
        next requests to a miss)."""
        if not t.first:
            mem = self._memory
            for h, was in t.remembered:
                if mem.get(h) != t.at:
                    continue
                if was is None:
                    del mem[h]
                else:
                    mem[h] = was
            t.remembered = ()
        self.end(t)

    def end(self, t: Ticket, now: float | None = None) -> None:
        """The request of ``t`` finished (any outcome) at ``now``; idempotent. Its session, when it has no other
        request in flight here, counts as living here for ``resident_window_s`` from ``now`` (given), as from
        its dispatch otherwise."""
        if t.done:
            return
        self.first_token(t)
        t.done = True
        key = t.slice_key
        if key is not None:
            n = self._busy.get(key, 0) - 1
            if n > 0:
                self._busy[key] = n
            else:
                self._busy.pop(key, None)
                if now is not None and (got := self._resident.pop(key, None)) is not None:
                    self._resident[key] = (now, got[1])
        self.inflight -= 1
        self.inflight_tokens -= t.tokens
        slot = self._pending.get(t.epoch)
        if slot is not None:
            slot[0] -= 1
            slot[1] -= t.tokens
            self.since_reqs -= 1
            self.since_tokens -= t.tokens
            if slot[0] <= 0:
                del self._pending[t.epoch]

    def poll_started(self) -> int:
        """A load poll is about to be sent: requests dispatched from now on are not in its report."""
        e = self._epoch
        self._epoch = e + 1
        return e

    def apply_report(
        self, poll_epoch: int, at: float, running: int, waiting: int, tokens_in_flight: int, kv_usage: float
    ) -> None:
        """Install the report answering the poll started at ``poll_epoch`` (taken at monotonic ``at``)."""
        if at < self.rep_at:
            return  # an older poll answered late
        if self._avg_at >= 0 and self._halflife_s > 0:
            # the last report's load held from its time until this one (piecewise constant, time-weighted)
            w = 0.5 ** ((at - self._avg_at) / self._halflife_s)
            self.load_avg = w * self.load_avg + (1.0 - w) * (self.rep_running + self.rep_waiting)
        self._avg_at = at
        self.rep_at = at
        self.rep_running = running
        self.rep_waiting = waiting
        self.rep_tokens = tokens_in_flight
        self.rep_kv = kv_usage
        self._expire_resident(at)
        for e in [e for e in self._pending if e <= poll_epoch]:
            slot = self._pending.pop(e)
            self.since_reqs -= slot[0]
            self.since_tokens -= slot[1]
            self.since_prefill_reqs -= slot[2]
            self.since_prefill_tokens -= slot[3]

    def set_cache(
        self,
        chunk_bytes: int,
        hashes: Sequence[int] | frozenset[int],
        at: float = -math.inf,
        blocks_total: int = 0,
        block_tokens: int = 0,
        *,
        incarnation: int = 0,
        epoch: int = 0,
    ) -> None:
        """Install the pod's cache summary, asked for at monotonic ``at`` (the prefix chunks it held then, its KV
        cache size in blocks and the tokens a block holds, each 0: not known). ``incarnation`` (the engine's,
        ``CacheSummary.incarnation``: new when the pod restarted) and ``epoch`` (bumped when the engine cleared its
        cache): when either differs from the last summary's, the cache started empty after that summary was asked
        for, and what this router sent the pod until then is forgotten (``forget_sent_before``)."""
        cid = (incarnation, epoch)
        if self.cache_id is not None and cid != self.cache_id:
            self.forget_sent_before(self.cache_at)
        self.cache_id = cid
        self.cache_chunk_bytes = chunk_bytes or CHUNK_BYTES
        self.cache = hashes if isinstance(hashes, frozenset) else frozenset(hashes)
        if at > self.cache_at:
            self.cache_at = at
        if blocks_total > 0:
            self.kv_blocks = blocks_total
        if block_tokens > 0:
            self.kv_block_tokens = block_tokens

    # ---------------------------------------------------------------- estimates
    def outstanding(self, now: float, stale_s: float) -> tuple[int, int]:
        """(requests, tokens) running or waiting on the pod, as best known at ``now``."""
        if self.rep_at >= 0 and now - self.rep_at <= stale_s:
            reqs = self.rep_running + self.rep_waiting + self.since_reqs
            toks = self.rep_tokens + self.since_tokens
            inf = self.inflight
            return (reqs if reqs > inf else inf), (toks if toks > self.inflight_tokens else self.inflight_tokens)
        return self.inflight, self.inflight_tokens

    def prefill_ahead(self, now: float, stale_s: float) -> tuple[int, int]:
        """(requests, tokens) of prefill a request sent now would wait behind: the pod's reported waiting queue
        (tokens estimated at the report's mean tokens per request) plus this router's own requests dispatched
        since that report and still without a first token; never below this router's own such requests."""
        own_r, own_t = self.prefill_reqs, self.prefill_tokens
        if self.rep_at >= 0 and now - self.rep_at <= stale_s and self.rep_waiting > 0:
            n = self.rep_running + self.rep_waiting
            wt = self.rep_tokens * self.rep_waiting // n if n > 0 else 0
            r = self.rep_waiting + self.since_prefill_reqs
            t = wt + self.since_prefill_tokens
            return (r if r > own_r else own_r), (t if t > own_t else own_t)
        return own_r, own_t

    def kv_usage(self, now: float, stale_s: float) -> float:
        return self.rep_kv if self.rep_at >= 0 and now - self.rep_at <= stale_s else 0.0

    # ---------------------------------------------------------------- prefix memory
    def remember(self, hashes: Sequence[int], now: float, slice_key: int | None = None, *, reside: bool = True) -> None:
        """This router just sent a prompt with these chain hashes to the pod (for session ``slice_key``, which then
        lives here, unless ``reside`` is False: ``Residence.placed`` already made it so at the dispatch)."""
        if slice_key is not None:
            served = self._served
            served.pop(slice_key, None)
            served[slice_key] = now
            while len(served) > self._memory_max:
                served.popitem(last=False)
            if reside:
                self._reside(slice_key, frozenset(hashes), now)
        mem = self._memory
        for h in hashes:
            if h in mem:
                mem.move_to_end(h)
            mem[h] = now
        while len(mem) > self._memory_max:
            mem.popitem(last=False)

    def forget_sent_before(self, t: float) -> None:
        """Forget the prefix chunks this router sent the pod at or before ``t``: its cache was emptied (a restart, a
        reset) after ``t``. Which sessions it served and which live there stay: they say where the router sent
        them, and fade on their own (``resident_window_s``). Without this the router trusted what it sent a
        restarted pod for ``prefix_memory_trust_s`` after the pod's first summary, and sent the sessions it had
        sent there before back to an empty cache (the bench's pods restart in under a second)."""
        mem = self._memory
        while mem:
            h, sent = next(iter(mem.items()))
            if sent > t:
                break
            del mem[h]

    def matched_chunks(self, hashes: Sequence[int], now: float, memory_s: float, trust_s: float = 0.0) -> int:
        """Leading chunks of ``hashes`` the pod is expected to hold: in its cache summary, or sent to it within
        ``memory_s`` and (``trust_s`` > 0) not more than ``trust_s`` before that summary was asked for (a chunk
        the pod had had time to report and did not is evicted, or the pod restarted)."""
        cache = self.cache
        mem = self._memory
        horizon = now - memory_s
        if trust_s > 0 and self.cache_at - trust_s > horizon:
            horizon = self.cache_at - trust_s
        n = 0
        for h in hashes:
            if h in cache:
                n += 1
                continue
            t = mem.get(h)
            if t is None or t < horizon:
                break
            n += 1
        return n

    def served_at(self, slice_key: int) -> float:
        """When this router last sent the pod a request of session ``slice_key`` (-inf: not in its memory): of
        two pods holding a session's cache alike (a warm-up copied it), the one that served the session. Not
        the prompt's chunks: a new session's stable prefix may be its tenant's system prompt alone, which the
        router sends to every pod of the tenant."""
        return self._served.get(slice_key, -math.inf)

    # ---------------------------------------------------------------- resident sessions
    def resident_chunks(self) -> int:
        """Distinct prompt chunks of the sessions living here: what the pod's KV cache must hold to keep every
        one of them warm (a tenant's shared system prompt or a shared document counts once)."""
        return len(self._refs)

    def resident_sizes(self) -> list[tuple[int, int, int]]:
        """(SliceKey, prompt chunks of its latest turn, of those the chunks no other session living here shares)
        of each session living here: what it would take away if it left (a query over a shared document, little
        of its prompt; a long agentic session, nearly all of it)."""
        refs = self._refs
        return [
            (key, len(chunks), sum(1 for h in chunks if refs[h] == 1)) for key, (_, chunks) in self._resident.items()
        ]

    def reside(self, slice_key: int, hashes: Sequence[int], now: float) -> None:
        """Session ``slice_key``'s latest turn, with these prompt chain hashes, was sent here at ``now``: it lives
        here from now on (its prefill is under way, so its context takes the pod's KV cache before its first
        token comes back)."""
        self._reside(slice_key, frozenset(hashes), now)

    def release(self, slice_key: int) -> None:
        """Session ``slice_key`` no longer lives here (its latest turn went to another pod)."""
        gone = self._resident.pop(slice_key, None)
        if gone is not None:
            self._unref(gone[1])

    def _reside(self, slice_key: int, chunks: frozenset[int], now: float) -> None:
        """Session ``slice_key``'s latest turn, with these prompt chunks, came here at ``now``."""
        before = self._resident.pop(slice_key, None)
        if before is not None:  # a later turn: its prompt mostly extends the last one, so count the difference
            self._unref(before[1] - chunks)
            chunks_new = chunks - before[1]
        else:
            chunks_new = chunks
        refs = self._refs
        for h in chunks_new:
            refs[h] = refs.get(h, 0) + 1
        self._resident[slice_key] = (now, chunks)
        self._expire_resident(now)
        while len(self._resident) > self._memory_max:  # bounded like the rest of the router's memory
            self.release(next(iter(self._resident)))

    def _unref(self, chunks: Iterable[int]) -> None:
        refs = self._refs
        for h in chunks:
            n = refs[h] - 1
            if n:
                refs[h] = n
            else:
                del refs[h]

    def _expire_resident(self, now: float) -> None:
        horizon = now - self._resident_window_s
        res = self._resident
        busy = self._busy
        while res:
            key, (t, chunks) = next(iter(res.items()))
            if t >= horizon:
                break
            if key in busy:  # a request of it still runs here: it lives here (back in the window's order at now)
                del res[key]
                res[key] = (now, chunks)
                continue
            self.release(key)

    def __repr__(self) -> str:
        return f"PodView({self.id!r}, healthy={self.healthy}, inflight={self.inflight})"


class Residence:
    """Which pod each session lives on (the one its latest turn was sent to), for a bounded number of sessions: a
    session that moves stops counting toward its old pod's resident chunks at once, not a window later, and
    counts toward its new pod's from the moment it is sent there, not from its first token: a long prefill
    takes seconds, and a pod that still looked roomy meanwhile drew a second and third crowded pod's session
    (``Knobs.kv_room``) that then evicted each other."""

    def __init__(self, max_keys: int = 1 << 16) -> None:
        self._on: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._max = max_keys

    def placed(
        self, views: Mapping[str, PodView], pod: PodView, hashes: Sequence[int], now: float, slice_key: int | None
    ) -> None:
        """A request of session ``slice_key`` with these prompt chain hashes was just sent to ``pod``: the session
        lives there from now on."""
        if slice_key is None:
            return
        pod.reside(slice_key, hashes, now)
        self._move(views, pod, slice_key)

    def failed(self, pod: PodView, slice_key: int | None) -> None:
        """The request of session ``slice_key`` sent to ``pod`` ended before its first token (refused, failed,
        cancelled): the session does not live there (until a later turn is sent there)."""
        if slice_key is not None and self._on.get(slice_key) == pod.id:
            del self._on[slice_key]
            pod.release(slice_key)

    def served(
        self, views: Mapping[str, PodView], pod: PodView, hashes: Sequence[int], now: float, slice_key: int | None
    ) -> None:
        """``pod`` just served a request of session ``slice_key`` with these prompt chain hashes (its first token
        came back): remember the prefix there, and move the session's residency to it, unless ``placed`` put it
        there at the dispatch (residing again would redo the prompt's chunk sets on the first token's path, and
        re-append the dispatch time behind later sessions' in the window's time order)."""
        placed = slice_key is not None and self._on.get(slice_key) == pod.id
        pod.remember(hashes, now, slice_key, reside=not placed)
        if slice_key is not None:
            self._move(views, pod, slice_key)

    def _move(self, views: Mapping[str, PodView], pod: PodView, slice_key: int) -> None:
        on = self._on
        prev = on.pop(slice_key, None)
        if prev is not None and prev != pod.id and (old := views.get(prev)) is not None:
            old.release(slice_key)
        on[slice_key] = pod.id
        while len(on) > self._max:
            on.popitem(last=False)
