"""The runtime process end to end: OpenAI HTTP surface, metrics, tokenize, load, gRPC, bad input, shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from brunoise_api.v1 import inference_pb2, runtime_pb2, runtime_pb2_grpc
from sharder.launch import ManagedProcess
from sharder.prefix import prefix_hashes, render_chat
from sharder.promtext import metric_value
from tests.runtime.procs import start_runtime

MODEL = "sim-llama-3.1-8b"
pytestmark = pytest.mark.timeout(60)


def http(proc: ManagedProcess) -> str:
    return proc.addresses["http"]


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with session.post(url, data=data, headers=hdrs) as r:
        raw = await r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode(errors="replace")


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(f"{base}/metrics") as r:
        return metric_value(await r.text(), name)


# --- HTTP ------------------------------------------------------------------------------------------------------------


def test_openai_client_completions_and_chat(runtime_proc: ManagedProcess) -> None:
    client = openai.OpenAI(base_url=http(runtime_proc) + "/v1", api_key="unused", max_retries=0)
    shared = "You are a terse assistant. " * 10
    c1 = client.completions.create(model=MODEL, prompt=shared + "first", max_tokens=5, temperature=0)
    assert c1.choices[0].finish_reason == "length" and len(c1.choices[0].text) == 20
    assert c1.usage is not None and c1.usage.completion_tokens == 5
    c2 = client.completions.create(model=MODEL, prompt=shared + "second", max_tokens=5, temperature=0)
    assert c2.usage is not None and c2.usage.prompt_tokens_details is not None
    assert c2.usage.prompt_tokens_details.cached_tokens == (len(shared.encode()) // 64) * 16

    stream = client.completions.create(
        model=MODEL, prompt="stream me", max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) != ""
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=3, seed=1
    )
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.prompt_tokens == -(
        -len(render_chat([{"role": "user", "content": "hello"}]).encode()) // 4
    )

    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=3, seed=1, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == chat.choices[0].message.content  # same seed, same text
    assert [m.id for m in client.models.list().data] == [MODEL]


async def test_sse_format_and_usage(runtime_proc: ManagedProcess) -> None:
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    async with aiohttp.ClientSession() as s, s.post(f"{http(runtime_proc)}/v1/chat/completions", json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["x-brunoise-pod-id"] == "pod-test"
        raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    objs = [json.loads(e[6:]) for e in events[:-1]]
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 3
    assert objs[-2]["choices"][0]["finish_reason"] == "length"


async def test_health_models_tokenize(runtime_proc: ManagedProcess) -> None:
    base = http(runtime_proc)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/health") as r:
            assert r.status == 200
        async with s.get(f"{base}/v1/models") as r:
            models = await r.json()
        assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 2048
        status, tok = await post(s, f"{base}/tokenize", {"prompt": "abcdefg"})
        assert status == 200 and tok["count"] == 2 and tok["max_model_len"] == 2048
        assert tok["tokens"][0] == int.from_bytes(b"abcd", "big")
        msgs = [{"role": "user", "content": "hello there"}]
        status, tok = await post(s, f"{base}/tokenize", {"model": MODEL, "messages": msgs})
        assert status == 200 and tok["count"] == -(-len(render_chat(msgs).encode()) // 4)


async def test_metrics_names_and_counters_move(runtime_proc: ManagedProcess) -> None:
    base = http(runtime_proc)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/metrics") as r:
            text = await r.text()
        for name in (
            "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:time_to_first_token_seconds_bucket",
            "vllm:e2e_request_latency_seconds_bucket", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
            "vllm:request_success_total",
        ):  # fmt: skip
            assert f'{name}{{model_name="{MODEL}"' in text or f"{name}{{" in text, name
        before = {
            n: await metric(s, base, n)
            for n in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
                      "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                      "vllm:time_to_first_token_seconds_count")
        }  # fmt: skip
        prompt = "m" * 256 + "tail"  # 4 full blocks
        for _ in range(2):
            status, _body = await post(s, f"{base}/v1/completions", {"prompt": prompt, "max_tokens": 4})
            assert status == 200
        after = {n: await metric(s, base, n) for n in before}
        n_prompt = 65
        assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 2 * n_prompt
        assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 8
        assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == 2
        assert after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"] == 2 * n_prompt
        assert after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"] >= 64
        assert after["vllm:time_to_first_token_seconds_count"] - before["vllm:time_to_first_token_seconds_count"] == 2


async def test_load_moves_with_in_flight_requests(runtime_proc: ManagedProcess) -> None:
    base = http(runtime_proc)
    prompt = "L" * 640 + "load test"
    async with aiohttp.ClientSession() as s:
        body = {"prompt": prompt, "max_tokens": 600, "ignore_eos": True}
        tasks = [asyncio.create_task(post(s, f"{base}/v1/completions", body)) for _ in range(4)]
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(t.done() for t in tasks):
            async with s.get(f"{base}/load") as r:
                load = await r.json()
            if load["engine"]["running"] >= 4:
                seen = load
                break
            await asyncio.sleep(0.01)
        assert seen, "never saw the four requests running"
        assert seen["engine"]["tokens_in_flight"] >= 4 * 160 and seen["engine"]["kv_usage"] > 0
        assert seen["pod_id"] == "pod-test" and seen["ready"] is True
        assert set(prefix_hashes(prompt)) <= set(seen["cache"]["prefix_hashes"])
        assert seen["cache"]["incarnation"] > 0
        for t in tasks:
            status, _ = await t
            assert status == 200
        async with s.get(f"{base}/load?cache=0") as r:
            done = await r.json()
        assert done["engine"]["running"] == 0 and done["engine"]["waiting"] == 0 and "cache" not in done
        assert done["engine"]["load"] > 0  # recent processed-token rate


async def test_slice_key_and_traceparent_headers(runtime_proc: ManagedProcess) -> None:
    base = http(runtime_proc)
    hdrs = {"x-brunoise-slice-key": str(2**64 - 1), "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    async with aiohttp.ClientSession() as s:
        status, body = await post(s, f"{base}/v1/completions", {"prompt": "keyed", "max_tokens": 2}, hdrs)
        assert status == 200, body


# --- bad input -------------------------------------------------------------------------------------------------------

BIG = json.dumps({"prompt": "x" * 70_000}).encode()
BAD_CASES: list[tuple[str, str, bytes | dict[str, Any], dict[str, str], int, str]] = [
    ("empty prompt", "/v1/completions", {"prompt": "", "max_tokens": 2}, {}, 400, "prompt"),
    ("missing prompt", "/v1/completions", {"max_tokens": 2}, {}, 400, "prompt"),
    ("prompt too long", "/v1/completions", {"prompt": "x" * (2048 * 4)}, {}, 400, "maximum context length"),
    ("chat too long", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 9000}]}, {}, 400,
     "maximum context length"),
    ("prompt + max_tokens too long", "/v1/completions", {"prompt": "x" * 4000, "max_tokens": 2000}, {}, 400,
     "maximum context length"),
    ("zero max_tokens", "/v1/completions", {"prompt": "a", "max_tokens": 0}, {}, 400, "max_tokens"),
    ("negative max_tokens", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": -5},
     {}, 400, "max_tokens"),
    ("huge max_tokens", "/v1/completions", {"prompt": "a", "max_tokens": 10**30}, {}, 400, "max_tokens"),
    ("string max_tokens", "/v1/completions", {"prompt": "a", "max_tokens": "ten"}, {}, 400, "max_tokens"),
    ("unknown model", "/v1/completions", {"model": "gpt-17", "prompt": "a"}, {}, 404, "gpt-17"),
    ("unknown model chat", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "a"}]},
     {}, 404, "nope"),
    ("malformed json", "/v1/completions", b'{"prompt": "a",', {}, 400, "JSON"),
    ("json array", "/v1/completions", b"[1, 2]", {}, 400, "object"),
    ("wrong content type", "/v1/completions", b"prompt=a", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "Content-Type"),
    ("non-utf8 body", "/v1/completions", b'{"prompt": "\xff\xfe"}', {}, 400, "UTF-8"),
    ("body too large", "/v1/completions", BIG, {}, 413, "limit"),
    ("empty messages", "/v1/chat/completions", {"messages": []}, {}, 400, "messages"),
    ("bad message", "/v1/chat/completions", {"messages": [{"content": "no role"}]}, {}, 400, "role"),
    ("bad temperature", "/v1/completions", {"prompt": "a", "temperature": -1}, {}, 400, "temperature"),
    ("stream_options without stream", "/v1/completions", {"prompt": "a", "stream_options": {"include_usage": True}},
     {}, 400, "stream"),
    ("n > 1", "/v1/completions", {"prompt": "a", "n": 3}, {}, 400, "n must be 1"),
    ("bad slice key", "/v1/completions", {"prompt": "a"}, {"x-brunoise-slice-key": "-3"}, 400, "x-brunoise-slice-key"),
    ("slice key too big", "/v1/completions", {"prompt": "a"}, {"x-brunoise-slice-key": str(2**64)}, 400, "2^64"),
    ("streaming empty prompt", "/v1/completions", {"prompt": "", "stream": True}, {}, 400, "prompt"),
    ("lone surrogate", "/v1/completions", b'{"prompt": "ab\\ud800cd"}', {}, 400, "surrogate"),
    ("lone surrogate tokenize", "/tokenize", b'{"prompt": "\\ud800"}', {}, 400, "surrogate"),
    ("NaN temperature", "/v1/completions", b'{"prompt": "a", "temperature": NaN}', {}, 400, "temperature"),
    ("tokenize without input", "/tokenize", {"model": MODEL}, {}, 400, "prompt"),
]  # fmt: skip


async def test_bad_input_answers_status_and_process_survives(runtime_proc: ManagedProcess) -> None:
    base = http(runtime_proc)
    async with aiohttp.ClientSession() as s:
        for name, path, body, headers, want, fragment in BAD_CASES:
            status, err = await post(s, base + path, body, headers)
            assert status == want, (name, status, err)
            assert isinstance(err, dict), (name, err)
            assert err["error"]["code"] == want and err["code"] == want and err["object"] == "error", name
            assert fragment.lower() in err["error"]["message"].lower(), (name, err)
            assert isinstance(err["error"]["type"], str)
        async with s.get(f"{base}/no/such/route") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == 404
        assert runtime_proc.alive()
        async with s.get(f"{base}/health") as r:
            assert r.status == 200
        status, ok = await post(s, f"{base}/v1/completions", {"prompt": "still here", "max_tokens": 2})
        assert status == 200 and ok["choices"][0]["finish_reason"] == "length"


# --- gRPC ------------------------------------------------------------------------------------------------------------


async def test_grpc_generate_getload_health_reflection(runtime_proc: ManagedProcess) -> None:
    async with grpc.aio.insecure_channel(runtime_proc.addresses["grpc"]) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "brunoise.v1.Runtime"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING

        stub = runtime_pb2_grpc.RuntimeStub(ch)
        prompt = "G" * 192 + "grpc"
        req = inference_pb2.GenerateRequest(
            model=MODEL, prompt=prompt, routing_key="session-1", request_id="g1",
            sampling=inference_pb2.SamplingParams(max_tokens=5),
        )  # fmt: skip
        chunks = [c async for c in stub.Generate(req, timeout=10, metadata=(("traceparent", "00-ab-cd-01"),))]
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert all(c.request_id == "g1" and c.pod_id == "pod-test" for c in chunks)
        last = chunks[-1]
        assert last.finish_reason == "length" and last.usage.completion_tokens == 5
        assert last.usage.prompt_tokens == 49 and len("".join(c.text for c in chunks)) == 20
        msgs = inference_pb2.ChatMessages(messages=[inference_pb2.ChatMessage(role="user", content="hey")])
        chat = [c async for c in stub.Generate(inference_pb2.GenerateRequest(messages=msgs), timeout=10)]
        assert chat[-1].finish_reason == "length" and chat[-1].usage.completion_tokens == 16

        load = await stub.GetLoad(runtime_pb2.GetLoadRequest(include_cache=True), timeout=5)
        assert load.pod_id == "pod-test" and load.ready and load.unix_ms > 0
        assert load.engine.capacity == 1.0 and load.cache.chunk_bytes == 64
        assert set(prefix_hashes(prompt)) <= set(load.cache.prefix_hashes)
        assert load.cache.blocks_total > 0 and load.cache.block_tokens == 16  # the simulated engine's block size
        assert load.cache.incarnation > 0  # the engine's start: routers forget what they sent a restarted pod
        bare = await stub.GetLoad(runtime_pb2.GetLoadRequest(), timeout=5)
        assert len(bare.cache.prefix_hashes) == 0

        refl = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def one() -> Any:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for resp in refl.ServerReflectionInfo(one(), timeout=5):
            names = {s.name for s in resp.list_services_response.service}
            assert {"brunoise.v1.Runtime", "grpc.health.v1.Health"} <= names
            break


async def test_grpc_bad_input(runtime_proc: ManagedProcess) -> None:
    sp = inference_pb2.SamplingParams
    cases: list[tuple[inference_pb2.GenerateRequest, grpc.StatusCode, str]] = [
        (inference_pb2.GenerateRequest(prompt=""), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        (inference_pb2.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "prompt or messages"),
        (inference_pb2.GenerateRequest(model="other", prompt="a"), grpc.StatusCode.NOT_FOUND, "other"),
        (inference_pb2.GenerateRequest(prompt="a", sampling=sp(max_tokens=-1)), grpc.StatusCode.INVALID_ARGUMENT,
         "max_tokens"),
        (inference_pb2.GenerateRequest(prompt="a", sampling=sp(max_tokens=10**12)), grpc.StatusCode.INVALID_ARGUMENT,
         "max_tokens"),
        (inference_pb2.GenerateRequest(prompt="x" * 9000), grpc.StatusCode.INVALID_ARGUMENT, "maximum context length"),
        (inference_pb2.GenerateRequest(prompt="a", sampling=sp(temperature=-2)), grpc.StatusCode.INVALID_ARGUMENT,
         "temperature"),
        (inference_pb2.GenerateRequest(prompt="a", messages=inference_pb2.ChatMessages()),
         grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (inference_pb2.GenerateRequest(prompt="a", labels={"region": "us"}), grpc.StatusCode.FAILED_PRECONDITION,
         "region"),
    ]  # fmt: skip
    async with grpc.aio.insecure_channel(runtime_proc.addresses["grpc"]) as ch:
        stub = runtime_pb2_grpc.RuntimeStub(ch)
        for req, code, fragment in cases:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                _ = [c async for c in stub.Generate(req, timeout=5)]
            assert ei.value.code() == code, (req, ei.value)
            assert fragment in (ei.value.details() or ""), (req, ei.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            keyed = inference_pb2.GenerateRequest(prompt="a")
            _ = [c async for c in stub.Generate(keyed, timeout=5, metadata=(("x-brunoise-slice-key", "abc"),))]
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ok = [c async for c in stub.Generate(inference_pb2.GenerateRequest(prompt="fine", labels={"region": "eu"}))]
        assert ok[-1].finish_reason == "length"
    assert runtime_proc.alive()


# --- lifecycle -------------------------------------------------------------------------------------------------------


def test_sigterm_is_a_clean_shutdown(tmp_path: Path) -> None:
    proc = start_runtime(tmp_path, "--pod-id", "short-lived", "--time-scale", "50", "--kv-blocks", "1024")
    try:
        assert proc.addresses["pod_id"] == "short-lived"
        assert proc.addresses["http"].startswith("http://127.0.0.1:")
        assert proc.addresses["grpc"].startswith("127.0.0.1:")
    finally:
        code = proc.stop(timeout_s=10)
    assert code == 0, proc.log_tail()
    assert "shutting down" in proc.log_tail()
