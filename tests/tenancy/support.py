"""Shared helpers of the tenancy suite: an open-loop client that sends at a fixed rate and records every answer."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable, Sequence

from tests.router.conftest import MODEL, post


@dataclasses.dataclass(frozen=True, slots=True)
class Sent:
    """One request: when it was sent (monotonic), the router it went to, its answer and how long it took."""

    at: float
    router: int
    status: int
    headers: dict[str, str]
    body: bytes
    latency_s: float

    def error_code(self) -> str | None:
        try:
            return str(json.loads(self.body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


def chat(
    tenant: str, text: str = "hello", max_tokens: int = 4, *, session: str | None = None
) -> tuple[dict[str, object], dict[str, str]]:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }
    headers = {"x-tenant-id": tenant}
    if session is not None:
        headers["x-session-id"] = session
    return body, headers


def send_at_rate(
    urls: Sequence[str],
    make: Callable[[int], tuple[dict[str, object], dict[str, str]]],
    rate: float,
    duration_s: float,
    *,
    on_second: Callable[[int], None] | None = None,
    timeout_s: float = 15.0,
) -> list[Sent]:
    """Send ``rate`` requests/s for ``duration_s`` (open loop, round-robin over ``urls``); ``on_second(i)`` runs on
    the sending thread at each whole second ``i`` >= 1 (to inject a fault at a known time). Returns every answer."""
    n = int(rate * duration_s)
    t0 = time.monotonic()

    def one(i: int, at: float) -> Sent:
        body, headers = make(i)
        r = i % len(urls)
        status, hdrs, raw = post(urls[r] + "/v1/chat/completions", body, headers, timeout=timeout_s)
        return Sent(at, r, status, hdrs, raw, time.monotonic() - at)

    futs = []
    second = 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(n):
            due = t0 + i / rate
            while on_second is not None and due >= t0 + second:
                on_second(second)
                second += 1
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing an open-loop client, not waiting for an event
            futs.append(pool.submit(one, i, time.monotonic()))
        return [f.result() for f in futs]


def ttft_once(base_url: str, tenant: str, text: str, max_tokens: int, session: str) -> tuple[int, float, str]:
    """Stream one chat request; (status, seconds to the first SSE data event, ""), or (status, total time, the
    error's code) on error."""
    u = urllib.parse.urlsplit(base_url)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                       "stream": True}).encode()  # fmt: skip
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    t0 = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json",
                     "x-tenant-id": tenant, "x-session-id": session})  # fmt: skip
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read()
            code = Sent(t0, 0, resp.status, {}, body, 0.0).error_code()
            return resp.status, time.monotonic() - t0, code or ""
        while True:
            line = resp.readline()
            if not line or line.startswith(b"data:"):
                break
        first = time.monotonic() - t0
        resp.read()
        return 200, first, ""
    finally:
        conn.close()


def p99(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(0.99 * len(s)) - 1))]
