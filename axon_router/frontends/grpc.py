"""gRPC front end: Router.Generate (server stream) with health checking and reflection; thin around ``Router``."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from axon_router.auth import ApiKeys
from axon_router.errors import BadRequest, RouterError, StreamBroken, clip
from axon_router.forward import data_of
from axon_router.frontends.guard import authenticate, require_assignment
from axon_router.router import Router
from axon_router.routing_key import parse_grpc
from brunoise_api.v1 import inference_pb2, router_pb2
from sharder.prefix import InvalidText

SERVICE_NAME = "brunoise.v1.Router"
log = logging.getLogger("axon_router.grpc")
#: Set when the request proto carries a tenant (the routing group): an API key's tenant is written into it.
_HAS_TENANT = "tenant" in inference_pb2.GenerateRequest.DESCRIPTOR.fields_by_name


def _text_of(choice: dict[str, Any]) -> str:
    if "delta" in choice:
        return str((choice.get("delta") or {}).get("content") or "")
    return str(choice.get("text") or "")


def _decode(raw: bytes) -> inference_pb2.GenerateRequest:
    """The request message; BadRequest (INVALID_ARGUMENT) for bytes that are not a GenerateRequest."""
    try:
        return inference_pb2.GenerateRequest.FromString(raw)
    except (DecodeError, ValueError, TypeError):
        raise BadRequest(
            "the request is not a valid brunoise.v1.GenerateRequest (protobuf wire format); check the client's stubs",
            code="invalid_request",
        ) from None


class RouterService:
    """Router.Generate; requests arrive as bytes and are decoded here, so undecodable ones get INVALID_ARGUMENT."""

    def __init__(self, router: Router, api_keys: ApiKeys | None = None) -> None:
        self.router = router
        self.api_keys = api_keys

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], e: RouterError) -> None:
        if e.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", str(max(1, math.ceil(e.retry_after_s)))),))
        await context.abort(e.grpc_code, e.message)

    def _parse(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        router = self.router
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        key = authenticate(self.api_keys, md.get("authorization"))
        request = _decode(raw)
        require_assignment(router)
        if key is not None and key.tenant is not None and _HAS_TENANT:
            setattr(request, "tenant", key.tenant)  # noqa: B010 (the field exists only in newer stubs)
        try:
            return parse_grpc(
                request, context.time_remaining(), router.knobs, time.monotonic(), md.get("traceparent"), md
            )
        except InvalidText as e:
            raise BadRequest(str(e), param="input", code="invalid_encoding") from None
        except RouterError:
            raise
        except (ValueError, TypeError, OverflowError, KeyError) as e:
            raise BadRequest(f"invalid request: {clip(str(e), 200)}", code="invalid_request") from None

    async def Generate(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        router = self.router
        try:
            req = self._parse(raw, context)
            f = router.begin(req, "grpc")
        except RouterError as e:
            router.metrics.count_request("grpc", e.grpc_code.name)
            await self._abort(context, e)
            return
        except Exception:
            log.exception("unhandled error parsing a request")
            router.metrics.count_request("grpc", "INTERNAL")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the router; see its log")
            return
        try:
            up = await router.open(f)
        except RouterError as e:
            router.finish(f, e.grpc_code.name, e)
            await self._abort(context, e)
            return
        except BaseException as e:  # cancelled (the client went away) or a bug: the id and the span must not leak
            router.finish(f, "CANCELLED" if isinstance(e, asyncio.CancelledError) else "INTERNAL", e)
            if isinstance(e, Exception):
                log.exception("unhandled error before the first token")
                await context.abort(grpc.StatusCode.INTERNAL, "internal error in the router; see its log")
            raise
        pod_id = f.pod.id if f.pod else ""
        context.set_trailing_metadata(f.pick_metadata())
        rid = req.request_id or ""
        index = 0
        last: inference_pb2.GenerateChunk | None = None  # the finishing chunk waits for the usage chunk
        try:
            ev: bytes | None = up.first
            events = up.events()
            while ev is not None:
                data = data_of(ev)
                if data == b"[DONE]":
                    break
                if data:
                    obj = json.loads(data)
                    if "error" in obj:
                        err = obj["error"]
                        raise StreamBroken(
                            f"the pod reported an error mid-stream: {err.get('message') if isinstance(err, dict) else err}"
                        )
                    choices = obj.get("choices") or []
                    if choices:
                        c = choices[0]
                        text = _text_of(c)
                        if text or c.get("finish_reason"):
                            if last is not None:
                                yield last
                                index += 1
                            last = inference_pb2.GenerateChunk(request_id=rid, pod_id=pod_id, index=index, text=text)
                            if c.get("finish_reason"):
                                last.finish_reason = str(c["finish_reason"])
                    usage = obj.get("usage")
                    if usage:
                        if last is None:
                            last = inference_pb2.GenerateChunk(request_id=rid, pod_id=pod_id, index=index)
                        last.usage.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        last.usage.completion_tokens = int(usage.get("completion_tokens") or 0)
                        details = usage.get("prompt_tokens_details") or {}
                        last.usage.cached_tokens = int(details.get("cached_tokens") or 0)
                ev = await anext(events, None)
            if last is not None:
                yield last
                index += 1
        except StreamBroken as e:  # also UpstreamIdle: the pod stalled mid-stream
            router.finish(f, "ABORTED", e)
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"{e.message}; {index} chunk(s) were already sent, so the request was not retried",
            )
            return
        except RouterError as e:
            router.finish(f, e.grpc_code.name, e)
            await context.abort(e.grpc_code, e.message)
            return
        except Exception as e:  # a malformed event from the pod (bad JSON, wrong types)
            err2 = StreamBroken(f"the pod sent a malformed stream: {clip(str(e), 200)}")
            router.finish(f, "ABORTED", err2)
            await context.abort(grpc.StatusCode.ABORTED, err2.message)
            return
        except BaseException as e:
            router.finish(f, "CANCELLED", e)
            raise
        router.finish(f, "OK")


def build_server(
    router: Router, host: str, port: int, api_keys: ApiKeys | None = None, *, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int, health.HealthServicer]:
    """The gRPC server with Router (API keys as ``authorization: Bearer KEY`` metadata when given), health
    ("" and the Router service, mirroring ``/ready``) and reflection. ``reuse_port``: share the port with the
    other workers of ``--workers N`` (otherwise a second router on the port fails to bind, as it should)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    svc = RouterService(router, api_keys)
    generate = grpc.unary_stream_rpc_method_handler(
        svc.Generate, request_deserializer=None, response_serializer=inference_pb2.GenerateChunk.SerializeToString
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {"Generate": generate}),))
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    names = (router_pb2.DESCRIPTOR.services_by_name["Router"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"{host}:{port}")
    # NOT_SERVING until readiness says otherwise (``readiness.Readiness.start_health_sync``)
    hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    hs.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, port, hs
