"""The one server interceptor that authenticates bearer tokens and enforces roles on a gRPC service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from sharder.assigner.status import bounded_details

from .tokens import Credentials, Principal, Role

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "bearer "

#: Per RPC, a check of the request against the caller (e.g. a pod token may only report for its own pod id);
#: returns an error message to refuse with PERMISSION_DENIED, or None.
RequestCheck = Callable[[Principal, Any], str | None]


def bearer_token(metadata: Any) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header in ``metadata``, else None."""
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION:
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text[: len(BEARER)].lower() == BEARER and text[len(BEARER) :].strip():
                return text[len(BEARER) :].strip()
    return None


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind that answers ``code`` without running the method."""
    if handler.unary_unary is not None:

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
    if handler.unary_stream is not None:

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield None  # pragma: no cover - abort raises

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
    raise TypeError("only unary-unary and unary-stream RPCs are guarded")


def _checked(
    handler: grpc.RpcMethodHandler[Any, Any], principal: Principal, check: RequestCheck
) -> grpc.RpcMethodHandler[Any, Any]:
    inner: Any = handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        why = check(principal, request)
        if why is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, bounded_details(why))
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Guards every RPC of ``service`` (e.g. ``brunoise.v1.Assigner``): no or unknown token → UNAUTHENTICATED,
    a role not in ``roles[method]`` or a failed ``checks[method]`` → PERMISSION_DENIED. Other services (Health,
    reflection) pass unchecked. The caller's principal is logged for admin calls (the audit trail proper is the
    service's)."""

    def __init__(
        self,
        credentials: Credentials,
        service: str,
        roles: Mapping[str, frozenset[Role]],
        checks: Mapping[str, RequestCheck] | None = None,
    ) -> None:
        self.credentials = credentials
        self.prefix = f"/{service}/"
        self.roles = dict(roles)
        self.checks = dict(checks or {})

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method_path: str = handler_call_details.method
        if handler is None or not method_path.startswith(self.prefix):
            return handler
        method = method_path[len(self.prefix) :]
        token = bearer_token(handler_call_details.invocation_metadata)
        principal = self.credentials.authenticate(token) if token is not None else None
        if principal is None:
            what = "no bearer token" if token is None else "an unknown token"
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs 'authorization: Bearer <token>' metadata; got {what}",
            )
        allowed = self.roles.get(method, frozenset())
        if principal.role not in allowed:
            need = ", ".join(sorted(r.value for r in allowed)) or "nobody"
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs role {need}; token {principal.name!r} has role {principal.role.value}",
            )
        check = self.checks.get(method)
        if check is not None:
            return _checked(handler, principal, check)
        return handler


def current_principal(context: grpc.aio.ServicerContext[Any, Any], credentials: Credentials | None) -> str:
    """Who made this call, for audit records: the token's principal, or "anonymous" on an open server."""
    if credentials is None:
        return "anonymous"
    token = bearer_token(context.invocation_metadata())
    principal = credentials.authenticate(token) if token is not None else None
    return str(principal) if principal is not None else "anonymous"
