"""OpenAI-compatible HTTP front end (aiohttp): parse, call the router, pass the pod's response or SSE stream back."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from axon_router.auth import ApiKey, ApiKeys
from axon_router.errors import (
    BadRequest,
    InternalError,
    NotFound,
    RequestTimeout,
    RouterError,
    StreamBroken,
    TooLarge,
    UpstreamError,
    clip,
)
from axon_router.frontends.guard import TENANT_HEADER, authenticate, require_assignment
from axon_router.frontends.readiness import Readiness
from axon_router.metrics import CONTENT_TYPE
from axon_router.router import Router, flight_log
from axon_router.routing_key import CHAT, ROUTED_PATHS, parse_openai
from sharder.headers import TARGET_HEADER
from sharder.httpserver import GuardedAppRunner
from sharder.prefix import InvalidText

log = logging.getLogger("axon_router.http")

#: Where the guard middleware leaves the caller's API key (None without keys) for the handlers.
_API_KEY: web.RequestKey[ApiKey | None] = web.RequestKey("api_key", ApiKey)

#: A pod's error body longer than this is re-rendered with its message clipped (it may echo the request).
_MAX_UPSTREAM_ERROR_BYTES = 4096


def openai_error_body(status: int, message: str, code: str) -> dict[str, object]:
    """OpenAI's error shape, for errors raised outside a RouterError (malformed HTTP, slow clients)."""
    t = "invalid_request_error" if status < 500 else "internal_error"
    return {"error": {"message": clip(message), "type": t, "param": None, "code": code}}


def _upstream_body(e: UpstreamError) -> bytes:
    raw = e.raw_body
    if len(raw) <= _MAX_UPSTREAM_ERROR_BYTES:
        return raw
    try:
        obj = json.loads(raw)
        err = obj["error"]
        msg = clip(str(err["message"]))
    except (ValueError, KeyError, TypeError):
        return json.dumps(openai_error_body(e.status, f"the pod answered {e.status}", "upstream_error")).encode()
    info = {"message": msg, "type": err.get("type"), "param": err.get("param"), "code": err.get("code")}
    return json.dumps({"object": "error", **info, "error": info}).encode()


def error_response(e: RouterError) -> web.Response:
    """OpenAI-style error body with the error's status (and Retry-After when it carries a hint)."""
    headers: dict[str, str] = {}
    if e.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_s)))
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(e, UpstreamError):
        return web.Response(status=e.status, body=_upstream_body(e), content_type="application/json", headers=headers)
    resp = web.Response(status=e.status, text=json.dumps(e.body()), content_type="application/json", headers=headers)
    if e.status == 408:
        resp.force_close()  # the rest of a slow body is not waited for
    return resp


def _sse_error(e: RouterError) -> bytes:
    return b"data: " + json.dumps(e.body()).encode() + b"\n\n"


class OpenAIFrontend:
    """The aiohttp application of one router. With ``api_keys`` every ``/v1/`` and ``/debug/`` route needs a key
    (``/health`` and ``/metrics`` stay open, for probes and Prometheus)."""

    def __init__(self, router: Router, api_keys: ApiKeys | None = None, readiness: Readiness | None = None) -> None:
        self.router = router
        self.api_keys = api_keys
        self.readiness = readiness or Readiness(router)
        k = router.knobs
        self.app = web.Application(client_max_size=k.max_body_bytes, middlewares=[self._guard])
        for path in ROUTED_PATHS:  # the body reaches the pod byte for byte; only routing fields are read
            self.app.router.add_post(path, self._route(path))
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/ready", self.ready)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/debug/pods", self.debug_pods)
        self.app.router.add_get("/debug/lookup", self.debug_lookup)

    def runner(self, shutdown_timeout: float = 60.0) -> web.AppRunner:
        """The app's runner: JSON errors for malformed HTTP, the header read timeout (slowloris), and handlers
        cancelled when their client goes away (the request's id, pod connection and span are released at once)."""
        return GuardedAppRunner(
            self.app,
            error_body=openai_error_body,
            header_timeout_s=self.router.knobs.header_read_timeout_s,
            handler_cancellation=True,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=shutdown_timeout,
        )

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """API keys on the OpenAI and debug routes; every failure answered in OpenAI's error shape."""
        try:
            if request.path.startswith(("/v1/", "/debug/")) or request.path in ROUTED_PATHS:
                request[_API_KEY] = authenticate(self.api_keys, request.headers.get("Authorization"))
            return await handler(request)
        except RouterError as e:
            self.router.metrics.count_request("http", str(e.status))
            return error_response(e)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            msg = f"no route {request.method} {request.path}" if e.status in (404, 405) else (e.reason or str(e))
            return web.json_response(openai_error_body(e.status, msg, "invalid_route"), status=e.status)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(InternalError("internal error in the router; see its log", code="internal_error"))

    def _route(self, path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._generate(request, path)

        return handler

    async def _generate(self, request: web.Request, path: str) -> web.StreamResponse:
        router = self.router
        now = time.monotonic()
        k = router.knobs
        try:
            key: ApiKey | None = request.get(_API_KEY)
            require_assignment(router)
            cl = request.content_length
            if cl is not None and cl > router.knobs.max_body_bytes:
                raise TooLarge(
                    f"request body is {cl} bytes; the limit is {router.knobs.max_body_bytes}", code="body_too_large"
                )
            try:
                async with asyncio.timeout(k.body_read_timeout_s):
                    raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise TooLarge(
                    f"request body is over the limit of {router.knobs.max_body_bytes} bytes", code="body_too_large"
                ) from None
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body did not arrive within {k.body_read_timeout_s:g}s", code="body_timeout"
                ) from None
            in_headers: Mapping[str, str] = request.headers
            if key is not None and key.tenant is not None:  # the key's tenant is the group, whatever the client says
                in_headers = CIMultiDict(request.headers)
                in_headers[TENANT_HEADER] = key.tenant
            try:
                req = parse_openai(path, raw, in_headers, k, now)
            except InvalidText as e:
                raise BadRequest(
                    str(e), param="messages" if path == CHAT else "prompt", code="invalid_encoding"
                ) from None
            except ValueError as e:  # e.g. json's limit on integer digits: the client's input, not a router fault
                raise BadRequest(f"invalid request body: {clip(str(e), 200)}", code="invalid_json") from None
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
        headers = {**dict(f.pick_metadata()), TARGET_HEADER: f.target}
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
        except (ConnectionError, asyncio.CancelledError) as e:
            router.finish(f, "499", e)
            raise
        except Exception as e:  # StreamBroken / UpstreamIdle / the deadline mid-stream, or a bug: end it in-band
            err = e if isinstance(e, RouterError) else InternalError("internal error in the router; see its log")
            if isinstance(e, StreamBroken):
                log.warning("stream broken after first token", extra=flight_log(f, str(err.status)))
            elif not isinstance(e, RouterError):
                log.exception("unhandled error mid-stream", extra=flight_log(f, "500"))
            router.finish(f, str(err.status), err)
            try:
                await resp.write(_sse_error(err))
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass
            return resp
        router.finish(f, "200")
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "brunoise"} for m in self.router.models()]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        """Liveness: the process answers (readiness is ``/ready``)."""
        r = self.router
        healthy = sum(1 for p in r.pods.values() if p.healthy)
        return web.json_response(
            {"status": "ok", "targets": sorted(r.targets), "pods": len(r.pods), "healthy_pods": healthy}
        )

    async def ready(self, request: web.Request) -> web.Response:
        """Readiness: 200 while the router should get traffic, 503 (with the reason) otherwise."""
        body = self.readiness.report()
        return web.json_response(body, status=200 if body["ready"] else 503)

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
