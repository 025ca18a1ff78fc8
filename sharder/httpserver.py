"""Hardened aiohttp serving for router and runtime: JSON error bodies for malformed HTTP, a header read timeout."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

log = logging.getLogger("brunoise.http")

#: Idle keep-alive connections are closed after this (aiohttp's default is an hour). Longer than the router's
#: client-side keep-alive (60 s), so the server never closes a connection the router is about to reuse; it
#: also bounds a partial request pipelined behind a finished one.
KEEPALIVE_TIMEOUT_S = 75.0

#: Renders an error as the server's JSON error body: (HTTP status, message, error code) -> object.
ErrorBody = Callable[[int, str, str], dict[str, Any]]


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler with JSON error bodies and a deadline on each request's headers."""

    def __init__(self, manager: Server, *, error_body: ErrorBody, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._error_body = error_body
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        # the first bytes of a request start its header clock; a complete request (or the connection's end) stops it
        if self._header_timer is None and not self._request_in_progress:
            self._header_timer = self._loop.call_later(self._header_timeout_s, self._headers_timed_out)
        super().data_received(data)
        if self._messages:
            self._disarm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    async def _handle_request(self, request: BaseRequest, start_time: float | None, request_handler: Any) -> Any:
        self._disarm()
        return await super()._handle_request(request, start_time, request_handler)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages or self.transport is None:
            return
        msg = f"the request's headers did not arrive within {self._header_timeout_s:g}s"
        body = json.dumps(self._error_body(408, msg, "header_timeout")).encode()
        head = (
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        log.info("closed a connection whose request headers were too slow")
        self.transport.write(head + body)
        self.force_close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if a response was already started
        if status >= 500:
            text = "internal error; see the server's log"
        else:
            text = (message or HTTPStatus(status).phrase).strip()
        resp = web.json_response(self._error_body(status, text[:512], "invalid_http"), status=status)
        resp.force_close()
        return resp


#: aiohttp internals the guarded handler relies on (present from 3.10 through at least 3.14); without them the
#: runner still serves, with aiohttp's own handler, and says so.
_INTERNALS = ("_messages", "_request_in_progress", "_handle_request", "_loop", "_manager")
GUARD_SUPPORTED = all(hasattr(RequestHandler, a) for a in _INTERNALS)


class _GuardedServer(Server):
    def __init__(self, base: Server, error_body: ErrorBody, header_timeout_s: float) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._error_body = error_body
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(
            self, loop=self._loop, error_body=self._error_body, header_timeout_s=self._header_timeout_s, **self._kwargs
        )


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed HTTP (an oversized header, a bad request line) with
    ``error_body`` JSON instead of aiohttp's plain text, and are closed with a 408 when a request's headers take
    longer than ``header_timeout_s`` to arrive (slowloris); idle keep-alive connections close after
    ``KEEPALIVE_TIMEOUT_S`` unless told otherwise. Bodies are the handlers' to time out."""

    def __init__(self, app: web.Application, *, error_body: ErrorBody, header_timeout_s: float, **kwargs: Any) -> None:
        if header_timeout_s <= 0:
            raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s}")
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT_S)
        super().__init__(app, **kwargs)
        self._error_body = error_body
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> Server:
        base = await super()._make_server()
        if not GUARD_SUPPORTED:
            log.warning("this aiohttp lacks %s: serving without JSON parse errors or a header timeout", _INTERNALS)
            return base
        return _GuardedServer(base, self._error_body, self._header_timeout_s)
