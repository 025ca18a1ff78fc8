"""OpenAI-compatible HTTP front end (aiohttp): parse, call the router, pass the pod's response or SSE stream back."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from aiohttp import web

from axon_router.errors import NotFound, RouterError, StreamBroken, TooLarge, UpstreamError
from axon_router.metrics import CONTENT_TYPE
from axon_router.router import Router, flight_log
from axon_router.routing_key import CHAT, COMPLETIONS, parse_openai

log = logging.getLogger("axon_router.http")


def error_response(e: RouterError) -> web.Response:
    """OpenAI-style error body with the error's status (and Retry-After when it carries a hint)."""
    headers: dict[str, str] = {}
    if e.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_s)))
    if isinstance(e, UpstreamError):
        return web.Response(status=e.status, body=e.raw_body, content_type="application/json", headers=headers)
    return web.Response(status=e.status, text=json.dumps(e.body()), content_type="application/json", headers=headers)


def _sse_error(e: RouterError) -> bytes:
    return b"data: " + json.dumps(e.body()).encode() + b"\n\n"


class OpenAIFrontend:
    """The aiohttp application of one router."""

    def __init__(self, router: Router) -> None:
        self.router = router
        k = router.knobs
        self.app = web.Application(client_max_size=k.max_body_bytes)
        self.app.router.add_post(COMPLETIONS, self.completions)
        self.app.router.add_post(CHAT, self.chat)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/debug/pods", self.debug_pods)
        self.app.router.add_get("/debug/lookup", self.debug_lookup)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, COMPLETIONS)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, CHAT)

    async def _generate(self, request: web.Request, path: str) -> web.StreamResponse:
        router = self.router
        now = time.monotonic()
        try:
            cl = request.content_length
            if cl is not None and cl > router.knobs.max_body_bytes:
                raise TooLarge(
                    f"request body is {cl} bytes; the limit is {router.knobs.max_body_bytes}", code="body_too_large"
                )
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise TooLarge(
                    f"request body is over the limit of {router.knobs.max_body_bytes} bytes", code="body_too_large"
                ) from None
            req = parse_openai(path, raw, request.headers, router.knobs, now)
            f = router.begin(req, "http")
        except RouterError as e:
            router.metrics.count_request("http", str(e.status))
            router.metrics.errors.labels(str(e.status)).inc()
            return error_response(e)
        try:
            up = await router.open(f)
        except RouterError as e:
            router.finish(f, str(e.status), e)
            return error_response(e)
        except BaseException as e:
            router.finish(f, "499" if isinstance(e, asyncio.CancelledError) else "500", e)
            raise
        pod = f.pod
        headers = {
            "x-brunoise-pod": pod.id if pod else "",
            "x-brunoise-pick": f.reason,
            "x-brunoise-attempts": str(f.attempts),
            "x-brunoise-target": f.target,
        }
        if not req.stream:
            router.finish(f, "200")
            return web.Response(status=200, body=up.body, content_type="application/json", headers=headers)
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(status=200, headers=headers)
        try:
            await resp.prepare(request)
            await resp.write(up.first)
            async for chunk in up.raw_chunks():
                await resp.write(chunk)
        except RouterError as e:  # StreamBroken, or the deadline passed mid-stream
            if isinstance(e, StreamBroken):
                log.warning("stream broken after first token", extra=flight_log(f, "502"))
            router.finish(f, str(e.status), e)
            try:
                await resp.write(_sse_error(e))
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass
            return resp
        except (ConnectionError, asyncio.CancelledError) as e:
            router.finish(f, "499", e)
            raise
        router.finish(f, "200")
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "brunoise"} for m in self.router.models()]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        r = self.router
        healthy = sum(1 for p in r.pods.values() if p.healthy)
        return web.json_response(
            {"status": "ok", "targets": sorted(r.targets), "pods": len(r.pods), "healthy_pods": healthy}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=self.router.metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE
        return resp

    async def debug_pods(self, request: web.Request) -> web.Response:
        return web.json_response({"pods": self.router.pod_states()})

    async def debug_lookup(self, request: web.Request) -> web.Response:
        """``?model=M&key=APPKEY`` (or ``&slice_key=N``): the target, slice and subset a key maps to."""
        from sharder.keyspace import slice_key

        q = request.query
        try:
            ts_list = self.router.by_model.get(q.get("model", ""), [])
            target = q.get("target") or (ts_list[0].name if ts_list else "")
            if not target:
                raise NotFound("name a known target= or model=", param="model")
            if "slice_key" in q:
                sk = int(q["slice_key"])
                if not 0 <= sk < 1 << 64:
                    raise ValueError("slice_key out of range")
            else:
                sk = slice_key(q.get("key", ""))
            out: dict[str, Any] = self.router.lookup(target, sk)
        except RouterError as e:
            return error_response(e)
        except ValueError as e:
            return web.json_response({"error": {"message": str(e), "type": "invalid_request_error"}}, status=400)
        return web.json_response(out)
