"""The in-process store: assignments with CAS and bounded history, watches, pod leases, meta, snapshot file."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from sharder.store.base import LeaderInfo, Store, StoreError, Versioned

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1


@dataclasses.dataclass
class _Leader:
    info: LeaderInfo
    owner: str  # the token of the EmbeddedStore handle that holds it
    ttl_s: float
    expires_at: float  # on the injected clock


class _Subscription:
    """One watcher's bounded buffer. On overflow the buffer is dropped and the watcher resyncs to the latest."""

    def __init__(self, target: str | None, buffer_size: int) -> None:
        self.target = target
        self.buffer: collections.deque[Versioned] = collections.deque()
        self.buffer_size = buffer_size
        self.overflowed = False
        self.event = asyncio.Event()
        self.overflows = 0

    def offer(self, v: Versioned) -> None:
        if self.target is not None and v.target != self.target:
            return
        if len(self.buffer) >= self.buffer_size:
            self.buffer.clear()
            self.overflowed = True
            self.overflows += 1
        else:
            self.buffer.append(v)
        self.event.set()


class _State:
    """What every handle of one embedded store shares."""

    def __init__(self, snapshot_path: str | None, history_limit: int, clock: Callable[[], float]) -> None:
        self.snapshot_path = pathlib.Path(snapshot_path) if snapshot_path else None
        self.history_limit = history_limit
        self.clock = clock
        self.assignments: dict[str, collections.deque[Versioned]] = {}  # oldest .. newest
        self.pods: dict[str, tuple[bytes, float]] = {}  # id -> (data, expires_at)
        self.meta: dict[str, bytes] = {}
        self.leader: _Leader | None = None
        self.subscriptions: set[_Subscription] = set()
        self.write_lock = asyncio.Lock()
        self.loaded = False
        self.closed = False
        self.lock_fd: int | None = None

    # exclusive use of the snapshot file ------------------------------------------------------
    def lock(self) -> None:
        """Take an exclusive ``flock`` on ``<snapshot>.lock`` (held until ``unlock``), so two processes cannot
        both load, lead on and write one snapshot file. The lock file sits beside the snapshot because the
        snapshot itself is replaced (``os.replace``) on every write. Raises StoreError when another holds it."""
        if self.snapshot_path is None or self.lock_fd is not None:
            return
        path = self.snapshot_path.with_name(self.snapshot_path.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open store lock file {path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (by pid {int(path.read_text().strip())})"
            raise StoreError(
                f"store snapshot {self.snapshot_path} is locked{holder}: another assigner uses it; give each "
                "assigner its own snapshot file, or share etcd between replicas"
            ) from e
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.lock_fd = fd

    def unlock(self) -> None:
        fd, self.lock_fd = self.lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # snapshot ------------------------------------------------------------------------------
    def load(self) -> None:
        self.loaded = True
        if self.snapshot_path is None or not self.snapshot_path.exists():
            return
        try:
            doc = json.loads(self.snapshot_path.read_text())
            if doc.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"snapshot version {doc.get('version')!r}, expected {SNAPSHOT_VERSION}")
            for target, entries in doc.get("assignments", {}).items():
                hist = sorted(
                    (Versioned(target, int(e["generation"]), base64.b64decode(e["data"])) for e in entries),
                    key=lambda v: v.generation,
                )
                self.assignments[target] = collections.deque(hist[-self.history_limit :], maxlen=self.history_limit)
            self.meta = {k: base64.b64decode(v) for k, v in doc.get("meta", {}).items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"cannot load store snapshot {self.snapshot_path}: {e}") from e

    def _snapshot_doc(
        self, assignments: dict[str, collections.deque[Versioned]], meta: dict[str, bytes]
    ) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "assignments": {
                t: [{"generation": v.generation, "data": base64.b64encode(v.data).decode()} for v in hist]
                for t, hist in assignments.items()
            },
            "meta": {k: base64.b64encode(v).decode() for k, v in meta.items()},
        }

    async def persist(self, assignments: dict[str, collections.deque[Versioned]], meta: dict[str, bytes]) -> None:
        """Write the would-be state atomically (temp file + fsync + os.replace + dir fsync). Raises StoreError."""
        if self.snapshot_path is None:
            return
        payload = json.dumps(self._snapshot_doc(assignments, meta), separators=(",", ":")).encode()
        try:
            await asyncio.to_thread(_atomic_write, self.snapshot_path, payload)
        except OSError as e:
            raise StoreError(f"cannot write store snapshot {self.snapshot_path}: {e}") from e

    # pods ----------------------------------------------------------------------------------
    def expire_pods(self) -> None:
        now = self.clock()
        for pod_id in [p for p, (_, exp) in self.pods.items() if exp <= now]:
            del self.pods[pod_id]


def _atomic_write(path: pathlib.Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class EmbeddedStore(Store):
    """A single-process store (the default for one machine).

    ``snapshot_path``: when set, the assignments (with their kept history) and meta are written there
    atomically after every change and loaded by ``start()``, so a restarted assigner keeps its generations
    monotonic. Pods are not persisted: they re-register with their next heartbeat. ``start()`` takes an
    exclusive lock on ``<snapshot>.lock`` (fcntl.flock) for the life of the store, so a second assigner
    on the same file fails to start instead of leading beside the first.
    ``history_limit``: generations kept per target. ``clock``: monotonic seconds, for pod and leader lease
    expiry (inject a fake one in tests). ``watch_buffer``: generations buffered per watcher before a slow
    watcher skips ahead to the latest.

    Leader election is real within the process: every handle (``handle()``) is one candidate; the
    leadership lease is refreshed every ``ttl/3`` s by a task of the holding handle and expires ``ttl``
    (on ``clock``) after its last refresh, or at once on ``resign()``/``close()``.
    """

    def __init__(
        self,
        snapshot_path: str | None = None,
        history_limit: int = 100,
        *,
        clock: Callable[[], float] = time.monotonic,
        watch_buffer: int = 64,
        _state: _State | None = None,
    ) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be >= 1, got {history_limit}")
        if watch_buffer < 1:
            raise ValueError(f"watch_buffer must be >= 1, got {watch_buffer}")
        self._s = _state if _state is not None else _State(snapshot_path, history_limit, clock)
        self._watch_buffer = watch_buffer
        self._token = uuid.uuid4().hex
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False
        self._primary = _state is None
        self._subs: set[_Subscription] = set()

    def handle(self) -> EmbeddedStore:
        """Another client of the same in-process store with its own leadership identity (e.g. two assigners
        in one process, in tests). Closing a handle does not close the shared state; closing the first does."""
        return EmbeddedStore(
            history_limit=self._s.history_limit, clock=self._s.clock, watch_buffer=self._watch_buffer, _state=self._s
        )

    @property
    def clock(self) -> Callable[[], float]:
        return self._s.clock

    # lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if not self._s.loaded:
            self._s.lock()
            try:
                self._s.load()
            except BaseException:
                self._s.unlock()
                self._s.loaded = False
                raise

    async def close(self) -> None:
        if self._closed:
            return
        await self.resign()
        self._closed = True
        if self._primary:
            self._s.closed = True
            self._s.unlock()
        for sub in list(self._s.subscriptions if self._primary else self._subs):
            sub.event.set()

    async def ping(self) -> bool:
        return not self._s.closed and not self._closed

    def _check_open(self) -> None:
        if self._closed or self._s.closed:
            raise StoreError("store is closed")

    # assignments ---------------------------------------------------------------------------
    async def list_targets(self) -> list[str]:
        self._check_open()
        return sorted(t for t, h in self._s.assignments.items() if h)

    async def get(self, target: str) -> Versioned | None:
        self._check_open()
        hist = self._s.assignments.get(target)
        return hist[-1] if hist else None

    def _current_generation(self, target: str) -> int:
        hist = self._s.assignments.get(target)
        return hist[-1].generation if hist else 0

    async def compare_and_swap(self, target: str, prev_generation: int, new: Versioned) -> bool:
        self._check_open()
        if new.target != target:
            raise ValueError(f"new.target {new.target!r} differs from target {target!r}")
        if new.generation <= prev_generation:
            return False
        async with self._s.write_lock:
            self._check_open()
            if self._current_generation(target) != prev_generation:
                return False
            hist = collections.deque(self._s.assignments.get(target, ()), maxlen=self._s.history_limit)
            hist.append(new)
            if self._s.snapshot_path is not None:
                await self._s.persist({**self._s.assignments, target: hist}, self._s.meta)
            self._s.assignments[target] = hist
            for sub in list(self._s.subscriptions):
                sub.offer(new)
            return True

    async def history(self, target: str, limit: int = 0) -> list[Versioned]:
        self._check_open()
        newest_first = list(reversed(self._s.assignments.get(target, ())))
        return newest_first[:limit] if limit > 0 else newest_first

    def watch(self, target: str | None = None, from_generation: int = 0) -> AsyncIterator[Versioned]:
        return self._watch(target, from_generation)

    def _current(self, target: str | None) -> list[Versioned]:
        if target is not None:
            hist = self._s.assignments.get(target)
            return [hist[-1]] if hist else []
        return [h[-1] for _, h in sorted(self._s.assignments.items()) if h]

    async def _watch(self, target: str | None, from_generation: int) -> AsyncIterator[Versioned]:
        self._check_open()
        sub = _Subscription(target, self._watch_buffer)
        # subscribe and read the current state with no await in between: nothing can be missed
        self._s.subscriptions.add(sub)
        self._subs.add(sub)
        pending: collections.deque[Versioned] = collections.deque(self._current(target))
        seen: dict[str, int] = {}

        def fresh(v: Versioned) -> bool:
            return v.generation > seen.get(v.target, from_generation)

        try:
            while True:
                while pending:
                    v = pending.popleft()
                    if fresh(v):
                        seen[v.target] = v.generation
                        yield v
                if self._s.closed or self._closed:
                    return
                if sub.overflowed:
                    # skipped: jump to the latest of every watched target (never backwards, see fresh())
                    sub.overflowed = False
                    sub.buffer.clear()
                    pending.extend(self._current(target))
                    continue
                if sub.buffer:
                    pending.extend(sub.buffer)
                    sub.buffer.clear()
                    continue
                sub.event.clear()
                await sub.event.wait()
        finally:
            self._s.subscriptions.discard(sub)
            self._subs.discard(sub)

    # pods ----------------------------------------------------------------------------------
    async def put_pod(self, pod_id: str, data: bytes, ttl_s: float) -> None:
        self._check_open()
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self._s.pods[pod_id] = (bytes(data), self._s.clock() + ttl_s)

    async def list_pods(self) -> dict[str, bytes]:
        self._check_open()
        self._s.expire_pods()
        return {p: d for p, (d, _) in sorted(self._s.pods.items())}

    async def delete_pod(self, pod_id: str) -> None:
        self._check_open()
        self._s.pods.pop(pod_id, None)

    # meta ----------------------------------------------------------------------------------
    async def _set_meta(self, key: str, data: bytes | None) -> None:
        async with self._s.write_lock:
            self._check_open()
            meta = dict(self._s.meta)
            if data is None:
                if key not in meta:
                    return
                del meta[key]
            else:
                meta[key] = bytes(data)
            await self._s.persist(self._s.assignments, meta)
            self._s.meta = meta

    async def put_meta(self, key: str, data: bytes) -> None:
        self._check_open()
        await self._set_meta(key, data)

    async def get_meta(self, key: str) -> bytes | None:
        self._check_open()
        return self._s.meta.get(key)

    async def list_meta(self, prefix: str) -> dict[str, bytes]:
        self._check_open()
        return {k: v for k, v in sorted(self._s.meta.items()) if k.startswith(prefix)}

    async def delete_meta(self, key: str) -> None:
        self._check_open()
        await self._set_meta(key, None)

    # leader election -----------------------------------------------------------------------
    def _live_leader(self) -> _Leader | None:
        ld = self._s.leader
        if ld is not None and ld.expires_at <= self._s.clock():
            self._s.leader = None
            return None
        return ld

    async def campaign(self, me: LeaderInfo, ttl_s: float) -> bool:
        self._check_open()
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        ld = self._live_leader()
        if ld is not None and ld.owner != self._token:
            return False
        self._s.leader = _Leader(me, self._token, ttl_s, self._s.clock() + ttl_s)
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(ttl_s))
        return True

    async def _keep_alive(self, ttl_s: float) -> None:
        while True:
            await asyncio.sleep(ttl_s / 3)
            ld = self._s.leader
            if ld is None or ld.owner != self._token or ld.expires_at <= self._s.clock():
                return
            ld.expires_at = self._s.clock() + ld.ttl_s

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    async def resign(self) -> None:
        self._stop_keepalive()
        ld = self._s.leader
        if ld is not None and ld.owner == self._token:
            self._s.leader = None

    def is_leader(self) -> bool:
        if self._closed or self._s.closed:
            return False
        ld = self._live_leader()
        return ld is not None and ld.owner == self._token

    async def leader(self) -> LeaderInfo | None:
        self._check_open()
        ld = self._live_leader()
        return ld.info if ld is not None else None

    def simulate_crash(self) -> None:
        """Test hook: stop refreshing the leadership lease without resigning, as a hung or dead process
        would; the lease then expires ``ttl`` after its last refresh."""
        self._stop_keepalive()
