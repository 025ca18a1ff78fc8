"""The one place where errors become gRPC statuses (codes, messages, leader-hint metadata)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sharder import errors as core_errors
from sharder.headers import LEADER_METADATA_KEY
from sharder.store.base import StoreError

log = logging.getLogger(__name__)

#: Most UTF-8 bytes of a status message: it travels as the percent-encoded grpc-message trailer, and one over
#: the client's metadata limit (8 KiB soft, 16 KiB hard) turns the answer into RESOURCE_EXHAUSTED "Stream removed".
MAX_DETAILS = 1024


def bounded_details(message: str) -> str:
    """``message`` cut to MAX_DETAILS UTF-8 bytes (it may echo a client's huge field), saying how long it was."""
    raw = message.encode(errors="replace")
    if len(raw) <= MAX_DETAILS:
        return message
    tail = f" ... ({len(raw)} bytes, cut)"
    return raw[: MAX_DETAILS - len(tail)].decode(errors="ignore") + tail


class ServiceError(Exception):
    """An error the assigner answers with a specific gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


class InvalidArgument(ServiceError):
    """Malformed input; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """An unknown target, pod or override id."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    """The request is well formed but not acceptable in the current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(ServiceError):
    """A pod id already registered with another address."""

    code = grpc.StatusCode.ALREADY_EXISTS


class OutOfRange(ServiceError):
    """A generation that does not exist yet."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(ServiceError):
    """A request larger than the assigner accepts."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The store (or the leader) cannot be reached now; retry."""

    code = grpc.StatusCode.UNAVAILABLE


class Aborted(ServiceError):
    """A compare-and-swap kept conflicting; retry."""

    code = grpc.StatusCode.ABORTED


class NotLeader(FailedPrecondition):
    """A write sent to a follower: names the leader and carries its address as trailing metadata."""

    def __init__(self, leader_id: str, leader_address: str) -> None:
        where = f"{leader_id} at {leader_address}" if leader_id else "unknown"
        md = ((LEADER_METADATA_KEY, leader_address),) if leader_address else ()
        super().__init__(f"not the leader; leader is {where}", metadata=md)
        self.leader_id = leader_id
        self.leader_address = leader_address


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The gRPC status code, message and trailing metadata for ``exc``."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.message, exc.metadata
    if isinstance(exc, StoreError):
        return grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}", ()
    if isinstance(exc, core_errors.BrunoiseError):
        message = exc.message
        if exc.field and exc.field not in message:
            message = f"{exc.field}: {message}"
        return _core_code(exc), message, ()
    if isinstance(exc, ValueError | TypeError | OverflowError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), ()
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", ()


def _core_code(exc: core_errors.BrunoiseError) -> grpc.StatusCode:
    if isinstance(exc, core_errors.InvariantError | core_errors.OverrideError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, core_errors.UnknownTargetError | core_errors.UnknownPodError | core_errors.UnknownSliceError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, core_errors.GenerationError):
        return grpc.StatusCode.OUT_OF_RANGE
    return grpc.StatusCode.INVALID_ARGUMENT  # ConfigError, KeyTypeError, InvalidSliceError, LoadReportError


_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Self = TypeVar("_Self")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    code, message, metadata = to_status(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
    if metadata:
        context.set_trailing_metadata(metadata)
    await context.abort(code, bounded_details(message))


def unary(
    fn: Callable[[_Self, _Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Resp]],
) -> Callable[[_Self, _Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Resp]]:
    """Wrap a unary servicer method so every exception becomes its gRPC status."""

    @functools.wraps(fn)
    async def wrapper(self: _Self, request: _Req, context: grpc.aio.ServicerContext[Any, Any]) -> _Resp:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # every error becomes a status; nothing crashes the server
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc

    return wrapper


def streaming(
    fn: Callable[[_Self, _Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[_Resp]],
) -> Callable[[_Self, _Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[_Resp]]:
    """Wrap a server-streaming servicer method so every exception becomes its gRPC status."""

    @functools.wraps(fn)
    async def wrapper(self: _Self, request: _Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[_Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return wrapper
