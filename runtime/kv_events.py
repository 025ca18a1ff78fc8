"""vLLM KV-cache events: decoding the ZMQ wire format, a subscriber, and the exact view of the blocks an engine holds.

Wire format (vLLM 0.32, ``vllm/distributed/kv_events.py``; ``ZmqEventPublisher``):

* Each published message is three ZMQ frames: ``topic`` (UTF-8), ``seq`` (8-byte big-endian, counting from 0 per
  publisher process), ``payload`` (msgpack).
* The payload is a msgspec *array-like* ``KVEventBatch``: ``[ts, [event, ...], data_parallel_rank]`` (trailing fields
  equal to their default are omitted: ``omit_defaults=True``).
* Events are msgspec *tagged* structs (``tag=True``, tag field ``"type"``, value the class name). In vLLM 0.32 they are
  NOT array-like, so each event is a map: ``{"type": "BlockStored", "block_hashes": [...], "parent_block_hash": h,
  "token_ids": [...], "block_size": n, "lora_id": ..., "medium": "GPU", "lora_name": ..., "extra_keys": ...,
  "group_idx": ...}``, ``{"type": "BlockRemoved", "block_hashes": [...], "medium": "GPU", ...}``,
  ``{"type": "AllBlocksCleared"}``. Older vLLM versions (and ``runtime.engines.sim``) send array-like events:
  ``["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, ...]``; both decode.
* Block hashes are ``bytes`` (sha256 digests) or ``int`` (when ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`` is on, the
  default in 0.32: the low 64 bits). Both are kept as they come (each is hashable) and never mixed by one publisher.
* One ``BlockStored`` covers consecutive blocks of one request: ``block_hashes[i]`` holds
  ``token_ids[i*block_size:(i+1)*block_size]``; the first block's parent is ``parent_block_hash`` (``None`` for a
  prompt's first block), each later block's parent is the previous hash of the list.
* Two physical blocks may carry the same hash (two requests computed the same prefix at once); each is stored and
  removed by its own event, so the view counts references per hash.
* Replay: with ``"replay_endpoint": "tcp://127.0.0.1:PORT"`` in ``--kv-events-config`` the publisher binds a ROUTER
  socket there. A DEALER sends ``[b"", start_seq (8-byte big-endian)]``; the publisher answers with
  ``[b"", topic, seq, payload]`` for every buffered batch with ``seq >= start_seq`` and then an end marker
  ``[b"", b"", (-1 as 8-byte signed big-endian), b""]``.
* Endpoint direction: the publisher *binds* endpoints with a wildcard (``tcp://*:5557``) and ipc/inproc ones, and
  *connects* to any other (``tcp://127.0.0.1:5557``); so a subscriber binds a loopback endpoint and hands it to vLLM,
  which keeps that endpoint across engine restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack

log = logging.getLogger(__name__)

BlockHash = bytes | int
#: Media whose blocks count as held by the engine (vLLM's KV memory; "CPU"/"STORAGE" are offload tiers).
MEDIUM_GPU = "GPU"
PRIMARY_MEDIA: frozenset[str | None] = frozenset({None, MEDIUM_GPU})
END_SEQ = -1


@dataclasses.dataclass(frozen=True, slots=True)
class BlockStored:
    """Consecutive full blocks of one request entered the prefix cache."""

    block_hashes: tuple[BlockHash, ...]
    parent_block_hash: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: tuple[Any, ...] | None = None
    group_idx: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Blocks were evicted from the prefix cache."""

    block_hashes: tuple[BlockHash, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The whole prefix cache was reset."""


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclasses.dataclass(frozen=True, slots=True)
class EventBatch:
    """One published message: a timestamp, its events (unknown ones dropped) and the data-parallel rank."""

    ts: float
    events: tuple[KvEvent, ...]
    data_parallel_rank: int | None = None
    unknown: int = 0


class KvEventDecodeError(ValueError):
    """A payload that is not a vLLM KV event batch."""


def _hash(v: object) -> BlockHash:
    if isinstance(v, bytes | int) and not isinstance(v, bool):
        return v
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    raise KvEventDecodeError(f"block hash must be bytes or int, got {type(v).__name__}")


def _hashes(v: object) -> tuple[BlockHash, ...]:
    if not isinstance(v, list | tuple):
        raise KvEventDecodeError(f"block_hashes must be a list, got {type(v).__name__}")
    return tuple(_hash(h) for h in v)


def _opt_hash(v: object) -> BlockHash | None:
    return None if v is None else _hash(v)


def _opt_int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_str(v: object) -> str | None:
    return v if isinstance(v, str) else None


def _extra(v: object) -> tuple[Any, ...] | None:
    if v is None:
        return None
    if isinstance(v, list | tuple):
        return tuple(tuple(e) if isinstance(e, list) else e for e in v)
    return None


# Positional field order of the array-like (older) encoding, after the tag.
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
                  "extra_keys", "group_idx")  # fmt: skip
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


def decode_event(raw: object) -> KvEvent | None:
    """One event from its msgpack form (map with ``"type"`` or tagged array); ``None`` for an unknown event type."""
    if isinstance(raw, dict):
        tag = raw.get("type")
        fields: dict[str, Any] = raw
    elif isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
        tag = raw[0]
        names = {"BlockStored": _STORED_FIELDS, "BlockRemoved": _REMOVED_FIELDS}.get(tag, ())
        fields = dict(zip(names, raw[1:], strict=False))
    else:
        raise KvEventDecodeError(f"an event must be a tagged map or array, got {type(raw).__name__}")
    if tag == "BlockStored":
        token_ids = fields.get("token_ids", [])
        block_size = fields.get("block_size")
        if not isinstance(token_ids, list | tuple) or not isinstance(block_size, int) or block_size <= 0:
            raise KvEventDecodeError("BlockStored needs token_ids (list) and block_size (int > 0)")
        return BlockStored(
            block_hashes=_hashes(fields.get("block_hashes")),
            parent_block_hash=_opt_hash(fields.get("parent_block_hash")),
            token_ids=tuple(int(t) for t in token_ids),
            block_size=block_size,
            lora_id=_opt_int(fields.get("lora_id")),
            medium=_opt_str(fields.get("medium")),
            lora_name=_opt_str(fields.get("lora_name")),
            extra_keys=_extra(fields.get("extra_keys")),
            group_idx=_opt_int(fields.get("group_idx")),
        )
    if tag == "BlockRemoved":
        return BlockRemoved(
            block_hashes=_hashes(fields.get("block_hashes")),
            medium=_opt_str(fields.get("medium")),
            group_idx=_opt_int(fields.get("group_idx")),
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def decode_batch(payload: bytes) -> EventBatch:
    """A ``KVEventBatch`` payload: ``[ts, events, data_parallel_rank?]``."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise KvEventDecodeError(f"payload is not msgpack: {exc}") from exc
    if not isinstance(obj, list | tuple) or len(obj) < 2 or not isinstance(obj[1], list | tuple):
        raise KvEventDecodeError("payload must be an array [ts, [events...], data_parallel_rank]")
    events: list[KvEvent] = []
    unknown = 0
    for raw in obj[1]:
        ev = decode_event(raw)
        if ev is None:
            unknown += 1
        else:
            events.append(ev)
    ts = float(obj[0]) if isinstance(obj[0], int | float) else 0.0
    rank = _opt_int(obj[2]) if len(obj) > 2 else None
    return EventBatch(ts=ts, events=tuple(events), data_parallel_rank=rank, unknown=unknown)


def decode_message(frames: Sequence[bytes]) -> tuple[bytes, int, EventBatch]:
    """``(topic, seq, batch)`` of one multipart message ``[topic, seq, payload]``."""
    if len(frames) != 3:
        raise KvEventDecodeError(f"a KV event message has 3 frames (topic, seq, payload), got {len(frames)}")
    topic, seq_b, payload = frames
    if len(seq_b) != 8:
        raise KvEventDecodeError(f"seq must be 8 bytes, got {len(seq_b)}")
    return bytes(topic), int.from_bytes(seq_b, "big", signed=True), decode_batch(payload)


def _encode_event(e: KvEvent) -> dict[str, Any]:
    if isinstance(e, BlockStored):
        d: dict[str, Any] = {
            "type": "BlockStored",
            "block_hashes": list(e.block_hashes),
            "parent_block_hash": e.parent_block_hash,
            "token_ids": list(e.token_ids),
            "block_size": e.block_size,
            "lora_id": e.lora_id,
            "medium": e.medium,
            "lora_name": e.lora_name,
        }
        if e.extra_keys is not None:
            d["extra_keys"] = [list(k) if isinstance(k, tuple) else k for k in e.extra_keys]
        if e.group_idx is not None:
            d["group_idx"] = e.group_idx
        return d
    if isinstance(e, BlockRemoved):
        d = {"type": "BlockRemoved", "block_hashes": list(e.block_hashes), "medium": e.medium}
        if e.group_idx is not None:
            d["group_idx"] = e.group_idx
        return d
    return {"type": "AllBlocksCleared"}


def _encode_event_array(e: KvEvent) -> list[Any]:
    """msgspec's ``array_like=True, tag=True, omit_defaults=True`` form: the tag, the fields in order, trailing
    defaults (None) left off."""
    names: tuple[str, ...]
    if isinstance(e, BlockStored):
        tag, names = "BlockStored", _STORED_FIELDS
    elif isinstance(e, BlockRemoved):
        tag, names = "BlockRemoved", _REMOVED_FIELDS
    else:
        return ["AllBlocksCleared"]
    values = [getattr(e, n) for n in names]
    while values and values[-1] is None:
        values.pop()
    return [tag, *(list(v) if isinstance(v, tuple) else v for v in values)]


def encode_batch(
    ts: float, events: Iterable[KvEvent], data_parallel_rank: int | None = None, *, array_like: bool = False
) -> bytes:
    """The payload vLLM would publish for ``events``: events as tagged maps (vLLM 0.32), or with ``array_like`` as
    tagged arrays (msgspec's array-like structs, what the simulated engine publishes); both decode here."""
    encode = _encode_event_array if array_like else _encode_event
    body: list[Any] = [ts, [encode(e) for e in events]]
    if data_parallel_rank is not None:
        body.append(data_parallel_rank)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


# --- the view ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Block:
    parent: BlockHash | None
    tokens: tuple[int, ...]
    key: tuple[Any, ...]
    refs: int = 1


class BlockView:
    """The exact set of prefix-cache blocks one engine holds, keyed by the engine's block hash.

    Built only from KV events. Each block keeps its parent link and token ids, and an index
    ``(parent hash, token ids, lora, extra keys) -> block hash`` lets a caller match a token sequence against the
    cache the way vLLM's ``find_longest_cache_hit`` walks it, without knowing vLLM's hash function or seed.
    ``epoch`` increases whenever the view is emptied (``AllBlocksCleared``, an engine restart, a lost event);
    ``version`` increases on every change.
    """

    def __init__(self) -> None:
        self._blocks: dict[BlockHash, _Block] = {}
        self._index: dict[tuple[Any, ...], BlockHash] = {}
        self.block_size: int = 0
        self.epoch = 0
        self.version = 0
        self.stored_events = 0
        self.removed_events = 0
        self.cleared_events = 0
        self.ignored_events = 0
        self.unknown_removals = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    @property
    def blocks(self) -> int:
        """Distinct block hashes held."""
        return len(self._blocks)

    def parent(self, block_hash: BlockHash) -> BlockHash | None:
        """The parent hash of a held block (``KeyError`` if it is not held)."""
        return self._blocks[block_hash].parent

    def tokens(self, block_hash: BlockHash) -> tuple[int, ...]:
        """The token ids a held block covers (``KeyError`` if it is not held)."""
        return self._blocks[block_hash].tokens

    def hashes(self) -> frozenset[BlockHash]:
        """Every block hash held now."""
        return frozenset(self._blocks)

    def reset(self) -> None:
        """Forget every block (the engine's cache was reset or restarted, or events were lost); bumps the epoch."""
        self._blocks.clear()
        self._index.clear()
        self.epoch += 1
        self.version += 1

    def apply_batch(self, batch: EventBatch) -> None:
        """Apply every event of one batch in order."""
        for e in batch.events:
            self.apply(e)

    def apply(self, event: KvEvent) -> None:
        """Apply one event."""
        if isinstance(event, BlockStored):
            self._stored(event)
        elif isinstance(event, BlockRemoved):
            self._removed(event)
        elif isinstance(event, AllBlocksCleared):
            self.cleared_events += 1
            self.reset()

    def _stored(self, e: BlockStored) -> None:
        if e.medium not in PRIMARY_MEDIA:
            self.ignored_events += 1
            return
        self.stored_events += 1
        bs = e.block_size
        n = len(e.block_hashes)
        if n * bs == len(e.token_ids) and (self.block_size == 0 or bs >= self.block_size):
            self.block_size = bs
        lora = e.lora_name if e.lora_name is not None else e.lora_id
        parent = e.parent_block_hash
        for i, h in enumerate(e.block_hashes):
            toks = e.token_ids[i * bs : (i + 1) * bs]
            extra = e.extra_keys[i] if e.extra_keys is not None and i < len(e.extra_keys) else None
            key = (parent, toks, lora, extra)
            blk = self._blocks.get(h)
            if blk is None:
                self._blocks[h] = _Block(parent=parent, tokens=toks, key=key)
            else:
                blk.refs += 1
            self._index.setdefault(key, h)
            parent = h
        self.version += 1

    def _removed(self, e: BlockRemoved) -> None:
        if e.medium not in PRIMARY_MEDIA:
            self.ignored_events += 1
            return
        self.removed_events += 1
        for h in e.block_hashes:
            blk = self._blocks.get(h)
            if blk is None:
                self.unknown_removals += 1
                continue
            blk.refs -= 1
            if blk.refs <= 0:
                del self._blocks[h]
                if self._index.get(blk.key) == h:
                    del self._index[blk.key]
        self.version += 1

    def held_prefix_blocks(self, token_ids: Sequence[int], *, lora: str | int | None = None) -> list[BlockHash]:
        """The hashes of the leading full blocks of ``token_ids`` the engine holds, in order."""
        bs = self.block_size
        out: list[BlockHash] = []
        if bs <= 0:
            return out
        parent: BlockHash | None = None
        toks = tuple(token_ids)
        for start in range(0, len(toks) - bs + 1, bs):
            h = self._index.get((parent, toks[start : start + bs], lora, None))
            if h is None:
                break
            out.append(h)
            parent = h
        return out

    def cached_prefix_tokens(self, token_ids: Sequence[int], *, lora: str | int | None = None) -> int:
        """How many leading tokens of ``token_ids`` lie in full blocks the engine holds (a multiple of block size)."""
        return len(self.held_prefix_blocks(token_ids, lora=lora)) * self.block_size


# --- the subscriber ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class SubscriberStats:
    """Counters of one subscriber."""

    messages: int = 0
    events: int = 0
    unknown_events: int = 0
    decode_errors: int = 0
    gaps: int = 0
    missed: int = 0
    replays: int = 0
    replayed: int = 0
    restarts: int = 0
    topic_mismatches: int = 0
    last_seq: int = -1
    last_ts: float = 0.0


class KvEventSubscriber:
    """Receives a publisher's KV event batches on a SUB socket (asyncio) and applies them to a ``BlockView``.

    ``bind=True`` (the default) binds ``endpoint`` (``tcp://127.0.0.1:0`` picks a free port; read ``endpoint``
    afterwards) and lets vLLM connect to it; ``bind=False`` connects to a publisher that binds (the simulated engine).

    Sequence numbers: a gap (``seq > last + 1``) is counted; with a ``replay_endpoint`` the missing batches are
    asked for and applied in order. A gap that cannot be filled empties the view (its blocks might be stale),
    bumping the epoch. A sequence number that goes backwards means the publisher restarted: its engine's cache is
    empty, so the view is emptied too.
    """

    def __init__(
        self,
        view: BlockView | None = None,
        *,
        endpoint: str = "tcp://127.0.0.1:0",
        bind: bool = True,
        topic: str = "",
        replay_endpoint: str | None = None,
        replay_timeout_s: float = 2.0,
        on_batch: Callable[[int, EventBatch], None] | None = None,
    ) -> None:
        self.view = view if view is not None else BlockView()
        self.endpoint = endpoint
        self.bind = bind
        self.topic = topic
        self.replay_endpoint = replay_endpoint
        self.replay_timeout_s = replay_timeout_s
        self.on_batch = on_batch
        self.stats = SubscriberStats()
        self._ctx: Any = None
        self._sock: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the socket and start receiving in a background task."""
        import zmq
        import zmq.asyncio

        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        if self.bind:
            sock.bind(self.endpoint)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            sock.connect(self.endpoint)
        self._sock = sock
        self._task = asyncio.create_task(self._run(), name="kv-event-subscriber")

    async def stop(self) -> None:
        """Stop receiving and close the socket."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def publisher_restarted(self) -> None:
        """Tell the subscriber its publisher is a new process: sequence numbers start again, the cache is empty."""
        self.stats.last_seq = -1
        self.stats.restarts += 1
        self.view.reset()

    async def _run(self) -> None:
        while True:
            try:
                frames = await self._sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a closed socket or context: stop quietly
                log.debug("kv event socket closed: %s", exc)
                return
            try:
                await self.handle(frames)
            except Exception:  # never let one bad message end the subscription
                log.exception("failed to apply a KV event batch")

    async def handle(self, frames: Sequence[bytes]) -> None:
        """Decode and apply one multipart message (also used for replayed messages)."""
        try:
            topic, seq, batch = decode_message(frames)
        except KvEventDecodeError as exc:
            self.stats.decode_errors += 1
            log.warning("undecodable KV event message: %s", exc)
            return
        if self.topic and not topic.startswith(self.topic.encode()):
            self.stats.topic_mismatches += 1
            return
        last = self.stats.last_seq
        if last >= 0 and seq <= last:
            if seq == 0:
                # the publisher restarted (a new engine process): its cache is empty
                log.info("KV event publisher restarted (seq %d after %d)", seq, last)
                self.publisher_restarted()
            else:
                return  # a duplicate (at-least-once delivery, or a replay overlap)
        elif (last >= 0 and seq > last + 1) or (last < 0 and seq > 0):
            start = last + 1
            self.stats.gaps += 1
            filled = await self._replay(start, seq) if self.replay_endpoint else False
            if not filled:
                self.stats.missed += seq - start
                if last >= 0 or self.view.blocks:
                    log.warning("lost KV event batches %d..%d; emptying the block view", start, seq - 1)
                    self.view.reset()
        self._apply(seq, batch)

    def _apply(self, seq: int, batch: EventBatch) -> None:
        self.view.apply_batch(batch)
        self.stats.messages += 1
        self.stats.events += len(batch.events)
        self.stats.unknown_events += batch.unknown
        self.stats.last_seq = seq
        self.stats.last_ts = batch.ts or time.time()
        if self.on_batch is not None:
            self.on_batch(seq, batch)

    async def _replay(self, start: int, stop: int) -> bool:
        """Fetch batches [start, stop) from the replay socket and apply them; whether the range was filled."""
        import zmq

        self.stats.replays += 1
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        got: dict[int, EventBatch] = {}
        try:
            sock.connect(self.replay_endpoint)
            await sock.send_multipart([b"", start.to_bytes(8, "big")])
            deadline = time.monotonic() + self.replay_timeout_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not await sock.poll(int(left * 1000)):
                    return False
                frames = await sock.recv_multipart()
                if frames and frames[0] == b"":
                    frames = frames[1:]
                if len(frames) == 3 and int.from_bytes(frames[1], "big", signed=True) == END_SEQ:
                    break
                try:
                    _, seq, batch = decode_message(frames)
                except KvEventDecodeError:
                    self.stats.decode_errors += 1
                    continue
                if start <= seq < stop:
                    got[seq] = batch
        except zmq.ZMQError as exc:
            log.warning("KV event replay from %s failed: %s", self.replay_endpoint, exc)
            return False
        finally:
            sock.close(linger=0)
        if len(got) != stop - start:
            return False
        for seq in range(start, stop):
            self._apply(seq, got[seq])
        self.stats.replayed += len(got)
        return True
