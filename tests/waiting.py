"""The tests' one wait-until: poll a condition with a deadline (blocking or awaited), failing with what it waited for."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

#: exceptions a condition may raise while it is not met yet (a server still starting, a key not yet there)
NOT_YET: tuple[type[BaseException], ...] = (Exception,)


def _timed_out(what: str, timeout_s: float, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


def wait_until(
    pred: Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = NOT_YET,
) -> Any:
    """Call ``pred`` until it returns something truthy, and return that; an exception in ``retry_on`` counts as
    not yet. After ``timeout_s`` fail naming ``what`` and the last result or exception."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            last = pred()
            if last:
                return last
        except retry_on as e:
            last = e
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, last)
        time.sleep(interval_s)


async def until(
    pred: Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = NOT_YET,
) -> Any:
    """``wait_until`` for a running event loop: ``pred`` may return an awaitable (awaited), and the waits between
    calls let the loop run."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            got = pred()
            last = await got if inspect.isawaitable(got) else got
            if last:
                return last
        except retry_on as e:
            last = e
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, last)
        await asyncio.sleep(interval_s)
