"""Warm-up never stalls live requests for long: a warm prompt is prefilled in short pieces (each a cached prefix of
the next), only while the engine has nothing waiting, and at a later priority where the engine schedules by one."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from brunoise_api.v1 import inference_pb2, runtime_pb2
from runtime.engines.base import EngineChunk, EngineProxy, EngineRequest, SamplingParams
from runtime.engines.sim import BLOCK_TOKENS, SimConfig, SimEngine
from runtime.warm import WARM_PIECE_BYTES, WARM_PRIORITY, Warmer, WarmMetrics, warm_pieces
from sharder.load import EngineLoad
from sharder.prefix import TEXT_BYTES_PER_TOKEN, render_chat

HISTORY = "".join(f"turn {i}: the user asked about warm-up and the assistant answered at length. " for i in range(300))


def _text(piece: tuple[str | None, tuple[tuple[str, str], ...] | None]) -> str:
    prompt, msgs = piece
    return prompt if prompt is not None else render_chat({"role": r, "content": c} for r, c in msgs or ())


def _common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_pieces_of_a_prompt_are_growing_prefixes_ending_with_the_whole() -> None:
    pieces = warm_pieces(HISTORY, None, 2048)
    texts = [_text(p) for p in pieces]
    assert texts[-1] == HISTORY
    assert len(pieces) == -(-len(HISTORY) // 2048)
    assert all(HISTORY.startswith(t) for t in texts)
    assert all(0 < len(b) - len(a) <= 2048 for a, b in itertools.pairwise(texts))
    assert warm_pieces("short", None, 2048) == [("short", None)]


def test_pieces_of_a_chat_share_the_whole_chats_rendered_head_and_add_little_each() -> None:
    msgs = (("system", "You are a careful assistant. " * 40), ("user", HISTORY[:5000]), ("assistant", HISTORY[:3000]))
    pieces = warm_pieces(None, msgs, 2048)
    full = render_chat({"role": r, "content": c} for r, c in msgs)
    texts = [_text(p) for p in pieces]
    assert pieces[-1] == (None, msgs)
    assert len(pieces) > 3
    # each piece's rendered text is the whole chat's up to its cut (then the reply opener), and each cut moves on
    # by at most one piece of text (plus the role markers of the messages it enters)
    shared = [_common(t, full) for t in texts]
    assert shared[-1] == len(full)
    assert all(b > a for a, b in itertools.pairwise(shared))
    assert all(b - a <= 2048 + 2 * 16 for a, b in itertools.pairwise(shared))


class _Counting(EngineProxy):
    """The engine with each request's uncached prompt tokens (what its prefill computes) and priority noted."""

    def __init__(self, inner: SimEngine) -> None:
        super().__init__(inner)
        self.computed: list[int] = []
        self.priorities: list[int] = []

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:  # type: ignore[override]
        self.priorities.append(request.priority)
        async for c in self.inner.generate(request):
            if c.finish_reason is not None:
                self.computed.append(c.prompt_tokens - c.cached_tokens)
            yield c


async def test_a_long_warm_prompt_is_prefilled_in_short_steps_and_ends_fully_cached() -> None:
    engine = SimEngine(SimConfig(max_model_len=8192, time_scale=20.0))
    await engine.start()
    counting = _Counting(engine)
    warmer = Warmer(counting, done=lambda s: None, metrics=WarmMetrics(), priority=WARM_PRIORITY)
    try:
        hp = runtime_pb2.HotPrompt(slice_key=1, prompt=HISTORY[:16000])  # ~4000 tokens: 250 ms in one prefill
        chat = runtime_pb2.HotPrompt(slice_key=2)
        chat.messages.CopyFrom(inference_pb2.ChatMessages(messages=[
            inference_pb2.ChatMessage(role="system", content="Be brief. " * 100),
            inference_pb2.ChatMessage(role="user", content=HISTORY[:9000]),
        ]))  # fmt: skip
        assert await warmer._prefill([hp, chat]) == 2
        piece_tokens = WARM_PIECE_BYTES // TEXT_BYTES_PER_TOKEN
        # no warm request computed more than one piece (plus the partial block the previous piece ended on)
        assert len(counting.computed) > 8
        assert max(counting.computed) <= piece_tokens + 2 * BLOCK_TOKENS
        assert sum(counting.computed) >= (16000 + 9000) // TEXT_BYTES_PER_TOKEN  # yet every token was computed
        assert set(counting.priorities) == {WARM_PRIORITY}
        # the whole prompt is cached now: its next turn computes only the new text
        probe = EngineRequest("probe", prompt=HISTORY[:16000] + " and one more", sampling=SamplingParams(max_tokens=1))
        async for c in engine.generate(probe):
            last = c
        assert last.cached_tokens >= 16000 // TEXT_BYTES_PER_TOKEN - BLOCK_TOKENS
    finally:
        await engine.stop()


class _Busy(EngineProxy):
    """The engine reporting a waiting request until ``idle`` is set."""

    def __init__(self, inner: SimEngine) -> None:
        super().__init__(inner)
        self.idle = asyncio.Event()
        self.sent_while_busy = 0
        self.sent = asyncio.Event()

    def load(self) -> EngineLoad:
        load = self.inner.load()
        return load if self.idle.is_set() else EngineLoad(running=load.running, waiting=1, kv_usage=load.kv_usage)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:  # type: ignore[override]
        if not self.idle.is_set():
            self.sent_while_busy += 1
        self.sent.set()
        async for c in self.inner.generate(request):
            yield c


async def test_the_warmer_sends_nothing_while_live_requests_wait() -> None:
    engine = SimEngine(SimConfig(time_scale=20.0))
    await engine.start()
    busy = _Busy(engine)
    warmer = Warmer(busy, done=lambda s: None, metrics=WarmMetrics())
    try:
        task = asyncio.create_task(warmer._prefill([runtime_pb2.HotPrompt(slice_key=1, prompt=HISTORY[:4000])]))
        # the warmer polls every few ms: many polls pass with the engine busy and nothing is sent
        await asyncio.wait({task}, timeout=0.2)
        assert not task.done() and not busy.sent.is_set()
        busy.idle.set()
        assert await asyncio.wait_for(task, 10) == 1
        assert busy.sent.is_set() and busy.sent_while_busy == 0
    finally:
        await engine.stop()


async def test_sim_engine_serves_waiting_requests_by_priority_then_arrival() -> None:
    engine = SimEngine(SimConfig(time_scale=20.0, max_num_seqs=1))  # one at a time: the queue order is the order
    await engine.start()
    order: list[str] = []

    async def run(rid: str, priority: int) -> None:
        req = EngineRequest(rid, prompt=f"request {rid} " * 20, sampling=SamplingParams(max_tokens=2), priority=priority)
        async for c in engine.generate(req):
            if c.finish_reason is not None:
                order.append(rid)

    try:
        arrivals = (("live-0", 0), ("warm-a", 1), ("live-1", 0), ("warm-b", 1), ("live-2", 0))
        await asyncio.wait_for(asyncio.gather(*(run(rid, p) for rid, p in arrivals)), 20)
        assert order == ["live-0", "live-1", "live-2", "warm-a", "warm-b"]
    finally:
        await engine.stop()
