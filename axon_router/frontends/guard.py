"""Checks both front ends make before a request reaches the router: API key (and its tenant), an assignment."""

from __future__ import annotations

from axon_router.auth import ApiKey, ApiKeys
from axon_router.errors import Unavailable
from axon_router.router import Router
from sharder.headers import TENANT_HEADER  # an API key's tenant replaces whatever the client sent

__all__ = ["TENANT_HEADER", "authenticate", "require_assignment"]


def authenticate(keys: ApiKeys | None, authorization: str | None) -> ApiKey | None:
    """The caller's key (None when the router runs without keys); Unauthorized when keys are required."""
    if keys is None:
        return None
    return keys.check(authorization)


def require_assignment(router: Router) -> None:
    """Unavailable (503, retryable) until the router has received an assignment to route on."""
    if not router.targets:
        raise Unavailable(
            "the router has no assignment yet (it is starting or cannot reach an assigner); retry shortly",
            code="no_assignment",
            retry_after_s=router.knobs.retry_after_s,
        )
