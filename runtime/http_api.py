"""The vLLM-compatible HTTP surface of a runtime pod (aiohttp): the OpenAI routes (served by the simulated engine, or
passed through to vLLM byte for byte), health and readiness, metrics, load."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import xxhash
from aiohttp import web

from runtime import proxy
from runtime.engines.base import Engine, EngineChunk, EngineError, EngineRequest, SamplingParams
from runtime.engines.sim import detokenize
from sharder import kv_pull
from sharder.headers import DEADLINE_HEADER, KV_PULL_HEADER, POD_ID_HEADER, SLICE_KEY_HEADER
from sharder.httpserver import GuardedAppRunner
from sharder.prefix import render_chat

log = logging.getLogger(__name__)

#: Header carrying the SliceKey (decimal) the router routed this request on.
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
#: A client must send a request's headers within this of starting it (slowloris), its body within the other.
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
#: Longest error message sent back (messages may echo the request: a 1 MB model name must not come back whole).
_MAX_MESSAGE = 1024
_MAX_ECHO = 100
_MAX_SLICE_KEY = 2**64
_MAX_REQUEST_ID = 256

#: Called when a request finishes: (slice key or None, the last chunk with its token counts).
FinishHook = Callable[[int | None, EngineChunk], None]

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    405: "MethodNotAllowedError",
    413: "RequestEntityTooLargeError",
    415: "UnsupportedMediaTypeError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class HttpError(Exception):
    """A request answered with an error status and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or _ERROR_TYPES.get(status, "BadRequestError")


def error_body(status: int, message: str, *, type_: str | None = None, param: str | None = None) -> dict[str, Any]:
    """vLLM's error body (``object``/``message``/``type``/``param``/``code``) with OpenAI's nested ``error`` too."""
    t = type_ or _ERROR_TYPES.get(status, "BadRequestError")
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 30] + f"... [{len(message) - _MAX_MESSAGE + 30} characters cut]"
    info = {"message": message, "type": t, "param": param, "code": status}
    return {"object": "error", **info, "error": info}


def error_response(status: int, message: str, *, type_: str | None = None, param: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message, type_=type_, param=param), status=status)


def _engine_error(e: EngineError) -> web.Response:
    return error_response(e.status, e.message, type_=e.code, param=e.param)


@dataclasses.dataclass(slots=True)
class _Parsed:
    request: EngineRequest
    stream: bool
    include_usage: bool


class HttpApi:
    """Route handlers bound to one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        pod_id: str,
        on_finish: FinishHook | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    ) -> None:
        self.engine = engine
        self.pod_id = pod_id
        self.on_finish = on_finish
        self.max_body_bytes = max_body_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.created = int(time.time())
        self.draining = False  # set on shutdown: /ready fails, requests in flight finish
        # a router's KV pull hint (``sharder.kv_pull``) is acted on before the request runs, when set (the pod wires
        # it to its warmer: a read from a peer the assigner named); unset, the hint is ignored
        self.pull: Callable[[kv_pull.PullHint, float], Awaitable[object]] | None = None
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no request is in flight, at most ``timeout_s``; True when none is left."""
        if self.inflight == 0:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self.inflight == 0

    def runner(self, **kwargs: Any) -> web.AppRunner:
        """A runner of ``app()`` that answers malformed HTTP with vLLM's JSON error body and cuts off requests
        whose headers take longer than ``header_timeout_s``."""
        return GuardedAppRunner(
            self.app(),
            error_body=lambda status, message, code: error_body(status, message),
            header_timeout_s=self.header_timeout_s,
            **kwargs,
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        if proxy.is_upstream(self.engine):  # vLLM: every OpenAI route goes through unchanged
            for path in proxy.PASSTHROUGH_POST:
                app.router.add_post(path, self.passthrough)
            app.router.add_get("/v1/models", self.passthrough)
        else:
            app.router.add_post("/v1/completions", self.completions)
            app.router.add_post("/v1/chat/completions", self.chat_completions)
            app.router.add_post("/v1/embeddings", self.embeddings)
            app.router.add_post("/v1/responses", self.responses)
            app.router.add_get("/v1/models", self.models)
            app.router.add_post("/tokenize", self.tokenize)
            app.router.add_post("/detokenize", self.detokenize)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/load", self.load)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        counted = request.path.startswith("/v1/") or request.path in ("/tokenize", "/detokenize")
        if counted:
            self.inflight += 1
            self._idle.clear()
        try:
            if self.pull is not None and request.method == "POST" and counted and not self.draining:
                raw = request.headers.get(KV_PULL_HEADER)
                if raw is not None:
                    try:
                        hint = kv_pull.parse(raw)
                    except kv_pull.BadHint as exc:
                        raise HttpError(400, str(exc), param=KV_PULL_HEADER) from None
                    budget = kv_pull.wait_budget_s(request.headers.get(DEADLINE_HEADER), time.time())
                    await self.pull(hint, budget)
            resp = await handler(request)
        except HttpError as e:
            resp = error_response(e.status, e.message, type_=e.type, param=e.param)
            if e.status == 408:
                resp.force_close()  # the rest of a slow body is not waited for
            return resp
        except EngineError as e:
            return _engine_error(e)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            msg = e.reason if e.status != 404 else f"no route {request.method} {request.path}"
            return error_response(e.status, msg)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal error in the runtime; see its log")
        finally:
            if counted:
                self.inflight -= 1
                if self.inflight == 0:
                    self._idle.set()
        if not resp.prepared:
            resp.headers[POD_ID_HEADER] = self.pod_id
        return resp

    # -- plain endpoints ------------------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.StreamResponse:
        if self.engine.ready:
            return web.Response(status=200)
        return error_response(503, "the engine is not ready")

    async def ready(self, request: web.Request) -> web.StreamResponse:
        """Readiness: the engine serves and the pod is not shutting down (routers stop sending when it fails)."""
        if self.draining:
            return error_response(503, "the pod is draining (shutting down)")
        return await self.health(request)

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        """Any OpenAI route of a vLLM pod: the client's bytes to vLLM, vLLM's answer back, both unchanged."""
        body = await self._read_raw(request) if request.method == "POST" else b""
        upstream: Any = self.engine
        return await proxy.proxy(
            request, upstream, body, _slice_key(request), self.on_finish, (POD_ID_HEADER, self.pod_id)
        )

    async def models(self, request: web.Request) -> web.StreamResponse:
        m = self.engine.model
        card = {
            "id": m, "object": "model", "created": self.created, "owned_by": "brunoise", "root": m, "parent": None,
            "max_model_len": self.engine.max_model_len, "permission": [],
        }  # fmt: skip
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        text = await self.engine.metrics_text()
        return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"X-Format": "0.0.4"})

    async def load(self, request: web.Request) -> web.StreamResponse:
        include_cache = request.query.get("cache", "1").lower() not in ("0", "false", "no")
        body: dict[str, Any] = {
            "pod_id": self.pod_id,
            "ready": self.engine.ready,
            "model": self.engine.model,
            "engine": dataclasses.asdict(self.engine.load()),
            "unix_ms": int(time.time() * 1000),
        }
        if include_cache:
            view = self.engine.cache_view()
            body["cache"] = {
                "chunk_bytes": view.chunk_bytes,
                "prefix_hashes": sorted(view.prefix_hashes),
                "blocks_total": view.blocks_total,
                "blocks_used": view.blocks_used,
                "epoch": view.epoch,
                "block_tokens": view.block_tokens,
                "incarnation": view.incarnation,
            }
        return web.json_response(body)

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        self._check_model(body)
        if "messages" in body and body["messages"] is not None:
            text = render_chat(_messages(body["messages"]))
        elif "prompt" in body:
            prompt = body["prompt"]
            if not isinstance(prompt, str):
                raise HttpError(400, "prompt must be a string", param="prompt")
            text = prompt
        else:
            raise HttpError(400, "send 'prompt' (a string) or 'messages' (a list of chat messages)", param="prompt")
        tokens = await self.engine.tokenize(text)
        return web.json_response(
            {"count": len(tokens), "max_model_len": self.engine.max_model_len, "tokens": tokens, "token_strs": None}
        )

    async def detokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        self._check_model(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32 for t in tokens
        ):
            raise HttpError(400, "tokens must be a list of token ids (integers in [0, 2^32))", param="tokens")
        return web.json_response({"prompt": detokenize(tokens)})

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """Deterministic unit vectors from each input's text (a stand-in: same text, same vector), in OpenAI's shape."""
        body = await self._read_json(request)
        self._check_model(body)
        texts = _embedding_inputs(body.get("input"))
        dims = _opt_int(body, "dimensions")
        dims = _SIM_EMBEDDING_DIMS if dims is None else dims
        if not 1 <= dims <= 4096:
            raise HttpError(400, f"dimensions must be in [1, 4096], got {dims}", param="dimensions")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise HttpError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
        data: list[dict[str, Any]] = []
        n_tokens = 0
        for i, text in enumerate(texts):
            n_tokens += len(await self.engine.tokenize(text))
            vec = _sim_embedding(text, dims)
            emb: object = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if fmt == "base64" else vec
            data.append({"index": i, "object": "embedding", "embedding": emb})
        return web.json_response(
            {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": self.engine.model,
             "data": data, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens, "completion_tokens": 0}}
        )  # fmt: skip

    async def responses(self, request: web.Request) -> web.StreamResponse:
        await self._read_json(request)
        raise HttpError(400, f"the simulated engine does not serve /v1/responses; {_VLLM_ONLY}", param="input")

    # -- generation -----------------------------------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        self._check_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list):
            if not prompt:
                raise HttpError(400, "prompt must not be empty; send the prompt text", param="prompt")
            raise HttpError(
                400, "send exactly one prompt, as a string (batches and token ids are not served)", param="prompt"
            )
        if not isinstance(prompt, str):
            raise HttpError(400, "prompt is required and must be a string", param="prompt")
        if not prompt:
            raise HttpError(400, "prompt must not be empty; send at least one character", param="prompt")
        max_tokens = _opt_int(body, "max_tokens")
        parsed = await self._parse(
            request, body, prompt=prompt, messages=None, max_tokens=16 if max_tokens is None else max_tokens
        )
        rid = parsed.request.request_id
        model = self.engine.model
        created = int(time.time())

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
            return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}

        if parsed.stream:
            return await self._stream(
                request, parsed, lambda c, first: [chunk(c.text, c.finish_reason)], "text_completion"
            )
        texts, last = await self._collect(parsed)
        choice = {"index": 0, "text": texts, "logprobs": None, "finish_reason": last.finish_reason, "stop_reason": None}
        return web.json_response(
            {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice],
             "usage": _usage(last)}
        )  # fmt: skip

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        self._check_model(body)
        if "messages" not in body:
            raise HttpError(400, "messages is required: a list of {role, content} objects", param="messages")
        messages = _messages(body["messages"])
        max_tokens = _opt_int(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _opt_int(body, "max_tokens")
        if max_tokens is None:
            # vLLM's default for chat: whatever room the context leaves
            n_prompt = len(await self.engine.tokenize(render_chat(messages)))
            max_tokens = max(1, self.engine.max_model_len - n_prompt)
        parsed = await self._parse(request, body, prompt=None, messages=messages, max_tokens=max_tokens)
        rid = parsed.request.request_id
        model = self.engine.model
        created = int(time.time())

        def chunks(c: EngineChunk, first: bool) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
            if first:
                delta0 = {"role": "assistant", "content": ""}
                out.append(
                    {**base, "choices": [{"index": 0, "delta": delta0, "logprobs": None, "finish_reason": None}]}
                )
            if c.text or c.finish_reason is not None:
                delta = {"content": c.text} if c.text else {}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": c.finish_reason}
                out.append({**base, "choices": [choice]})
            return out

        if parsed.stream:
            return await self._stream(request, parsed, chunks, "chat.completion.chunk")
        text, last = await self._collect(parsed)
        choice = {
            "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": last.finish_reason, "stop_reason": None,
        }  # fmt: skip
        return web.json_response(
            {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": [choice],
             "usage": _usage(last)}
        )  # fmt: skip

    async def _parse(
        self,
        request: web.Request,
        body: Mapping[str, Any],
        *,
        prompt: str | None,
        messages: list[dict[str, object]] | None,
        max_tokens: int,
    ) -> _Parsed:
        if max_tokens < 1:
            raise HttpError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
        if max_tokens > self.engine.max_model_len:
            raise HttpError(
                400,
                f"max_tokens={max_tokens} exceeds this model's maximum context length of "
                f"{self.engine.max_model_len} tokens; lower max_tokens",
                param="max_tokens",
            )
        n = _opt_int(body, "n")
        if n is not None and n != 1:
            raise HttpError(400, f"n must be 1 on the simulated engine, got n={n}; {_VLLM_ONLY}", param="n")
        _refuse_unsupported(body)
        temperature = _opt_float(body, "temperature", 1.0)
        top_p = _opt_float(body, "top_p", 1.0)
        seed = _opt_int(body, "seed")
        stop_raw = body.get("stop")
        if stop_raw is None:
            stop: tuple[str, ...] = ()
        elif isinstance(stop_raw, str):
            stop = (stop_raw,)
        elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
            stop = tuple(stop_raw)
        else:
            raise HttpError(400, "stop must be a string or a list of strings", param="stop")
        ignore_eos = _opt_bool(body, "ignore_eos", False)
        stream = _opt_bool(body, "stream", False)
        opts = body.get("stream_options")
        include_usage = False
        if opts is not None:
            if not stream:
                raise HttpError(400, "stream_options can only be set when stream is true", param="stream_options")
            if not isinstance(opts, dict):
                raise HttpError(400, "stream_options must be an object", param="stream_options")
            include_usage = _opt_bool(opts, "include_usage", False, param="stream_options.include_usage")
        slice_key = _slice_key(request)
        rid = (
            request.headers.get("X-Request-Id")
            or f"{'chatcmpl' if messages is not None else 'cmpl'}-{uuid.uuid4().hex}"
        )
        if len(rid) > _MAX_REQUEST_ID:
            raise HttpError(400, f"X-Request-Id is longer than {_MAX_REQUEST_ID} characters; shorten it")
        sampling = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed, ignore_eos=ignore_eos
        )
        er = EngineRequest(
            request_id=rid, prompt=prompt, messages=messages, sampling=sampling, slice_key=slice_key,
            traceparent=request.headers.get("traceparent"),
        )  # fmt: skip
        return _Parsed(er, stream, include_usage)

    async def _collect(self, parsed: _Parsed) -> tuple[str, EngineChunk]:
        texts: list[str] = []
        last: EngineChunk | None = None
        async with contextlib.aclosing(self.engine.generate(parsed.request)) as agen:  # type: ignore[type-var]
            async for c in agen:
                texts.append(c.text)
                last = c
        if last is None or last.finish_reason is None:
            raise HttpError(500, "the engine ended the request without a final chunk")
        self._finished(parsed, last)
        return "".join(texts), last

    async def _stream(
        self,
        request: web.Request,
        parsed: _Parsed,
        render: Callable[[EngineChunk, bool], list[dict[str, Any]]],
        obj: str,
    ) -> web.StreamResponse:
        agen: AsyncIterator[EngineChunk] = self.engine.generate(parsed.request)
        async with contextlib.aclosing(agen):  # type: ignore[type-var]
            # the first chunk (or the engine's refusal) comes before any byte, so bad input still gets a status
            try:
                chunk = await anext(agen)
            except StopAsyncIteration:
                raise HttpError(500, "the engine ended the request without output") from None
            resp = web.StreamResponse(
                status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            resp.headers[POD_ID_HEADER] = self.pod_id
            await resp.prepare(request)
            first = True
            try:
                while True:
                    for payload in render(chunk, first):
                        await resp.write(_sse(payload))
                    first = False
                    if chunk.finish_reason is not None:
                        break
                    chunk = await anext(agen)
            except EngineError as e:
                await resp.write(_sse(error_body(e.status, e.message, type_=e.code, param=e.param)))
                await resp.write(b"data: [DONE]\n\n")
                return resp
            except (ConnectionError, asyncio.CancelledError):
                raise  # the client went away: aclosing aborts the request
            except Exception:
                log.exception("stream of %s failed", parsed.request.request_id)
                await resp.write(_sse(error_body(500, "internal error in the runtime; see its log")))
                await resp.write(b"data: [DONE]\n\n")
                return resp
            self._finished(parsed, chunk)
            if parsed.include_usage:
                r = parsed.request
                model = self.engine.model
                usage = {"id": r.request_id, "object": obj, "created": int(time.time()), "model": model, "choices": []}
                await resp.write(_sse({**usage, "usage": _usage(chunk)}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        return resp

    def _finished(self, parsed: _Parsed, last: EngineChunk) -> None:
        if self.on_finish is not None:
            try:
                self.on_finish(parsed.request.slice_key, last)
            except Exception:
                log.exception("finish hook failed")

    # -- input ----------------------------------------------------------------------------------------------------------

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        if "Content-Type" in request.headers:
            ctype = request.content_type
            if ctype != "application/json" and not ctype.endswith("+json"):
                raise HttpError(415, f"Content-Type must be application/json, got {ctype!r}")
        raw = await self._read_raw(request)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HttpError(
                400, f"request body is not valid UTF-8 (byte {e.start}); encode the JSON as UTF-8"
            ) from None
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            raise HttpError(
                400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
        except RecursionError:
            raise HttpError(400, "request body nests too deeply") from None
        except ValueError as e:  # e.g. an integer over json's digit limit
            raise HttpError(400, f"request body is not acceptable JSON: {str(e)[:200]}") from None
        if not isinstance(body, dict):
            raise HttpError(400, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    async def _read_raw(self, request: web.Request) -> bytes:
        """The request body, within the size limit and the body read timeout."""
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise HttpError(
                413, f"request body of {request.content_length} bytes exceeds the limit of {self.max_body_bytes} bytes"
            )
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise HttpError(413, f"request body exceeds the limit of {self.max_body_bytes} bytes") from None
        except TimeoutError:
            raise HttpError(408, f"the request body did not arrive within {self.body_timeout_s:g}s") from None

    def _check_model(self, body: Mapping[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            return
        if not isinstance(model, str):
            raise HttpError(400, "model must be a string", param="model")
        if model != self.engine.model:
            raise HttpError(
                404,
                f"The model `{model[:_MAX_ECHO]}` does not exist. This pod serves `{self.engine.model}`.",
                param="model",
            )


#: What a refusal of the simulated engine suggests.
_VLLM_ONLY = "a vLLM pod (brunoise-runtime --engine vllm) serves it"
_SIM_EMBEDDING_DIMS = 32


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """A clear 400 for a field the simulated engine cannot honour (a real vLLM pod passes it through)."""
    for name in ("tools", "logit_bias", "prompt_logprobs", "structured_outputs", "guided_json", "guided_regex",
                 "guided_choice", "guided_grammar", "best_of"):  # fmt: skip
        if body.get(name):
            raise HttpError(400, f"the simulated engine does not serve {name!r}; {_VLLM_ONLY}", param=name)
    tc = body.get("tool_choice")
    if tc is not None and tc != "none":
        raise HttpError(400, f"the simulated engine does not serve tool_choice; {_VLLM_ONLY}", param="tool_choice")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") == "text"):
        raise HttpError(400, f"the simulated engine serves response_format text only; {_VLLM_ONLY}",
                        param="response_format")  # fmt: skip
    lp = body.get("logprobs")
    if lp is not None and lp is not False:
        raise HttpError(400, f"the simulated engine does not serve logprobs; {_VLLM_ONLY}", param="logprobs")
    if body.get("top_logprobs"):
        raise HttpError(400, f"the simulated engine does not serve top_logprobs; {_VLLM_ONLY}", param="top_logprobs")


def _embedding_inputs(raw: object) -> list[str]:
    """The texts of an embeddings ``input``: a string, a list of strings, token ids or lists of token ids."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(x, str) for x in raw):
            return [str(x) for x in raw]
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            return [detokenize(raw)]
        if all(isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in raw):
            return [detokenize(x) for x in raw]
    raise HttpError(
        400, "input must be a string, a non-empty list of strings, token ids or lists of token ids", param="input"
    )


def _sim_embedding(text: str, dims: int) -> list[float]:
    """A unit vector determined by ``text``."""
    raw = [xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"), seed=i) for i in range(dims)]
    vec = [(v / 2**63) - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _usage(c: EngineChunk) -> dict[str, Any]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
    }


def _slice_key(request: web.Request) -> int | None:
    raw = request.headers.get(SLICE_KEY_HEADER)
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 20 or int(raw) >= _MAX_SLICE_KEY:
        raise HttpError(400, f"{SLICE_KEY_HEADER} must be a decimal integer in [0, 2^64), got {raw[:40]!r}")
    return int(raw)


def _opt_int(body: Mapping[str, Any], name: str, *, param: str | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise HttpError(400, f"{name} must be an integer, got {json.dumps(v)[:40]}", param=param or name)
    return v


def _opt_float(body: Mapping[str, Any], name: str, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise HttpError(400, f"{name} must be a number, got {json.dumps(v)[:40]}", param=name)
    return float(v)


def _opt_bool(body: Mapping[str, Any], name: str, default: bool, *, param: str | None = None) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise HttpError(400, f"{name} must be true or false, got {json.dumps(v)[:40]}", param=param or name)
    return v


def _messages(raw: object) -> list[dict[str, object]]:
    """Validated chat messages as {role, content: str} (text parts of a content list joined)."""
    if not isinstance(raw, list) or not raw:
        raise HttpError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    out: list[dict[str, object]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise HttpError(400, f"messages[{i}] must be an object with role and content", param="messages")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise HttpError(400, f"messages[{i}].role must be a non-empty string", param="messages")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts: list[str] = []
            for j, p in enumerate(content):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    kind = p.get("type") if isinstance(p, dict) else None
                    raise HttpError(
                        400,
                        f"messages[{i}].content[{j}] is a {str(kind)[:40]!r} part: the simulated engine serves text "
                        f"parts {{type: text, text}} only; {_VLLM_ONLY}",
                        param="messages",
                    )
                parts.append(p["text"])
            content = "".join(parts)
        elif not isinstance(content, str):
            raise HttpError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")
        out.append({"role": role, "content": content})
    return out
