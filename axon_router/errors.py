"""Router errors: each carries the HTTP status, the OpenAI error type/code and the gRPC status it maps to."""

from __future__ import annotations

import grpc

#: Longest error message sent to a client: whatever a message echoes (a model name, a header) is cut to fit.
MAX_MESSAGE_CHARS = 1024


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, keeping its head and tail and saying how much was cut."""
    if len(text) <= limit:
        return text
    note = f" ...[{len(text) - limit} characters cut]... "
    keep = max(0, limit - len(note))
    head = keep - keep // 4
    return text[:head] + note + text[len(text) - (keep - head) :]


class RouterError(Exception):
    """A request the router refuses or cannot serve, with a message that says what to change."""

    status = 500
    type = "internal_error"
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after_s: float | None = None
    ) -> None:
        message = clip(message)
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, object]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code or self.type}
        }


class BadRequest(RouterError):
    status = 400
    type = "invalid_request_error"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthorized(RouterError):
    """No API key, or one the router does not know (OpenAI's ``invalid_api_key``)."""

    status = 401
    type = "invalid_request_error"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    grpc_code = grpc.StatusCode.NOT_FOUND


class RequestTimeout(RouterError):
    """The client did not send its request (headers or body) in time."""

    status = 408
    type = "invalid_request_error"
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Conflict(RouterError):
    status = 409
    type = "conflict_error"
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class TooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Shed(RouterError):
    status = 429
    type = "rate_limit_error"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RouterError):
    status = 503
    type = "service_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RouterError):
    status = 504
    type = "timeout_error"
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UpstreamError(RouterError):
    """A pod answered the request with an error the router passes on (4xx from the engine)."""

    type = "upstream_error"

    def __init__(self, status: int, body: bytes, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.raw_body = body
        self.grpc_code = _GRPC_OF_HTTP.get(status, grpc.StatusCode.UNKNOWN)


class StreamBroken(RouterError):
    """The pod failed after output was already sent to the client; the request is not retried."""

    status = 502
    type = "upstream_stream_error"
    grpc_code = grpc.StatusCode.ABORTED


class UpstreamIdle(StreamBroken):
    """The pod sent nothing for ``stream_idle_timeout_s`` after it started answering (a stalled pod)."""

    status = 504
    type = "timeout_error"
    grpc_code = grpc.StatusCode.ABORTED

    def __init__(self, message: str) -> None:
        super().__init__(message, code="upstream_idle_timeout")


class InternalError(RouterError):
    """A bug in the router: the client gets a JSON 500 / INTERNAL, the log gets the traceback."""


_GRPC_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
