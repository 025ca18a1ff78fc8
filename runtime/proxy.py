"""Raw-bytes passthrough of a pod's OpenAI surface to its vLLM server: routing fields read, the body never rebuilt."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from runtime.engines.base import EngineChunk
from sharder.prefix import render_chat

log = logging.getLogger(__name__)

#: The POST routes a passthrough pod sends to vLLM unchanged (``/v1/responses`` answers vLLM's own 404 when the
#: vLLM version does not serve it).
PASSTHROUGH_POST = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/tokenize",
    "/detokenize",
)
#: The routes whose work is attributed to the request's slice (the others are bookkeeping: tokenize, models).
WORK_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})
#: Request headers passed on to vLLM. Everything else stays here: the client's Authorization (vLLM gets the pod's own
#: key), hop-by-hop headers, brunoise's routing headers.
FORWARD_HEADERS = ("content-type", "accept", "x-request-id", "traceparent", "tracestate")
#: Response headers of vLLM passed back (the framing ones are the pod's own).
RETURN_HEADERS = ("content-type", "cache-control", "x-request-id")


@dataclasses.dataclass(frozen=True, slots=True)
class Routing:
    """What the pod reads of a request (the rest of the body is vLLM's business): for load and the cache view."""

    stream: bool = False
    max_tokens: int = 16
    text: str = ""  # the prompt text the prefix hashes come from ("" when not a generation)
    messages: tuple[Mapping[str, object], ...] | None = None  # chat messages as sent (for tokenizing like vLLM)


def routing_fields(raw: bytes) -> Routing:
    """The routing fields of a request body; lenient: a body vLLM will refuse yields the defaults (vLLM answers)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return Routing()
    if not isinstance(body, dict):
        return Routing()
    stream = body.get("stream") is True
    mt = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
    max_tokens = mt if isinstance(mt, int) and not isinstance(mt, bool) and mt > 0 else 16
    msgs = body.get("messages")
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs):
        with contextlib.suppress(Exception):
            return Routing(stream, max_tokens, render_chat(msgs), tuple(msgs))
        return Routing(stream, max_tokens)
    for name in ("prompt", "input"):
        v = body.get(name)
        if isinstance(v, list) and v and isinstance(v[0], str):
            v = v[0]
        if isinstance(v, str):
            return Routing(stream, max_tokens, v)
    return Routing(stream, max_tokens)


class Forwarded(Protocol):
    """One request open at the upstream: its response, and a hook telling the engine how it went."""

    resp: aiohttp.ClientResponse

    def progress(self, tokens: int) -> None:
        """``tokens`` more output tokens were seen (SSE events), for the engine's load."""


class Upstream(Protocol):
    """An engine that serves requests by forwarding the client's bytes (the vLLM adapter)."""

    def forward(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], routing: Routing
    ) -> contextlib.AbstractAsyncContextManager[Forwarded]:
        """Send one request upstream; the context yields once the status and headers arrived."""


FinishHook = Callable[[int | None, EngineChunk], None]


def _usage_chunk(obj: Any, routing: Routing, events: int) -> EngineChunk:
    """The finished request's token counts: vLLM's usage when it sent one, else estimates."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return EngineChunk(
            text="",
            finish_reason="stop",
            prompt_tokens=int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or usage.get("output_tokens") or 0),
            cached_tokens=int(cached or 0),
        )
    return EngineChunk(
        text="", finish_reason="stop", prompt_tokens=len(routing.text) // 4 + 1, completion_tokens=events
    )


async def proxy(
    request: web.Request,
    upstream: Upstream,
    body: bytes,
    slice_key: int | None,
    on_finish: FinishHook | None,
    pod_id_header: tuple[str, str],
) -> web.StreamResponse:
    """Forward ``body`` to the upstream and copy its answer back: status, body, SSE events, byte for byte."""
    routing = routing_fields(body) if request.method == "POST" else Routing()
    if request.path not in WORK_PATHS:
        on_finish = None
    elif slice_key is not None and routing.text:
        record = getattr(upstream, "record_prompt", None)  # runtime.warm.RecordingEngine: what warming peers ask for
        if record is not None:
            record(slice_key, None if routing.messages else routing.text, routing.messages)
    headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
    async with upstream.forward(request.method, request.path_qs, body, headers, routing) as fw:
        up = fw.resp
        out_headers = {h: up.headers[h] for h in RETURN_HEADERS if h in up.headers}
        out_headers[pod_id_header[0]] = pod_id_header[1]
        ctype = up.headers.get("content-type", "")
        if not ctype.startswith("text/event-stream"):
            data = await up.read()
            if up.status == 200 and on_finish is not None and routing.text:
                obj: Any = None
                with contextlib.suppress(ValueError):
                    obj = json.loads(data)
                _finish(on_finish, slice_key, _usage_chunk(obj, routing, routing.max_tokens))
            return web.Response(status=up.status, body=data, headers=out_headers)
        resp = web.StreamResponse(status=up.status, headers=out_headers)
        await resp.prepare(request)
        events = 0
        last_usage: bytes = b""
        tail = b""
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
            n = chunk.count(b"\n\n")
            if n:
                events += n
                fw.progress(n)
            # the usage event is the last data event before [DONE]; look for it in what just arrived
            seen = tail + chunk
            i = seen.rfind(b'"usage"')
            if i >= 0:
                start = seen.rfind(b"data:", 0, i)
                end = seen.find(b"\n\n", i)
                if start >= 0 and end > 0:
                    last_usage = seen[start + 5 : end]
            tail = seen[-4096:]
        await resp.write_eof()
        if on_finish is not None and routing.text:
            obj = None
            if last_usage:
                with contextlib.suppress(ValueError):
                    obj = json.loads(last_usage)
            _finish(on_finish, slice_key, _usage_chunk(obj, routing, events))
        return resp


def _finish(hook: FinishHook, slice_key: int | None, last: EngineChunk) -> None:
    try:
        hook(slice_key, last)
    except Exception:
        log.exception("finish hook failed")


def is_upstream(engine: object) -> bool:
    """Whether the engine forwards raw requests (``Upstream``) rather than generating through ``Engine.generate``."""
    return callable(getattr(engine, "forward", None))
