"""Warm-up on reshard, pod side: the log of prompts served per SliceKey, the HotPrompts answer, and the warmer that
prefills a donor's hottest prompts (prompt-only, one output token), or reads their KV from the donor's engine where
both engines have a KV connector, before the pod reports a new slice warm."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Container, Iterable, Mapping, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from brunoise_api.v1 import inference_pb2, runtime_pb2, runtime_pb2_grpc, slicing_pb2
from runtime.engines.base import Engine, EngineChunk, EngineError, EngineProxy, EngineRequest, SamplingParams
from sharder import kv_pull
from sharder.advertise import address_host, is_loopback
from sharder.keyspace import Slice
from sharder.prefix import KV_BLOCK_TOKENS, TEXT_BYTES_PER_TOKEN, matched_chunks, prefix_hashes, render_chat

log = logging.getLogger(__name__)

#: What one pod remembers: at most this many keys and bytes of prompt text (the oldest key goes first).
LOG_KEYS = 4096
LOG_BYTES = 16 << 20
#: A single prompt longer than this is not kept (it would evict many others).
ENTRY_BYTES = 256 << 10
#: A HotPrompts answer: at most this many prompts and bytes unless the caller asks for fewer.
ANSWER_PROMPTS = 32
ANSWER_BYTES = 4 << 20
#: What a warmer asks its donors for, per slice: few prompts, since each is prefilled on an engine that is
#: serving (and must fit its KV cache beside the live sessions).
WARM_PROMPTS = 4
WARM_BYTES = 16 << 10
#: And at most this share of the pod's KV cache per slice (at vLLM's default 16 tokens a block, ~4 bytes a token): a
#: warm prefill evicts what the cache held, and on a pod whose cache holds a few long documents, 16 KB of a slice's
#: prompts is most of it (the simulator's docs workload: hit/oracle 0.835 with 16 KB, 0.856 with this share).
WARM_KV_SHARE = 0.125
#: Where both engines move KV (``Engine.kv_transfer``), a warm-up reads a donor's KV instead of computing it: no
#: compute on the warming engine, so it may copy more (a long session whole), but each read still evicts what the
#: cache held, so the share of the cache per slice stays bounded.
WARM_READ_PROMPTS = 8
WARM_READ_BYTES = 1 << 20
WARM_READ_KV_SHARE = 0.5
#: No warm-up prefill while the engine's KV usage is above this.
WARM_MAX_KV_USAGE = 0.8
#: A warm prompt is prefilled in pieces, each a longer prefix of it adding at most this much text (~512 tokens at
#: ~4 bytes a token: ~32 ms of prefill for an 8B model on an H100), so no warm-up step stalls the live requests
#: that arrive during it for long; the earlier pieces are prefix-cache hits, so the whole costs one prefill.
WARM_PIECE_BYTES = 2048
#: The priority of warm-up prefills where the engine schedules by priority (vLLM's: lower first; clients send 0).
WARM_PRIORITY = 1
#: A piece is sent only while the engine has no request waiting (live requests go first); this often it looks.
WARM_IDLE_POLL_S = 0.005
_WARM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)

Messages = tuple[tuple[str, str], ...]


@dataclasses.dataclass(slots=True)
class _Entry:
    prompt: str | None
    messages: Messages | None
    size: int
    count: float


class PromptLog:
    """The latest prompt (or chat messages) of each SliceKey this pod served and how often it served the key, as an
    LRU bounded in keys and bytes. A session's latest turn holds its whole history, so prefilling it warms the
    session's next turn and the group's shared prefix alike."""

    def __init__(self, max_keys: int = LOG_KEYS, max_bytes: int = LOG_BYTES, entry_bytes: int = ENTRY_BYTES) -> None:
        self.max_keys, self.max_bytes, self.entry_bytes = max_keys, max_bytes, entry_bytes
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, key: int, prompt: str | None, messages: Messages | None) -> None:
        size = text_bytes(prompt, messages)
        old = self._entries.pop(key, None)
        count = 1.0
        if old is not None:
            self.bytes -= old.size
            count += old.count
        if size > self.entry_bytes:
            return
        self._entries[key] = _Entry(prompt, messages, size, count)
        self.bytes += size
        while self._entries and (len(self._entries) > self.max_keys or self.bytes > self.max_bytes):
            _, gone = self._entries.popitem(last=False)
            self.bytes -= gone.size

    def hottest(
        self, lo: int, hi: int, max_prompts: int = ANSWER_PROMPTS, max_bytes: int = ANSWER_BYTES,
        recent_first: bool = False,
    ) -> list[tuple[int, float, str | None, Messages | None]]:
        """The most served keys in [lo, hi) (ties: most recent first; ``recent_first``: the most recently served
        first), within ``max_prompts`` and ``max_bytes``."""
        entries = self._entries
        served = ((k, 0.0 if recent_first else e.count, e.size) for k, e in entries.items())
        keys = hottest_keys(served, lo, hi, max_prompts, max_bytes)
        return [(k, (e := entries[k]).count, e.prompt, e.messages) for k in keys]


def hottest_keys(
    entries: Iterable[tuple[int, float, int]], lo: int, hi: int, max_keys: int, max_size: int
) -> list[int]:
    """Of ``entries`` (key, times served, size; least recently served first), the most served keys in [lo, hi)
    (ties: most recent first), as many as fit in ``max_keys`` and ``max_size``: what a donor hands a warmer
    (``PromptLog.hottest``, and the fleet simulator's prompt log)."""
    found = [(k, n, size, i) for i, (k, n, size) in enumerate(entries) if lo <= k < hi]
    found.sort(key=lambda t: (-t[1], -t[3]))
    out: list[int] = []
    used = 0
    for k, _, size, _ in found:
        if len(out) >= max_keys or used + size > max_size:
            break
        used += size
        out.append(k)
    return out


def warm_budget_bytes(
    blocks_total: int, max_bytes: int = WARM_BYTES, kv_share: float = WARM_KV_SHARE, block_tokens: int = 0
) -> int:
    """Prompt bytes a warmer copies per slice: ``max_bytes``, and at most ``kv_share`` of a KV cache of
    ``blocks_total`` blocks (0: unknown, ``max_bytes``) of ``block_tokens`` tokens each (0: unknown,
    ``KV_BLOCK_TOKENS``)."""
    if blocks_total <= 0:
        return max_bytes
    block_bytes = (block_tokens or KV_BLOCK_TOKENS) * TEXT_BYTES_PER_TOKEN
    return min(max_bytes, int(kv_share * blocks_total * block_bytes))


class WarmMetrics:
    """``brunoise_runtime_warmup_*`` on a private registry, appended to the pod's ``/metrics``. The prefill
    counters let a reader take warm-up traffic out of vLLM's own ``prefix_cache_*`` counters (which count it)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "brunoise_runtime_warmup_"
        self.started = Counter(p + "started", "Slices this pod began warming", registry=r)
        self.completed = Counter(p + "completed", "Slices warmed (every donor prompt prefilled)", registry=r)
        self.timed_out = Counter(p + "timed_out", "Warm-ups cut short by the warm timeout", registry=r)
        self.failed = Counter(p + "failed", "Warm-ups with no donor answering (reported warm anyway)", registry=r)
        self.duration = Histogram(p + "duration_seconds", "One slice's warm-up, donor call to last prefill",
                                  buckets=_WARM_BUCKETS, registry=r)  # fmt: skip
        self.requests = Counter(p + "requests", "Prompt-only prefill requests sent to the engine", registry=r)
        self.queries = Counter(p + "prefix_cache_queries", "Prompt tokens of warm-up prefills", registry=r)
        self.hits = Counter(p + "prefix_cache_hits", "Prompt tokens of warm-up prefills already cached", registry=r)
        self.served = Counter(p + "prompts_served", "Prompts this pod handed to warming peers", registry=r)
        self.held = Counter(p + "kv_held", "Prompts whose KV this pod's engine held for a warming peer to read",
                            registry=r)  # fmt: skip
        self.read = Counter(p + "kv_read", "Donor prompts whose KV this pod's engine read instead of computing",
                            registry=r)  # fmt: skip
        self.read_refused = Counter(
            p + "kv_read_refused",
            "Donor prompts whose kv_transfer_params named a host other than the donor's own (prefilled instead)",
            registry=r,
        )
        self.pulls = Counter(
            "brunoise_runtime_kv_pulls",
            "Requests whose KV pull hint (x-brunoise-kv-pull) was acted on, by outcome: " + ", ".join(kv_pull.OUTCOMES),
            ["outcome"],
            registry=r,
        )

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class RecordingEngine(EngineProxy):
    """``inner`` with every keyed request's prompt recorded in ``log`` (what a warming peer will ask for), and the
    warm-up metrics appended to the engine's exposition."""

    def __init__(self, inner: Engine, log_: PromptLog, metrics: WarmMetrics) -> None:
        super().__init__(inner)
        self.prompt_log = log_
        self.warm_metrics = metrics

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        if request.slice_key is not None:
            self.record_prompt(request.slice_key, request.prompt, request.messages)
        return self.inner.generate(request)

    def record_prompt(self, key: int, prompt: str | None, messages: Sequence[Mapping[str, object]] | None) -> None:
        """Log one keyed request (the request path, and a vLLM pod's raw passthrough in ``runtime.proxy``)."""
        msgs = None if messages is None else tuple((str(m.get("role", "user")), str(m.get("content", ""))) for m in messages)
        self.prompt_log.record(key, prompt, msgs)

    async def metrics_text(self) -> str:
        return await self.inner.metrics_text() + self.warm_metrics.text()


def hot_prompts_response(pod_id: str, log_: PromptLog, request: runtime_pb2.HotPromptsRequest) -> Any:
    """The HotPrompts answer for ``request`` from ``log_``."""
    hi = request.slice.hi or 2**64
    resp = runtime_pb2.HotPromptsResponse(pod_id=pod_id)
    hot = log_.hottest(
        request.slice.lo, hi, request.max_prompts or ANSWER_PROMPTS, request.max_bytes or ANSWER_BYTES,
        request.recent_first,
    )
    for key, weight, prompt, messages in hot:
        hp = runtime_pb2.HotPrompt(slice_key=key, weight=weight)
        if prompt is not None:
            hp.prompt = prompt
        else:
            hp.messages.CopyFrom(
                inference_pb2.ChatMessages(
                    messages=[inference_pb2.ChatMessage(role=r, content=c) for r, c in messages or ()]
                )
            )
        resp.prompts.append(hp)
    return resp


#: What a producer's request asks a KV connector for: prefill, and hold the blocks for a peer (vLLM's protocol).
HOLD_PARAMS: Mapping[str, Any] = {"do_remote_decode": True, "do_remote_prefill": False}


#: A donor holds a prompt's KV for a reader only when its cache still holds at least this share of the prompt's
#: blocks: the hold is then (almost) all prefix-cache hits; else it would prefill the rest on a pod that is serving
#: (often one being drained), which is the asker's prefill to do, within its budget.
HOLD_MIN_CACHED = 0.75


def can_hold(hashes: Sequence[int], held: Container[int]) -> bool:
    """A donor whose cache holds the chunk hashes ``held`` holds a prompt of chain hashes ``hashes`` for a reader:
    at least ``HOLD_MIN_CACHED`` of its leading chunks are cached (``hold_kv``, and the fleet simulator's donors)."""
    return bool(hashes) and matched_chunks(hashes, held) >= HOLD_MIN_CACHED * len(hashes)


def warm_actions(prompts: Iterable[tuple[int, bool]], read: bool, prefill_budget: int) -> list[bool | None]:
    """What a warmer does with each prompt its donors handed it, in order, given (its size, a donor holds it for a
    read): True, read it whole (the engine has a KV connector, ``read``, and a donor holds it); False, prefill it
    (without a connector every prompt, as the donors answered within the prefill budget; with one, those no donor
    holds, while their sizes fit what is left of ``prefill_budget``); None, skip it. The ``Warmer`` and the fleet
    simulator's warm-ups both plan by it (sizes in any one unit: bytes, tokens)."""
    out: list[bool | None] = []
    left = prefill_budget
    for size, held in prompts:
        if not read:
            out.append(False)
        elif held:
            out.append(True)
        elif size <= left:
            left -= size
            out.append(False)
        else:
            out.append(None)
    return out


async def hold_kv(engine: Engine, resp: Any, metrics: WarmMetrics | None = None, priority: int = 0) -> int:
    """Have ``engine`` hold the KV of the prompts of the HotPrompts answer ``resp`` that its cache still holds (at
    least ``HOLD_MIN_CACHED`` of their blocks) for the asker to read (one producer request each, cut to one output
    token) and write where into each such prompt's ``kv_transfer_params``; returns how many it holds. A prompt it
    does not hold, or the engine refuses, goes without (the asker prefills it). Their tokens count as warm-up
    traffic."""
    view = engine.cache_view()

    async def one(hp: Any) -> bool:
        msgs, prompt = _input_of(hp)
        if not prompt and not msgs:
            return False
        chat = _chat(msgs)
        text = prompt if chat is None else render_chat(chat)
        hashes = prefix_hashes(text or "", view.chunk_bytes)
        if not can_hold(hashes, view.prefix_hashes):
            return False
        req = EngineRequest(
            request_id=f"hold-{uuid.uuid4().hex}", prompt=prompt, messages=chat,
            sampling=SamplingParams(max_tokens=1), priority=priority, kv_transfer_params=HOLD_PARAMS,
        )  # fmt: skip
        last: EngineChunk | None = None
        try:
            async for c in engine.generate(req):
                last = c
        except EngineError as exc:
            log.info("holding KV for a warming peer refused: %s", exc.message)
            return False
        if last is None or not last.kv_transfer_params:
            return False
        if metrics is not None:
            metrics.queries.inc(last.prompt_tokens)
            metrics.hits.inc(last.cached_tokens)
            metrics.held.inc()
        hp.kv_transfer_params = json.dumps(dict(last.kv_transfer_params))
        return True

    return sum(await asyncio.gather(*(one(hp) for hp in resp.prompts)))


def _input_of(hp: Any) -> tuple[Messages | None, str | None]:
    """A HotPrompt's chat messages or prompt text (the other None)."""
    if hp.WhichOneof("input") == "messages":
        return tuple((x.role, x.content) for x in hp.messages.messages), None
    return None, hp.prompt or None


def _chat(msgs: Messages | None) -> list[dict[str, object]] | None:
    """``msgs`` as the chat messages an ``EngineRequest`` carries (None stays None)."""
    return None if msgs is None else [{"role": r, "content": c} for r, c in msgs]


def text_bytes(prompt: str | None, messages: Messages | None) -> int:
    """The bytes of text a prompt (or chat messages: roles and contents) holds: what the log and the warm-up
    budgets count."""
    return len(prompt) if prompt is not None else sum(len(r) + len(c) for r, c in messages or ())


def warm_priority(engine: Engine) -> int:
    """The priority of warm-up requests on ``engine``: after the clients' where it schedules by priority (vLLM
    refuses a nonzero priority otherwise)."""
    return WARM_PRIORITY if engine.priority_scheduling else 0


class Warmer:
    """Warms the slices the assigner marks warming on this pod, one prompt at a time (a prefill competes with live
    requests for the engine, and a big one stalls every request behind it): for each slice, in the order they
    came, asks its donor runtimes (HotPrompts, with this pod's token) for their hottest prompts in the slice —
    the donors the assigner named, in order (``warming_of``: the leaving pods, whose sessions are the ones that
    must move, else the warm replicas) — up to ``max_prompts`` and
    ``max_bytes``, prefills them on ``engine`` (max_tokens=1, no slice key: not the slice's load), then calls
    ``done(slice)``; also when no donor answers, when the engine's KV usage is above ``max_kv_usage`` (warming
    must not evict live sessions) or when ``timeout_s`` since the mark has passed, so a mark never outlives its
    use (the assigner's deadline is the backstop). Where ``engine`` reads KV from peers (``Engine.kv_transfer``)
    it asks for the most recently served prompts within the ``WARM_READ_*`` budget and has the donors hold their
    KV (``hold_kv``): each held prompt is read whole instead of prefilled, the rest prefilled within
    ``max_bytes``."""

    def __init__(
        self,
        engine: Engine,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        done: Callable[[Slice], None],
        metrics: WarmMetrics,
        timeout_s: float = 5.0,
        rpc_timeout_s: float = 2.0,
        max_prompts: int = WARM_PROMPTS,
        max_bytes: int = WARM_BYTES,
        max_kv_usage: float = WARM_MAX_KV_USAGE,
        kv_share: float = WARM_KV_SHARE,
        piece_bytes: int = WARM_PIECE_BYTES,
        priority: int = 0,
    ) -> None:
        self.engine = engine
        self.metadata = tuple(metadata)
        self.done = done
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.max_prompts, self.max_bytes, self.max_kv_usage = max_prompts, max_bytes, max_kv_usage
        self.kv_share = kv_share
        self.piece_bytes, self.priority = piece_bytes, priority
        self._queue: asyncio.Queue[tuple[Slice, tuple[str, ...], float]] = asyncio.Queue()
        self._known: set[Slice] = set()
        self._worker: asyncio.Task[None] | None = None
        self.warmed: list[tuple[Slice, int]] = []  # (slice, prompts prefilled), for tests and logs

    def want(self, tasks: Mapping[Slice, Sequence[str]]) -> None:
        """The slices to warm now and their donors (from the latest report answer); queues what is new."""
        now = time.monotonic()
        for s, donors in tasks.items():
            if s not in self._known:  # queued or being warmed (a warmed one is no longer asked for: the slicelet
                self._known.add(s)  # reports it warm instead)
                self._queue.put_nowait((s, tuple(donors), now + self.timeout_s))
        if self._worker is None and self._known:
            self._worker = asyncio.create_task(self._work(), name="warmer")

    async def stop(self) -> None:
        w, self._worker = self._worker, None
        if w is not None:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await w

    async def _work(self) -> None:
        while True:
            s, donors, deadline = await self._queue.get()
            await self._warm(s, donors, deadline)

    async def _warm(self, s: Slice, donors: tuple[str, ...], deadline: float) -> None:
        m = self.metrics
        m.started.inc()
        t0 = time.monotonic()
        n = 0
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.0, deadline - t0)):
                prompts = await self._ask(s, donors)
                t_ask = time.monotonic() - t0
                if prompts is None:
                    m.failed.inc()
                else:
                    n = await self._prefill(prompts)
                    m.completed.inc()
                    log.debug("warmed %s: %d of %d donor prompts (%d held for a read), donors %.3f s, all %.3f s",
                              s, n, len(prompts), sum(1 for hp in prompts if hp.kv_transfer_params), t_ask,
                              time.monotonic() - t0)  # fmt: skip
        except TimeoutError:
            m.timed_out.inc()
            log.info("warm-up of %s timed out (%.1f s after its mark)", s, self.timeout_s)
        except Exception:
            m.failed.inc()
            log.exception("warm-up of %s failed", s)
        m.duration.observe(time.monotonic() - t0)
        self.warmed.append((s, n))
        self._known.discard(s)
        self.done(s)

    def budget_bytes(self, read: bool = False) -> int:
        """Prompt bytes to prefill per slice: ``max_bytes``, and at most ``kv_share`` of the KV cache (when known);
        with ``read`` (the engine reads KV from peers), the ``WARM_READ_*`` budget for what is read."""
        view = self.engine.cache_view()
        if read:
            return warm_budget_bytes(view.blocks_total, WARM_READ_BYTES, WARM_READ_KV_SHARE, view.block_tokens)
        return warm_budget_bytes(view.blocks_total, self.max_bytes, self.kv_share, view.block_tokens)

    async def _ask(self, s: Slice, donors: tuple[str, ...]) -> list[Any] | None:
        """Prompts from the donors in order until the budget is spent; None when no donor answered."""
        out: list[Any] = []
        seen: set[int] = set()
        read = self.engine.kv_transfer
        budget_n, budget_b = (WARM_READ_PROMPTS if read else self.max_prompts), self.budget_bytes(read)
        answered = False
        for addr in donors:
            if budget_n <= 0 or budget_b <= 0:
                break
            req = runtime_pb2.HotPromptsRequest(
                slice=slicing_pb2.Slice(lo=s.lo, hi=s.hi % 2**64), max_prompts=budget_n, max_bytes=budget_b,
                kv_transfer=read, recent_first=read,
            )
            async with grpc.aio.insecure_channel(addr) as ch:  # runtimes serve plaintext gRPC on their network
                stub = runtime_pb2_grpc.RuntimeStub(ch)  # type: ignore[no-untyped-call]
                try:
                    resp = await stub.HotPrompts(req, timeout=self.rpc_timeout_s, metadata=self.metadata)
                except grpc.aio.AioRpcError as exc:
                    log.info("warm-up of %s: donor %s: %s %s", s, addr, exc.code().name, exc.details())
                    continue
            answered = True
            for hp in resp.prompts:
                if hp.slice_key in seen:
                    continue
                seen.add(hp.slice_key)
                if hp.kv_transfer_params and not await names_its_own_host(hp.kv_transfer_params, addr):
                    self.metrics.read_refused.inc()
                    log.warning(
                        "warm-up of %s: donor %s named another host than its own for its KV (remote_host %r); "
                        "prefilling instead (a vLLM donor needs VLLM_NIXL_SIDE_CHANNEL_HOST set to its pod address)",
                        s, addr, (_read_params(hp.kv_transfer_params) or {}).get("remote_host"),
                    )  # fmt: skip
                    hp.kv_transfer_params = ""
                out.append(hp)
                budget_n -= 1
                msgs, prompt = _input_of(hp)
                budget_b -= text_bytes(prompt, msgs)
        return out if answered else None

    async def _prefill(self, prompts: Sequence[Any]) -> int:
        n = 0
        read = self.engine.kv_transfer  # the prompts came within the read budget
        todo: list[tuple[str | None, Messages | None, dict[str, Any] | None]] = []
        for hp in prompts:
            msgs, prompt = _input_of(hp)
            if prompt or msgs:
                todo.append((prompt, msgs, _read_params(hp.kv_transfer_params) if read else None))
        # a prompt a donor holds is read; the others are prefilled within the prefill budget
        sizes = ((text_bytes(prompt, msgs), params is not None) for prompt, msgs, params in todo)
        actions = warm_actions(sizes, read, self.budget_bytes())
        for (prompt, msgs, params), action in zip(todo, actions, strict=True):
            if action is None:
                continue
            # a read computes nothing here, so the whole prompt goes at once; else prefill pieces
            pieces = [(prompt, msgs)] if params is not None else warm_pieces(prompt, msgs, self.piece_bytes)
            for piece_prompt, piece_msgs in pieces:
                await self._idle()
                if self.engine.load().kv_usage > self.max_kv_usage:
                    return n  # the pod is busy: warming now would evict what its live sessions use
                try:
                    await self._send("warm", piece_prompt, piece_msgs, params, self.priority)
                except EngineError as exc:
                    log.info("warm-up prefill refused: %s", exc.message)
                    break
            n += 1
        return n

    async def _send(
        self, kind: str, prompt: str | None, msgs: Messages | None, params: dict[str, Any] | None, priority: int
    ) -> None:
        """One prompt-only request of warm-up traffic on the engine (a prefill, or with a peer's ``params`` a read of
        its KV), counted in the warm-up metrics (a reader takes them out of the engine's own counters); raises
        EngineError when the engine refuses it."""
        m = self.metrics
        req = EngineRequest(
            request_id=f"{kind}-{uuid.uuid4().hex}", prompt=prompt, messages=_chat(msgs),
            sampling=SamplingParams(max_tokens=1), priority=priority, kv_transfer_params=params,
        )  # fmt: skip
        m.requests.inc()
        last: EngineChunk | None = None
        async for c in self.engine.generate(req):
            last = c
        if last is not None:
            m.queries.inc(last.prompt_tokens)
            m.hits.inc(last.cached_tokens)
            if params is not None:
                m.read.inc()

    async def pull(self, addr: str, keys: Slice, timeout_s: float, priority: int = 0) -> bool:
        """Before a request whose prefix the peer runtime ``addr`` holds (a router's KV pull hint): have the peer hold
        the KV of its latest prompt among the SliceKeys ``keys`` and read it into this pod's engine (a prompt-only
        request carrying the peer's ``kv_transfer_params``, counted as warm-up traffic), so the request that follows
        finds it cached; True when read. Every failure (the engine reads no KV, no answer, nothing held, a read
        refused, ``timeout_s`` passed) leaves the request to compute its prefix, as without the hint."""
        m = self.metrics
        if not self.engine.kv_transfer:
            m.pulls.labels("no_connector").inc()
            return False
        view = self.engine.cache_view()
        ask = runtime_pb2.HotPromptsRequest(
            slice=slicing_pb2.Slice(lo=keys.lo, hi=keys.hi % 2**64), max_prompts=1,
            max_bytes=warm_budget_bytes(view.blocks_total, ANSWER_BYTES, 1.0, view.block_tokens),
            kv_transfer=True, recent_first=True, for_request=True,
        )  # fmt: skip
        outcome = "failed"
        try:
            async with asyncio.timeout(timeout_s):
                async with grpc.aio.insecure_channel(addr) as ch:  # runtimes serve plaintext gRPC on their network
                    stub = runtime_pb2_grpc.RuntimeStub(ch)  # type: ignore[no-untyped-call]
                    resp = await stub.HotPrompts(ask, metadata=self.metadata)
                held = [hp for hp in resp.prompts if hp.kv_transfer_params]
                if not held:
                    outcome = "none"
                    return False
                hp = held[0]
                params = _read_params(hp.kv_transfer_params)
                if params is None or not await names_its_own_host(hp.kv_transfer_params, addr):
                    m.read_refused.inc()
                    return False
                msgs, prompt = _input_of(hp)
                await self._send("pull", prompt, msgs, params, priority)
                outcome = "read"
                return True
        except TimeoutError:
            outcome = "timeout"
        except grpc.aio.AioRpcError as exc:
            log.info("kv pull from %s: %s %s", addr, exc.code().name, exc.details())
        except EngineError as exc:
            log.info("kv pull from %s: the read was refused: %s", addr, exc.message)
        finally:
            m.pulls.labels(outcome).inc()
        return False

    async def _idle(self) -> None:
        """Return once the engine has no request waiting: a warm-up piece never queues ahead of live requests (the
        caller's deadline bounds the wait)."""
        # a poll: an engine has no "queue empty" event (vLLM's queue length comes from its scraped /metrics)
        while self.engine.load().waiting > 0:  # noqa: ASYNC110
            await asyncio.sleep(WARM_IDLE_POLL_S)


Piece = tuple[str | None, Messages | None]


async def names_its_own_host(params_text: str, donor_address: str) -> bool:
    """A donor's ``kv_transfer_params`` (JSON) name its own host for the read (``remote_host``, where the engine's KV
    connector connects: NixlConnector's side channel, ``VLLM_NIXL_SIDE_CHANNEL_HOST``): the host of the address the
    assigner registered the donor with, or an IP address that host resolves to. A donor's answer is a report, and a
    read connects wherever it says, so one naming another host, or none, is not read from; a name it sends is never
    looked up (it could resolve differently when the engine connects). Loopback names match each other (one host:
    vLLM's default side-channel host is ``localhost``)."""
    params = _read_params(params_text)
    named = params.get("remote_host") if params is not None else None
    if not isinstance(named, str) or not named:
        return False
    donor = address_host(donor_address)
    if named == donor or (is_loopback(named) and is_loopback(donor)):
        return True
    try:
        ip = ipaddress.ip_address(named)
    except ValueError:
        return False  # another name than the registered one
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(donor, None)
    except OSError:
        return False
    return any(ipaddress.ip_address(str(i[4][0]).split("%")[0]) == ip for i in infos)


def _read_params(text: str) -> dict[str, Any] | None:
    """A donor's ``kv_transfer_params`` (JSON) as the object the engine reads with; None when absent or not an
    object (the prompt is then prefilled)."""
    if not text:
        return None
    try:
        params = json.loads(text)
    except ValueError:
        log.info("warm-up: a donor's kv_transfer_params are not JSON; prefilling instead")
        return None
    return params if isinstance(params, dict) else None


def warm_pieces(prompt: str | None, messages: Messages | None, piece_bytes: int) -> list[Piece]:
    """The requests that prefill ``prompt`` (or chat ``messages``) in pieces: ever longer prefixes, each adding at
    most ``piece_bytes`` of text (a chat cut inside a message keeps that message's head), the last the whole input.
    Each piece's leading KV blocks are the previous piece's, so with prefix caching only the new text is computed,
    and no single prefill step is long."""
    if prompt is not None:
        pieces: list[Piece] = [(prompt[:c], None) for c in range(piece_bytes, len(prompt), piece_bytes)]
        return [*pieces, (prompt, None)]
    msgs = messages or ()
    total = sum(len(r) + len(c) for r, c in msgs)
    out: list[Piece] = []
    for cut in range(piece_bytes, total, piece_bytes):
        head: list[tuple[str, str]] = []
        used = 0
        for r, c in msgs:
            room = cut - used - len(r)
            if room <= 0:
                break
            head.append((r, c[:room]))
            used += len(r) + len(c)
            if len(c) >= room:
                break
        if head:
            out.append((None, tuple(head)))
    out.append((None, msgs))
    return out


__all__ = [
    "PromptLog", "RecordingEngine", "WarmMetrics", "Warmer", "can_hold", "hold_kv", "hot_prompts_response",
    "warm_actions", "warm_pieces",
]  # fmt: skip
