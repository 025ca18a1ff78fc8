"""In-process harness for the router hardening tests: a real router (HTTP + gRPC on 127.0.0.1) over a scripted pod."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web

from axon_router.frontends.grpc import build_server
from axon_router.frontends.openai_http import OpenAIFrontend
from axon_router.knobs import Knobs
from axon_router.router import Router
from sharder.assignment import Assignment, initial_assignment
from sharder.config import TargetConfig
from sharder.pods import Pod

MODEL = "m"
TARGET = "t"


class StubClerk:
    """The clerk surface the router reads, over a fixed assignment (None: no assignment received yet)."""

    connected = True

    def __init__(self, assignment: Assignment | None) -> None:
        self.a = assignment

    def targets(self) -> list[str]:
        return [self.a.target] if self.a is not None else []

    def assignment(self, target: str) -> Assignment | None:
        return self.a

    def generation(self, target: str) -> int:
        return self.a.generation if self.a is not None else 0

    def staleness_s(self, target: str | None = None) -> float:
        return 0.0


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}


class ScriptedPod:
    """A vLLM-shaped HTTP pod whose behaviour follows the prompt: ``stall-first`` (no answer until ``release``),
    ``stall-mid`` (one SSE event, then silence), ``stall-body`` (non-stream: headers and part of the body, then
    silence), ``too-long`` (vLLM's 400 context-length error); anything else answers at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.received = asyncio.Event()
        self.headers: list[dict[str, str]] = []
        self.open_conns = 0
        self.max_open_conns = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> ScriptedPod:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/completions", self.completions)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.open_conns += 1
        self.max_open_conns = max(self.max_open_conns, self.open_conns)
        try:
            return await self._answer(request)
        finally:
            self.open_conns -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.received.set()
        prompt = str(body.get("prompt", ""))
        stream = bool(body.get("stream"))
        if prompt.startswith("too-long"):
            msg = "This model's maximum context length is 2048 tokens. However, your prompt is 99999 tokens."
            err = {"message": msg, "type": "BadRequestError", "param": "prompt", "code": 400}
            return web.json_response({"object": "error", **err, "error": err}, status=400)
        if prompt.startswith("stall-first"):
            await self.release.wait()
        if not stream:
            if prompt.startswith("stall-body"):
                resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
                resp.content_length = 1000
                await resp.prepare(request)
                await resp.write(b'{"id": "x", ')
                await self.release.wait()
                return resp
            return web.json_response(
                {
                    "id": "x",
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                }
            )
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_sse(_chunk("a")))
        if prompt.startswith("stall-mid"):
            await self.release.wait()
        await resp.write(_sse(_chunk("b", "stop")))
        await resp.write(b"data: [DONE]\n\n")
        return resp


class RouterHarness:
    """A router with its HTTP and gRPC front ends on 127.0.0.1 over one scripted pod."""

    def __init__(self, knobs: Knobs, *, assigned: bool = True, api_keys: Any = None) -> None:
        self.knobs = knobs
        self.assigned = assigned
        self.api_keys = api_keys
        self.pod = ScriptedPod()
        self.router: Router | None = None
        self.http = ""
        self.grpc = ""
        self._runner: web.AppRunner | None = None
        self._gserver: grpc.aio.Server | None = None

    async def start(self) -> RouterHarness:
        await self.pod.start()
        a = None
        if self.assigned:
            cfg = TargetConfig(target=TARGET, model=MODEL, initial_slices=4)
            pod = Pod("p0", "", labels={"model": MODEL}, http_address=self.pod.url, target=TARGET)
            a = initial_assignment(cfg, [pod])
        self.router = Router(StubClerk(a), self.knobs)
        await self.router.start()
        fe = OpenAIFrontend(self.router, **({"api_keys": self.api_keys} if self.api_keys is not None else {}))
        self._runner = fe.runner()
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        kw = {"api_keys": self.api_keys} if self.api_keys is not None else {}
        self._gserver, gport, _ = build_server(self.router, "127.0.0.1", 0, **kw)
        await self._gserver.start()
        self.grpc = f"127.0.0.1:{gport}"
        return self

    async def stop(self) -> None:
        self.pod.release.set()
        if self._gserver is not None:
            await self._gserver.stop(0.5)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.router is not None:
            await self.router.stop()
        await self.pod.stop()

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.http.removeprefix("http://").split(":")
        return host, int(port)


@contextlib.asynccontextmanager
async def harness(knobs: Knobs, **kw: Any) -> AsyncIterator[RouterHarness]:
    h = RouterHarness(knobs, **kw)
    try:
        yield await h.start()
    finally:
        await h.stop()


def raw_socket(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port), timeout=10)
    return s
