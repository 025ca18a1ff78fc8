"""HTTP client to runtimes' vLLM-compatible surface: one keep-alive aiohttp pool, first-token detection for SSE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TypeVar

import aiohttp

from axon_router.errors import DeadlineExceeded, StreamBroken, UpstreamError, UpstreamIdle, clip
from axon_router.failover import RetryableError
from axon_router.knobs import Knobs

_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_NETWORK_ERRORS = (aiohttp.ClientError, ConnectionError, OSError)
T = TypeVar("T")


class IdleWatch:
    """Fails a pod response that stays silent for ``idle_s`` while the router waits on it: one timer per idle
    period, not one per read (a read costs a clock read), and time the router spends writing to its own
    client does not count. When it fires the response is closed, so the pending read fails at once."""

    __slots__ = ("_handle", "_loop", "_since", "fired", "idle_s", "resp")

    def __init__(self, resp: aiohttp.ClientResponse, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.resp = resp
        self.idle_s = idle_s
        self.fired = False
        self._since: float | None = None  # when the pending read started; None while not reading
        self._handle: asyncio.TimerHandle | None = None

    async def read(self, op: Awaitable[T]) -> T:
        """``await op`` (a read of ``resp``): UpstreamIdle if the pod stays silent for ``idle_s``,
        DeadlineExceeded if the request's deadline (the session's total timeout) passes first."""
        now = self._loop.time()
        self._since = now
        if self._handle is None:
            self._handle = self._loop.call_at(now + self.idle_s, self._check)
        try:
            out = await op
        except TimeoutError:
            raise DeadlineExceeded(
                "the request's deadline passed while the pod was answering", code="deadline_exceeded"
            ) from None
        except _NETWORK_ERRORS:
            if self.fired:
                raise self.error() from None
            raise
        finally:
            self._since = None
        if self.fired:  # closed under the read, which may have ended as if cleanly
            raise self.error()
        return out

    def error(self) -> UpstreamIdle:
        return UpstreamIdle(f"the pod sent nothing for {self.idle_s:g}s (stream_idle_timeout_s); it looks stalled")

    def _check(self) -> None:
        self._handle = None
        since = self._since
        if since is None or self.fired:
            return  # not waiting on the pod now; the next read arms the timer again
        due = since + self.idle_s
        if self._loop.time() >= due:
            self.fired = True
            self.resp.close()
        else:
            self._handle = self._loop.call_at(due, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Upstream:
    """An open response from a pod that has produced its first token (SSE) or its whole body."""

    __slots__ = ("body", "first", "resp", "status", "watch")

    def __init__(
        self, resp: aiohttp.ClientResponse | None, status: int, first: bytes, body: bytes | None, idle_s: float = 30.0
    ) -> None:
        self.resp = resp
        self.status = status
        self.first = first  # first SSE event, raw, ending in a blank line (stream) / b"" (non-stream)
        self.body = body  # full body (non-stream)
        self.watch = IdleWatch(resp, idle_s) if resp is not None else None

    async def raw_chunks(self) -> AsyncIterator[bytes]:
        """The rest of the SSE stream as it arrives; StreamBroken when the pod fails (UpstreamIdle: stalls) mid-stream."""
        resp, watch = self.resp, self.watch
        if resp is None or watch is None:
            return
        try:
            while True:
                chunk = await watch.read(resp.content.readany())
                if not chunk:
                    return
                yield chunk
        except _NETWORK_ERRORS as e:
            raise StreamBroken(f"the pod failed mid-stream: {type(e).__name__}: {e}") from None
        finally:
            watch.stop()
            resp.release()

    async def events(self) -> AsyncIterator[bytes]:
        """The rest of the SSE stream, one raw event at a time; StreamBroken on failure, UpstreamIdle on a stall."""
        resp, watch = self.resp, self.watch
        if resp is None or watch is None:
            return
        try:
            while True:
                ev = await watch.read(_read_event(resp.content))
                if ev is None:
                    return
                yield ev
        except _NETWORK_ERRORS as e:
            raise StreamBroken(f"the pod failed mid-stream: {type(e).__name__}: {e}") from None
        finally:
            watch.stop()
            resp.release()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.resp is not None:
            self.resp.close()


async def _read_body(resp: aiohttp.ClientResponse, idle_s: float) -> bytes:
    """The whole response body, with the idle timeout between chunks."""
    watch = IdleWatch(resp, idle_s)
    parts: list[bytes] = []
    try:
        while True:
            chunk = await watch.read(resp.content.readany())
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
    finally:
        watch.stop()


async def _read_event(content: aiohttp.StreamReader) -> bytes | None:
    """One SSE event (its raw lines up to and including the blank line); None at a clean end of stream."""
    lines: list[bytes] = []
    while True:
        line = await content.readline()
        if not line:
            if lines:
                raise aiohttp.ClientPayloadError("stream ended inside an event")
            return None
        if line in (b"\n", b"\r\n"):
            if lines:
                lines.append(line)
                return b"".join(lines)
            continue
        lines.append(line)


def _pod_message(raw: bytes) -> str:
    """The message of a pod's (vLLM / OpenAI shaped) error body, clipped; the raw start when it has none."""
    try:
        obj = json.loads(raw)
        err = obj.get("error") if isinstance(obj, dict) else None
        msg = err.get("message") if isinstance(err, dict) else obj.get("message") if isinstance(obj, dict) else None
    except ValueError:
        msg = None
    return clip(str(msg), 300) if msg else repr(raw[:200])


def data_of(event: bytes) -> bytes:
    """The ``data:`` payload of a raw SSE event (multi-line data joined with newlines)."""
    parts = [ln[5:].strip() for ln in event.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(parts)


class Forwarder:
    """Sends requests to pods over one shared keep-alive connection pool (created once, on start), bounded in
    total (``pool_max_connections``) and per pod (``pool_max_per_pod``)."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        conn = aiohttp.TCPConnector(
            limit=self.knobs.pool_max_connections,
            limit_per_host=self.knobs.pool_max_per_pod,
            keepalive_timeout=60.0,
            ttl_dns_cache=None,
            use_dns_cache=True,
        )
        self.session = aiohttp.ClientSession(connector=conn, auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def open(
        self, base_url: str, path: str, body: bytes, headers: Mapping[str, str], stream: bool, timeout_s: float
    ) -> Upstream:
        """Send one attempt; return once the first token (SSE) or the whole body (non-stream) arrived.

        Raises RetryableError when the attempt failed before any output (connect error, 5xx, 429, timeout),
        UpstreamError for a 4xx the client must see, UpstreamIdle when the pod stalls inside its answer.
        """
        assert self.session is not None, "Forwarder.start() was not awaited"
        k = self.knobs
        first_timeout = min(timeout_s, k.first_token_timeout_s)
        if first_timeout <= 0:
            raise RetryableError("deadline exceeded before sending", cause="deadline", pod_fault=False)
        to = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(k.connect_timeout_s, timeout_s))
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(first_timeout):
                resp = await self.session.post(base_url + path, data=body, headers=headers, timeout=to)
                status = resp.status
                if status != 200:
                    raw = await _read_body(resp, k.stream_idle_timeout_s)
                    resp.release()
                    if status in _RETRY_STATUSES:
                        raise RetryableError(
                            f"pod answered {status}: {raw[:200]!r}", cause=f"http_{status}", status=status
                        )
                    if status == 429:
                        raise RetryableError("pod is overloaded (429)", cause="http_429", pod_fault=False, status=429)
                    raise UpstreamError(status, raw, f"pod answered {status}: {_pod_message(raw)}")
                if not stream:
                    raw = await _read_body(resp, k.stream_idle_timeout_s)
                    resp.release()
                    return Upstream(None, status, b"", raw)
                first = await _read_event(resp.content)
                if first is None:
                    raise RetryableError("pod closed the stream before the first token", cause="empty_stream")
                return Upstream(resp, status, first, None, k.stream_idle_timeout_s)
        except TimeoutError:
            if resp is not None:
                resp.close()
            if first_timeout < k.first_token_timeout_s:  # the client's deadline ran out, not the pod's time
                raise RetryableError(
                    f"no first token before the request's deadline ({first_timeout:.3f}s)",
                    cause="deadline",
                    pod_fault=False,
                ) from None
            raise RetryableError(f"no first token within {first_timeout:.3f}s", cause="timeout") from None
        except (RetryableError, UpstreamError, UpstreamIdle, DeadlineExceeded):
            if resp is not None:
                resp.close()
            raise
        except _NETWORK_ERRORS as e:
            if resp is not None:
                resp.close()
            raise RetryableError(
                f"{type(e).__name__}: {e}",
                cause="connect" if isinstance(e, aiohttp.ClientConnectorError) else "network",
            ) from None

    async def get(self, url: str, timeout_s: float) -> int:
        """Status of a GET (health checks); raises on network errors and timeouts."""
        assert self.session is not None
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()
            return resp.status
