"""A steady, bounded client load through the routers' OpenAI HTTP API (client-side router failover) and its figures."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.router.conftest import MODEL
from tests.waiting import until

#: Statuses a client retries at another router (the request was not served): shed, and gateway-style failures.
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class _Retry(Exception):
    """This attempt failed before any output: the client may send the request again (to another router)."""


class _StalledAfterOutput(Exception):
    """The stream went silent for ``stream_idle_s`` after output: broken (not retried), and the router suspect."""


@dataclasses.dataclass
class Figures:
    """What one scenario measured; printed and written as a JSON line to ``$BRUNOISE_CHAOS_REPORT``."""

    scenario: str
    sent: int = 0
    ok: int = 0
    lost: int = 0
    broken_after_first_token: int = 0
    router_retried: int = 0
    client_failovers: int = 0
    longest_gap_s: float = 0.0
    failover_s: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def emit(self) -> None:
        line = json.dumps(dataclasses.asdict(self), sort_keys=True)
        print(f"\nCHAOS {line}")
        path = os.environ.get("BRUNOISE_CHAOS_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


class Load:
    """``workers`` concurrent clients, each sending one request after the other until ``stop()``.

    Requests alternate completions/chat and streaming/not, keyed by a few sessions per worker. A client prefers
    router ``worker % n``; when an attempt fails before any output (refused, reset, no response within
    ``attempt_timeout_s``, a retryable status) it marks that router bad for ``bad_for_s`` and sends the request
    again to another one, up to ``attempts`` times. A request is *lost* when every attempt failed that way; a
    stream that broke after its first token is counted apart (the client saw output; it is not retried); one
    that went silent for ``stream_idle_s`` also marks its router bad (an unresponsive router, e.g. stopped).
    """

    def __init__(
        self,
        routers: Callable[[], list[str]],
        *,
        workers: int = 8,
        max_tokens: int = 16,
        attempt_timeout_s: float = 2.0,
        stream_idle_s: float = 10.0,
        attempts: int = 6,
        bad_for_s: float = 2.0,
        tag: str = "chaos",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.routers = routers
        self.headers = dict(headers or {})  # sent with every request (the routers' API key)
        self.workers = workers
        self.max_tokens = max_tokens
        self.attempt_timeout_s = attempt_timeout_s
        self.stream_idle_s = stream_idle_s
        self.attempts = attempts
        self.bad_for_s = bad_for_s
        self.tag = tag
        self.sent = 0
        self.ok = 0
        self.lost = 0
        self.broken = 0
        self.router_retried = 0
        self.client_failovers = 0
        self.ok_times: list[float] = []  # monotonic end time of every success
        self.failover_ok_times: list[float] = []  # successes that needed another router
        self.ok_by_router: dict[str, int] = {}
        self.lost_reasons: list[str] = []
        self.unexpected: list[str] = []
        self._bad_until: dict[str, float] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.started_at = 0.0
        self.stop_requested_at = 0.0
        self.stopped_at = 0.0

    # lifecycle ------------------------------------------------------------------------------------
    async def start(self, flowing_after: int = 20, timeout_s: float = 20.0) -> None:
        """Start the clients and wait until ``flowing_after`` requests have succeeded."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False), headers=self.headers
        )
        self.started_at = time.monotonic()
        self._tasks = [asyncio.create_task(self._worker(w), name=f"client-{w}") for w in range(self.workers)]
        await self.wait_ok(flowing_after, timeout_s)

    async def wait_ok(self, n: int, timeout_s: float) -> None:
        """Wait until ``n`` requests have succeeded in all (raise AssertionError naming the figures otherwise)."""
        try:
            await until(lambda: self.ok >= n, timeout_s, f"{n} requests ok", 0.02)
        except AssertionError:
            raise AssertionError(f"load not flowing: {self.ok} ok of {self.sent} sent; lost: {self.lost_reasons[-3:]}") from None

    async def run_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def stop(self) -> None:
        """Let every request in progress finish (each is bounded by its timeouts), then close the clients."""
        self._stop.set()
        self.stop_requested_at = time.monotonic()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stopped_at = time.monotonic()
        if self._session is not None:
            await self._session.close()

    # figures --------------------------------------------------------------------------------------
    def longest_gap_s(self) -> float:
        """Longest time without a successful response, from the first success until the load was told to stop
        (not until the last request in progress ended: no new request starts after that)."""
        end = self.stop_requested_at or time.monotonic()
        times = sorted(t for t in self.ok_times if t <= end)
        if not times:
            return end - self.started_at
        edges = [*times, end]
        return max((b - a for a, b in itertools.pairwise(edges)), default=0.0)

    def first_failover_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first success that needed another router, if any."""
        after = [x for x in self.failover_ok_times if x >= t]
        return min(after) - t if after else None

    def figures(self, scenario: str, **extra: Any) -> Figures:
        return Figures(
            scenario=scenario,
            sent=self.sent,
            ok=self.ok,
            lost=self.lost,
            broken_after_first_token=self.broken,
            router_retried=self.router_retried,
            client_failovers=self.client_failovers,
            longest_gap_s=round(self.longest_gap_s(), 3),
            extra={"ok_by_router": dict(self.ok_by_router), "unexpected": len(self.unexpected), **extra},
        )

    # one client -----------------------------------------------------------------------------------
    def _order(self, w: int) -> list[str]:
        routers = self.routers()
        pref = routers[w % len(routers) :] + routers[: w % len(routers)]
        now = time.monotonic()
        return sorted(pref, key=lambda r: self._bad_until.get(r, 0.0) > now)  # stable: good ones first

    async def _worker(self, w: int) -> None:
        for i in itertools.count():
            if self._stop.is_set():
                return
            chat, stream = bool(i % 2), bool((i // 2) % 2)
            session = f"{self.tag}-{w}-{i % 3}"
            text = f"{self.tag} worker {w} turn {i}: tell me about the weather " * 2
            body: dict[str, Any] = {"model": MODEL, "max_tokens": self.max_tokens, "stream": stream, "ignore_eos": True}
            if chat:
                body["messages"] = [{"role": "user", "content": text}]
            else:
                body["prompt"] = text
            path = "/v1/chat/completions" if chat else "/v1/completions"
            self.sent += 1
            try:
                await self._request(w, path, body, session)
            except Exception as e:  # a wrong answer (not an outage): fail the scenario, keep the load going
                self.unexpected.append(f"{path} {session}: {e!r}")

    async def _request(self, w: int, path: str, body: dict[str, Any], session: str) -> None:
        errors: list[str] = []
        routers = self.routers()
        preferred = routers[w % len(routers)]
        for attempt in range(self.attempts):
            router = self._order(w)[0]  # a router that just failed is marked bad, so a retry goes elsewhere
            try:
                got = await self._attempt(router + path, body, session)
            except _StalledAfterOutput:
                self.broken += 1
                self._bad_until[router] = time.monotonic() + self.bad_for_s
                return
            except _Retry as e:
                errors.append(f"{router}: {e}")
                self._bad_until[router] = time.monotonic() + self.bad_for_s
                await asyncio.sleep(0.02 * (attempt + 1))
                continue
            if got is None:  # broke after output: not retried
                self.broken += 1
                return
            end = time.monotonic()
            self.ok += 1
            self.ok_times.append(end)
            self.ok_by_router[router] = self.ok_by_router.get(router, 0) + 1
            if got:
                self.router_retried += 1
            if attempt or router != preferred:  # retried elsewhere, or sent elsewhere: its router is marked bad
                self.client_failovers += 1
                self.failover_ok_times.append(end)
            return
        self.lost += 1
        self.lost_reasons.append(errors[-1][:300] if errors else "")
        print(f"LOST {path} {session} after {len(errors)} attempts: {self.lost_reasons[-1]}")

    async def _attempt(self, url: str, body: dict[str, Any], session: str) -> bool | None:
        """One try: True/False (success; whether the router retried it), None when a stream broke after output;
        raises _Retry when it failed before any output."""
        assert self._session is not None
        stream = bool(body["stream"])
        got_output = False
        try:
            async with asyncio.timeout(self.attempt_timeout_s) as first:
                async with self._session.post(url, json=body, headers={"x-session-id": session}) as r:
                    if r.status != 200:
                        detail = (await r.text())[:200]
                        if r.status in RETRYABLE_STATUS:
                            raise _Retry(f"HTTP {r.status} {detail}")
                        raise AssertionError(f"unexpected HTTP {r.status} from {url}: {detail}")
                    retried = int(r.headers.get("x-brunoise-attempts", "1")) > 1
                    if not stream:
                        data = await r.json()
                        assert data["usage"]["completion_tokens"] == self.max_tokens, data
                        return retried
                    finished = done = False
                    while True:
                        line = await r.content.readline()
                        if not line:
                            break
                        if line.startswith(b"data: [DONE]"):
                            done = True
                            continue
                        if not line.startswith(b"data: {"):
                            continue
                        obj = json.loads(line[6:])
                        if "error" in obj:
                            if got_output:
                                return None
                            raise _Retry(f"stream error before output: {obj['error']}")
                        for choice in obj.get("choices") or ():
                            got_output = True
                            finished = finished or choice.get("finish_reason") is not None
                        # once output flows the attempt is bounded by the idle limit, not the first-byte one
                        first.reschedule(time.monotonic() + self.stream_idle_s)
                    if not (finished and done):
                        if got_output:
                            return None
                        raise _Retry("stream ended before any output")
                    return retried
        except TimeoutError:
            if got_output:
                raise _StalledAfterOutput from None
            raise _Retry("timed out before any output") from None
        except (aiohttp.ClientError, ConnectionError) as e:
            if got_output:
                return None
            raise _Retry(f"{type(e).__name__}: {e}") from None

