"""Helpers shared by the product tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(check: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.1) -> Any:
    """Poll ``check`` until it returns a truthy value (returned) or raise AssertionError with its last result."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s; last result: {last!r}")
