"""Byte-for-byte passthrough: client -> router -> runtime ``--engine vllm`` -> a recording stand-in for vLLM.

The stand-in (an aiohttp server in the test, speaking the bits of vLLM's API the adapter needs) records every request
it gets and answers with odd but valid bytes, so the test can compare exactly: the body the client sent is the body
"vLLM" received, and what "vLLM" answered (JSON, SSE, an error) is what the client got. The runtime holds the stand-in's
API key (``$VLLM_API_KEY``); the client's own Authorization must not arrive.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from sharder.launch import ManagedProcess, ProcessGroup, python_module
from tests.router.conftest import _policy_args
from tests.runtime.procs import runtime_env
from tests.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

POD_KEY = "pod-key-for-vllm"
CLIENT_KEY = "client-key"
MODEL = "echo"
#: What the stand-in answers: unusual spacing, key order and an unknown field survive only if nobody re-serializes.
JSON_ANSWER = (
    b'{"zz_unknown":  [1, 2.50, "\\u00e9"], "id":"cmpl-1","object":"chat.completion","model":"echo",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
)
SSE_ANSWER = [
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}],"x":1}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,'
    b'"completion_tokens":1,"total_tokens":4}}\n\n',
    b"data: [DONE]\n\n",
]
ERROR_ANSWER = b'{"error": {"message": "bad field: top_k", "type": "BadRequestError", "param": "top_k", "code": 400}}'


class FakeVllm:
    """Records (path, headers, raw body) of every generation request; answers from the constants above."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.tokenize)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self.generate)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {POD_KEY}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return web.json_response({"object": "list", "data": [{"id": MODEL, "max_model_len": 2048}]})

    async def tokenize(self, request: web.Request) -> web.Response:
        return web.json_response({"count": 3, "tokens": [1, 2, 3], "max_model_len": 2048})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}, raw))
        if request.headers.get("Authorization") != f"Bearer {POD_KEY}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        body = json.loads(raw)
        if "top_k" in body:
            return web.Response(status=400, body=ERROR_ANSWER, content_type="application/json")
        if not body.get("stream"):
            return web.Response(body=JSON_ANSWER, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for ev in SSE_ANSWER:
            await resp.write(ev)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp


@pytest.fixture
async def chain(tmp_path: pathlib.Path) -> AsyncIterator[tuple[str, FakeVllm]]:
    fake = FakeVllm()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    env = runtime_env()
    group = ProcessGroup()
    try:
        a = group.add(ManagedProcess("assigner", python_module(
            "sharder.assigner.main", "--store", "embedded", "--port", "0", "--round-interval", "0.5", "--target", "echo-t=echo",
            *_policy_args(),
        ), env=env, log_dir=tmp_path).start())  # fmt: skip
        addr = (await asyncio.to_thread(a.wait_ready, 60))["grpc"]
        rt = group.add(ManagedProcess("runtime", python_module(
            "runtime.main", "--engine", "vllm", "--model", MODEL, "--pod-id", "pod-echo", "--target", "echo-t",
            "--assigner", addr, "--report-interval", "0.5", "--engine-arg", f"base_url=http://127.0.0.1:{port}",
        ), env={**env, "VLLM_API_KEY": POD_KEY}, log_dir=tmp_path).start())  # fmt: skip
        router = group.add(ManagedProcess("router", python_module(
            "axon_router.main", "--assigner", addr, "--http-port", "0", "--grpc-port", "0", "--health-interval-s", "0.5",
        ), env=env, log_dir=tmp_path).start())  # fmt: skip
        await asyncio.to_thread(rt.wait_ready, 60)
        url = (await asyncio.to_thread(router.wait_ready, 60))["http"]
        async with aiohttp.ClientSession() as s:

            async def ready() -> bool:
                async with s.get(url + "/ready") as r:
                    return r.status == 200

            await until(ready, 30, "the router to be ready")
        yield url, fake
    finally:
        await asyncio.to_thread(group.stop_all)
        await runner.cleanup()


async def test_request_and_answer_pass_byte_for_byte(chain: tuple[str, FakeVllm]) -> None:
    url, fake = chain
    # odd spacing, an unknown nested field, non-ASCII, a tool call history: none of it may be touched
    sent = (
        b'{"model":"echo",  "messages":[{"role":"user","content":[{"type":"text","text":"h\xc3\xa9llo"},'
        b'{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},'
        b'{"role":"assistant","content":null,"tool_calls":[{"id":"t1","type":"function",'
        b'"function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"t1","content":"42"}],'
        b'"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],'
        b'"n":2,"logprobs":true,"top_logprobs":3,"logit_bias":{"5":-100},"response_format":{"type":"json_object"},'
        b'"zz_unknown":{"deep":[1,2,{"x":null}]},"max_tokens":7}'
    )
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "rid-1"}
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", data=sent, headers=headers) as r:
            got = await r.read()
            assert r.status == 200, got
        assert got == JSON_ANSWER
        path, seen_headers, raw = fake.seen[-1]
        assert path == "/v1/chat/completions" and raw == sent
        assert seen_headers["authorization"] == f"Bearer {POD_KEY}"  # the pod's key, never the client's
        assert seen_headers.get("x-request-id") == "rid-1"
        assert not any(k.lower().startswith("x-brunoise") for k in seen_headers)

        stream_body = b'{"model":"echo","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"s"}]}'
        async with s.post(url + "/v1/chat/completions", data=stream_body, headers=headers) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            streamed = await r.read()
        assert streamed == b"".join(SSE_ANSWER)
        assert fake.seen[-1][2] == stream_body

        err_body = b'{"model":"echo","prompt":"x","top_k":"many"}'
        async with s.post(url + "/v1/completions", data=err_body, headers=headers) as r:
            assert r.status == 400
            assert await r.read() == ERROR_ANSWER
        assert fake.seen[-1][2] == err_body

        emb_body = b'{"model":"echo","input":["a","b"],"encoding_format":"float","dimensions":8}'
        async with s.post(url + "/v1/embeddings", data=emb_body, headers=headers) as r:
            assert r.status == 200 and await r.read() == JSON_ANSWER
        assert fake.seen[-1][:1] == ("/v1/embeddings",) and fake.seen[-1][2] == emb_body


def test_routing_fields_read_only_what_routing_needs() -> None:
    from runtime.proxy import routing_fields

    chat = routing_fields(b'{"stream":true,"max_completion_tokens":9,"messages":[{"role":"user","content":"hi"}]}')
    assert chat.stream and chat.max_tokens == 9 and chat.messages is not None and "hi" in chat.text
    emb = routing_fields(b'{"input":["first","second"]}')
    assert emb.text == "first" and not emb.stream and emb.max_tokens == 16
    assert routing_fields(b"not json") == routing_fields(b"[1]") == routing_fields(b"{}")  # vLLM answers those


def test_advertise_host_defaults() -> None:
    from sharder.advertise import address_host, advertise_host, host_port

    assert advertise_host("127.0.0.1") == "127.0.0.1"
    assert advertise_host("0.0.0.0", "10.1.2.3") == "10.1.2.3"
    wild = advertise_host("0.0.0.0")
    assert wild not in ("0.0.0.0", "") and host_port(wild, 80).endswith(":80")
    assert host_port("::1", 5) == "[::1]:5"
    for host in ("::1", "10.1.2.3", "pod-0.svc"):
        assert address_host(host_port(host, 50051)) == host
