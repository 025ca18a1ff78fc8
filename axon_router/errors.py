"""Router errors: each carries the HTTP status, the OpenAI error type/code and the gRPC status it maps to."""

from __future__ import annotations

import grpc


class RouterError(Exception):
    """A request the router refuses or cannot serve, with a message that says what to change."""

    status = 500
    type = "internal_error"
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after_s: float | None = None
    ) -> None:
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


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    grpc_code = grpc.StatusCode.NOT_FOUND


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
