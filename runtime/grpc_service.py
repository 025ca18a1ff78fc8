"""The gRPC surface of a runtime pod: the brunoise.v1 Runtime service, grpc health checking and reflection."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from brunoise_api.v1 import inference_pb2, runtime_pb2, runtime_pb2_grpc, slicing_pb2
from runtime.engines.base import Engine, EngineChunk, EngineError, EngineRequest, SamplingParams
from runtime.http_api import FinishHook
from runtime.warm import PromptLog, WarmMetrics, hold_kv, hot_prompts_response, warm_priority
from sharder.codec import engine_load_to_proto
from sharder.headers import SLICE_KEY_HEADER
from sharder.keyspace import slice_key as app_slice_key
from sharder.security.interceptor import bearer_token
from sharder.security.tokens import Credentials, Role

log = logging.getLogger(__name__)

RUNTIME_SERVICE = runtime_pb2.DESCRIPTOR.services_by_name["Runtime"].full_name
_DEFAULT_MAX_TOKENS = 16

_STATUS_CODES: Mapping[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status matching an EngineError's HTTP status."""
    return _STATUS_CODES.get(http_status, grpc.StatusCode.INTERNAL)


async def _decode(raw: bytes, cls: Any, context: grpc.aio.ServicerContext[object, object]) -> Any:
    """The request message, or INVALID_ARGUMENT for bytes that are not one (not UNKNOWN naming a Python class)."""
    try:
        return cls.FromString(raw)
    except (DecodeError, ValueError, TypeError):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {cls.DESCRIPTOR.full_name} (protobuf wire format); check the client's stubs",
        )


class RuntimeService(runtime_pb2_grpc.RuntimeServicer):
    """Generate (server streaming) and GetLoad over one engine."""

    async def generate_raw(
        self, raw: bytes, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        """Generate on undecoded bytes (as registered): a malformed request gets INVALID_ARGUMENT."""
        request = await _decode(raw, inference_pb2.GenerateRequest, context)
        async for chunk in self.Generate(request, context):
            yield chunk

    async def get_load_raw(
        self, raw: bytes, context: grpc.aio.ServicerContext[object, object]
    ) -> runtime_pb2.GetLoadResponse:
        return await self.GetLoad(await _decode(raw, runtime_pb2.GetLoadRequest, context), context)

    def __init__(
        self,
        engine: Engine,
        *,
        pod_id: str,
        labels: Mapping[str, str] | None = None,
        on_finish: FinishHook | None = None,
        prompt_log: PromptLog | None = None,
        warm_metrics: WarmMetrics | None = None,
        peer_credentials: Credentials | None = None,
    ) -> None:
        self.engine = engine
        self.pod_id = pod_id
        self.labels = dict(labels or {})
        self.on_finish = on_finish
        self.prompt_log = prompt_log if prompt_log is not None else PromptLog()
        self.warm_metrics = warm_metrics
        self.peer_credentials = peer_credentials

    async def hot_prompts_raw(
        self, raw: bytes, context: grpc.aio.ServicerContext[object, object]
    ) -> runtime_pb2.HotPromptsResponse:
        return await self.HotPrompts(await _decode(raw, runtime_pb2.HotPromptsRequest, context), context)

    async def HotPrompts(
        self, request: runtime_pb2.HotPromptsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> runtime_pb2.HotPromptsResponse:
        """A warming peer asks for the prompts this pod served most in a key range. With ``peer_credentials`` only
        a pod token may ask (the prompts are users' text); without, the call is as open as Generate."""
        creds = self.peer_credentials
        if creds is not None:
            token = bearer_token(context.invocation_metadata())
            who = creds.authenticate(token) if token else None
            if who is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "HotPrompts needs a pod token (Bearer)")
            elif who.role is not Role.POD:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not read prompts; pods only")
        resp: runtime_pb2.HotPromptsResponse = hot_prompts_response(self.pod_id, self.prompt_log, request)
        if self.warm_metrics is not None:
            self.warm_metrics.served.inc(len(resp.prompts))
        if request.kv_transfer and self.engine.kv_transfer and resp.prompts:
            # a request's pull is waited on by a client: its hold queues as a client request does
            priority = 0 if request.for_request else warm_priority(self.engine)
            await hold_kv(self.engine, resp, self.warm_metrics, priority)
        return resp

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        er = await self._engine_request(request, context)
        index = 0
        async with contextlib.aclosing(self.engine.generate(er)) as agen:  # type: ignore[type-var]
            try:
                async for c in agen:
                    msg = inference_pb2.GenerateChunk(
                        request_id=er.request_id, text=c.text, pod_id=self.pod_id, index=index
                    )
                    index += 1
                    if c.finish_reason is not None:
                        msg.finish_reason = c.finish_reason
                        msg.usage.CopyFrom(
                            inference_pb2.Usage(
                                prompt_tokens=c.prompt_tokens,
                                completion_tokens=c.completion_tokens,
                                cached_tokens=c.cached_tokens,
                            )
                        )
                        self._finished(er.slice_key, c)
                    yield msg
            except EngineError as e:
                await context.abort(grpc_code(e.status), e.message)

    async def GetLoad(
        self, request: runtime_pb2.GetLoadRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> runtime_pb2.GetLoadResponse:
        e = self.engine.load()
        resp = runtime_pb2.GetLoadResponse(
            pod_id=self.pod_id,
            ready=self.engine.ready,
            engine=engine_load_to_proto(e),
            unix_ms=int(time.time() * 1000),
        )
        if request.include_cache:
            v = self.engine.cache_view()
            resp.cache.CopyFrom(
                slicing_pb2.CacheSummary(
                    chunk_bytes=v.chunk_bytes,
                    prefix_hashes=sorted(v.prefix_hashes),
                    blocks_total=v.blocks_total,
                    blocks_used=v.blocks_used,
                    epoch=v.epoch,
                    block_tokens=v.block_tokens,
                    incarnation=v.incarnation,
                )
            )
        return resp

    # -- helpers --------------------------------------------------------------------------------------------------------

    async def _engine_request(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> EngineRequest:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if request.model and request.model != self.engine.model:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {request.model[:100]!r} is not served by pod {self.pod_id} (it serves {self.engine.model!r})",
            )
        for k, v in request.labels.items():
            if self.labels.get(k) != v:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"pod {self.pod_id} has label {k}={self.labels.get(k, '')!r}, the request requires {k}={v!r}",
                )
        which = request.WhichOneof("input")
        prompt: str | None = None
        messages: list[dict[str, object]] | None = None
        if which == "prompt":
            if not request.prompt:
                await context.abort(bad, "prompt is empty; send at least one character of prompt text")
            prompt = request.prompt
        elif which == "messages":
            if not request.messages.messages:
                await context.abort(bad, "messages is empty; send at least one chat message")
            messages = [{"role": m.role or "user", "content": m.content} for m in request.messages.messages]
        else:
            await context.abort(bad, "set one of prompt or messages")
        sp = request.sampling
        if sp.max_tokens < 0:
            await context.abort(bad, f"sampling.max_tokens must be >= 1 (0 = default 16), got {sp.max_tokens}")
        if sp.max_tokens > self.engine.max_model_len:
            await context.abort(
                bad, f"sampling.max_tokens={sp.max_tokens} exceeds max_model_len={self.engine.max_model_len}"
            )
        if sp.temperature < 0:
            await context.abort(bad, f"sampling.temperature must be >= 0, got {sp.temperature}")
        if not 0 <= sp.top_p <= 1:
            await context.abort(bad, f"sampling.top_p must be in (0, 1] (0 = default 1), got {sp.top_p}")
        md = dict(context.invocation_metadata() or ())
        key: int | None = None
        raw_key = md.get(SLICE_KEY_HEADER)
        if raw_key is not None:
            raw = str(raw_key).strip()
            if not raw.isdigit() or len(raw) > 20 or int(raw) >= 2**64:
                await context.abort(bad, f"{SLICE_KEY_HEADER} metadata must be a decimal integer in [0, 2^64)")
            key = int(raw)
        elif request.routing_key:
            key = app_slice_key(request.routing_key)
        if len(request.request_id) > 256:
            await context.abort(bad, "request_id is longer than 256 characters; shorten it")
        tp = md.get("traceparent")
        return EngineRequest(
            request_id=request.request_id or f"grpc-{uuid.uuid4().hex}",
            prompt=prompt,
            messages=messages,
            sampling=SamplingParams(
                max_tokens=sp.max_tokens or _DEFAULT_MAX_TOKENS,
                temperature=sp.temperature,
                top_p=sp.top_p or 1.0,
                stop=tuple(s for s in sp.stop if s),
                seed=sp.seed or None,
                ignore_eos=sp.ignore_eos,
            ),
            slice_key=key,
            traceparent=str(tp) if tp is not None else None,
        )

    def _finished(self, key: int | None, last: EngineChunk) -> None:
        if self.on_finish is not None:
            try:
                self.on_finish(key, last)
            except Exception:
                log.exception("finish hook failed")


class GrpcServer:
    """A grpc.aio server with the Runtime service, health (SERVING only while the engine is ready) and reflection."""

    def __init__(self, service: RuntimeService, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handlers = {
            "Generate": grpc.unary_stream_rpc_method_handler(
                service.generate_raw, response_serializer=inference_pb2.GenerateChunk.SerializeToString
            ),
            "GetLoad": grpc.unary_unary_rpc_method_handler(
                service.get_load_raw, response_serializer=runtime_pb2.GetLoadResponse.SerializeToString
            ),
            "HotPrompts": grpc.unary_unary_rpc_method_handler(
                service.hot_prompts_raw, response_serializer=runtime_pb2.HotPromptsResponse.SerializeToString
            ),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(RUNTIME_SERVICE, handlers),))
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (RUNTIME_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot bind gRPC to {host}:{port}")
        self.address = f"{host}:{self.port}"
        self._serving: bool | None = None

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING (overall and for the Runtime service) or NOT_SERVING; no-op when unchanged."""
        if serving == self._serving:
            return
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", RUNTIME_SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 2.0) -> None:
        with contextlib.suppress(Exception):
            await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
