"""gRPC front end: Router.Generate (server stream) with health checking and reflection; thin around ``Router``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from axon_router.errors import RouterError, StreamBroken
from axon_router.forward import data_of
from axon_router.router import Router
from axon_router.routing_key import parse_grpc
from brunoise.v1 import inference_pb2, router_pb2, router_pb2_grpc

SERVICE_NAME = "brunoise.v1.Router"


def _text_of(choice: dict[str, Any]) -> str:
    if "delta" in choice:
        return str((choice.get("delta") or {}).get("content") or "")
    return str(choice.get("text") or "")


class RouterService(router_pb2_grpc.RouterServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], e: RouterError) -> None:
        if e.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", str(max(1, math.ceil(e.retry_after_s)))),))
        await context.abort(e.grpc_code, e.message)

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        router = self.router
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        try:
            req = parse_grpc(
                request, context.time_remaining(), router.knobs, time.monotonic(), md.get("traceparent"), md
            )
            f = router.begin(req, "grpc")
        except RouterError as e:
            router.metrics.count_request("grpc", e.grpc_code.name)
            await self._abort(context, e)
            return
        try:
            up = await router.open(f)
        except RouterError as e:
            router.finish(f, e.grpc_code.name, e)
            await self._abort(context, e)
            return
        pod_id = f.pod.id if f.pod else ""
        context.set_trailing_metadata(
            (("x-brunoise-pod", pod_id), ("x-brunoise-pick", f.reason), ("x-brunoise-attempts", str(f.attempts)))
        )
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
        except StreamBroken as e:
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
        except (ValueError, TypeError) as e:
            err2 = StreamBroken(f"the pod sent a malformed stream: {e}")
            router.finish(f, "ABORTED", err2)
            await context.abort(grpc.StatusCode.ABORTED, err2.message)
            return
        except BaseException as e:
            router.finish(f, "CANCELLED", e)
            raise
        router.finish(f, "OK")


def build_server(router: Router, host: str, port: int) -> tuple[grpc.aio.Server, int, health.HealthServicer]:
    """The gRPC server with Router, health (SERVING for "" and the Router service) and reflection."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    router_pb2_grpc.add_RouterServicer_to_server(RouterService(router), server)  # type: ignore[no-untyped-call]
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    names = (router_pb2.DESCRIPTOR.services_by_name["Router"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"{host}:{port}")
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    hs.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, port, hs
