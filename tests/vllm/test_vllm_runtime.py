"""``brunoise-runtime --engine vllm`` (a real process) serving its HTTP and gRPC surfaces in front of a real vLLM.

To keep the suite short the runtime attaches to the session's vLLM server (``--engine-arg base_url=...``, the
``from_cli`` factory's attach mode) instead of starting a second vLLM; starting a child vLLM is what the session
``engine`` fixture itself exercises.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Iterator

import aiohttp
import grpc
import pytest
from conftest import ROOT

from brunoise_api.v1 import inference_pb2, runtime_pb2, runtime_pb2_grpc
from runtime.engines.vllm import VllmEngine, config_from_args
from sharder.launch import ManagedProcess, python_module

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


@pytest.fixture
def runtime_proc(engine: VllmEngine, tmp_path: pathlib.Path) -> Iterator[ManagedProcess]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = python_module(
        "runtime.main", "--engine", "vllm", "--model", engine.model, "--pod-id", "pod-vllm",
        "--engine-arg", f"base_url={engine.base_url}", "--engine-arg", "metrics_interval_s=0.25",
    )  # fmt: skip
    proc = ManagedProcess("runtime-vllm", argv, env=env, log_dir=tmp_path)
    proc.start()
    try:
        proc.wait_ready(timeout_s=60)
        yield proc
    finally:
        proc.stop()
        assert not proc.alive()


def test_engine_args_parse() -> None:
    cfg = config_from_args(
        "tiny",
        {
            "model-dir": "/m",
            "python": sys.executable,
            "block_size": "64",
            "enforce_eager": "false",
            "extra_args": "--seed 3",
        },
    )
    assert cfg.served_model_name == "tiny" and cfg.block_size == 64 and not cfg.enforce_eager
    assert cfg.extra_args == ("--seed", "3")
    with pytest.raises(ValueError, match="unknown vllm engine arg"):
        config_from_args(None, {"nope": "1"})
    with pytest.raises(ValueError, match="exactly one of model_dir"):
        config_from_args(None, {})


@pytest.mark.asyncio(loop_scope="session")
async def test_runtime_serves_http_and_grpc_with_vllm(runtime_proc: ManagedProcess, engine: VllmEngine) -> None:
    http = runtime_proc.addresses["http"]
    prompt = "The runtime pod of the session asks you and the assistant system. " * 4
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{http}/health") as r:
            assert r.status == 200
        async with s.get(f"{http}/v1/models") as r:
            body = await r.json()
            assert body["data"][0]["id"] == engine.model and body["data"][0]["max_model_len"] == engine.max_model_len
        req = {"model": engine.model, "prompt": prompt, "max_tokens": 6, "stream": True, "ignore_eos": True,
               "stream_options": {"include_usage": True}}  # fmt: skip
        texts: list[str] = []
        usage: dict[str, int] = {}
        async with s.post(f"{http}/v1/completions", json=req) as r:
            assert r.status == 200, await r.text()
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[5:])
                texts += [c.get("text", "") for c in obj.get("choices", [])]
                usage = obj.get("usage") or usage
        assert "".join(texts) and usage["completion_tokens"] == 6
        assert usage["prompt_tokens"] == len(await engine.tokenize(prompt))
        # vLLM itself answers (the pod passes requests through): stream_options without stream is its own 400
        too_long = {k: v for k, v in req.items() if k != "stream_options"} | {"max_tokens": 100_000, "stream": False}
        async with s.post(f"{http}/v1/completions", json=too_long) as r:
            assert r.status == 400
            err = await r.json()
            assert "max_tokens" in err["error"]["message"]
        async with s.post(f"{http}/tokenize", json={"model": engine.model, "prompt": prompt}) as r:
            assert (await r.json())["count"] == usage["prompt_tokens"]
        async with s.get(f"{http}/metrics") as r:
            text = await r.text()
            assert "vllm:prefix_cache_hits_total" in text and "vllm:num_requests_running" in text
        async with s.get(f"{http}/load") as r:
            load = await r.json()
            assert load["ready"] is True and load["pod_id"] == "pod-vllm" and "running" in load["engine"]

    async with grpc.aio.insecure_channel(runtime_proc.addresses["grpc"]) as ch:
        stub = runtime_pb2_grpc.RuntimeStub(ch)
        gen = inference_pb2.GenerateRequest(
            model=engine.model, prompt=prompt, routing_key="session-1", request_id="g1",
            sampling=inference_pb2.SamplingParams(max_tokens=4, ignore_eos=True),
        )  # fmt: skip
        chunks = [c async for c in stub.Generate(gen, timeout=60)]
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 4
        assert chunks[-1].usage.prompt_tokens == usage["prompt_tokens"] and chunks[-1].pod_id == "pod-vllm"
        # the same prompt a third time: vLLM serves its full blocks from cache and says so
        assert chunks[-1].usage.cached_tokens > 0
        msgs = inference_pb2.ChatMessages(messages=[inference_pb2.ChatMessage(role="user", content="hello there")])
        chat = [c async for c in stub.Generate(inference_pb2.GenerateRequest(messages=msgs,
                sampling=inference_pb2.SamplingParams(max_tokens=3, ignore_eos=True)), timeout=60)]  # fmt: skip
        assert chat[-1].finish_reason == "length" and chat[-1].usage.completion_tokens == 3
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            bad = inference_pb2.GenerateRequest(prompt="a", sampling=inference_pb2.SamplingParams(max_tokens=100_000))
            _ = [c async for c in stub.Generate(bad, timeout=30)]
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        load = await stub.GetLoad(runtime_pb2.GetLoadRequest(include_cache=True), timeout=10)
        assert load.ready and load.pod_id == "pod-vllm" and load.cache.chunk_bytes == 64
