"""A vLLM pod's raw HTTP passthrough feeds the prompt log: a warming peer's HotPrompts gets what clients sent."""

from __future__ import annotations

import asyncio
import pathlib

import aiohttp
import grpc
import pytest
from aiohttp import web

from brunoise_api.v1 import runtime_pb2, runtime_pb2_grpc, slicing_pb2
from sharder.launch import ManagedProcess, ProcessGroup, python_module
from tests.runtime.procs import runtime_env
from tests.runtime.test_passthrough import MODEL, POD_KEY, FakeVllm

pytestmark = pytest.mark.slow


async def test_passthrough_requests_are_answered_by_hot_prompts(tmp_path: pathlib.Path) -> None:
    fake = FakeVllm()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    group = ProcessGroup()
    try:
        rt = group.add(ManagedProcess("runtime", python_module(
            "runtime.main", "--engine", "vllm", "--model", MODEL, "--pod-id", "pod-echo",
            "--engine-arg", f"base_url=http://127.0.0.1:{port}",
        ), env={**runtime_env(), "VLLM_API_KEY": POD_KEY}, log_dir=tmp_path).start())  # fmt: skip
        addrs = await asyncio.to_thread(rt.wait_ready, 60)
        chat = {"model": MODEL, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as s:
            for key, body in ((7, chat), (7, chat), (9, {"model": MODEL, "prompt": "complete me", "max_tokens": 2})):
                path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
                async with s.post(addrs["http"] + path, json=body, headers={"x-brunoise-slice-key": str(key)}) as r:
                    assert r.status == 200, await r.text()
        async with grpc.aio.insecure_channel(addrs["grpc"]) as ch:
            stub = runtime_pb2_grpc.RuntimeStub(ch)  # type: ignore[no-untyped-call]
            resp = await stub.HotPrompts(runtime_pb2.HotPromptsRequest(slice=slicing_pb2.Slice(lo=0, hi=0)), timeout=5)
            only_9 = await stub.HotPrompts(runtime_pb2.HotPromptsRequest(slice=slicing_pb2.Slice(lo=8, hi=10)), timeout=5)
        assert resp.pod_id == "pod-echo"
        assert [(p.slice_key, p.weight) for p in resp.prompts] == [(7, 2.0), (9, 1.0)]
        assert [(m.role, m.content) for m in resp.prompts[0].messages.messages] == [("system", "be brief"), ("user", "hi")]
        assert resp.prompts[1].prompt == "complete me"
        assert [p.slice_key for p in only_9.prompts] == [9]
    finally:
        await asyncio.to_thread(group.stop_all)
        await runner.cleanup()
