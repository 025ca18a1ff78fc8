"""Unit tests of the simulated engine: prefix hits, LRU eviction, KV-pressure queueing, preemption, determinism, time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from runtime.engines.base import EngineChunk, EngineError, EngineRequest, EngineUnavailable, SamplingParams
from runtime.engines.sim import (
    BLOCK_TOKENS,
    SimConfig,
    SimEngine,
    detokenize,
    tokenize_text,
)
from runtime.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, decode_batch, encode_batch
from sharder.prefix import CHUNK_BYTES, prefix_hashes, render_chat
from tests.waiting import until


def text_blocks(tag: str, n_blocks: int) -> str:
    """``n_blocks`` chunks (64 bytes) of ASCII text, distinct per tag (so 16 x n_blocks tokens, all blocks full)."""
    unit = (tag * CHUNK_BYTES)[:CHUNK_BYTES]
    return "".join(f"{i:04d}" + unit[4:] for i in range(n_blocks))


async def run(engine: SimEngine, prompt: str, max_tokens: int = 1, rid: str = "r", **sp: object) -> list[EngineChunk]:
    req = EngineRequest(rid, prompt=prompt, sampling=SamplingParams(max_tokens=max_tokens, **sp))  # type: ignore[arg-type]
    return [c async for c in engine.generate(req)]


@pytest.fixture
async def engine() -> AsyncIterator[SimEngine]:
    e = SimEngine(SimConfig(time_scale=1000))
    await e.start()
    yield e
    await e.stop()


async def small_engine(**kw: object) -> SimEngine:
    cfg: dict[str, object] = {"time_scale": 1000, "max_model_len": 256, "kv_blocks": 32}
    cfg.update(kw)
    e = SimEngine(SimConfig(**cfg))  # type: ignore[arg-type]
    await e.start()
    return e


def test_tokenizer_is_four_bytes_per_token() -> None:
    assert tokenize_text("abcd") == [int.from_bytes(b"abcd", "big")]
    assert tokenize_text("abcde") == [int.from_bytes(b"abcd", "big"), int.from_bytes(b"e\0\0\0", "big")]
    assert detokenize(tokenize_text("héllo wörld")) == "héllo wörld"
    assert len(tokenize_text("x" * CHUNK_BYTES)) == BLOCK_TOKENS  # a KV block is one sharder.prefix chunk


async def test_repeated_prefix_hits_and_counters(engine: SimEngine) -> None:
    shared = text_blocks("a", 10)  # 160 tokens in 10 full blocks
    first = await run(engine, shared + "first question")
    assert first[-1].cached_tokens == 0
    n1 = first[-1].prompt_tokens
    assert n1 == len(tokenize_text(shared + "first question"))
    assert (engine.prefix_queries, engine.prefix_hits) == (n1, 0)

    second = await run(engine, shared + "second question, longer")
    n2 = second[-1].prompt_tokens
    assert second[-1].cached_tokens == 160
    assert (engine.prefix_queries, engine.prefix_hits) == (n1 + n2, 160)

    # a prompt that is exactly the cached blocks: vLLM recomputes the last block (one token must be computed)
    third = await run(engine, shared)
    assert third[-1].cached_tokens == 160 - BLOCK_TOKENS
    assert engine.prefix_hits == 160 + 144

    # the counters are exposed under vLLM's names
    text = await engine.metrics_text()
    assert f'vllm:prefix_cache_queries_total{{model_name="{engine.model}"}} {float(n1 + n2 + 160)}' in text
    assert f'vllm:prefix_cache_hits_total{{model_name="{engine.model}"}} {float(304)}' in text
    assert engine.load().prefix_hit_rate == pytest.approx(304 / (n1 + n2 + 160))


async def test_block_hashes_are_sharder_prefix_hashes(engine: SimEngine) -> None:
    messages = [{"role": "system", "content": "s" * 300}, {"role": "user", "content": "what is the weather?"}]
    req = EngineRequest("chat", messages=messages, sampling=SamplingParams(max_tokens=2))
    _ = [c async for c in engine.generate(req)]
    view = engine.cache_view()
    expected = prefix_hashes(render_chat(messages))
    assert expected and set(expected) <= view.prefix_hashes
    assert view.chunk_bytes == 64 and view.blocks_total == engine.config.kv_blocks and view.block_tokens == 16
    # the KV events tell the same story (a chain rooted at None)
    stored = [e for e in engine.kv_events if isinstance(e, BlockStored)]
    assert stored[0].parent_block_hash is None and list(stored[0].block_hashes[: len(expected)]) == expected


async def test_lru_eviction_of_free_blocks() -> None:
    e = await small_engine(kv_blocks=32)
    try:
        a, b, c, d = (text_blocks(t, 10) for t in "abcd")  # 10 blocks each, 30 of 32 fit at once
        for p in (a, b, c):
            await run(e, p)
        held = e.cache_view().prefix_hashes
        for p in (a, b, c):
            assert set(prefix_hashes(p)) <= held
        # d needs 10 blocks: the 2 never-used blocks, then the least recently freed: a's, tail blocks first
        await run(e, d)
        held = e.cache_view().prefix_hashes
        ha = prefix_hashes(a)
        assert set(ha[:2]) <= held and not set(ha[2:]) & held
        assert set(prefix_hashes(b)) | set(prefix_hashes(c)) | set(prefix_hashes(d)) <= held
        removed = [h for ev in e.kv_events if isinstance(ev, BlockRemoved) for h in ev.block_hashes]
        assert removed == list(reversed(ha[2:]))
        # a hits only its two surviving leading blocks
        again = await run(e, a)
        assert again[-1].cached_tokens == 2 * BLOCK_TOKENS
    finally:
        await e.stop()


async def test_recently_used_blocks_survive() -> None:
    e = await small_engine(kv_blocks=32)
    try:
        a, b, c = (text_blocks(t, 8) for t in "abc")
        await run(e, a)
        await run(e, b)
        await run(e, a + "!")  # touches a's blocks: now b's are the least recently used
        await run(e, c)
        await run(e, text_blocks("d", 8))
        held = e.cache_view().prefix_hashes
        assert set(prefix_hashes(a)) <= held
        assert not set(prefix_hashes(b)) <= held
    finally:
        await e.stop()


async def test_blocks_in_use_are_never_evicted_and_requests_queue_for_blocks() -> None:
    # 32 blocks = 512 tokens; each request needs 13 blocks for its 200-token prompt and 14 by its end, so two run
    # at once and the rest wait for blocks
    e = await small_engine(kv_blocks=32, time_scale=200)
    try:
        prompts = [f"{i:03d}" + "p" * 797 for i in range(6)]
        tasks = [asyncio.create_task(run(e, p, max_tokens=20, rid=f"r{i}")) for i, p in enumerate(prompts)]
        await until(lambda: e.num_running > 0, 5, "a request to start", interval_s=0.001)  # no event to wait on
        load = e.load()
        assert load.running == 2 and load.waiting == 4
        assert load.kv_usage >= 26 / 32
        assert load.tokens_in_flight >= 6 * 200
        results = await asyncio.gather(*tasks)
        assert all(r[-1].finish_reason == "length" and r[-1].completion_tokens == 20 for r in results)
        assert e.num_running == e.num_waiting == 0 and e.kv.num_used == 0
        assert e.preemptions == 0
    finally:
        await e.stop()


async def test_preemption_recomputes_and_completes() -> None:
    # 16 blocks = 256 tokens: two 100-token prompts fit, but not both grown to 200 tokens
    e = await small_engine(kv_blocks=16, time_scale=200)
    try:
        p1, p2 = "1" * 400, "2" * 400
        r1, r2 = await asyncio.gather(run(e, p1, max_tokens=100, rid="a"), run(e, p2, max_tokens=100, rid="b"))
        assert e.preemptions > 0
        for r in (r1, r2):
            assert r[-1].finish_reason == "length" and r[-1].completion_tokens == 100
            assert len(tokenize_text("".join(c.text for c in r))) == 100
        assert "vllm:num_preemptions_total" in await e.metrics_text()
        # the same request alone (no preemption) gives the same text: recompute does not change the output
        alone = await run(e, p1, max_tokens=100, rid="c")
        assert "".join(c.text for c in alone) == "".join(c.text for c in r1)
    finally:
        await e.stop()


async def test_deterministic_output() -> None:
    e1, e2 = await small_engine(), await small_engine()
    try:

        async def text(e: SimEngine, prompt: str, rid: str, **sp: object) -> str:
            return "".join(c.text for c in await run(e, prompt, max_tokens=12, rid=rid, **sp))

        greedy = await text(e1, "hello", "x")
        assert greedy == await text(e2, "hello", "y")  # greedy: the prompt decides
        assert greedy != await text(e1, "hello!", "x")
        seeded = await text(e1, "hello", "x", temperature=0.8, seed=7)
        assert seeded == await text(e2, "hello", "other-id", temperature=0.8, seed=7)
        assert seeded != await text(e1, "hello", "x", temperature=0.8, seed=8)
        # unseeded sampling: the request id decides
        assert await text(e1, "hi", "id1", temperature=1.0) == await text(e2, "hi", "id1", temperature=1.0)
        assert len(tokenize_text(greedy)) == 12
    finally:
        await e1.stop()
        await e2.stop()


async def test_stop_strings_and_eos() -> None:
    e = await small_engine(eos_probability=0.5)
    try:
        out = await run(e, "q", max_tokens=50, rid="eos")
        assert out[-1].finish_reason == "stop" and out[-1].completion_tokens < 50
        out = await run(e, "q", max_tokens=50, rid="eos", ignore_eos=True)
        assert out[-1].finish_reason == "length" and out[-1].completion_tokens == 50
        full = "".join(c.text for c in out)
        word = full.split()[5] + " "
        cut = full.index(word)
        stopped = await run(e, "q", max_tokens=50, rid="eos", ignore_eos=True, stop=(word,))
        assert stopped[-1].finish_reason == "stop"
        assert "".join(c.text for c in stopped) == full[:cut]
    finally:
        await e.stop()


async def test_time_scale_divides_simulated_time() -> None:
    # one request: a 3200-token prefill (6 ms + 200 ms) and 9 decode steps (~6.2 ms each): ~0.26 s simulated
    prompt = "z" * (3200 * 4 - 1)
    expected = 0.006 + 3200 / 16_000 + 9 * (0.006 + 60e-6 + 3205 * 40e-9)
    walls: dict[float, float] = {}
    for scale in (1.0, 25.0):
        e = await small_engine(time_scale=scale, max_model_len=4096, kv_blocks=512)
        try:
            t = time.monotonic()
            await run(e, prompt, max_tokens=10)
            walls[scale] = time.monotonic() - t
            text = await e.metrics_text()
            line = next(x for x in text.splitlines() if x.startswith("vllm:e2e_request_latency_seconds_sum"))
            simulated = float(line.split()[-1])
            assert expected * 0.95 <= simulated <= expected * 1.6, (scale, simulated, expected)
        finally:
            await e.stop()
    assert walls[1.0] >= expected * 0.95
    assert walls[25.0] < expected / 3


async def test_max_model_len_and_bad_input(engine: SimEngine) -> None:
    too_long = "x" * (engine.max_model_len * 4)
    with pytest.raises(EngineError, match="maximum context length") as ei:
        await run(engine, too_long)
    assert ei.value.status == 400
    with pytest.raises(EngineError, match="maximum context length"):
        await run(engine, "x" * 400, max_tokens=engine.max_model_len)
    with pytest.raises(EngineError, match="max_tokens"):
        await run(engine, "x", max_tokens=0)
    with pytest.raises(EngineError, match="empty"):
        await run(engine, "")
    with pytest.raises(EngineError, match="exactly one"):
        _ = [c async for c in engine.generate(EngineRequest("both", prompt="a", messages=[{"role": "user"}]))]
    # the engine still serves
    assert (await run(engine, "fine"))[-1].finish_reason == "length"
    assert engine.num_waiting == engine.num_running == 0


async def test_abort_frees_blocks() -> None:
    e = await small_engine(time_scale=50)
    try:
        gen = e.generate(EngineRequest("long", prompt="y" * 800, sampling=SamplingParams(max_tokens=50)))
        first = await anext(gen)
        assert first.finish_reason is None and e.kv.num_used > 0
        await gen.aclose()
        assert e.kv.num_used == 0 and e.num_running == 0
        assert 'finished_reason="abort"' in await e.metrics_text()
    finally:
        await e.stop()


async def test_not_ready_and_stop() -> None:
    e = SimEngine(SimConfig(time_scale=1000))
    with pytest.raises(EngineUnavailable):
        await run(e, "x")
    await e.start()
    assert e.ready
    await e.stop()
    assert not e.ready


async def test_reset_and_kv_event_wire_format() -> None:
    import msgpack

    e = await small_engine()
    try:
        await run(e, text_blocks("k", 3))
        assert e.reset_prefix_cache()
        assert e.cache_view().prefix_hashes == frozenset() and e.cache_view().epoch == 1
        events = list(e.kv_events)
        assert isinstance(events[0], BlockStored) and isinstance(events[-1], AllBlocksCleared)
        payload = encode_batch(1.5, events, array_like=True)
        ts, decoded = msgpack.unpackb(payload)
        assert ts == 1.5 and decoded[0][0] == "BlockStored" and decoded[-1] == ["AllBlocksCleared"]
        assert decoded[0][1] == prefix_hashes(text_blocks("k", 3))
        assert decoded[0][5:] == [None, "GPU"]  # lora_id, medium; later defaults left off as msgspec does
        assert decode_batch(payload).events == tuple(events)  # what the sim publishes is what kv_events reads
    finally:
        await e.stop()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="kv_blocks"):
        SimConfig(kv_blocks=10, max_model_len=8192).validate()
    with pytest.raises(ValueError, match="time_scale"):
        SimConfig(time_scale=0).validate()
    assert SimConfig().kv_blocks == 27_648


async def test_kv_events_over_zmq_rebuild_the_cache_view() -> None:
    """The sim publishes vLLM's wire format; runtime.kv_events decodes it into the same set of block hashes."""
    zmq = pytest.importorskip("zmq")
    kv_events = pytest.importorskip("runtime.kv_events")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    e = await small_engine(kv_blocks=32, kv_events_endpoint=f"tcp://127.0.0.1:{port}", kv_events_topic="kv")
    try:
        # PUB/SUB drops what is sent before the subscription arrives: publish until one message gets through
        deadline = time.monotonic() + 10
        for i in range(1000):
            await run(e, text_blocks(f"w{i}", 1))
            if sub.poll(50):
                break
            assert time.monotonic() < deadline, "no KV event arrived"
        while sub.poll(50):
            sub.recv_multipart()
        assert e.reset_prefix_cache()  # AllBlocksCleared: a known starting point for the subscriber's view
        for t in "abcdab":  # 10 blocks each: evictions happen
            await run(e, text_blocks(t, 10) + t)
        view = kv_events.BlockView()
        last_seq = e._kv_seq - 1
        seq = -1
        while seq < last_seq:
            assert sub.poll(2000), f"missing KV events after seq {seq}"
            topic, seq, batch = kv_events.decode_message(sub.recv_multipart())
            assert topic == b"kv"
            view.apply_batch(batch)
        assert view.hashes() == e.cache_view().prefix_hashes
    finally:
        await e.stop()
        sub.close(linger=0)
        ctx.term()


async def test_each_start_of_an_engine_is_a_new_incarnation_of_its_cache() -> None:
    """``CacheView.incarnation`` (``CacheSummary.incarnation``) tells routers the cache started empty: it is set
    when the engine starts and differs between two starts on one pod (a restarted runtime's engine)."""
    first = SimEngine(SimConfig(time_scale=1000))
    assert first.cache_view().incarnation == 0  # not started: not known
    await first.start()
    try:
        one = first.cache_view().incarnation
    finally:
        await first.stop()
    second = SimEngine(SimConfig(time_scale=1000))
    await second.start()
    try:
        two = second.cache_view().incarnation
    finally:
        await second.stop()
    assert 0 < one < two
