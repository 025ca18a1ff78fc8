"""The fleet in virtual time: clients, N routers with their own lagging views, pods, the assigner, failures.

What is real: the routing key (``axon_router.routing_key.routing_key``, grouped or flat), the pick
(``axon_router.admission.Admission`` + ``axon_router.pick.CostPick`` over real ``PodView``s fed by simulated
polls), the policy round (``sharder.policy.reshard``) on ``LoadReport``s aggregated like the slicelet's (EWMA +
space-saving hot keys of the work each finished request did), and the engine (``brunoise.simulate.engines``).
What is simulated: time (an event queue, no wall clock), the network (zero latency; an assignment reaches the
routers ``assignment_lag_s`` after its round), and process lifecycles (restart = drain, wait idle, stop, start).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from axon_router.admission import Admission, Outcome, Priority
from axon_router.cost import PickInput
from axon_router.knobs import Knobs
from axon_router.pick import Candidates, CostPick, pull_source
from axon_router.pod_view import PodView, Residence, Ticket
from axon_router.routing_key import routing_key
from axon_router.targets import new_session_replicas, not_outside
from brunoise.simulate.engines import FluidEngine, StepEngine, make_engine
from brunoise.simulate.events import EventQueue
from brunoise.simulate.report import Results
from brunoise.simulate.source import PHASE_RESTART, SimRequest, SimSession, Source
from runtime.engines.sim import BLOCK_TOKENS, SimConfig, virtual_request
from runtime.warm import (
    LOG_KEYS,
    WARM_IDLE_POLL_S,
    WARM_MAX_KV_USAGE,
    WARM_PIECE_BYTES,
    WARM_PRIORITY,
    WARM_PROMPTS,
    WARM_READ_BYTES,
    WARM_READ_KV_SHARE,
    WARM_READ_PROMPTS,
    can_hold,
    hottest_keys,
    warm_actions,
    warm_budget_bytes,
)
from sharder.assignment import Assignment, RoundStats, initial_assignment
from sharder.config import TargetConfig
from sharder.headers import SESSION_HEADERS, TENANT_HEADER
from sharder.keyspace import Slice
from sharder.kv_pull import PullHint
from sharder.load import LoadReport, SliceLoad
from sharder.pods import Pod, PodState
from sharder.policy import reshard
from sharder.policy.warm import clear_warming, still_reported, warming_of
from sharder.prefix import CHUNK_BYTES, TEXT_BYTES_PER_TOKEN, matched_chunks
from sharder.sketch import Ewma, SpaceSaving

TARGET = "sim"
#: Up to this many pods the simulated router passes the whole pool as the pick's outside candidates, as the router does.
EXACT_PODS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class FleetSpec:
    """Everything but the traffic: pods, routers, the target config, timings and failures."""

    pods: int = 4
    #: Relative capacity of each pod, cycled over the pods (engine step times are divided by it).
    capacities: tuple[float, ...] = (1.0,)
    kv_blocks: int = 1024
    max_model_len: int = 4096
    #: "step" (the simulated engine's own scheduler, exact) or "fluid" (request-level, for fleet size).
    engine: str = "step"
    routers: int = 1
    knobs: Knobs = dataclasses.field(default_factory=Knobs)
    config: TargetConfig = dataclasses.field(default_factory=lambda: TargetConfig(TARGET))
    round_interval_s: float = 0.5
    #: Watch + clerk refresh: an assignment reaches the routers this long after its round.
    assignment_lag_s: float = 0.1
    #: Requests the client keeps in flight at most (bench/compare.py: 32); 0 = no limit.
    concurrency: int = 32
    #: A restart waits this long at most for the pod to hold no slice, then as long for it to run nothing, as
    #: ``bench/compare.py`` does (``RunConfig.drain_timeout_s``, an operator's ``brunoise drain --wait``): a pod
    #: keeps the sessions the routers hold on it for ``drain_keep_s`` (5 s), and those finish before it stops.
    #: (3 s until stop 23: agentic restarts stopped pods with held sessions' requests running, and the streams broke.)
    drain_timeout_s: float = 20.0
    #: A restarted pod serves again this long after it stopped (process start, engine ready, registration): the
    #: bench's simulated pods take 0.6-0.75 s (1.5 until stop 23); a real vLLM loading its weights, minutes.
    restart_down_s: float = 0.7
    #: The pods' KV connector bandwidth (GB/s; ``SimConfig.kv_transfer_gb_per_s``), as ``bench/compare.py``'s pods
    #: have it (``KV_TRANSFER_GB_PER_S``): a warm-up reads the KV a donor still holds instead of prefilling it, as
    #: the runtime's ``Warmer`` does. Step engine only (the fluid engine always prefills); 0: no connector.
    kv_transfer_gb_per_s: float = 10.0
    lease_ttl_s: float = 5.0
    #: (time, pod index) of pod deaths (no drain: in-flight requests fail or retry; the lease lapses).
    deaths: tuple[tuple[float, int], ...] = ()
    #: Use the source's restart schedule (one restart per pod in the restart phase).
    restarts: bool = True
    slicelet_top_k: int = 8
    slicelet_halflife_s: float = 10.0
    #: Time buckets of the series (load and hit rate over time); 0 = duration / 60, at least 0.5 s.
    bucket_s: float = 0.0
    #: Compute the infinite-cache oracle (one set of every chunk hash seen: memory grows with the traffic).
    oracle: bool = True
    #: Keep one row per request (``Results.request_log``, the bench's columns): memory grows with the traffic.
    request_log: bool = False
    #: How the pods joined before traffic: "staggered" (one by one, as bench/compare.py's pools) or "even".
    registration: str = "staggered"
    seed: int = 0

    def validate(self) -> FleetSpec:
        if self.pods < 1 or self.routers < 1:
            raise ValueError("pods and routers must be >= 1")
        if not self.capacities or any(c <= 0 for c in self.capacities):
            raise ValueError("capacities must be numbers > 0")
        if self.engine not in ("step", "fluid"):
            raise ValueError(f"engine must be step or fluid, got {self.engine!r}")
        if self.registration not in ("staggered", "even"):
            raise ValueError(f"registration must be staggered or even, got {self.registration!r}")
        if self.round_interval_s <= 0 or self.concurrency < 0:
            raise ValueError("round_interval_s must be > 0 and concurrency >= 0")
        for name in ("drain_timeout_s", "restart_down_s", "kv_transfer_gb_per_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        self.knobs.validate()
        self.config.validate()
        for t, i in self.deaths:
            if not 0 <= i < self.pods or t < 0:
                raise ValueError(f"death of pod {i} at {t}: pod index must be in [0, {self.pods}) and t >= 0")
        return self


def pod_config(spec: FleetSpec, capacity: float) -> SimConfig:
    """The simulated engine of one pod: the spec's KV size, compute scaled by its relative capacity."""
    d = SimConfig()
    return SimConfig(
        kv_blocks=spec.kv_blocks, max_model_len=spec.max_model_len, capacity=capacity,
        step_fixed_s=d.step_fixed_s / capacity, per_prefill_token_s=d.per_prefill_token_s / capacity,
        per_decode_seq_s=d.per_decode_seq_s / capacity, per_context_token_s=d.per_context_token_s / capacity,
        kv_transfer_gb_per_s=spec.kv_transfer_gb_per_s,
    ).validate()  # fmt: skip


# ------------------------------------------------------------------------------------------------ state


class Flight:
    """One request from the client's send to its end (attempts included)."""

    __slots__ = (
        "attempts", "cached", "done", "first_t", "num", "oracle_chunks", "phase", "pick_t", "pin", "pod", "req",
        "router", "rule", "sent_t", "sess", "ticket", "tried",
    )  # fmt: skip

    def __init__(self, req: SimRequest, sess: ClientSession, sent_t: float, pin: PickInput) -> None:
        self.req = req
        self.sess = sess
        self.sent_t = sent_t
        self.pin = pin
        self.attempts = 0
        self.tried: list[str] = []
        self.pod: SimPod | None = None
        self.router: SimRouter | None = None
        self.ticket: Ticket | None = None
        self.first_t: float | None = None
        self.phase = req.phase  # the phase it is sent in, once it is (``Source.phase_at``)
        self.rule = ""  # the pick's rule for its first attempt
        self.cached = 0  # prompt tokens its engine found cached
        self.pick_t = sent_t
        self.num = 0
        self.done = False
        # the leading chunks the infinite cache held (``Fleet._oracle``), when it runs, until ``_held_at_pick`` has
        # placed them (once: a request retried after its pod stopped is not counted again)
        self.oracle_chunks = 0


class ClientSession:
    __slots__ = ("index", "next", "pods", "pods_all", "requests", "sid")

    def __init__(self, s: SimSession) -> None:
        self.sid = s.session
        self.requests = s.requests
        self.next = 0
        self.pods: set[str] = set()  # pods that served its turns sent outside the rolling restart (pods/session)
        self.pods_all: set[str] = set()  # and every turn's
        self.index = 0


#: Virtual seconds a run may go on past its source's last request time; what is still open then is an error
#: (``unfinished``), so a lost request cannot keep the rounds ticking forever.
OVERRUN_S = 3600.0


class SliceMeter:
    """A pod's per-slice load as its slicelet aggregates it (``sharder.slicelet``): per held slice an EWMA of the
    work rate and a space-saving sketch of hot keys, aged like the EWMA. Same numbers, cheaper for idle slices:
    the ageing of a sketch is applied when it next counts a key (scaling is linear), and the hot keys' shares
    are recomputed only after a window that counted some."""

    __slots__ = ("halflife", "held", "los", "pending", "stats", "top_k")

    def __init__(self, top_k: int, halflife_s: float) -> None:
        self.top_k = top_k
        self.halflife = halflife_s
        self.pending: list[tuple[int, float]] = []
        self.held: tuple[Slice, ...] = ()
        self.los: list[int] = []
        # slice -> [Ewma, SpaceSaving, requests, window weight, deferred scale, top-key shares]
        self.stats: dict[Slice, list[Any]] = {}

    def set_held(self, held: Sequence[Slice]) -> None:
        h = tuple(sorted(held))
        if h == self.held:
            return
        self.stats = {
            s: self.stats.get(s) or [Ewma(self.halflife), SpaceSaving(self.top_k), 0, 0.0, 1.0, ()] for s in h
        }
        self.held = h
        self.los = [s.lo for s in h]

    def aggregate(self, dt: float) -> tuple[SliceLoad, ...]:
        pending, self.pending = self.pending, []
        held, los, stats = self.held, self.los, self.stats
        for key, w in pending:
            i = bisect.bisect_right(los, key) - 1
            if i >= 0 and key < held[i].hi:
                st = stats[held[i]]
                if st[4] != 1.0:
                    st[1].scale(st[4])
                    st[4] = 1.0
                st[2] += 1
                st[3] += w
                st[1].add(key, w)
        out: list[SliceLoad] = []
        age = 0.5 ** (dt / self.halflife)
        for s in held:
            st = stats[s]
            sk = st[1]
            if st[3] > 0:
                total = sk.total
                st[5] = tuple((k, c / total) for k, c in sk.top(self.top_k)) if total > 0 else ()
            st[0].update(st[3] / dt, dt)
            load = max(0.0, float(st[0].value))
            top: tuple[tuple[int, float], ...] = ()
            if load > 0 and st[5]:
                top = tuple((k, load * r) for k, r in st[5])
            out.append(SliceLoad(s, load, top, st[2]))
            st[3] = 0.0
            st[4] *= age
        return tuple(out)


#: One warm-up request: (prompt tokens, their block hashes, read: the KV is read from a donor holding it).
WarmPiece = tuple[int, tuple[int, ...], bool]


class SimPod:
    """One runtime: its engine (replaced on restart), lifecycle, counters summed over incarnations."""

    __slots__ = (
        "base_hits", "base_queries", "bucket_ok", "capacity", "cfg", "engine", "id", "incarnation", "index",
        "infl_area", "infl_t", "inflight", "meter", "ok", "pod", "prompts", "pull_jobs", "sched", "up", "version",
        "warm_hits", "warm_jobs", "warm_poll", "warm_queries", "warm_queue",
    )  # fmt: skip

    def __init__(self, index: int, cfg: SimConfig, meter: SliceMeter) -> None:
        self.index = index
        # named as the bench names its pods (bench/pods.py): the pick breaks ties by a stable hash of (key, pod id),
        # so with the same ids a seed makes the bench's choices, and its figures compare with the bench run's
        self.id = f"pod-{index}"
        self.cfg = cfg
        self.capacity = cfg.capacity
        self.pod = Pod(self.id, f"sim:{index}", {}, PodState.ACTIVE, f"http://sim/{index}", TARGET)
        self.engine: StepEngine | FluidEngine | None = None
        self.up = True
        self.version = 0  # bumped on every change a load or cache poll could see
        self.incarnation = 0  # the engine's start count: its cache summaries' CacheSummary.incarnation
        self.sched: float | None = None  # time of the queued engine event
        self.base_queries = 0
        self.base_hits = 0
        self.ok = 0
        self.bucket_ok = 0
        self.inflight = 0
        self.infl_area = 0.0
        self.infl_t = 0.0
        self.meter = meter
        # the runtime's prompt log (``runtime.warm.PromptLog``): slice key -> [times served, hashes, tokens]
        self.prompts: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()
        # warm-up in progress, as the runtime's one ``Warmer`` does it: the marks (slice lo) in the order they came,
        # each with its deadline and the pieces left; the one piece in the engine (its id -> its mark); whether a
        # look for an idle engine is queued
        self.warm_queue: dict[int, tuple[Slice, float, collections.deque[WarmPiece]]] = {}
        self.warm_jobs: dict[str, int] = {}
        self.warm_poll = False
        # KV pulls in the engine (``Warmer.pull``): the read's id -> the client request waiting for it
        self.pull_jobs: dict[str, Any] = {}
        # the warm prefills' share of the engine's prefix-cache counters, taken out of the hit rate (as the
        # runtime's brunoise_runtime_warmup_* counters let a reader of vLLM's counters do)
        self.warm_queries = 0
        self.warm_hits = 0

    def log_prompt(self, key: int, hashes: tuple[int, ...], tokens: int) -> None:
        e = self.prompts.pop(key, None)
        self.prompts[key] = [1 if e is None else e[0] + 1, hashes, tokens]
        if len(self.prompts) > LOG_KEYS:
            self.prompts.popitem(last=False)

    def hottest(
        self, s: Slice, budget_n: int, budget_tokens: int, recent_first: bool = False
    ) -> list[tuple[int, tuple[int, ...], int]]:
        """The most served prompts in ``s`` (ties: most recent first; ``recent_first``: the most recently served
        first) within the budgets (``PromptLog.hottest``)."""
        log = self.prompts
        served = ((k, 0 if recent_first else n, tokens) for k, (n, _, tokens) in log.items())
        keys = hottest_keys(served, s.lo, s.hi, budget_n, budget_tokens)
        return [(k, log[k][1], log[k][2]) for k in keys]

    def latest_in(self, lo: int, hi: int) -> tuple[tuple[int, ...], int] | None:
        """The block hashes and tokens of the latest prompt this pod served among the SliceKeys [lo, hi)
        (``PromptLog``)."""
        if hi == lo + 1:
            e = self.prompts.get(lo)
        else:
            e = next((self.prompts[key] for key in reversed(self.prompts) if lo <= key < hi), None)
        return None if e is None else (tuple(e[1]), int(e[2]))

    def holds(self, hashes: tuple[int, ...]) -> bool:
        """The pod is up and holds a prompt's KV for a warming peer to read (``can_hold``, as the runtime's
        ``hold_kv``)."""
        e = self.engine
        return e is not None and self.up and can_hold(hashes, e.kv.cached)

    def queries_hits(self) -> tuple[int, int]:
        e = self.engine
        q, h = self.base_queries - self.warm_queries, self.base_hits - self.warm_hits
        if e is None:
            return q, h
        return q + e.prefix_queries, h + e.prefix_hits

    def set_inflight(self, t: float, delta: int) -> None:
        self.infl_area += self.inflight * (t - self.infl_t)
        self.infl_t = t
        self.inflight += delta

    def area(self, t: float) -> float:
        return self.infl_area + self.inflight * (t - self.infl_t)


class SimRouter:
    """One router replica: its own pod views (polled on its own phase), assignment (lagging) and health view."""

    def __init__(self, index: int, knobs: Knobs, pods: Sequence[SimPod], offset: float) -> None:
        self.index = index
        self.knobs = knobs
        self.policy = CostPick(knobs)
        self.admission = Admission(knobs)
        self.views: dict[str, PodView] = {
            p.id: PodView(
                p.id,
                p.pod.http_address,
                p.pod.address,
                memory_max=knobs.prefix_memory_max,
                load_halflife_s=knobs.load_halflife_s,
                resident_window_s=knobs.resident_window_s,
            )
            for p in pods
        }
        self.residence = Residence()
        self.view_list = [self.views[p.id] for p in pods]
        self.seen = [-1] * len(pods)
        self.seen_cache = [-1] * len(pods)
        self.assignment: Assignment | None = None
        self.offset = offset
        self.up_version = -1

    def poll(self, t: float, pods: Sequence[SimPod], cache: bool) -> None:
        """A load poll of every pod (and the cache summary on cache ticks); an unchanged pod only refreshes the
        report's age (its report would be identical and this router dispatched nothing to it since)."""
        seen, seen_cache, views = self.seen, self.seen_cache, self.view_list
        for i, p in enumerate(pods):
            v = views[i]
            if not p.up or p.engine is None:
                continue
            ver = p.version
            if ver == seen[i] and not v._pending:
                v.rep_at = t
            else:
                seen[i] = ver
                e = v.poll_started()
                ld = p.engine.load(t)
                v.apply_report(e, t, ld.running, ld.waiting, ld.tokens_in_flight, ld.kv_usage)
            if cache:
                if seen_cache[i] != ver:
                    seen_cache[i] = ver
                    kv = p.engine.kv
                    v.set_cache(
                        CHUNK_BYTES, frozenset(kv.cached), t, kv.num_blocks, BLOCK_TOKENS,
                        incarnation=p.incarnation, epoch=kv.epoch,
                    )  # fmt: skip
                else:
                    v.cache_at = t  # the same summary, asked for again

    def health(self, pods: Sequence[SimPod], up_version: int) -> None:
        if up_version == self.up_version:
            return
        self.up_version = up_version
        for i, p in enumerate(pods):
            self.view_list[i].healthy = p.up


@dataclasses.dataclass(slots=True)
class RoundRecord:
    t: float
    generation: int
    stats: RoundStats
    committed: bool
    slices: int = 0


# ------------------------------------------------------------------------------------------------ the fleet


class Fleet:
    """One simulation run: ``run()`` replays ``source`` on the fleet of ``spec`` and returns the raw results."""

    def __init__(
        self, spec: FleetSpec, source: Source, progress: Callable[[float, int, int], None] | None = None
    ) -> None:
        self.spec = spec.validate()
        self.progress = progress  # called every progress_s of virtual time with (time, requests sent, ok)
        self.source = source
        self.knobs = spec.knobs
        self.q = EventQueue()
        self.rng = random.Random(f"{spec.seed}:fleet")
        caps = spec.capacities
        self.pods = [
            SimPod(i, pod_config(spec, caps[i % len(caps)]), SliceMeter(spec.slicelet_top_k, spec.slicelet_halflife_s))
            for i in range(spec.pods)
        ]
        for p in self.pods:
            self._new_engine(p)
        self.by_id = {p.id: p for p in self.pods}
        self._held_for: tuple[Any, ...] | None = None
        self._held_map: dict[str, list[Slice]] = {}
        k = self.knobs
        self.routers = [
            SimRouter(i, k, self.pods, self.rng.uniform(0.0, k.load_poll_interval_s)) for i in range(spec.routers)
        ]
        self.assignment = self._registered(spec)
        for r in self.routers:
            r.assignment = self.assignment
        self.up_version = 0
        self.rounds: list[RoundRecord] = []
        self.flights: dict[str, Flight] = {}
        self.waitq: list[Flight] = []  # sends waiting for the client's concurrency limit
        self.client_inflight = 0
        self.sessions_left: Iterator[SimSession] = iter(())
        self.active_sessions = 0
        self.exhausted = False
        self.finished = False
        self.rid = 0
        self.rr = 0
        # warm-up on reshard, as the leader and the runtimes' warmers do it: when each mark was first seen, the
        # slices each pod finished warming and still reports (pruned as the slicelet prunes them), and the warm
        # prefills' ids
        self.warm_since: dict[tuple[int, str], float] = {}
        self.warm_done: dict[str, list[Slice]] = {}
        self.warm_reports = 0  # marks the pods finished warming (reported warm)
        self.warm_n = 0  # warm-up requests sent (prefill pieces and KV reads)
        self.warm_reads = 0  # of those, reads of a donor's KV
        self.warm_read_tokens = 0  # the prompt tokens those reads copied
        # KV pulls (``kv_pull_min_chunks``): requests sent with a hint, those that read, the tokens they read
        self.pulls_hinted = 0
        self.pulls_read = 0
        self.pull_read_tokens = 0
        self._peers_of: tuple[int, dict[str, set[str]]] | None = None
        # results
        self.results = Results(source, spec)
        self.oracle_held: set[int] = set()
        dur = max(source.duration_s, 1e-9)
        self.bucket_s = spec.bucket_s or max(dur / 60.0, 0.5)
        self.results.bucket_s = self.bucket_s
        self.restart_log: list[dict[str, float | str]] = []
        self.restart_plan: collections.deque[tuple[float, SimPod]] = collections.deque()  # restarts not begun yet

    def _registered(self, spec: FleetSpec) -> Assignment:
        """The assignment when traffic starts. ``staggered`` (as bench/compare.py's pools): the target is created
        when the first pod registers (every slice on it); the others join and idle rounds (no load) run until
        every pod holds a slice. ``even``: every pod registered at once (slices round-robin)."""
        pods = [p.pod for p in self.pods]
        if spec.registration == "even":
            return initial_assignment(spec.config, pods)
        a = initial_assignment(spec.config, pods[:1])
        for _ in range(1000):
            held = self._held(a)
            if all(p.id in held for p in pods):
                break
            a = reshard(a, pods, [], now_ms=0)
        return a

    def _warm_registered(self) -> None:
        """The pods that joined after the first are marked warming on the slices they were filled onto; on the bench
        they warm at once (their donor has served nothing yet) and the leader clears the marks before traffic
        starts, so here too: without this the marks stood until the first committed round, keeping new sessions
        off the joiners (``new_session_replicas``) and then copying the first pod's prompts onto every other."""
        a = self.assignment
        if not any(sa.warming for sa in a.slices):
            return
        self._start_warm(a, 0.0)
        cleared = self._clear_warm(a, 0.0)
        if cleared is not a:  # marks cleared: a generation of its own, as the leader commits it
            a = dataclasses.replace(cleared, generation=a.generation + 1)
        self.assignment = a
        for r in self.routers:
            r.assignment = a

    # -- engines ----------------------------------------------------------------------------------------------

    def _new_engine(self, p: SimPod) -> None:
        def on_first(req: Any, t: float, p: SimPod = p) -> None:
            self._on_first(p, req, t)

        def on_finish(req: Any, t: float, p: SimPod = p) -> None:
            self._on_finish(p, req, t)

        if p.engine is not None:
            p.base_queries += p.engine.prefix_queries
            p.base_hits += p.engine.prefix_hits
        p.engine = make_engine(self.spec.engine, p.cfg, on_first, on_finish)
        p.incarnation += 1
        p.sched = None
        p.version += 1

    def _kick(self, p: SimPod) -> None:
        """(Re)queue the pod's next engine event when it moved earlier or there was none."""
        e = p.engine
        if e is None:
            return
        nt = e.next_time()
        if nt is None or (p.sched is not None and p.sched <= nt):
            return
        p.sched = nt
        self.q.at(nt, functools.partial(self._engine_event, p, e))

    def _engine_event(self, p: SimPod, e: StepEngine | FluidEngine, t: float) -> None:
        if p.engine is not e:
            return  # an event of a previous incarnation
        if p.sched is not None and t < p.sched:
            return  # superseded by an earlier-queued event already run
        p.sched = None
        e.advance(t)
        p.version += 1
        self._kick(p)

    # -- the run ----------------------------------------------------------------------------------------------

    def run(self) -> Results:
        spec, q, k = self.spec, self.q, self.knobs
        self._warm_registered()
        self.sessions_left = self.source.sessions()
        self._next_session()
        done = lambda: self.finished  # noqa: E731
        for r in self.routers:
            n = max(1, round(k.cache_poll_interval_s / k.load_poll_interval_s))
            counter = [0]

            def poll(t: float, r: SimRouter = r, counter: list[int] = counter, n: int = n) -> None:
                r.poll(t, self.pods, counter[0] % n == 0)
                counter[0] += 1

            q.every(k.load_poll_interval_s, poll, start=r.offset, until=done)
            q.every(k.health_interval_s, functools.partial(self._health, r), start=r.offset,
                    until=done)  # fmt: skip
        q.every(spec.round_interval_s, self._round, start=spec.round_interval_s, until=done)
        q.every(self.bucket_s, self._bucket, start=0.0, until=done)
        if self.progress is not None:
            q.every(self.bucket_s * 6, self._report_progress, start=0.0, until=done)
        for ph in self.source.phases:
            q.at(ph.start, functools.partial(self._phase_mark, ph.name))
        if spec.restarts:
            plan = sorted((ev.t, ev.pod) for ev in self.source.restarts if ev.pod < len(self.pods))
            self.restart_plan = collections.deque((t, self.pods[i]) for t, i in plan)
            if self.restart_plan:
                q.at(self.restart_plan[0][0], self._next_restart)
        for t, i in spec.deaths:
            q.at(t, functools.partial(self._death, self.pods[i]))
        limit = self.source.duration_s + OVERRUN_S
        q.run(stop=lambda: q.now > limit)
        end = q.now
        for f in list(self.flights.values()):  # bounded: what is still open past the limit is counted, not awaited
            self._end(f, end, "unfinished")
        self._phase_mark("end", end)
        self._bucket(end)
        self.results.finish(self, end)
        return self.results

    def _check_done(self) -> None:
        if self.exhausted and self.active_sessions == 0 and not self.flights and not self.finished:
            self.finished = True

    # -- clients ----------------------------------------------------------------------------------------------

    def _next_session(self) -> None:
        s = next(self.sessions_left, None)
        if s is None:
            self.exhausted = True
            self._check_done()
            return
        self.q.at(s.start, functools.partial(self._start_session, s))

    def _start_session(self, s: SimSession, t: float) -> None:
        cs = ClientSession(s)
        self.active_sessions += 1
        self.results.sessions += 1
        self._next_session()
        self._turn(cs, t)

    def _turn(self, cs: ClientSession, t: float) -> None:
        if cs.next >= len(cs.requests):
            self.active_sessions -= 1
            self.results.session_end(cs)
            self._check_done()
            return
        req = cs.requests[cs.next]
        cs.next += 1
        self.q.at(max(t, req.t), functools.partial(self._send, cs, req))

    def _send(self, cs: ClientSession, req: SimRequest, t: float) -> None:
        k = self.knobs
        session = (SESSION_HEADERS[0], req.session) if req.session else None
        tenant = (TENANT_HEADER, req.tenant) if req.tenant else None
        rhashes = list(req.hashes[: k.max_prefix_chunks])
        rk = routing_key(k, rhashes, req.key_text, req.stable_bytes, session, tenant)
        pin = PickInput(rk.slice_key, rhashes, req.est_tokens, req.max_tokens, rk.session_chunks)
        f = Flight(req, cs, t, pin)
        self.rid += 1
        f.num = self.rid
        self.flights[self._rid_of(f)] = f
        if self.spec.concurrency and self.client_inflight >= self.spec.concurrency:
            self.waitq.append(f)
            return
        self._dispatch(f, t)

    def _dispatch(self, f: Flight, t: float) -> None:
        self.client_inflight += 1
        f.sent_t = t
        f.phase = self.source.phase_at(t)
        self.results.sent(f, t)
        if self.spec.oracle:
            self._oracle(f)
        router = self.routers[self.rr % len(self.routers)]
        self.rr += 1
        f.router = router
        self._attempt(f, t)

    def _oracle(self, f: Flight) -> None:
        req = f.req
        held = self.oracle_held
        n = 0
        for h in req.hashes:
            if h not in held:
                break
            n += 1
        f.oracle_chunks = min(n, (req.prompt_tokens - 1) // (CHUNK_BYTES // 4))
        held.update(req.hashes)
        self.results.oracle(f.phase, req.prompt_tokens, f.oracle_chunks * (CHUNK_BYTES // 4))

    def _held_at_pick(self, f: Flight, pod: SimPod) -> None:
        """Where the infinite cache's hit of ``f`` was when the router picked ``pod`` for it: on ``pod``, only on
        another live pod (a KV pull can read it: the pick's placement), or on none (evicted: the pool's capacity).
        Past EXACT_PODS it is not looked for (every pod's cache, every request)."""
        n = f.oracle_chunks
        if n <= 0 or len(self.pods) > EXACT_PODS or pod.engine is None:
            return
        hashes = f.req.hashes
        picked = min(n, matched_chunks(hashes, pod.engine.kv.cached))
        others = (p.engine.kv.cached for p in self.pods if p is not pod and p.up and p.engine is not None)
        other = max(0, min(n, max((matched_chunks(hashes, c) for c in others), default=0)) - picked)
        self.results.held_at_pick(f.phase, picked, other, n - picked - other)
        f.oracle_chunks = 0

    # -- the router's request path --------------------------------------------------------------------------

    def _attempt(self, f: Flight, t: float) -> None:
        r = f.router
        assert r is not None and r.assignment is not None
        k = self.knobs
        views = r.views
        sa = r.assignment.lookup(f.pin.slice_key)
        tried = f.tried

        def usable(ids: Sequence[str]) -> list[str]:
            return [i for i in ids if i not in tried and views[i].healthy]

        # as the router: warming replicas take no new session while a warm one can (new_session_replicas)
        starts = new_session_replicas(sa, views, f.pin.prefix_hashes, f.pin.session_chunks, t, k)
        subset = usable(starts if f.attempts == 0 else sa.replicas)
        if not subset and starts is not sa.replicas:
            subset = usable(sa.replicas)
        if not subset and sa.leaving:
            subset = usable(sa.leaving)
        in_sub = not_outside(sa, subset)

        def outside(ids: Iterable[str]) -> list[str]:
            """The usable, live pods of ``ids`` outside the subset (the router's ``outside``)."""
            by_id = self.by_id
            return [
                i for i in ids
                if i not in in_sub and i not in tried and views[i].healthy and by_id[i].pod.state is not PodState.DEAD
            ]  # fmt: skip

        if f.attempts == 0:
            # The router passes every other eligible pod as ``outside`` (held sessions, spill); scoring them all
            # on every request is what a large fleet cannot afford in virtual time, so past EXACT_PODS only the
            # pods that served this session are passed first (the ones that can hold its cache as the pick's
            # held tier needs it), and the whole pool only when no subset pod is admissible.
            exact = len(self.pods) <= EXACT_PODS
            near = outside(self.by_id if exact else f.sess.pods_all)
            d = r.admission.decide(r.policy, subset, near, views, f.pin, t, Priority.INTERACTIVE)
            if d.pick is None and not exact:  # no admissible subset pod: the whole eligible pool (as the router does)
                d = r.admission.decide(r.policy, subset, outside(self.by_id), views, f.pin, t, Priority.INTERACTIVE)
            if d.outcome is Outcome.SHED or d.pick is None:
                self._end(f, t, "shed" if d.outcome is Outcome.SHED else "unavailable")
                return
            self.results.outcome(d.outcome.value, d.rule)
            f.rule = d.rule
            pick = d.pick
            ranking = d.ranking
        else:
            ranking = r.policy.choose_replicas(f.pin, Candidates(subset, outside(self.by_id)), views, t)
            first = ranking.first()
            if first is None:
                self._end(f, t, "unavailable")
                return
            pick = first[1]
            self.results.outcome("retry", "")
        pod = self.by_id[pick.pod.id]
        f.attempts += 1
        f.pick_t = t
        view = pick.pod
        if not pod.up or pod.engine is None:
            # connection refused: the router retries another pod before the first token
            tried.append(pod.id)
            self.results.retries += 1
            if f.attempts >= k.max_attempts:
                self._end(f, t, "upstream_unavailable")
                return
            self._attempt(f, t)
            return
        self._held_at_pick(f, pod)  # nothing without the oracle (no oracle chunks)
        f.ticket = view.begin(
            f.req.est_tokens + f.req.max_tokens, pick.miss_tokens, f.pin.prefix_hashes, t, f.pin.slice_key
        )
        r.residence.placed(views, view, f.pin.prefix_hashes, t, f.pin.slice_key)
        f.pod = pod
        req = f.req
        key = f.pin.slice_key
        ereq = pod.engine.make(self._rid_of(f), req.prompt_tokens, req.hashes, req.max_tokens, t, key)
        hint = (
            pull_source(ranking, pick, key, k.kv_pull_min_chunks, k.key_layout == "grouped")
            if ranking is not None
            else None
        )
        read = self._pull(pod, hint, req.hashes, t) if hint is not None else None
        pod.log_prompt(key, req.hashes, req.prompt_tokens)
        pod.set_inflight(t, +1)
        if read is None:
            pod.engine.submit(ereq, t)
        else:
            # the runtime reads the peer's prompt (a prompt-only request of warm-up traffic), then sends the request
            pod.pull_jobs[read.id] = ereq
            pod.engine.submit(read, t)
        pod.version += 1
        self._kick(pod)

    def _pull(self, pod: SimPod, hint: PullHint, hashes: Sequence[int], t: float) -> Any | None:
        """The picked pod's runtime acting on a router's KV pull hint (``Warmer.pull``): from a peer the assignment
        names (``Assignment.peers_of``, as the report's answer lists them), the peer's latest prompt among the hint's
        keys, when its engine still holds it (``SimPod.holds``): the read of that whole prompt (a prompt-only
        request with ``remote_tokens``, the client's priority, counted as warm-up traffic) that the request waits
        for; None when there is nothing to read. The peer's hold is free, as for warm-up reads."""
        self.pulls_hinted += 1
        donor = self.by_id.get(hint.pod_id)
        if donor is None or pod.engine is None or not pod.engine.kv_transfer or hint.pod_id not in self._peers(pod.id):
            return None
        got = donor.latest_in(hint.lo, hint.hi)
        if got is None or not donor.holds(got[0]):
            return None
        donor_hashes, tokens = got
        self.pulls_read += 1
        # the request's share of what is read: the leading chunks the two prompts share (chain hashes)
        self.pull_read_tokens += matched_chunks(hashes, set(donor_hashes)) * BLOCK_TOKENS
        read = virtual_request(f"k{self.pulls_read}", tokens, donor_hashes, 1, t)
        read.remote_tokens = tokens  # do_remote_prefill: the peer holds it
        return read

    def _peers(self, pod_id: str) -> set[str]:
        """The peers the assigner names ``pod_id`` in its report answers (``Assignment.peers_of``), per generation."""
        a = self.assignment
        assert a is not None
        if self._peers_of is None or self._peers_of[0] != a.generation:
            self._peers_of = (a.generation, {})
        known = self._peers_of[1]
        if pod_id not in known:
            known[pod_id] = {p.id for p in a.peers_of(pod_id)}
        return known[pod_id]

    @staticmethod
    def _rid_of(f: Flight) -> str:
        return f"r{f.num}"

    def _on_first(self, p: SimPod, ereq: Any, t: float) -> None:
        f = self.flights.get(ereq.id)
        if f is None or f.done:
            return
        f.first_t = t
        assert f.router is not None and f.ticket is not None
        v = f.router.views[p.id]
        v.first_token(f.ticket)
        f.router.residence.served(f.router.views, v, f.pin.prefix_hashes, f.pick_t, f.pin.slice_key)

    def _on_finish(self, p: SimPod, ereq: Any, t: float) -> None:
        waiting = p.pull_jobs.pop(ereq.id, None)
        if waiting is not None or ereq.id in p.warm_jobs:
            # warm-up traffic (a warm piece, a KV pull's read): out of the hit rate
            p.warm_queries += ereq.num_prompt
            p.warm_hits += ereq.cached_tokens or 0
            if waiting is None:
                self._warm_finished(p, ereq.id, t)
            elif p.engine is not None and p.up:
                p.engine.submit(waiting, t)
                p.version += 1
                self._kick(p)
            return
        f = self.flights.get(ereq.id)
        p.set_inflight(t, -1)
        if f is None or f.done:
            return
        p.ok += 1
        p.bucket_ok += 1
        f.cached = ereq.cached_tokens or 0
        work = max(0, ereq.num_prompt - f.cached) + ereq.max_tokens
        p.meter.pending.append((f.pin.slice_key, float(max(work, 1))))
        f.sess.pods_all.add(p.id)
        if f.phase != PHASE_RESTART:  # every router moves a session whose pod restarts (as bench/compare.py counts)
            f.sess.pods.add(p.id)
        self._end(f, t, "")

    def _end(self, f: Flight, t: float, error: str) -> None:
        if f.done:
            return
        f.done = True
        if f.router is not None and f.ticket is not None and f.pod is not None:
            f.router.views[f.pod.id].end(f.ticket, t)
        self.flights.pop(self._rid_of(f), None)
        self.results.ended(f, t, error)
        self.client_inflight -= 1
        if self.waitq:
            nxt = self.waitq.pop(0)
            self.q.at(t, functools.partial(self._dispatch, nxt))
        self._turn(f.sess, t)

    # -- the assigner -----------------------------------------------------------------------------------------

    def _held(self, a: Assignment) -> dict[str, list[Slice]]:
        """Slices (replica or leaving) of each pod in ``a`` (cached for the current assignment)."""
        if self._held_for is a.slices:
            return self._held_map
        held: dict[str, list[Slice]] = {}
        for sa in a.slices:
            for pid in sa.replicas:
                held.setdefault(pid, []).append(sa.slice)
            for pid in sa.leaving:
                held.setdefault(pid, []).append(sa.slice)
        self._held_for, self._held_map = a.slices, held
        return held

    def _round(self, t: float) -> None:
        cur = self.assignment
        held = self._held(cur)
        reports = []
        dt = self.spec.round_interval_s
        for p in self.pods:
            if not p.up or p.engine is None or p.pod.state is PodState.DEAD:
                p.meter.pending.clear()
                continue
            p.meter.set_held(held.get(p.id, ()))
            slices = p.meter.aggregate(dt)
            reports.append(LoadReport(p.id, TARGET, p.engine.load(t), slices, len(self.rounds), int(t * 1000)))
        new = reshard(cur, [p.pod for p in self.pods], reports, now_ms=int(t * 1000))
        new = self._clear_warm(new, t)
        committed = not new.same_placement(cur)
        if committed and new.generation <= cur.generation:  # only marks cleared: still a new generation
            new = dataclasses.replace(new, generation=cur.generation + 1)
        self.rounds.append(RoundRecord(t, new.generation, new.stats, committed, len(new.slices)))
        if committed:
            self.assignment = new
            self._start_warm(new, t)
            self.q.at(t + self.spec.assignment_lag_s, functools.partial(self._publish, new))
        elif new.memory is not None:  # as the leader: nothing to commit, but the calm policy's memory goes on
            self.assignment = dataclasses.replace(cur, memory=new.memory)

    def _clear_warm(self, a: Assignment, t: float) -> Assignment:
        """The leader's ``_clear_warm``: marks the pod reported warm, or older than ``warm_deadline_s``, go."""
        limit = a.config.warm_deadline_s
        marks = {(sa.slice.lo, p) for sa in a.slices for p in sa.warming}
        expired = {m for m in marks if t - self.warm_since.get(m, t) >= limit}
        out = clear_warming(a, self.warm_done, expired)
        kept = {(sa.slice.lo, p) for sa in out.slices for p in sa.warming}
        for m in [m for m in self.warm_since if m not in kept]:
            del self.warm_since[m]
        # as the slicelet (``Slicelet._on_warming``): a pod reports a warmed range only while a mark inside it
        # remains, so a range warmed once does not clear a later mark on it (the pod lost the slice, or restarted)
        marked: dict[str, list[Slice]] = {}
        for sa in out.slices:
            for p in sa.warming:
                marked.setdefault(p, []).append(sa.slice)
        for pid, done in self.warm_done.items():
            done[:] = still_reported(done, marked.get(pid, ()))
        return out

    def _report_warm(self, p: SimPod, s: Slice) -> None:
        """``p`` finished warming ``s`` (its slicelet's ``mark_warm``): reported warm until the mark is cleared."""
        self.warm_done.setdefault(p.id, []).append(s)
        self.warm_reports += 1

    def _start_warm(self, a: Assignment, t: float) -> None:
        """Each new mark's pod asks its donors (leaving pods first) for their hottest prompts in the slice and
        queues them for its warmer (``runtime.warm.Warmer``: at most ``WARM_PROMPTS`` prompts, ``warm_budget_bytes``
        in all); it is warm once they are done (at once when the donors had none). With a KV connector
        (``FleetSpec.kv_transfer_gb_per_s``, the step engine) it asks for the most recently served prompts within
        the ``WARM_READ_*`` budget, reads whole those a donor still holds (``SimPod.holds``, the runtime's
        ``hold_kv``) and prefills the others within the prefill budget, as the runtime's ``Warmer`` does. (A donor
        holding 75-99 % of a prompt computes the rest before the read; here the read carries it all.)"""
        deadline = a.config.warm_deadline_s
        for p in self.pods:
            if not p.up or p.engine is None:
                continue
            read = p.engine.kv_transfer
            prefill_t = warm_budget_bytes(p.cfg.kv_blocks, block_tokens=BLOCK_TOKENS) // TEXT_BYTES_PER_TOKEN
            for sa, donors in warming_of(a, p.id):
                mark = (sa.slice.lo, p.id)
                if mark in self.warm_since:
                    continue
                self.warm_since[mark] = t
                if read:
                    budget_n = WARM_READ_PROMPTS
                    budget_t = (
                        warm_budget_bytes(p.cfg.kv_blocks, WARM_READ_BYTES, WARM_READ_KV_SHARE, BLOCK_TOKENS)
                        // TEXT_BYTES_PER_TOKEN
                    )
                else:
                    budget_n, budget_t = WARM_PROMPTS, prefill_t
                picked: dict[int, tuple[tuple[int, ...], int, bool]] = {}
                for d in donors:
                    dp = self.by_id.get(d)
                    if dp is None or not dp.up or budget_n <= 0 or budget_t <= 0:
                        continue
                    for key, hashes, tokens in dp.hottest(sa.slice, budget_n, budget_t, recent_first=read):
                        if key not in picked:
                            picked[key] = (hashes, tokens, read and dp.holds(hashes))
                            budget_n -= 1
                            budget_t -= tokens
                # a read whole; else ever longer prefixes of WARM_PIECE_BYTES more each, one after another, at
                # WARM_PRIORITY (with a connector, only within the prefill budget)
                step = WARM_PIECE_BYTES // TEXT_BYTES_PER_TOKEN
                pieces: list[WarmPiece] = []
                chosen = list(picked.values())
                actions = warm_actions(((tokens, held) for _, tokens, held in chosen), read, prefill_t)
                for (hashes, tokens, _), action in zip(chosen, actions, strict=True):
                    if action:
                        pieces.append((tokens, hashes, True))
                    elif action is not None:
                        pieces.extend((n, hashes, False) for n in (*range(step, tokens, step), tokens))
                if not pieces:
                    self._report_warm(p, sa.slice)
                    continue
                p.warm_queue[sa.slice.lo] = (sa.slice, t + deadline, collections.deque(pieces))
            self._warm_pump(p, t)

    def _warm_pump(self, p: SimPod, t: float) -> None:
        """The runtime's ``Warmer`` on ``p``: one piece in the engine at a time, marks in the order they came; a piece
        is sent only while no live request waits (else it looks again in ``WARM_IDLE_POLL_S``); a mark is warm when
        its pieces are done, when its deadline (``warm_deadline_s``, the runtime's warm timeout) has passed, or
        when the engine's KV usage is above ``WARM_MAX_KV_USAGE``."""
        e = p.engine
        if p.warm_jobs or e is None or not p.up:
            return
        while p.warm_queue:
            lo = next(iter(p.warm_queue))
            s, deadline, pieces = p.warm_queue[lo]
            load = e.load(t)
            if not pieces or t >= deadline or load.kv_usage > WARM_MAX_KV_USAGE:
                del p.warm_queue[lo]
                self._report_warm(p, s)
                continue
            if load.waiting > 0:
                if not p.warm_poll:
                    p.warm_poll = True
                    self.q.at(t + WARM_IDLE_POLL_S, functools.partial(self._warm_look, p, e))
                return
            tokens, hashes, read = pieces.popleft()
            self.warm_n += 1
            rid = f"w{self.warm_n}"
            p.warm_jobs[rid] = lo
            req = virtual_request(rid, tokens, hashes, 1, t)
            req.priority = WARM_PRIORITY
            if read:
                req.remote_tokens = tokens  # do_remote_prefill: the donor holds it
                self.warm_reads += 1
                self.warm_read_tokens += tokens
            e.submit(req, t)
            self._kick(p)
            return

    def _warm_look(self, p: SimPod, e: StepEngine | FluidEngine, t: float) -> None:
        if p.engine is not e:
            return  # a look of a previous incarnation
        p.warm_poll = False
        self._warm_pump(p, t)

    def _warm_finished(self, p: SimPod, rid: str, t: float) -> None:
        p.warm_jobs.pop(rid)
        self._warm_pump(p, t)

    def _publish(self, a: Assignment, t: float) -> None:
        draining = {p.id for p in a.pods if p.state is PodState.DRAINING}
        for r in self.routers:
            if r.assignment is None or r.assignment.generation < a.generation:
                r.assignment = a
                for pid, v in r.views.items():  # as the router's TargetTable, from the generation's pod list
                    v.set_draining(pid in draining, t)

    # -- failures ---------------------------------------------------------------------------------------------

    def _set_state(self, p: SimPod, state: PodState) -> None:
        p.pod = dataclasses.replace(p.pod, state=state)

    def _mark_dead(self, p: SimPod, t: float) -> None:
        """The pod's lease lapsed: the assigner drops it from every slice at its next round."""
        self._set_state(p, PodState.DEAD)

    def _health(self, r: SimRouter, t: float) -> None:
        r.health(self.pods, self.up_version)

    def _stop(self, p: SimPod, t: float) -> None:
        """The process stops: requests without a first token are retried elsewhere, streams break."""
        p.up = False
        self.up_version += 1
        e = p.engine
        gone: list[Any] = e.abort_all() if e is not None else []
        self._new_engine(p)  # the next incarnation starts with an empty cache
        p.up = False
        warm_ids = set(p.warm_jobs)
        p.warm_jobs.clear()
        gone = [p.pull_jobs.get(ereq.id, ereq) for ereq in gone]  # a request waiting on its KV pull goes with it
        p.pull_jobs.clear()
        p.warm_queue.clear()  # its warm-ups end with it (the leader's deadline clears their marks)
        p.warm_poll = False
        p.prompts.clear()
        self.warm_done.pop(p.id, None)  # the slicelet's record of warmed ranges ends with the process
        for ereq in gone:
            if ereq.id in warm_ids:
                continue
            p.set_inflight(t, -1)
            f = self.flights.get(ereq.id)
            if f is None or f.done:
                continue
            assert f.router is not None and f.ticket is not None
            f.router.views[p.id].end(f.ticket, t)
            f.ticket = None
            if f.first_t is None:
                f.router.residence.failed(f.router.views[p.id], f.pin.slice_key)
            if f.first_t is None and f.attempts < self.knobs.max_attempts:
                f.tried.append(p.id)
                self.results.retries += 1
                f.pod = None
                self._attempt(f, t)
            else:
                self._end(f, t, "stream_broken" if f.first_t is not None else "upstream_unavailable")

    def _death(self, p: SimPod, t: float) -> None:
        if not p.up:
            return
        self._stop(p, t)
        self.restart_log.append({"pod": p.id, "t": t, "event": "death"})
        self.q.at(t + self.spec.lease_ttl_s, functools.partial(self._mark_dead, p))

    def _next_restart(self, t: float) -> None:
        """The next planned restart, as the bench runs them: one at a time, each at its planned time or once the
        previous pod is back, whichever is later (a long drain delays the rest; two pods are never out at once)."""
        if not self.restart_plan:
            return
        _, p = self.restart_plan.popleft()
        self._restart(p, t, then=self._restart_done)

    def _restart_done(self, t: float) -> None:
        if self.restart_plan:
            self.q.at(max(t, self.restart_plan[0][0]), self._next_restart)

    def _restart(self, p: SimPod, t0: float, then: Callable[[float], None] | None = None) -> None:
        """Drain through the assigner, wait until it holds no slice and then runs nothing (each at most
        ``drain_timeout_s``), stop, start again after ``restart_down_s`` with an empty cache, undrain; then
        ``then``, at the time the pod is back."""
        if not p.up:
            if then is not None:
                then(t0)
            return
        self._set_state(p, PodState.DRAINING)
        rec: dict[str, float | str] = {"pod": p.id, "t": t0, "event": "restart"}
        self.restart_log.append(rec)
        step = 0.05
        deadline = t0 + self.spec.drain_timeout_s

        def wait_slices(t: float) -> None:
            if self._held(self.assignment).get(p.id) and t < deadline:
                self.q.at(t + step, wait_slices)
                return
            rec["drained_s"] = round(t - t0, 3)
            idle_deadline = t + self.spec.drain_timeout_s

            def wait_idle(t2: float) -> None:
                if p.inflight > 0 and t2 < idle_deadline:
                    self.q.at(t2 + step, wait_idle)
                    return
                rec["busy_at_stop"] = p.inflight
                self._stop(p, t2)

                def start(t3: float) -> None:
                    p.up = True
                    self.up_version += 1
                    p.version += 1
                    self._set_state(p, PodState.ACTIVE)
                    rec["down_s"] = round(t3 - t0, 3)
                    if then is not None:
                        then(t3)

                self.q.at(t2 + self.spec.restart_down_s, start)

            wait_idle(t)

        wait_slices(t0)

    # -- measurement ------------------------------------------------------------------------------------------

    def _phase_mark(self, name: str, t: float) -> None:
        self.results.mark(name, t, self.pods)

    def _report_progress(self, t: float) -> None:
        if self.progress is not None:
            self.progress(t, self.results.sent_n, self.results.ok_n)

    def _bucket(self, t: float) -> None:
        self.results.bucket(t, self.pods)


__all__ = ["TARGET", "Fleet", "FleetSpec", "Flight", "SimPod", "pod_config"]
