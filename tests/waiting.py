"""The tests' one wait-until: poll a condition with a deadline (blocking or awaited), failing with what it waited for."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

Pred = Callable[[], Any]
Retry = tuple[type[BaseException], ...]

#: exceptions a condition may raise while it is not met yet (a server still starting, a key not yet there)
NOT_YET: Retry = (Exception,)


class _Poll:
    """One wait: its deadline, what it waits for, and the last result or exception seen."""

    def __init__(self, timeout_s: float, what: str) -> None:
        self.timeout_s, self.what = timeout_s, what
        self.deadline = time.monotonic() + timeout_s
        self.last: object = None

    def give_up_if_late(self) -> None:
        if time.monotonic() >= self.deadline:
            raise AssertionError(f"timed out after {self.timeout_s}s waiting for {self.what}; last: {self.last!r}")


def wait_until(pred: Pred, timeout_s: float = 10.0, what: str = "condition", interval_s: float = 0.05,
               retry_on: Retry = NOT_YET) -> Any:  # fmt: skip
    """Call ``pred`` until it returns something truthy, and return that; an exception in ``retry_on`` counts as
    not yet. After ``timeout_s`` fail naming ``what`` and the last result or exception."""
    poll = _Poll(timeout_s, what)
    while True:
        try:
            poll.last = pred()
            if poll.last:
                return poll.last
        except retry_on as e:
            poll.last = e
        poll.give_up_if_late()
        time.sleep(interval_s)


async def until(pred: Pred, timeout_s: float = 10.0, what: str = "condition", interval_s: float = 0.05,
                retry_on: Retry = NOT_YET) -> Any:  # fmt: skip
    """``wait_until`` for a running event loop: ``pred`` may return an awaitable (awaited), and the waits between
    calls let the loop run."""
    poll = _Poll(timeout_s, what)
    while True:
        try:
            got = pred()
            poll.last = await got if inspect.isawaitable(got) else got
            if poll.last:
                return poll.last
        except retry_on as e:
            poll.last = e
        poll.give_up_if_late()
        await asyncio.sleep(interval_s)
