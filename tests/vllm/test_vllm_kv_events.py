"""KV event decoding (vLLM's own encoder), the BlockView, and the ZMQ subscriber with seq gaps, replay and restarts."""

from __future__ import annotations

import asyncio
import subprocess
import time

import msgpack
import pytest
import zmq
import zmq.asyncio
from conftest import VLLM_PYTHON, require_vllm

from runtime.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    BlockView,
    KvEventDecodeError,
    KvEventSubscriber,
    decode_batch,
    decode_message,
    encode_batch,
)
from tests.waiting import until

pytestmark = pytest.mark.vllm

BS = 4


def stored(
    hashes: list[bytes | int], parent: bytes | int | None, tokens: list[int], medium: str = "GPU"
) -> BlockStored:
    return BlockStored(tuple(hashes), parent, tuple(tokens), BS, None, medium)


def test_decodes_what_vllms_own_encoder_publishes() -> None:
    """Encode a KVEventBatch with vLLM's msgspec classes (in .venv-vllm) and decode it here."""
    require_vllm()
    code = (
        "import sys\n"
        "from vllm.distributed.kv_events import KVEventBatch, BlockStored, BlockRemoved, AllBlocksCleared\n"
        "import msgspec\n"
        "b = KVEventBatch(ts=12.5, events=[\n"
        "  BlockStored(block_hashes=[b'\\x01'*32, 7], parent_block_hash=None, token_ids=[1,2,3,4,5,6,7,8],\n"
        "              block_size=4, lora_id=None, medium='GPU', lora_name=None, group_idx=0),\n"
        "  BlockRemoved(block_hashes=[7], medium='GPU'), AllBlocksCleared()], data_parallel_rank=0)\n"
        "sys.stdout.write(msgspec.msgpack.Encoder().encode(b).hex())\n"
    )
    r = subprocess.run([VLLM_PYTHON, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    batch = decode_batch(bytes.fromhex(r.stdout.strip()))
    assert batch.ts == 12.5 and batch.data_parallel_rank == 0 and batch.unknown == 0
    s, rm, cl = batch.events
    assert isinstance(s, BlockStored) and s.block_hashes == (b"\x01" * 32, 7) and s.parent_block_hash is None
    assert s.token_ids == (1, 2, 3, 4, 5, 6, 7, 8) and s.block_size == 4 and s.medium == "GPU" and s.group_idx == 0
    assert isinstance(rm, BlockRemoved) and rm.block_hashes == (7,)
    assert isinstance(cl, AllBlocksCleared)


def test_decodes_array_like_events_and_rejects_garbage() -> None:
    events = [
        ["BlockStored", [1, 2], None, [1, 2, 3, 4, 5, 6, 7, 8], 4, None, "GPU"],
        ["BlockRemoved", [2], "GPU"],
        ["AllBlocksCleared"],
        ["SomethingNew", 1],
    ]
    payload = msgpack.packb([1.0, events])
    batch = decode_batch(payload)
    assert [type(e).__name__ for e in batch.events] == ["BlockStored", "BlockRemoved", "AllBlocksCleared"]
    assert batch.unknown == 1 and batch.data_parallel_rank is None
    with pytest.raises(KvEventDecodeError):
        decode_batch(b"\xc1not msgpack")
    with pytest.raises(KvEventDecodeError):
        decode_batch(msgpack.packb({"ts": 1}))
    with pytest.raises(KvEventDecodeError):
        decode_message([b"t", b"\x00", b""])
    topic, seq, b2 = decode_message([b"kv", (5).to_bytes(8, "big"), encode_batch(2.0, batch.events)])
    assert topic == b"kv" and seq == 5 and b2.events == batch.events


def test_block_view_tracks_blocks_parents_refcounts_and_epochs() -> None:
    v = BlockView()
    toks = list(range(100, 112))  # 3 blocks of 4
    v.apply(stored([b"a", b"b"], None, toks[:8]))
    v.apply(stored([b"c"], b"b", toks[8:12]))
    assert v.block_size == BS and v.blocks == 3 and v.parent(b"c") == b"b" and v.tokens(b"a") == tuple(toks[:4])
    assert v.cached_prefix_tokens(toks) == 12
    assert v.cached_prefix_tokens([*toks, 1, 2]) == 12  # a partial trailing block is never cached
    assert v.cached_prefix_tokens(toks[:4] + [0] * 8) == 4
    assert v.held_prefix_blocks(toks) == [b"a", b"b", b"c"]
    # int hashes from another request sharing the first block's tokens but not its parent chain
    v.apply(stored([b"a"], None, toks[:4]))  # a duplicate physical block with the same hash
    v.apply(BlockRemoved((b"a",), "GPU"))
    assert v.cached_prefix_tokens(toks) == 12  # one copy left
    v.apply(BlockRemoved((b"b",), "GPU"))
    assert v.cached_prefix_tokens(toks) == 4  # the chain breaks at the evicted block
    v.apply(BlockRemoved((b"zzz",), "GPU"))
    assert v.unknown_removals == 1
    v.apply(stored([b"x"], None, [9, 9, 9, 9], medium="CPU"))  # offload tier: not the engine's cache
    assert b"x" not in v and v.ignored_events == 1
    e0 = v.epoch
    v.apply(AllBlocksCleared())
    assert v.blocks == 0 and v.epoch == e0 + 1 and v.cached_prefix_tokens(toks) == 0
    v.apply(stored([11, 12], None, toks[:8]))
    assert v.cached_prefix_tokens(toks) == 8 and 11 in v


class FakePublisher:
    """vLLM's publisher side: a PUB that connects to the subscriber, and an optional ROUTER replay socket."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.sent: dict[int, bytes] = {}
        self.replay: zmq.asyncio.Socket | None = ctx.socket(zmq.ROUTER)
        self.replay.bind("tcp://127.0.0.1:0")
        self.replay_endpoint = self.replay.getsockopt_string(zmq.LAST_ENDPOINT)

    async def send(
        self, seq: int, events: list[BlockStored | BlockRemoved | AllBlocksCleared], *, drop: bool = False
    ) -> None:
        payload = encode_batch(time.time(), events)
        self.sent[seq] = payload
        if not drop:
            await self.pub.send_multipart([b"kv-events", seq.to_bytes(8, "big"), payload])

    async def serve_one_replay(self) -> None:
        assert self.replay is not None
        client, _, start = await self.replay.recv_multipart()
        for seq in sorted(self.sent):
            if seq >= int.from_bytes(start, "big"):
                await self.replay.send_multipart([client, b"", b"kv-events", seq.to_bytes(8, "big"), self.sent[seq]])
        await self.replay.send_multipart([client, b"", b"", (-1).to_bytes(8, "big", signed=True), b""])

    def close(self) -> None:
        self.pub.close(linger=0)
        if self.replay is not None:
            self.replay.close(linger=0)


async def _connected(sub: KvEventSubscriber, pub: FakePublisher) -> None:
    """PUB/SUB joins asynchronously: send AllBlocksCleared probes at seq 0 until one arrives."""
    deadline = time.monotonic() + 5
    while sub.stats.messages == 0:
        assert time.monotonic() < deadline, "subscriber never connected"
        await pub.send(0, [])
        await asyncio.sleep(0.02)


async def test_subscriber_applies_batches_fills_gaps_by_replay_and_resets_on_restart() -> None:
    ctx = zmq.asyncio.Context()
    pub = FakePublisher(ctx)
    sub = KvEventSubscriber(topic="kv-events", replay_endpoint=pub.replay_endpoint)
    await sub.start()
    pub.pub.connect(sub.endpoint)  # vLLM's publisher connects to a non-wildcard endpoint
    try:
        await _connected(sub, pub)
        toks = list(range(12))
        await pub.send(1, [stored([1], None, toks[:4])])
        await until(lambda: sub.stats.last_seq == 1)
        assert sub.view.cached_prefix_tokens(toks) == 4
        # seq 2 is lost on the wire; seq 3 arrives: the subscriber asks for a replay from 2
        await pub.send(2, [stored([2], 1, toks[4:8])], drop=True)
        server = asyncio.create_task(pub.serve_one_replay())
        await pub.send(3, [stored([3], 2, toks[8:12])])
        await until(lambda: sub.stats.last_seq == 3)
        await server
        assert sub.stats.gaps == 1 and sub.stats.replayed == 1 and sub.stats.missed == 0
        assert sub.view.cached_prefix_tokens(toks) == 12
        # a gap nobody can fill (replay socket gone): the view is emptied, its epoch bumped
        assert pub.replay is not None
        pub.replay.close(linger=0)
        pub.replay = None
        sub.replay_timeout_s = 0.3
        epoch = sub.view.epoch
        await pub.send(4, [], drop=True)
        await pub.send(5, [stored([1], None, toks[:4])])
        await until(lambda: sub.stats.last_seq == 5)
        assert sub.stats.missed == 1 and sub.view.epoch == epoch + 1 and sub.view.cached_prefix_tokens(toks) == 4
        # a restarted publisher counts from 0 again: its cache is empty
        epoch = sub.view.epoch
        await pub.send(0, [stored([7], None, toks[:4])])
        await until(lambda: sub.stats.last_seq == 0)
        assert sub.stats.restarts == 1 and sub.view.epoch == epoch + 1 and sub.view.hashes() == frozenset({7})
        # garbage does not kill the subscriber
        await pub.pub.send_multipart([b"kv-events", b"\x00" * 8, b"\xc1"])
        await pub.send(1, [AllBlocksCleared()])
        await until(lambda: sub.stats.last_seq == 1)
        assert sub.stats.decode_errors == 1 and sub.view.blocks == 0
    finally:
        pub.close()
        await sub.stop()
        ctx.term()
