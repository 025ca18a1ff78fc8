"""Per-pod engine models in virtual time: ``step`` drives the simulated vLLM engine's own scheduler step by step;
``fluid`` is a request-level model of it (same KV cache class and cost constants) for fleet-size runs.

Both keep vLLM's prefix-cache counters (queries and hits in tokens, counted when a request is admitted) and report
what a pod's ``/load`` would: running, waiting, tokens in flight, KV usage.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable

from runtime.engines.sim import BLOCK_TOKENS, KVCache, SimConfig, SimEngine, virtual_request
from sharder.load import EngineLoad
from sharder.sketch import RateEwma

#: (request, first-token time) and (request, finish time) callbacks.
OnEvent = Callable[[object, float], None]

ENGINE_KINDS = ("step", "fluid")


class PodEngine:
    """What the fleet needs of an engine model."""

    kv: KVCache
    prefix_queries: int
    prefix_hits: int
    #: Reads a peer's KV (a request's ``remote_tokens``) instead of computing it: the step engine with a KV
    #: connector (``SimConfig.kv_transfer_gb_per_s`` > 0); the fluid engine never.
    kv_transfer = False

    def submit(self, req: object, t: float) -> None:
        raise NotImplementedError

    def next_time(self) -> float | None:
        """Simulated time of this engine's next internal event (None: idle)."""
        raise NotImplementedError

    def advance(self, t: float) -> None:
        """Process internal events due at ``t`` (first tokens and finishes are reported through the callbacks)."""
        raise NotImplementedError

    def abort_all(self) -> list[object]:
        """The pod died: drop everything; returns the dropped requests."""
        raise NotImplementedError

    def load(self, t: float) -> EngineLoad:
        raise NotImplementedError


class StepEngine(PodEngine):
    """``runtime.engines.sim.SimEngine``'s scheduler (``step_virtual``): continuous batching, chunked prefill,
    preemption, the paged prefix cache, step by step. Exact, but one Python step per engine iteration."""

    def __init__(self, cfg: SimConfig, on_first: OnEvent, on_finish: OnEvent) -> None:
        self.e = SimEngine(cfg)
        self.kv = self.e.kv
        self.kv_transfer = self.e.kv_transfer
        self.on_first = on_first
        self.on_finish = on_finish
        self._step_end: float | None = None
        self._reading = False
        self._out: list[tuple[bool, object]] = []

    @property
    def prefix_queries(self) -> int:  # type: ignore[override]
        return self.e.prefix_queries

    @property
    def prefix_hits(self) -> int:  # type: ignore[override]
        return self.e.prefix_hits

    def make(self, rid: str, tokens: int, hashes: tuple[int, ...], max_tokens: int, t: float, key: int) -> object:
        return virtual_request(rid, tokens, hashes, max_tokens, t, key)

    def submit(self, req: object, t: float) -> None:
        self.e.submit_virtual(req)  # type: ignore[arg-type]
        if self._step_end is None or self._reading:
            self._start(t)  # idle, or idle until a KV read lands: the new request runs now

    def _start(self, t: float) -> None:
        r = self.e.step_virtual(t)
        if r is None:
            self._step_end = None
            self._reading = False
            return
        end, touched = r
        self._step_end = end
        self._reading = not touched  # no step: waiting for a KV read to land at ``end``
        # the step is applied when it starts, stamped with its end: what it produced is reported at its end
        out: list[tuple[bool, object]] = []
        for req in touched:
            req.buf.clear()  # nobody reads the generated chunks
            if req.first_token_t == end:
                out.append((True, req))
            if req.finished and not req.aborted:
                out.append((False, req))
        self._out = out

    def next_time(self) -> float | None:
        return self._step_end

    def advance(self, t: float) -> None:
        if self._step_end is None or t < self._step_end:
            return
        out, self._out = self._out, []
        for first, req in out:
            (self.on_first if first else self.on_finish)(req, t)
        self._start(t)

    def abort_all(self) -> list[object]:
        """Also the requests of the interrupted step: it was applied when it started, so one that finished in it
        left the engine's queues, but its finish was never reported (the stop broke its stream)."""
        gone: list[object] = list(self.e.abort_virtual())
        seen = {id(r) for r in gone}
        for _, req in self._out:
            if id(req) not in seen:
                seen.add(id(req))
                gone.append(req)
        self._step_end = None
        self._reading = False
        self._out = []
        return gone

    def load(self, t: float) -> EngineLoad:
        return self.e.load_at(t)


class FluidEngine(PodEngine):
    """A request-level model of the same engine, for fleet-size runs (thousands of pods, an hour): three events
    per request instead of one per engine step.

    * Admission: FCFS while ``max_num_seqs`` and the KV cache allow (the head waits for blocks; no preemption):
      the prefix cache lookup and block allocation are ``KVCache``'s own (prompt + max_tokens reserved at once).
    * Prefill: one FCFS prefill server per pod; a request's uncached tokens take ``per_prefill_token_s`` each plus
      one step overhead (fixed + per decoding sequence + per context token) per ``max_num_batched_tokens`` chunk,
      after half a step of the running batch (on average a request arrives mid-step).
    * Decode: ``max_tokens - 1`` steps at the step time of the batch when its first token came out.
    """

    def __init__(self, cfg: SimConfig, on_first: OnEvent, on_finish: OnEvent) -> None:
        self.cfg = cfg
        self.kv = KVCache(cfg.kv_blocks)
        self.on_first = on_first
        self.on_finish = on_finish
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.waiting: collections.deque[object] = collections.deque()
        self.running = 0
        self.decoding = 0
        self.context = 0  # KV tokens the decoding requests attend to
        self.tokens_in_flight = 0
        self.prefill_free = 0.0
        self._heap: list[tuple[float, int, bool, object]] = []
        self._seq = 0
        self._load = RateEwma(cfg.load_half_life_s)  # processed tokens per virtual second

    def make(self, rid: str, tokens: int, hashes: tuple[int, ...], max_tokens: int, t: float, key: int) -> object:
        return virtual_request(rid, tokens, hashes, max_tokens, t, key)

    def _step_s(self) -> float:
        c = self.cfg
        return c.step_fixed_s + self.decoding * c.per_decode_seq_s + self.context * c.per_context_token_s

    def submit(self, req: object, t: float) -> None:
        self.waiting.append(req)
        self.tokens_in_flight += req.num_prompt  # type: ignore[attr-defined]
        self._admit(t)

    def _admit(self, t: float) -> None:
        cfg, kv = self.cfg, self.kv
        while self.waiting and self.running < cfg.max_num_seqs:
            req = self.waiting[0]
            n = req.num_prompt  # type: ignore[attr-defined]
            computed = kv.computed_blocks(req)  # type: ignore[arg-type]
            hit = len(computed) * BLOCK_TOKENS
            miss = n - hit
            if not kv.allocate(req, miss + req.max_tokens, computed):  # type: ignore[arg-type, attr-defined]
                break  # FCFS: the head waits for blocks
            self.waiting.popleft()
            self.running += 1
            self.prefix_queries += n
            self.prefix_hits += hit
            req.cached_tokens = hit  # type: ignore[attr-defined]
            step = self._step_s()
            start = max(t + (0.5 * step if self.decoding else 0.0), self.prefill_free)
            chunks = -(-miss // cfg.max_num_batched_tokens)
            first = start + miss * cfg.per_prefill_token_s + chunks * step
            self.prefill_free = first
            self._push(first, True, req)

    def _push(self, t: float, first: bool, req: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, first, req))

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def advance(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            te, _, first, req = heapq.heappop(heap)
            n = req.num_prompt  # type: ignore[attr-defined]
            if first:
                req.num_computed = n  # type: ignore[attr-defined]
                self.kv.cache_full_blocks(req)  # type: ignore[arg-type]
                self.kv.events.clear()
                req.first_token_t = te  # type: ignore[attr-defined]
                self._add_load(n - (req.cached_tokens or 0), te)  # type: ignore[attr-defined]
                self.decoding += 1
                self.context += n
                self._push(te + (req.max_tokens - 1) * self._step_s(), False, req)  # type: ignore[attr-defined]
                self.on_first(req, te)
            else:
                self.decoding -= 1
                self.context -= n
                self.running -= 1
                self.tokens_in_flight -= n
                req.finished = True  # type: ignore[attr-defined]
                self.kv.free_request(req)  # type: ignore[arg-type]
                self._add_load(req.max_tokens, te)  # type: ignore[attr-defined]
                self.on_finish(req, te)
                self._admit(te)

    def abort_all(self) -> list[object]:
        gone = [*self.waiting, *(r for _, _, _, r in self._heap)]
        seen: set[int] = set()
        out: list[object] = []
        for r in gone:
            if id(r) in seen:
                continue
            seen.add(id(r))
            self.kv.free_request(r)  # type: ignore[arg-type]
            r.finished = True  # type: ignore[attr-defined]
            out.append(r)
        self.waiting.clear()
        self._heap.clear()
        self.running = self.decoding = self.context = self.tokens_in_flight = 0
        return out

    def _add_load(self, tokens: int, t: float) -> None:
        self._load.add(tokens)
        self._load.rate(t)

    def load(self, t: float) -> EngineLoad:
        return EngineLoad(
            running=self.running,
            waiting=len(self.waiting),
            kv_usage=self.kv.usage(),
            tokens_in_flight=self.tokens_in_flight,
            prefix_hit_rate=self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0,
            capacity=self.cfg.capacity,
            load=self._load.rate(t),
        )


def make_engine(kind: str, cfg: SimConfig, on_first: OnEvent, on_finish: OnEvent) -> StepEngine | FluidEngine:
    if kind == "step":
        return StepEngine(cfg, on_first, on_finish)
    if kind == "fluid":
        return FluidEngine(cfg, on_first, on_finish)
    raise ValueError(f"engine must be one of {', '.join(ENGINE_KINDS)}, got {kind!r}")
