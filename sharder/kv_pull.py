"""The KV pull hint a router adds to a request for its pod: which peer holds the request's prefix, and in which keys."""

from __future__ import annotations

import dataclasses
import re

from sharder.headers import KV_PULL_HEADER
from sharder.keyspace import KEYSPACE_END

#: The hint travels in ``sharder.headers.KV_PULL_HEADER``: ``<pod id> <lo> <hi>``, the peer by its pod id and the
#: SliceKeys [lo, hi) whose latest prompts on that peer hold the prefix (decimal).

#: What a pod did with a hint (``brunoise_runtime_kv_pulls_total{outcome}``): read (the peer's KV read before the
#: request), none (the peer held nothing to read), failed (no answer or a refused read), timeout, unknown_peer (not a
#: peer the assigner named: nothing sent), no_connector (the pod's engine reads no KV), no_time (the request had too
#: little time left: nothing sent).
OUTCOMES = ("read", "none", "failed", "timeout", "unknown_peer", "no_connector", "no_time")

#: The most a request waits for its pull before it computes its prefix itself (a read longer than this would cost
#: about what the prefill does), and the share of the time its request has left that it may take
#: (``x-brunoise-deadline-ms``, the router's absolute deadline in unix milliseconds).
MAX_WAIT_S = 2.0
DEADLINE_SHARE = 0.5

_POD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_MAX_LEN = 320


class BadHint(ValueError):
    """A malformed hint header."""


@dataclasses.dataclass(frozen=True, slots=True)
class PullHint:
    """Read the prefix of a request from ``pod_id``: its latest prompt among the SliceKeys [lo, hi)."""

    pod_id: str
    lo: int
    hi: int

    def header(self) -> str:
        return f"{self.pod_id} {self.lo} {self.hi}"


def wait_budget_s(deadline_ms: str | None, now_unix: float) -> float:
    """How long a request may wait for its pull: ``MAX_WAIT_S``, and at most ``DEADLINE_SHARE`` of the time left
    until its deadline (``deadline_ms``: the ``sharder.headers.DEADLINE_HEADER`` value; absent or not an integer: no deadline); 0
    when none is left. A pull that cannot finish in time costs the request the prefill it would have saved and
    the wait besides."""
    if deadline_ms is None:
        return MAX_WAIT_S
    try:
        left = int(deadline_ms.strip()) / 1000.0 - now_unix
    except ValueError:
        return MAX_WAIT_S
    return max(0.0, min(MAX_WAIT_S, DEADLINE_SHARE * left))


def parse(value: str) -> PullHint:
    """The hint of a header value; BadHint naming what is wrong."""
    if len(value) > _MAX_LEN:
        raise BadHint(f"{KV_PULL_HEADER} is longer than {_MAX_LEN} characters")
    parts = value.split()
    if len(parts) != 3:
        raise BadHint(f"{KV_PULL_HEADER} must be '<pod id> <lo> <hi>'")
    pod_id, lo_s, hi_s = parts
    if not _POD_ID.match(pod_id):
        raise BadHint(f"{KV_PULL_HEADER}: the pod id must be [A-Za-z0-9._-], up to 253 characters")
    if not (lo_s.isdigit() and hi_s.isdigit() and len(lo_s) <= 20 and len(hi_s) <= 20):
        raise BadHint(f"{KV_PULL_HEADER}: lo and hi must be decimal integers")
    lo, hi = int(lo_s), int(hi_s)
    if not 0 <= lo < hi <= KEYSPACE_END:
        raise BadHint(f"{KV_PULL_HEADER}: lo and hi must satisfy 0 <= lo < hi <= 2^64")
    return PullHint(pod_id, lo, hi)


__all__ = [
    "DEADLINE_SHARE", "MAX_WAIT_S", "OUTCOMES", "BadHint", "PullHint", "parse",
    "wait_budget_s",
]  # fmt: skip
