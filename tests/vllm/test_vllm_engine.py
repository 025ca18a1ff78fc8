"""The vLLM adapter against a real vLLM on CPU: streaming, errors, load, KV events, prefix-hit prediction, restart."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest

from runtime.engines.base import EngineChunk, EngineError, EngineRequest, EngineUnavailable, SamplingParams
from runtime.engines.vllm import VllmEngine
from sharder.prefix import prefix_hashes, render_chat
from sharder.promtext import sum_by_name
from tests.waiting import until

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(600)]

WORDS = ("the", "session", "user", "assistant", "system", "of", "and", "you", "that", "is", "to", "in", "a")


def unique_text(seed: int, n_words: int) -> str:
    """Text no other test sent (so its blocks are cold), from the tokenizer's own vocabulary."""
    rng = random.Random(seed * 7919 + os.getpid())
    return f"[{seed}:{os.getpid()}] " + " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


async def collect(engine: VllmEngine, request: EngineRequest) -> list[EngineChunk]:
    return [c async for c in engine.generate(request)]


async def counters(engine: VllmEngine) -> tuple[float, float]:
    values = sum_by_name(await engine.metrics_text())
    return values.get("vllm:prefix_cache_queries_total", 0.0), values.get("vllm:prefix_cache_hits_total", 0.0)


async def test_streams_completions_and_chat(engine: VllmEngine) -> None:
    prompt = unique_text(1, 40)
    chunks = await collect(
        engine, EngineRequest("s1", prompt=prompt, sampling=SamplingParams(max_tokens=8, ignore_eos=True))
    )
    assert len(chunks) >= 2, chunks
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    tokens = await engine.tokenize(prompt)
    assert last.finish_reason == "length" and last.completion_tokens == 8 and last.prompt_tokens == len(tokens)
    assert "".join(c.text for c in chunks)

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": unique_text(2, 20)}]
    chat = await collect(
        engine, EngineRequest("s2", messages=messages, sampling=SamplingParams(max_tokens=4, ignore_eos=True))
    )
    assert chat[-1].finish_reason == "length" and chat[-1].completion_tokens == 4
    # the model's chat template renders exactly like sharder.prefix.render_chat
    assert chat[-1].prompt_tokens == len(await engine.tokenize_messages(messages))
    assert chat[-1].prompt_tokens == len(await engine.tokenize(render_chat(messages)))


async def test_kv_transfer_params_go_in_a_whole_response(engine: VllmEngine) -> None:
    """A warm-up's request carrying vLLM's ``kv_transfer_params`` goes non-streamed (vLLM answers a connector's
    params only there) and comes back as one final chunk; this CPU server has no connector, so it answers none."""
    assert not engine.kv_transfer  # no --kv-transfer-config on this server
    engine.kv_transfer = True  # as an operator who set kv_transfer for an attached server would
    try:
        prompt = unique_text(40, 30)
        req = EngineRequest("kv-hold", prompt=prompt, sampling=SamplingParams(max_tokens=3, ignore_eos=True),
                            kv_transfer_params={"do_remote_decode": True, "do_remote_prefill": False})  # fmt: skip
        (only,) = await collect(engine, req)
        assert only.finish_reason == "length" and only.completion_tokens == 3 and only.text
        assert only.prompt_tokens > 0 and only.kv_transfer_params is None
    finally:
        engine.kv_transfer = False


async def test_maps_vllm_errors(engine: VllmEngine) -> None:
    with pytest.raises(EngineError) as ei:
        await collect(engine, EngineRequest("e1", prompt="hello", sampling=SamplingParams(max_tokens=100_000)))
    assert ei.value.status == 400 and ei.value.param == "max_tokens" and "max_tokens" in ei.value.message
    with pytest.raises(EngineError) as ei:
        await collect(engine, EngineRequest("e2", prompt="hello", sampling=SamplingParams(temperature=-1.0)))
    assert ei.value.status == 400 and "temperature" in ei.value.message
    with pytest.raises(EngineError) as ei:
        await collect(engine, EngineRequest("e3"))
    assert ei.value.status == 400


async def test_load_moves_with_in_flight_requests(engine: VllmEngine) -> None:
    await until(lambda: engine.load().running == 0 and engine.load().waiting == 0, 10, "idle gauges")
    base = engine.load()
    assert base.running == 0 and base.waiting == 0 and base.tokens_in_flight == 0
    n = 3
    # long enough that vLLM's gauges, scraped every 0.25 s, see them decode (64 tokens on the tiny model could end
    # between two scrapes)
    tokens = 1024
    started = asyncio.Event()
    seen_first = 0

    async def one(i: int) -> list[EngineChunk]:
        nonlocal seen_first
        out: list[EngineChunk] = []
        async for c in engine.generate(
            EngineRequest(
                f"l{i}", prompt=unique_text(10 + i, 30), sampling=SamplingParams(max_tokens=tokens, ignore_eos=True)
            )
        ):
            out.append(c)
            if len(out) == 1:
                seen_first += 1
                if seen_first == n:
                    started.set()
        return out

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0)  # let the requests be forwarded
    await until(lambda: engine.in_flight == n, 10, "requests in flight")
    now = engine.load()
    assert now.running + now.waiting >= n, now  # immediately, before any scrape
    assert now.tokens_in_flight >= n * tokens, now
    await asyncio.wait_for(started.wait(), 60)
    # vLLM's own gauge catches up while they decode
    await until(lambda: engine.load().running >= 1, 30, "vllm:num_requests_running >= 1")
    results = await asyncio.gather(*tasks)
    assert all(r[-1].completion_tokens == tokens for r in results)
    after = engine.load()
    assert after.tokens_in_flight == 0 and engine.in_flight == 0
    assert after.load > base.load
    await until(lambda: engine.load().running == 0 and engine.load().waiting == 0, 10, "idle gauges")


async def test_kv_events_fill_the_block_view(engine: VllmEngine) -> None:
    assert engine.subscriber is not None
    prompt = unique_text(20, 120)
    tokens = await engine.tokenize(prompt)
    bs = 32
    full = len(tokens) // bs
    assert full >= 3, len(tokens)
    msgs_before = engine.subscriber.stats.messages
    await collect(engine, EngineRequest("k1", prompt=prompt, sampling=SamplingParams(max_tokens=2, ignore_eos=True)))
    await until(lambda: len(engine.view.held_prefix_blocks(tokens)) >= full, 10, "BlockStored events for the prompt")
    assert engine.subscriber.stats.messages > msgs_before
    assert engine.subscriber.stats.decode_errors == 0 and engine.subscriber.stats.unknown_events == 0
    assert engine.view.block_size == bs
    held = engine.view.held_prefix_blocks(tokens)
    assert len(held) == full
    # parent links chain the blocks, and each block holds the prompt's tokens
    assert engine.view.parent(held[0]) is None
    for i in range(1, full):
        assert engine.view.parent(held[i]) == held[i - 1]
        assert engine.view.tokens(held[i]) == tuple(tokens[i * bs : (i + 1) * bs])
    assert engine.view.cached_prefix_tokens(tokens) == full * bs
    print(f"\nKV events: {engine.subscriber.stats}; view holds {engine.view.blocks} blocks")


async def test_prediction_equals_vllms_prefix_hit_counter(engine: VllmEngine) -> None:
    """For a repeated prefix the adapter's prediction (from real KV events) is exactly vLLM's hit counter delta."""
    shared = unique_text(30, 150)
    first = shared + " first tail of words"
    second = shared + " and now a different second tail of the session"
    toks_second = await engine.tokenize(second)
    assert await engine.predict_cached_tokens(second) == 0  # cold

    q0, h0 = await counters(engine)
    c1 = await collect(
        engine, EngineRequest("p1", prompt=first, sampling=SamplingParams(max_tokens=2, ignore_eos=True))
    )
    q1, h1 = await counters(engine)
    assert q1 - q0 == c1[-1].prompt_tokens and h1 - h0 == c1[-1].cached_tokens == 0

    toks_first = await engine.tokenize(first)
    want = (min(len(toks_first), len(toks_second)) // 32) * 32
    await until(lambda: engine.view.cached_prefix_tokens(toks_first) >= (len(toks_first) // 32) * 32, 10, "KV events")
    predicted = await engine.predict_cached_tokens(second)

    c2 = await collect(
        engine, EngineRequest("p2", prompt=second, sampling=SamplingParams(max_tokens=2, ignore_eos=True))
    )
    q2, h2 = await counters(engine)
    hits = h2 - h1
    print(
        f"\nprefix hits: vLLM vllm:prefix_cache_hits_total delta = {hits:.0f} tokens, "
        f"adapter prediction = {predicted} tokens, usage cached_tokens = {c2[-1].cached_tokens}, "
        f"prompt = {len(toks_second)} tokens (queries delta {q2 - q1:.0f})"
    )
    assert predicted > 0 and predicted <= want
    assert hits == predicted
    assert c2[-1].cached_tokens == predicted

    # the same prompt again: everything but the block holding the last token is a hit
    await until(lambda: engine.view.cached_prefix_tokens(toks_second) >= (len(toks_second) // 32) * 32, 10, "events")
    again = await engine.predict_cached_tokens(second)
    c3 = await collect(
        engine, EngineRequest("p3", prompt=second, sampling=SamplingParams(max_tokens=2, ignore_eos=True))
    )
    _, h3 = await counters(engine)
    print(f"repeat: vLLM hits delta = {h3 - h2:.0f}, prediction = {again}")
    assert h3 - h2 == again == c3[-1].cached_tokens == ((len(toks_second) - 1) // 32) * 32


async def test_cache_view_reports_the_prompt_chunks_the_engine_holds(engine: VllmEngine) -> None:
    prompt = unique_text(40, 100)
    chunks = prefix_hashes(prompt)
    assert len(chunks) >= 4
    tokens = await engine.tokenize(prompt)
    await collect(engine, EngineRequest("c1", prompt=prompt, sampling=SamplingParams(max_tokens=1)))
    full = (len(tokens) // 32) * 32
    await until(lambda: engine.view.cached_prefix_tokens(tokens) >= full, 10, "KV events")
    # the adapter maps chunks to token positions in the background after forwarding
    await until(lambda: bool(set(chunks) & engine.cache_view().prefix_hashes), 10, "chunk hashes in the cache view")
    view = engine.cache_view()
    held = [h in view.prefix_hashes for h in chunks]
    # a leading run of the prompt's chunks is held; chunks past the last full block are not
    n = held.index(False) if False in held else len(held)
    assert n >= 1 and not any(held[n:]), held
    assert view.chunk_bytes == 64 and view.blocks_used >= full // 32 and view.blocks_total > 0
    assert view.block_tokens == 32, "the block size vLLM runs with (the adapter starts it with 32)"
    text = await engine.metrics_text()
    assert "vllm:prefix_cache_hits" in text and "vllm:num_requests_running" in text


async def test_engine_death_is_detected_and_restarted(engine: VllmEngine) -> None:
    """SIGKILL the vLLM child: not ready, requests get 503, restarted with backoff, serves again."""
    pid = engine.pid
    assert pid is not None and engine.ready
    restarts, epoch, base_url = engine.stats.restarts, engine.view.epoch, engine.base_url
    os.killpg(pid, signal.SIGKILL)
    await until(lambda: not engine.ready, 10, "ready=False after SIGKILL")
    with pytest.raises(EngineUnavailable) as ei:
        await collect(engine, EngineRequest("d1", prompt="hello"))
    assert ei.value.status == 503
    assert engine.stats.deaths >= 1
    t0 = time.monotonic()
    await until(lambda: engine.ready, 240, "the restarted vLLM to be ready")
    print(f"\nvLLM restarted in {time.monotonic() - t0:.1f}s (new pid {engine.pid})")
    assert engine.stats.restarts == restarts + 1 and engine.pid != pid and engine.base_url == base_url
    assert engine.view.epoch > epoch  # the new process starts with an empty cache
    chunks = await collect(
        engine, EngineRequest("d2", prompt=unique_text(50, 30), sampling=SamplingParams(max_tokens=3))
    )
    assert chunks[-1].finish_reason is not None and chunks[-1].prompt_tokens > 0
