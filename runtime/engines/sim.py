"""A simulated vLLM engine: continuous batching, chunked prefill and a paged, prefix-cached KV cache, in simulated time.

The model follows vLLM V1's scheduler and KV cache manager closely enough that routing changes its results as it
would a real engine's:

* Tokenizer: 4 UTF-8 bytes per token (token id = the 4 bytes read big-endian, a trailing partial token padded with
  NULs), so a 16-token KV block is exactly one 64-byte chunk of ``sharder.prefix`` and the sim's block hashes ARE
  ``sharder.prefix.prefix_hashes`` of the rendered prompt (chat rendered by ``sharder.prefix.render_chat``).
* KV cache: ``kv_blocks`` blocks of 16 tokens; full blocks are hashed with the prefix chain and registered in a
  hash -> block map; a finished request's blocks are freed in reverse order to the tail of an LRU free queue and
  stay cached until a new allocation pops them from the head (vLLM's ``FreeKVCacheBlockQueue``).
* Scheduler (one step): running requests first (a decode token each, or their next prefill chunk), preempting the
  newest running request when a block cannot be allocated; then waiting requests in FCFS order while the step's
  token budget, ``max_num_seqs`` and free blocks allow (a waiting request that does not fit blocks the queue).
  A request's ``priority`` orders as vLLM's ``--scheduling-policy priority`` does (lower first, then arrival): the
  waiting queue is kept in (priority, arrival) order and preemption takes the running request last in that order;
  with every priority 0 (all client requests) that is exactly FCFS.
* Step time = ``step_fixed_s`` + ``per_prefill_token_s`` x uncached prompt tokens computed this step
  + ``per_decode_seq_s`` x decoding requests + ``per_context_token_s`` x KV tokens those decodes attend to.
  Every simulated duration is divided by ``time_scale`` on the wall clock. Latencies (TTFT, ITL, e2e) are stamped
  with the scaled wall clock (wall seconds x ``time_scale``), so they match what a client measures x ``time_scale``.
  When the host cannot keep up (large batches at a large ``time_scale``) simulated time runs slower; ``lag_resyncs``
  counts it and the first occurrence is logged.
* KV transfer (``kv_transfer_gb_per_s`` > 0: vLLM with NixlConnector, role ``kv_both``), in its request protocol:
  a request with ``kv_transfer_params`` ``{"do_remote_decode": true}`` is cut to one output token and its final
  chunk carries the params a peer reads its blocks with (``remote_block_ids``, ``remote_engine_id``, ...); a
  request carrying those params (``do_remote_prefill``) allocates its blocks, waits off the batch (vLLM's
  WAITING_FOR_REMOTE_KVS) for the bytes to cross at ``kv_transfer_gb_per_s`` (``kv_bytes_per_token`` a token),
  registers them in the prefix cache and computes only its last token. What is modelled: the read's time and the
  blocks it fills; the producer does not pin its blocks (the read takes no data from it), and read tokens count as
  prefix-cache hits (vLLM counts them in ``vllm:external_prefix_cache_*``). Without a connector the params are
  ignored, as vLLM ignores them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import xxhash

from runtime.engines.base import CacheView, Engine, EngineChunk, EngineError, EngineRequest, EngineUnavailable
from runtime.kv_events import MEDIUM_GPU as GPU
from runtime.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent, encode_batch
from runtime.metrics import EngineMetrics
from sharder.load import EngineLoad
from sharder.prefix import CHUNK_BYTES, KV_BLOCK_TOKENS, ROOT_SEED, TEXT_BYTES_PER_TOKEN, render_chat
from sharder.sketch import RateEwma

log = logging.getLogger(__name__)

#: The engine's block size (vLLM's default block_size on CUDA): a block of it is exactly one ``CHUNK_BYTES`` chunk
#: at the tokenizer's ``TEXT_BYTES_PER_TOKEN`` bytes a token.
BLOCK_TOKENS = KV_BLOCK_TOKENS

# --- Defaults: Llama-3.1-8B-Instruct (bf16) served by vLLM V1 on one H100 SXM 80 GB ---------------------------------
#
# KV bytes per token = 2 (K and V) x 32 layers x 8 KV heads (GQA) x 128 head dim x 2 bytes (bf16) = 128 KiB.
# KV memory: 0.9 (vLLM's gpu_memory_utilization) x 79.1 GiB usable = 71.2 GiB, minus 15.0 GiB of weights
# (8.03e9 params x 2 bytes) and ~2.2 GiB of activations / CUDA graphs = ~54 GiB for KV; 54 GiB / 128 KiB = 442,368
# tokens = 27,648 blocks. (vLLM logs "GPU KV cache size: ~440,000 tokens" for this model and GPU.)
KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
DEFAULT_KV_BLOCKS = (54 * 2**30) // KV_BYTES_PER_TOKEN // BLOCK_TOKENS  # 27,648
DEFAULT_MODEL = "sim-llama-3.1-8b"
# Llama-3.1 supports 128k context; served configs commonly cap it. 8192 keeps benchmarks short and is a usual cap.
DEFAULT_MAX_MODEL_LEN = 8192
# vLLM's defaults: max_num_seqs 256; with chunked prefill (always on in V1) a step's token budget of 8192 on
# large GPUs (the OpenAI server's default max_num_batched_tokens for H100-class devices).
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
# Fixed cost of one step: a decode step must stream all 15 GiB of weights from HBM: 16.1 GB / 3.35 TB/s = 4.8 ms,
# plus ~1 ms of scheduling, sampling and kernel-launch overhead (CUDA graphs) = ~6 ms. Single-stream decode of an 8B
# model on an H100 with vLLM measures ~150 tok/s (6.5 ms/token), which this matches.
DEFAULT_STEP_FIXED_S = 0.006
# Prefill: 2 x 8.03e9 = 16 GFLOP per token; at ~26% of the H100's 989 TFLOPS dense bf16 peak that is ~16,000
# tokens/s, the middle of the 10k-20k tok/s measured for 8B prefill with chunked prefill in vLLM.
DEFAULT_PER_PREFILL_TOKEN_S = 1.0 / 16_000
# Per decoding sequence: LM-head and MLP activations, sampling and per-request bookkeeping, ~60 us. With the terms
# above a batch of 64 short decodes steps in ~10 ms and a batch of 256 in ~22 ms (vLLM measures ~10-30 ms per
# decode step at these batch sizes, ~8-10k output tok/s at batch 256).
DEFAULT_PER_DECODE_SEQ_S = 60e-6
# Decode attention reads every KV token of every decoding sequence: 128 KiB / 3.35 TB/s = ~39 ns per token.
DEFAULT_PER_CONTEXT_TOKEN_S = 40e-9

#: Wall seconds the step loop may fall behind its simulated clock before it resyncs (and runs slower than scaled).
MAX_LAG_S = 0.05

# Generated text: 64 four-byte words, so every generated token is exactly one 4-byte token of the tokenizer.
# fmt: off
_VOCAB: tuple[str, ...] = (
    "the ", "and ", "for ", "are ", "but ", "not ", "you ", "all ", "any ", "can ", "had ", "her ", "was ", "one ",
    "our ", "out ", "day ", "get ", "has ", "him ", "his ", "how ", "man ", "new ", "now ", "old ", "see ", "two ",
    "way ", "who ", "boy ", "did ", "its ", "let ", "put ", "say ", "she ", "too ", "use ", "sky ", "sea ", "red ",
    "sun ", "map ", "key ", "log ", "row ", "set ", "bit ", "cat ", "dog ", "owl ", "ant ", "bee ", "elk ", "fox ",
    "yak ", "ram ", "jam ", "pie ", "tea ", "fig ", "oak ", "ivy ",
)
# fmt: on
_VOCAB_IDS: tuple[int, ...] = tuple(int.from_bytes(w.encode(), "big") for w in _VOCAB)


# --- configuration ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs of the simulated engine; the defaults model Llama-3.1-8B (bf16) under vLLM on one H100 (see above)."""

    model: str = DEFAULT_MODEL
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    kv_blocks: int = DEFAULT_KV_BLOCKS
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    step_fixed_s: float = DEFAULT_STEP_FIXED_S
    per_prefill_token_s: float = DEFAULT_PER_PREFILL_TOKEN_S
    per_decode_seq_s: float = DEFAULT_PER_DECODE_SEQ_S
    per_context_token_s: float = DEFAULT_PER_CONTEXT_TOKEN_S
    #: Simulated durations are divided by this on the wall clock (10 = ten times faster than real time).
    time_scale: float = 1.0
    #: Chance per generated token of ending with EOS (finish "stop") unless ``ignore_eos``; 0 = always run to max_tokens.
    eos_probability: float = 0.0
    #: Relative capacity reported in EngineLoad (1.0 = the reference pod).
    capacity: float = 1.0
    #: Mixed into every request's PRNG seed (so two pods can differ); 0 by default.
    seed: int = 0
    #: Admitted requests over which EngineLoad.prefix_hit_rate is computed.
    hit_rate_window: int = 256
    #: Half-life (simulated seconds) of EngineLoad.load, the processed-token rate.
    load_half_life_s: float = 5.0
    #: Simulated start-up time before the engine reports ready (weights loading).
    startup_s: float = 0.0
    #: ZMQ PUB endpoint for KV events in vLLM's wire format; None = do not publish. As vLLM's publisher, the sim
    #: binds wildcard ("tcp://*:5557") and ipc/inproc endpoints and connects to others (a subscriber's bound port).
    kv_events_endpoint: str | None = None
    kv_events_topic: str = ""
    #: KV events kept in memory for inspection (``SimEngine.kv_events``).
    kv_events_kept: int = 10_000
    #: Test hook, off unless set: a prompt containing this text crashes the engine (``fault_mode`` "crash": the
    #: process exits at once, as vLLM's server does when its engine core dies), hangs it ("hang": no step runs
    #: again, every request on the pod stalls) or fails that request alone with a 500 ("error": the engine stays up;
    #: the share of such prompts a client sends is the pod's injected error rate, e.g. for a rollout's SLO).
    fault_marker: str | None = None
    fault_mode: str = "crash"
    #: KV transfer between engines (vLLM's NixlConnector), GB/s one read moves; 0: no KV connector.
    kv_transfer_gb_per_s: float = 0.0
    #: KV bytes of one token (the model's: 2 x layers x KV heads x head dim x dtype bytes), what a read moves.
    kv_bytes_per_token: int = KV_BYTES_PER_TOKEN

    def validate(self) -> SimConfig:
        """Raise ValueError naming the knob to change unless the configuration is usable; return self."""
        ints = ("max_model_len", "kv_blocks", "max_num_seqs", "max_num_batched_tokens", "hit_rate_window",
                "kv_bytes_per_token")  # fmt: skip
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("step_fixed_s", "per_prefill_token_s", "per_decode_seq_s", "per_context_token_s", "startup_s",
                     "kv_transfer_gb_per_s"):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("time_scale", "capacity", "load_half_life_s"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not 0.0 <= self.eos_probability <= 1.0:
            raise ValueError(f"eos_probability must be in [0, 1], got {self.eos_probability!r}")
        if not self.model:
            raise ValueError("model must be a non-empty name")
        if self.fault_mode not in ("crash", "hang", "error") or self.fault_marker == "":
            raise ValueError("fault_mode must be crash, hang or error, and fault_marker non-empty when set")
        if self.kv_blocks * BLOCK_TOKENS < self.max_model_len:
            raise ValueError(
                f"kv_blocks={self.kv_blocks} holds {self.kv_blocks * BLOCK_TOKENS} tokens, fewer than "
                f"max_model_len={self.max_model_len}; raise kv_blocks to at least "
                f"{-(-self.max_model_len // BLOCK_TOKENS)} or lower max_model_len"
            )
        return self


# --- tokenizer -------------------------------------------------------------------------------------------------------


def tokenize_text(text: str | bytes) -> list[int]:
    """Token ids of ``text``: each 4 UTF-8 bytes read big-endian; a trailing partial token is padded with NULs."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    rem = len(data) % TEXT_BYTES_PER_TOKEN
    if rem:
        data += b"\0" * (TEXT_BYTES_PER_TOKEN - rem)
    return list(struct.unpack(f">{len(data) // TEXT_BYTES_PER_TOKEN}I", data))


def token_bytes(tokens: Iterable[int]) -> bytes:
    """The 4-byte encoding of token ids (inverse of ``tokenize_text`` up to the NUL padding)."""
    toks = list(tokens)
    return struct.pack(f">{len(toks)}I", *toks)


def detokenize(tokens: Iterable[int]) -> str:
    """Text of token ids (padding NULs dropped; invalid UTF-8 replaced)."""
    return token_bytes(tokens).replace(b"\0", b"").decode("utf-8", errors="replace")


def _checked_tokens(text: str, param: str) -> list[int]:
    try:
        return tokenize_text(text)
    except UnicodeEncodeError as e:
        raise EngineError(
            f"the {param} is not valid Unicode (unpaired surrogate at character {e.start}); send UTF-8 text",
            param=param,
        ) from None


# --- requests --------------------------------------------------------------------------------------------------------


class _Req:
    """Scheduler state of one request."""

    __slots__ = (
        "aborted",
        "arrival",
        "blocks",
        "buf",
        "cached_tokens",
        "emitted",
        "eos_p",
        "export",
        "finished",
        "first_token_t",
        "hashes",
        "id",
        "last_token_t",
        "max_tokens",
        "num_cached_blocks",
        "num_computed",
        "num_output",
        "num_prompt",
        "priority",
        "ready_t",
        "remote_tokens",
        "rng",
        "slice_key",
        "stop",
        "text",
        "tokens",
        "waiter",
    )

    def __init__(
        self, rid: str, tokens: list[int], max_tokens: int, stop: tuple[str, ...], rng: random.Random, eos_p: float,
        arrival: float, slice_key: int | None, priority: int = 0,
    ) -> None:  # fmt: skip
        self.id = rid
        self.tokens = tokens
        self.num_prompt = len(tokens)
        self.max_tokens = max_tokens
        self.stop = stop
        self.rng = rng
        self.eos_p = eos_p
        self.arrival = arrival
        self.slice_key = slice_key
        self.priority = priority
        self.num_computed = 0
        self.num_output = 0
        self.blocks: list[int] = []
        self.hashes: list[int] = []
        self.num_cached_blocks = 0
        self.cached_tokens: int | None = None
        self.first_token_t: float | None = None
        self.last_token_t = 0.0
        self.text = ""  # generated text, kept only when there are stop strings
        self.emitted = 0
        self.finished = False
        self.aborted = False
        # output handed to the consumer: a buffer and a future to wake it (lighter than an asyncio.Queue)
        self.buf: collections.deque[EngineChunk | BaseException] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.export = False  # do_remote_decode: hold the prompt's KV for a peer (the final chunk says where)
        self.remote_tokens = 0  # do_remote_prefill: prompt tokens a peer holds to read; then the tokens being read
        self.ready_t = 0.0  # simulated time the read ends

    def push(self, item: EngineChunk | BaseException) -> None:
        self.buf.append(item)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def pop(self) -> EngineChunk | BaseException:
        while not self.buf:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.buf.popleft()

    def block_hash(self, i: int) -> int:
        """Chain hash of full block ``i`` of this request's tokens (== sharder.prefix hash i of the text)."""
        hashes = self.hashes
        while len(hashes) <= i:
            j = len(hashes)
            data = token_bytes(self.tokens[j * BLOCK_TOKENS : (j + 1) * BLOCK_TOKENS])
            hashes.append(xxhash.xxh3_64_intdigest(data, seed=hashes[j - 1] if j else ROOT_SEED))
        return hashes[i]


def virtual_request(
    rid: str, prompt_tokens: int, block_hashes: Sequence[int], max_tokens: int, arrival: float,
    slice_key: int | None = None,
) -> _Req:  # fmt: skip
    """A request for driving the engine in virtual time (``brunoise.simulate``): ``prompt_tokens`` placeholder token
    ids whose full blocks hash to ``block_hashes`` (``sharder.prefix.prefix_hashes`` of the prompt, which ARE this
    engine's block hashes), no stop strings, no EOS; its text is never looked at."""
    req = _Req(rid, [0] * prompt_tokens, max_tokens, (), random.Random(rid), 0.0, arrival, slice_key)
    req.hashes = list(block_hashes[: prompt_tokens // BLOCK_TOKENS])
    return req


@dataclasses.dataclass(slots=True)
class _Scheduled:
    req: _Req
    num_new: int
    decode: bool


# --- the KV cache ----------------------------------------------------------------------------------------------------


class KVCache:
    """vLLM's paged prefix cache: ref-counted blocks, hash -> block map of full blocks, LRU queue of free blocks."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.ref = [0] * num_blocks
        self.hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # block hash -> block id
        # Free blocks, eviction order first (an OrderedDict: O(1) pop-front, append and removal from the middle).
        self.free: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(range(num_blocks))
        self.events: list[KvEvent] = []  # drained by the engine after each step
        self.epoch = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def usage(self) -> float:
        """vLLM's kv_cache_usage_perc: the fraction of blocks held by requests (cached free blocks count as free)."""
        return self.num_used / self.num_blocks

    def computed_blocks(self, req: _Req) -> list[int]:
        """The longest run of ``req``'s leading full blocks found in the cache, leaving at least one token to compute."""
        max_blocks = (len(req.tokens) - 1) // BLOCK_TOKENS
        out: list[int] = []
        cached = self.cached
        for i in range(max_blocks):
            b = cached.get(req.block_hash(i))
            if b is None:
                break
            out.append(b)
        return out

    def allocate(self, req: _Req, num_new: int, computed: list[int] | None = None) -> bool:
        """Reserve blocks for ``num_new`` more tokens of ``req`` (after touching its ``computed`` blocks); False if short."""
        if not computed and req.num_computed + num_new <= len(req.blocks) * BLOCK_TOKENS:
            return True  # fits in the blocks it holds (most decode steps)
        n_computed = len(computed) if computed else 0
        have = len(req.blocks) + n_computed
        base = req.num_computed + n_computed * BLOCK_TOKENS
        need = -(-(base + num_new) // BLOCK_TOKENS) - have
        # touching a cached free block takes it off the free queue, so it cannot also serve as a new block
        touched_free = sum(1 for b in computed if self.ref[b] == 0) if computed else 0
        if need > len(self.free) - touched_free:
            return False
        if computed:
            for b in computed:
                if self.ref[b] == 0:
                    del self.free[b]
                self.ref[b] += 1
            req.blocks.extend(computed)
            req.num_computed = base
            req.num_cached_blocks = len(req.blocks)
        removed: list[int] = []
        for _ in range(max(need, 0)):
            b, _ = self.free.popitem(last=False)
            h = self.hash[b]
            if h is not None:
                self.hash[b] = None
                if self.cached.get(h) == b:
                    del self.cached[h]
                removed.append(h)
            self.ref[b] = 1
            req.blocks.append(b)
        if removed:
            self.events.append(BlockRemoved(tuple(removed), medium=GPU))
        return True

    def cache_full_blocks(self, req: _Req) -> None:
        """Register ``req``'s newly completed full blocks under their chain hashes (a BlockStored event)."""
        n_full = req.num_computed // BLOCK_TOKENS
        start = req.num_cached_blocks
        if n_full <= start:
            return
        stored: list[int] = []
        token_ids: list[int] = []
        parent = req.block_hash(start - 1) if start else None
        for i in range(start, n_full):
            h = req.block_hash(i)
            b = req.blocks[i]
            if h not in self.cached and self.hash[b] is None:
                self.cached[h] = b
                self.hash[b] = h
                stored.append(h)
                token_ids.extend(req.tokens[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS])
            elif stored:
                # keep each event one contiguous chain, as vLLM does
                self.events.append(BlockStored(tuple(stored), parent, tuple(token_ids), BLOCK_TOKENS, medium=GPU))
                stored, token_ids = [], []
            if not stored:
                parent = h
        if stored:
            self.events.append(BlockStored(tuple(stored), parent, tuple(token_ids), BLOCK_TOKENS, medium=GPU))
        req.num_cached_blocks = n_full

    def free_request(self, req: _Req) -> None:
        """Release ``req``'s blocks, tail first, to the end of the free queue (cached ones stay hit-able until reused)."""
        for b in reversed(req.blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None
        req.blocks = []
        req.num_computed = 0
        req.num_cached_blocks = 0

    def reset(self) -> bool:
        """Drop every cached hash (only when no block is in use, like vLLM's reset_prefix_cache); True if done."""
        if self.num_used:
            return False
        self.cached.clear()
        self.hash = [None] * self.num_blocks
        self.epoch += 1
        self.events.append(AllBlocksCleared())
        return True


# --- the engine ------------------------------------------------------------------------------------------------------


class SimEngine(Engine):
    """The simulated engine; see the module docstring for the model."""

    priority_scheduling = True

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = (config or SimConfig()).validate()
        self.model = self.config.model
        self.max_model_len = self.config.max_model_len
        self.metrics = EngineMetrics(self.model)
        self.kv = KVCache(self.config.kv_blocks)
        self.kv_events: collections.deque[KvEvent] = collections.deque(maxlen=self.config.kv_events_kept)
        self._waiting: collections.deque[_Req] = collections.deque()
        self._running: list[_Req] = []
        self._loading: list[_Req] = []  # reading their prompt's KV from a peer (off the batch)
        self.kv_transfer = self.config.kv_transfer_gb_per_s > 0
        self.engine_id = uuid.uuid4().hex  # NixlConnector's engine id: a peer's read names it
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._stopping = False
        self._t0 = time.monotonic()
        self._clock = 0.0  # simulated seconds at the end of the last step
        # counters (tokens, as vLLM counts them)
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.finished_requests = 0
        self.steps = 0
        self.lag_resyncs = 0  # times the step loop fell MAX_LAG_S behind and resynced (CPU-bound at this scale)
        self.hung = False  # the fault hook (SimConfig.fault_marker, mode "hang") stopped the step loop
        self.lag_s = 0.0  # wall seconds lost that way
        self._hit_window: collections.deque[tuple[int, int]] = collections.deque(maxlen=self.config.hit_rate_window)
        self._win_queries = 0
        self._win_hits = 0
        self._load = RateEwma(self.config.load_half_life_s)  # processed tokens per simulated second
        self._zmq_sock: Any = None
        self._zmq_ctx: Any = None
        self._kv_seq = 0

    # -- lifecycle ------------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self.new_incarnation()
        self._stopping = False
        if self.config.kv_events_endpoint:
            import zmq

            self._zmq_ctx = zmq.Context()
            self._zmq_sock = self._zmq_ctx.socket(zmq.PUB)
            ep = self.config.kv_events_endpoint
            # vLLM's ZmqEventPublisher rule: bind wildcard tcp and ipc/inproc endpoints, connect to any other
            # (so a subscriber binds a loopback endpoint and hands it to the engine)
            if "*" in ep or ep.startswith(("ipc://", "inproc://")):
                self._zmq_sock.bind(ep)
            else:
                self._zmq_sock.connect(ep)
        if self.config.startup_s:
            await asyncio.sleep(self.config.startup_s / self.config.time_scale)
        self._t0 = time.monotonic()
        self._clock = 0.0
        self._task = asyncio.create_task(self._loop(), name=f"sim-engine-{self.model}")
        self._ready = True

    async def stop(self) -> None:
        self._ready = False
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        gone = EngineUnavailable("the engine stopped; retry on another pod")
        for req in [*self._running, *self._waiting, *self._loading]:
            if not req.finished:
                req.finished = True
                req.push(gone)
        self._running.clear()
        self._waiting.clear()
        self._loading.clear()
        if self._zmq_sock is not None:
            self._zmq_sock.close(linger=0)
            self._zmq_ctx.term()
            self._zmq_sock = self._zmq_ctx = None

    @property
    def ready(self) -> bool:
        return self._ready and self._task is not None and not self._task.done()

    # -- queries --------------------------------------------------------------------------------------------------------

    async def tokenize(self, text: str) -> list[int]:
        return _checked_tokens(text, "prompt")

    def now(self) -> float:
        """Simulated seconds since start (the wall clock times ``time_scale``)."""
        return (time.monotonic() - self._t0) * self.config.time_scale

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Requests not yet running: queued, and reading their KV from a peer (as vLLM counts them)."""
        return len(self._waiting) + len(self._loading)

    def load(self) -> EngineLoad:
        return self.load_at(self.now())

    def load_at(self, t: float) -> EngineLoad:
        """EngineLoad with the processed-token rate decayed to simulated time ``t``."""
        in_flight = 0
        for r in self._running:
            in_flight += len(r.tokens)
        for r in self._waiting:
            in_flight += len(r.tokens)
        for r in self._loading:
            in_flight += len(r.tokens)
        hit_rate = self._win_hits / self._win_queries if self._win_queries else 0.0
        return EngineLoad(
            running=len(self._running),
            waiting=self.num_waiting,
            kv_usage=self.kv.usage(),
            tokens_in_flight=in_flight,
            prefix_hit_rate=min(1.0, max(0.0, hit_rate)),
            capacity=self.config.capacity,
            load=self._load.rate(t),
        )

    def cache_view(self) -> CacheView:
        return CacheView(
            chunk_bytes=CHUNK_BYTES,
            prefix_hashes=frozenset(self.kv.cached),
            blocks_total=self.kv.num_blocks,
            block_tokens=BLOCK_TOKENS,
            blocks_used=self.kv.num_used,
            epoch=self.kv.epoch,
            incarnation=self.incarnation,
        )

    async def metrics_text(self) -> str:
        self.metrics.set_state(running=len(self._running), waiting=self.num_waiting, kv_usage=self.kv.usage())
        return self.metrics.text()

    def reset_prefix_cache(self) -> bool:
        """Drop the prefix cache (bumps the cache view's epoch); False while requests hold blocks."""
        done = self.kv.reset()
        self._flush_kv_events()
        return done

    # -- requests -------------------------------------------------------------------------------------------------------

    def _prepare(self, request: EngineRequest) -> _Req:
        if not self.ready:
            raise EngineUnavailable("the simulated engine is not ready; retry shortly or on another pod")
        if (request.prompt is None) == (request.messages is None):
            raise EngineError("send exactly one of 'prompt' and 'messages'", param="prompt")
        if request.messages is not None:
            if not request.messages:
                raise EngineError("'messages' must hold at least one message", param="messages")
            text = render_chat(request.messages)
            what = "messages"
        else:
            text = request.prompt or ""
            what = "prompt"
        if not text:
            raise EngineError("the prompt is empty; send at least one character of prompt text", param="prompt")
        if self.config.fault_marker is not None and self.config.fault_marker in text:
            self._fault(request.request_id)
        tokens = _checked_tokens(text, what)
        sp = request.sampling
        n = len(tokens)
        if isinstance(sp.max_tokens, bool) or not isinstance(sp.max_tokens, int) or sp.max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {sp.max_tokens!r}", param="max_tokens")
        if n >= self.max_model_len:
            raise EngineError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt is {n} "
                f"tokens ({n} in the {what}). Please reduce the length of the {what}.",
                param=what,
            )
        if n + sp.max_tokens > self.max_model_len:
            raise EngineError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{n + sp.max_tokens} tokens ({n} in the {what}, {sp.max_tokens} in the completion). Please reduce "
                f"the length of the {what} or completion.",
                param="max_tokens",
            )
        if not math.isfinite(sp.temperature) or sp.temperature < 0:
            raise EngineError(f"temperature must be a number >= 0, got {sp.temperature!r}", param="temperature")
        if not math.isfinite(sp.top_p) or not 0 < sp.top_p <= 1:
            raise EngineError(f"top_p must be in (0, 1], got {sp.top_p!r}", param="top_p")
        # Deterministic output: greedy (temperature 0) depends on the prompt only; sampled output on the seed and
        # the prompt when a seed is given, else on the request id.
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        if sp.temperature == 0:
            seed_material = b"greedy:" + digest
        elif sp.seed is not None:
            seed_material = f"seed:{sp.seed}:".encode() + digest
        else:
            seed_material = f"id:{request.request_id}".encode()
        rng_seed = int.from_bytes(hashlib.blake2b(seed_material, digest_size=8).digest(), "big") ^ self.config.seed
        eos_p = 0.0 if sp.ignore_eos else self.config.eos_probability
        req = _Req(
            request.request_id, tokens, sp.max_tokens, tuple(s for s in sp.stop if s), random.Random(rng_seed), eos_p,
            self.now(), request.slice_key, request.priority,
        )  # fmt: skip
        if self.kv_transfer and request.kv_transfer_params is not None:
            self._kv_transfer(req, request.kv_transfer_params)
        return req

    def _kv_transfer(self, req: _Req, params: Mapping[str, Any]) -> None:
        """Apply vLLM's ``kv_transfer_params`` to ``req`` (NixlConnector's protocol; see the module docstring)."""
        if params.get("do_remote_decode"):
            req.export = True
            req.max_tokens = 1  # the connector cuts a producer's request to its prefill
            return
        if not params.get("do_remote_prefill"):
            return
        ids = params.get("remote_block_ids")
        engine = params.get("remote_engine_id")
        if not isinstance(ids, list) or not isinstance(engine, str) or not engine:
            raise EngineError(
                "kv_transfer_params with do_remote_prefill need remote_block_ids (a list) and remote_engine_id",
                param="kv_transfer_params",
            )
        group = ids[0] if ids and isinstance(ids[0], list) else ids  # one KV cache group (HMA sends a list each)
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in group):
            raise EngineError("remote_block_ids must hold block ids (ints)", param="kv_transfer_params")
        if engine != self.engine_id:  # a read from itself moves nothing
            req.remote_tokens = len(group) * BLOCK_TOKENS

    def _export_params(self, req: _Req) -> dict[str, Any]:
        """What a producer's final chunk carries: the params a peer reads ``req``'s full prompt blocks with (call
        before its blocks are freed)."""
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": req.blocks[: req.num_prompt // BLOCK_TOKENS],
            "remote_engine_id": self.engine_id,
            "remote_request_id": req.id,
            "remote_host": "127.0.0.1",
            "remote_port": 0,
            "tp_size": 1,
            "remote_num_tokens": req.num_prompt,
        }

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        req = self._prepare(request)
        self._enqueue(req)
        self._wake.set()
        try:
            while True:
                item = await req.pop()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not req.finished:
                self._abort(req)

    def _enqueue(self, req: _Req) -> None:
        """Queue a new request: behind every waiting request of its priority or a lower (sooner) one."""
        waiting = self._waiting
        if not waiting or waiting[-1].priority <= req.priority:
            waiting.append(req)  # the common case (every priority 0): FCFS
            return
        i = len(waiting)
        while i > 0 and waiting[i - 1].priority > req.priority:
            i -= 1
        waiting.insert(i, req)

    def _requeue(self, req: _Req) -> None:
        """Put a preempted request back: ahead of every waiting request of its priority or a later one."""
        waiting = self._waiting
        i = 0
        while i < len(waiting) and waiting[i].priority < req.priority:
            i += 1
        waiting.insert(i, req)

    def _fault(self, request_id: str) -> None:
        """The test hook fired (``SimConfig.fault_marker``): crash the process or hang the step loop."""
        if self.config.fault_mode == "error":
            raise EngineError(
                f"simulated engine error on request {request_id} (test hook --fault-marker)",
                status=500,
                code="InternalServerError",
            )
        log.error("simulated engine fault (%s) on request %s", self.config.fault_mode, request_id)
        if self.config.fault_mode == "crash":
            logging.shutdown()
            os._exit(70)
        self.hung = True

    def _abort(self, req: _Req) -> None:
        req.finished = True
        req.aborted = True
        if req in self._waiting:
            self._waiting.remove(req)
            self.kv.free_request(req)
        elif req in self._loading:
            self._loading.remove(req)
            self.kv.free_request(req)
        elif req in self._running:
            self._running.remove(req)
            self.kv.free_request(req)
        self._record_finish(req, "abort", self.now())

    # -- virtual time (brunoise.simulate drives the scheduler without asyncio or the wall clock) -----------------------

    def submit_virtual(self, req: _Req) -> None:
        """Queue ``req`` (see ``virtual_request``); it is scheduled by the next ``step_virtual``."""
        self._enqueue(req)

    def step_virtual(self, start: float) -> tuple[float, list[_Req]] | None:
        """Run one scheduler step that starts at simulated ``start``: the same ``_schedule`` / ``_step_time`` /
        ``_apply`` as the step loop (KV reads in flight land by ``start``). Returns (its end, the requests it
        touched); (the time the first KV read in flight lands, []) when nothing can run before then; None when
        nothing is queued."""
        self._clock = start  # the simulated clock the KV reads are timed on (``_land``, ``_admit_read``)
        scheduled = self._schedule()
        if not scheduled:
            if self._loading:
                return min(r.ready_t for r in self._loading), []
            return None
        end = start + self._step_time(scheduled)
        self._apply(scheduled, end)
        self.kv.events.clear()
        return end, [s.req for s in scheduled]

    def abort_virtual(self) -> list[_Req]:
        """Drop every queued and running request (the pod died); returns them."""
        gone = [*self._running, *self._waiting, *self._loading]
        for req in gone:
            self.kv.free_request(req)
            req.finished = True
        self._running.clear()
        self._waiting.clear()
        self._loading.clear()
        return gone

    # -- the step loop --------------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        scale = self.config.time_scale
        try:
            while True:
                if self.hung:
                    await asyncio.Event().wait()  # the fault hook hung the engine: never step again
                if not self._running and not self._waiting and not self._loading:
                    await self._idle()
                    self._clock = self.now()
                    continue
                # The step clock advances by simulated step durations and the loop sleeps to each step's end on the
                # wall clock (to a target, not for a duration, so sleep overshoot does not accumulate). It resyncs
                # to the wall clock after idling or when the loop has fallen more than MAX_LAG_S behind (the host
                # cannot keep up with this time_scale).
                now = self.now()
                if self._clock < now - MAX_LAG_S * scale:
                    self.lag_resyncs += 1
                    self.lag_s += (now - self._clock) / scale
                    if self.lag_resyncs == 1:
                        log.warning(
                            "simulated engine fell %.0f ms behind its clock: this host cannot run it at time_scale=%g "
                            "with this load, so simulated time now runs slower (latencies stretch); lower time_scale",
                            1000 * (now - self._clock) / scale, scale,
                        )  # fmt: skip
                    self._clock = now
                scheduled = self._schedule()
                if not scheduled:
                    # nothing fits until a KV read lands (or never: cannot happen with a validated config; never spin)
                    await self._idle()
                    self._clock = max(self._clock, self.now())
                    continue
                self._clock += self._step_time(scheduled)
                delay = self._t0 + self._clock / scale - time.monotonic()
                await asyncio.sleep(max(delay, 0.0))
                # events are stamped with the (scaled) wall clock, so latencies match what clients measure x scale
                self._apply(scheduled, self.now())
                self._flush_kv_events()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: fail every request rather than hang them
            log.exception("simulated engine loop failed")
            self._ready = False
            err = EngineError(f"simulated engine failed: {exc}", status=500, code="InternalServerError")
            for req in [*self._running, *self._waiting]:
                if not req.finished:
                    req.finished = True
                    req.push(err)
            raise

    async def _idle(self) -> None:
        """Wait for a new request, or until the first KV read in flight lands."""
        self._wake.clear()
        if not self._loading:
            await self._wake.wait()
            return
        t = min(r.ready_t for r in self._loading)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._wake.wait(), max(0.0, self._t0 + t / self.config.time_scale - time.monotonic())
            )

    def _land(self, t: float) -> None:
        """KV reads done by simulated ``t``: their blocks hold the peer's KV (registered in the prefix cache), and
        the request runs on to compute its last prompt token."""
        if not self._loading:
            return
        still: list[_Req] = []
        for req in self._loading:
            if req.ready_t > t:
                still.append(req)
                continue
            req.num_computed += req.remote_tokens
            req.remote_tokens = 0
            self.kv.cache_full_blocks(req)
            self._running.append(req)
        self._loading = still

    def _admit_read(self, req: _Req, computed: list[int]) -> bool | None:
        """Admit ``req`` (do_remote_prefill) to read what the peer holds beyond its local hit ``computed``: its
        blocks allocated, it waits off the batch for the read (True); None when the blocks do not fit (it stays
        queued); False when there is nothing to read (the peer holds no more than the local hit): an ordinary
        request."""
        n_local = len(computed) * BLOCK_TOKENS
        readable = min(req.remote_tokens, (len(req.tokens) - 1) // BLOCK_TOKENS * BLOCK_TOKENS)
        n_read = readable - n_local
        if n_read <= 0:
            req.remote_tokens = 0
            return False
        if not self.kv.allocate(req, n_read, computed):
            return None
        self._waiting.popleft()
        self._count_prefix(req, n_local + n_read)
        req.remote_tokens = n_read
        cfg = self.config
        req.ready_t = self._clock + n_read * cfg.kv_bytes_per_token / (cfg.kv_transfer_gb_per_s * 1e9)
        self._loading.append(req)
        return True

    def _count_prefix(self, req: _Req, n_hit: int) -> None:
        """Prefix-cache stats of an admitted request, as vLLM counts them: every query of its tokens, hits in
        cached tokens."""
        n_q = len(req.tokens)
        self.prefix_queries += n_q
        self.prefix_hits += n_hit
        self.metrics.prefix_cache(n_q, n_hit)
        if len(self._hit_window) == self._hit_window.maxlen:
            oq, oh = self._hit_window[0]
            self._win_queries -= oq
            self._win_hits -= oh
        self._hit_window.append((n_q, n_hit))
        self._win_queries += n_q
        self._win_hits += n_hit
        if req.cached_tokens is None:
            req.cached_tokens = n_hit

    def _schedule(self) -> list[_Scheduled]:
        cfg = self.config
        kv = self.kv
        self._land(self._clock)
        budget = cfg.max_num_batched_tokens
        out: list[_Scheduled] = []
        preempted = False
        i = 0
        while i < len(self._running) and budget > 0:
            req = self._running[i]
            num_new = min(len(req.tokens) - req.num_computed, budget)
            if num_new <= 0:
                i += 1
                continue
            fits = True
            while not kv.allocate(req, num_new):
                # preempt the newest running request (vLLM's FCFS policy; under priorities the newest of the
                # latest priority); it is recomputed when readmitted. Requests before index i are already
                # scheduled and never chosen: the victim is at index >= i.
                running = self._running
                v = len(running) - 1
                for j in range(v - 1, i - 1, -1):
                    if running[j].priority > running[v].priority:
                        v = j
                victim = running.pop(v)
                kv.free_request(victim)
                self._requeue(victim)
                self.preemptions += 1
                self.metrics.preempted()
                preempted = True
                if victim is req:
                    fits = False
                    break
            if not fits:
                break
            decode = num_new == 1 and req.num_output > 0 and req.num_computed == len(req.tokens) - 1
            out.append(_Scheduled(req, num_new, decode))
            budget -= num_new
            i += 1
        if preempted:
            return out  # vLLM admits no waiting request in a step that preempted
        while self._waiting and budget > 0 and len(self._running) < cfg.max_num_seqs:
            req = self._waiting[0]
            computed = kv.computed_blocks(req)
            if req.remote_tokens:
                reading = self._admit_read(req, computed)
                if reading is None:
                    break  # FCFS, as below
                if reading:
                    continue  # off the batch until its read lands
            n_hit = len(computed) * BLOCK_TOKENS
            num_new = min(len(req.tokens) - n_hit, budget)
            if not kv.allocate(req, num_new, computed):
                break  # FCFS: the head waits for blocks, and so does everyone behind it
            self._waiting.popleft()
            self._running.append(req)
            self._count_prefix(req, n_hit)
            out.append(_Scheduled(req, num_new, False))
            budget -= num_new
        return out

    def _step_time(self, scheduled: list[_Scheduled]) -> float:
        cfg = self.config
        prefill = 0
        decodes = 0
        context = 0
        for s in scheduled:
            if s.decode:
                decodes += 1
                context += s.req.num_computed
            else:
                prefill += s.num_new
        return (
            cfg.step_fixed_s
            + cfg.per_prefill_token_s * prefill
            + cfg.per_decode_seq_s * decodes
            + cfg.per_context_token_s * context
        )

    def _apply(self, scheduled: list[_Scheduled], t: float) -> None:
        self.steps += 1
        kv = self.kv
        processed = 0
        prompt_tokens = 0
        sampled = 0
        finished = False
        for s in scheduled:
            req = s.req
            if req.finished:
                continue  # aborted during the step; its blocks are already free
            req.num_computed += s.num_new
            processed += s.num_new
            kv.cache_full_blocks(req)
            if req.num_computed < len(req.tokens):
                continue  # still prefilling (chunked)
            if req.first_token_t is None:
                prompt_tokens += req.num_prompt
            sampled += 1
            finished |= self._sample(req, t)
        if finished:
            self._running = [r for r in self._running if not r.finished]
        # counted per step, as vLLM's iteration stats do
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += sampled
        self.metrics.prompt_tokens(prompt_tokens)
        self.metrics.generation_tokens(sampled)
        self._load.add(processed)
        self._load.rate(t)  # this step's tokens over the time since the last reading

    def _sample(self, req: _Req, t: float) -> bool:
        """Sample ``req``'s next token (all its known tokens are computed) and emit it; True when it finished."""
        rng = req.rng
        if req.first_token_t is None:
            req.first_token_t = t
            self.metrics.time_to_first_token(t - req.arrival)
        else:
            self.metrics.inter_token_latency(t - req.last_token_t)
        req.last_token_t = t
        req.num_output += 1
        finish: str | None = None
        piece = ""
        if req.eos_p and rng.random() < req.eos_p:
            finish = "stop"  # EOS: counted as a generated token (as vLLM does) but not part of the text
        else:
            k = rng.randrange(len(_VOCAB))
            req.tokens.append(_VOCAB_IDS[k])
            piece = _VOCAB[k]
        if req.stop:
            text = req.text + piece
            if finish is None:
                cut = min((p for p in (text.find(s) for s in req.stop) if p >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    finish = "stop"
            req.text = text
        if finish is None and (req.num_output >= req.max_tokens or len(req.tokens) >= self.max_model_len):
            finish = "length"
        if req.stop:
            # hold back what could be the start of a stop string until it is known not to be one
            hold = 0 if finish is not None else max(len(s) - 1 for s in req.stop)
            upto = max(req.emitted, len(req.text) - hold)
            piece = req.text[req.emitted : upto]
            req.emitted = upto
        if finish is None:
            req.push(EngineChunk(text=piece))
            return False
        req.finished = True
        params = self._export_params(req) if req.export else None
        self.kv.free_request(req)
        req.push(
            EngineChunk(
                text=piece, finish_reason=finish, prompt_tokens=req.num_prompt, completion_tokens=req.num_output,
                cached_tokens=req.cached_tokens or 0, kv_transfer_params=params,
            )
        )  # fmt: skip
        self._record_finish(req, finish, t)
        return True

    def _record_finish(self, req: _Req, reason: str, t: float) -> None:
        self.finished_requests += 1
        self.metrics.finished(reason, max(0.0, t - req.arrival))

    def _flush_kv_events(self) -> None:
        events = self.kv.events
        if not events:
            return
        self.kv.events = []
        self.kv_events.extend(events)
        if self._zmq_sock is not None:
            payload = encode_batch(time.time(), events, array_like=True)
            seq = self._kv_seq
            self._kv_seq += 1
            import zmq

            with contextlib.suppress(zmq.ZMQError):
                self._zmq_sock.send_multipart(
                    (self.config.kv_events_topic.encode(), seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK
                )

    # -- introspection for tests and benchmarks -------------------------------------------------------------------------

    def stats(self) -> Mapping[str, float]:
        """Counters and gauges in one mapping (token counts as vLLM counts them)."""
        return {
            "running": len(self._running),
            "waiting": len(self._waiting),
            "kv_usage": self.kv.usage(),
            "prefix_queries": self.prefix_queries,
            "prefix_hits": self.prefix_hits,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "preemptions": self.preemptions,
            "finished": self.finished_requests,
            "steps": self.steps,
            "cached_blocks": len(self.kv.cached),
            "lag_resyncs": self.lag_resyncs,
            "lag_s": self.lag_s,
        }
