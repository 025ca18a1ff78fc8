"""The etcd store (aetcd): assignments with txn CAS and bounded history, watches, leased pods, meta, leader election."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import pathlib
import socket
import struct
import time
import urllib.parse
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import grpc

from sharder.store.base import LeaderInfo, Store, StoreError, StoreUnavailable, Versioned

log = logging.getLogger(__name__)

T = TypeVar("T")

_VALUE_MAGIC = b"\x01"
_GEN = struct.Struct(">Q")
# ask etcd to fail fast (Unavailable) instead of waiting when the member it reaches has no raft leader,
# and to cancel watch streams on a member that loses its leader
_REQUIRE_LEADER: tuple[tuple[str, str], ...] = (("hasleader", "true"),)
_RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


class _Retry(Exception):
    """Internal: this attempt must be repeated (e.g. a pod lease vanished between refresh and put)."""


def _retryable(e: BaseException) -> bool:
    if isinstance(e, asyncio.TimeoutError | aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError | _Retry):
        return True
    if isinstance(e, grpc.aio.UsageError | ConnectionError):
        return True
    cause = e.__cause__ if isinstance(e, aetcd.ClientError) else e
    if isinstance(cause, grpc.aio.AioRpcError):
        return cause.code() in _RETRYABLE_CODES
    return False


_VALUE_ZLIB = b"\x02"  # the same, the data zlib-compressed
_VALUE_CHUNKED = b"\x03"  # a manifest: the zlib-compressed data lies in chunk keys written before it
_MANIFEST = struct.Struct(">QII16s")  # generation, chunks, compressed length, nonce (names the chunk keys)
#: etcd takes at most 1.5 MiB per request by default (``--max-request-bytes``). The CAS txn writes the value
#: twice (current and history key), so an inline value stays under half of that and one chunk under all of it.
INLINE_MAX = 640 << 10
CHUNK_BYTES = 1 << 20
#: Smaller values are stored as they are (compressing them saves little); larger ones are zlib-compressed
#: (level 1: a 10,000-slice assignment shrinks ~5x in ~2 ms, in a thread).
COMPRESS_ABOVE = 64 << 10


async def _encode(v: Versioned) -> tuple[bytes, list[bytes], bytes]:
    """The value for the assignment and history keys, the chunks to write before it (none when it is
    inline) and the nonce naming them."""
    head = _GEN.pack(v.generation)
    if len(v.data) <= COMPRESS_ABOVE:
        return _VALUE_MAGIC + head + v.data, [], b""
    blob = await asyncio.to_thread(zlib.compress, v.data, 1)
    if 1 + len(head) + len(blob) <= INLINE_MAX:
        return _VALUE_ZLIB + head + blob, [], b""
    nonce = uuid.uuid4().bytes  # chunk keys unique to this write: a rival writer of the same generation
    chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)]
    return _VALUE_CHUNKED + _MANIFEST.pack(v.generation, len(chunks), len(blob), nonce), chunks, nonce


def _generation(target: str, raw: bytes) -> int:
    """The generation a stored value carries (StoreError when it is not one of ours)."""
    if len(raw) < 1 + _GEN.size or raw[:1] not in (_VALUE_MAGIC, _VALUE_ZLIB, _VALUE_CHUNKED):
        raise StoreError(f"assignment value of target {target!r} is not in brunoise store format")
    (gen,) = _GEN.unpack_from(raw, 1)
    return int(gen)


def _quote(name: str) -> str:
    if not name:
        raise ValueError("name must be non-empty")
    return urllib.parse.quote(name, safe="")


def grpc_target(endpoints: list[str]) -> str:
    """A gRPC target naming every endpoint ("ipv4:a:p,b:q"); hostnames are resolved to IPv4 addresses."""
    addrs: list[str] = []
    for ep in endpoints:
        ep = ep.strip()
        if "://" in ep:
            ep = urllib.parse.urlsplit(ep).netloc
        host, sep, port = ep.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"etcd endpoint {ep!r} must be host:port")
        try:
            socket.inet_aton(host)
            ip = host
        except OSError:
            ip = str(socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
        addrs.append(f"{ip}:{port}")
    if not addrs:
        raise ValueError("at least one etcd endpoint is needed")
    return "ipv4:" + ",".join(addrs)


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd.Client that sends the require-leader metadata on every call and on its watch stream, and can
    speak TLS (``ssl``: channel credentials) and etcd auth (user/password: a token in the metadata)."""

    def __init__(self, *args: Any, ssl: grpc.ChannelCredentials | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssl = ssl

    async def connect(self) -> None:
        if self._connected.is_set() or bool(getattr(self, "_is_connecting", False)):
            await super().connect()
            return
        if self._ssl is None and self._username is None:
            self.metadata = _REQUIRE_LEADER
            await super().connect()
            return
        from aetcd import rpc, watcher  # the same wiring as aetcd.Client.connect, on a secure channel

        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            opts = list(self._options.items())
            if self._ssl is not None:
                self.channel = grpc.aio.secure_channel(target, self._ssl, options=opts)
            else:
                self.channel = rpc.insecure_channel(target, options=opts)
            self.metadata = _REQUIRE_LEADER
            if self._username is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                req = rpc.AuthenticateRequest(name=self._username, password=self._password)
                resp = await self.auth_stub.Authenticate(req, timeout=self._timeout)
                self.metadata = (*_REQUIRE_LEADER, ("token", str(resp.token)))
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False


class EtcdStore(Store):
    """The store on an etcd v3 cluster.

    ``endpoints``: client addresses ("127.0.0.1:2379", "http://host:port"); the gRPC channel names all of them
    with round-robin balancing, so a dead member is skipped. ``prefix``: every key lives under it.
    ``history_limit``: generations kept per target. ``request_timeout_s``: one attempt of one call.
    ``deadline_s``: a call retries connection errors (backoff up to ``max_backoff_s``) until this many
    seconds, then raises StoreUnavailable. ``ping_timeout_s``: how long ``ping()`` waits.
    ``ca_cert`` (PEM path): talk TLS to the members; ``cert_cert``/``cert_key``: client certificate (mTLS);
    ``user``/``password``: etcd authentication (the token etcd answers rides on every call).

    Keys: ``{prefix}/assign/{target}`` (current generation), ``{prefix}/history/{target}/{generation:020d}``,
    ``{prefix}/pods/{pod}`` (each on its own lease), ``{prefix}/meta/{key}``, ``{prefix}/leader`` (on the
    leader's lease). Target and pod names are percent-encoded in keys. An assignment value above
    ``COMPRESS_ABOVE`` is zlib-compressed; one still above ``INLINE_MAX`` (etcd's request limit, halved) is
    written first as ``{prefix}/chunks/{target}/{generation}-{nonce}/{i}`` keys and the CAS stores a manifest
    naming them; trimming the history deletes the chunks of the generations it drops.
    """

    def __init__(
        self,
        endpoints: list[str],
        prefix: str = "/brunoise",
        history_limit: int = 100,
        request_timeout_s: float = 2.0,
        *,
        deadline_s: float = 6.0,
        max_backoff_s: float = 0.5,
        ping_timeout_s: float = 1.0,
        ca_cert: str | None = None,
        cert_cert: str | None = None,
        cert_key: str | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be >= 1, got {history_limit}")
        if request_timeout_s <= 0 or deadline_s <= 0:
            raise ValueError("request_timeout_s and deadline_s must be > 0")
        self.endpoints = list(endpoints)
        self.target = grpc_target(self.endpoints)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.history_limit = history_limit
        self.request_timeout_s = request_timeout_s
        self.deadline_s = deadline_s
        self.max_backoff_s = max_backoff_s
        self.ping_timeout_s = ping_timeout_s
        if bool(cert_cert) != bool(cert_key):
            raise ValueError("cert_cert and cert_key go together")
        if (cert_cert or cert_key) and not ca_cert:
            raise ValueError("a client certificate needs ca_cert (TLS) too")
        self._tls: tuple[bytes, bytes | None, bytes | None] | None = None
        if ca_cert:  # read now (start() is async): the CA, and the client certificate and key for mTLS
            self._tls = (
                pathlib.Path(ca_cert).read_bytes(),
                pathlib.Path(cert_cert).read_bytes() if cert_cert else None,
                pathlib.Path(cert_key).read_bytes() if cert_key else None,
            )
        self._user = user
        self._password = password if user is not None else None
        self._client: _Client | None = None
        self._closed = False
        self._mod_rev: dict[str, tuple[int, int]] = {}  # target -> (generation, mod_revision) last seen
        self._pod_leases: dict[str, tuple[int, int]] = {}  # pod id -> (lease id, ttl)
        self._token = uuid.uuid4().hex
        self._leader_lease: int | None = None
        self._fence_rev: int | None = None  # create revision of our leader key: every CAS requires it unchanged
        self._leader_valid_until = 0.0
        self._leader_lost = True
        self._leader_task: asyncio.Task[None] | None = None

    # keys ----------------------------------------------------------------------------------
    def _k(self, *parts: str) -> bytes:
        return ("/".join([self.prefix, *parts])).encode()

    def _assign_key(self, target: str) -> bytes:
        return self._k("assign", _quote(target))

    def _history_prefix(self, target: str) -> bytes:
        return self._k("history", _quote(target), "")

    def _chunk_prefix(self, target: str, generation: int | None = None, nonce: bytes = b"") -> bytes:
        """Chunk keys: ``{prefix}/chunks/{target}/{generation:020d}-{nonce}/{index:06d}`` (sorted by generation)."""
        if generation is None:
            return self._k("chunks", _quote(target), "")
        return self._k("chunks", _quote(target), f"{generation:020d}-{nonce.hex()}", "")

    async def _load(self, target: str, raw: bytes) -> Versioned:
        """The Versioned a stored value holds: inflated, its chunks read when it is a manifest."""
        gen = _generation(target, raw)
        kind, body = raw[:1], raw[1 + _GEN.size :]
        if kind == _VALUE_MAGIC:
            return Versioned(target, gen, bytes(body))
        if kind == _VALUE_CHUNKED:
            _, n, length, nonce = _MANIFEST.unpack_from(raw, 1)
            base = self._chunk_prefix(target, gen, nonce)
            keys = [base + f"{i:06d}".encode() for i in range(n)]
            kvs = await asyncio.gather(*(self._retry("get chunk", functools.partial(self.client.get, k)) for k in keys))
            if any(kv is None for kv in kvs):
                raise StoreError(f"generation {gen} of {target!r} lost chunks (trimmed from history meanwhile)")
            body = b"".join(kv.value for kv in kvs)
            if len(body) != length:
                raise StoreError(f"generation {gen} of {target!r}: chunks hold {len(body)} bytes, not {length}")
        try:
            data = await asyncio.to_thread(zlib.decompress, body) if len(body) > COMPRESS_ABOVE else zlib.decompress(body)
        except zlib.error as e:
            raise StoreError(f"generation {gen} of {target!r} does not inflate: {e}") from e
        return Versioned(target, gen, data)

    def _pod_key(self, pod_id: str) -> bytes:
        return self._k("pods", _quote(pod_id))

    def _meta_key(self, key: str) -> bytes:
        if not key:
            raise ValueError("meta key must be non-empty")
        return self._k("meta", key)

    @property
    def _leader_key(self) -> bytes:
        return self._k("leader")

    def _target_of(self, assign_key: bytes) -> str:
        return urllib.parse.unquote(assign_key[len(self._k("assign", "")) :].decode())

    # plumbing ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")
        if self._client is None:
            raise StoreError("store is not started: call start() first")

    @property
    def client(self) -> _Client:
        self._check_open()
        assert self._client is not None
        return self._client

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]], deadline_s: float | None = None) -> T:
        """Run ``fn`` until it succeeds, retrying connection errors with bounded backoff until the deadline."""
        budget = self.deadline_s if deadline_s is None else deadline_s
        deadline = time.monotonic() + budget
        backoff = 0.05
        last: BaseException | None = None
        while True:
            self._check_open()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreUnavailable(f"etcd {what}: no member answered within {budget:.1f}s (last error: {last!r})")
            try:
                return await asyncio.wait_for(fn(), timeout=min(self.request_timeout_s, remaining))
            except Exception as e:
                if not _retryable(e):
                    raise StoreError(f"etcd {what}: {e}") from e
                last = e
                log.debug("etcd %s: retrying after %r", what, e)
            await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, self.max_backoff_s)

    # lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._closed:
            raise StoreError("store is closed")
        if self._client is not None:
            return
        host, _, port = self.target.rpartition(":")
        options: dict[str, Any] = {
            "grpc.lb_policy_name": "round_robin",
            "grpc.initial_reconnect_backoff_ms": 100,
            "grpc.min_reconnect_backoff_ms": 100,
            "grpc.max_reconnect_backoff_ms": 1000,
            "grpc.keepalive_time_ms": 10_000,
            "grpc.keepalive_timeout_ms": 5_000,
        }
        # aetcd builds its target as f"{host}:{port}": split our multi-address target at its last colon
        ssl = None
        if self._tls is not None:
            root, chain, pk = self._tls
            ssl = grpc.ssl_channel_credentials(root_certificates=root, private_key=pk, certificate_chain=chain)
        self._client = _Client(
            host=host, port=int(port), timeout=self.request_timeout_s, options=options, ssl=ssl,
            username=self._user, password=self._password,
        )  # fmt: skip
        await self._client.connect()  # creates the channel; no network round trip

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(StoreError):
            await self._resign(deadline_s=min(1.0, self.deadline_s))
        self._closed = True
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None

    async def ping(self) -> bool:
        if self._closed or self._client is None:
            return False
        try:
            await asyncio.wait_for(self._client.get(self._leader_key), timeout=self.ping_timeout_s)
        except Exception:
            return False
        return True

    # assignments ---------------------------------------------------------------------------
    async def list_targets(self) -> list[str]:
        res = await self._retry("list targets", lambda: self.client.get_prefix(self._k("assign", ""), keys_only=True))
        return sorted(self._target_of(kv.key) for kv in res)

    async def get(self, target: str) -> Versioned | None:
        key = self._assign_key(target)
        kv = await self._retry("get", lambda: self.client.get(key))
        if kv is None:
            return None
        self._mod_rev[target] = (_generation(target, kv.value), kv.mod_revision)
        return await self._load(target, kv.value)

    async def compare_and_swap(self, target: str, prev_generation: int, new: Versioned) -> bool:
        if new.target != target:
            raise ValueError(f"new.target {new.target!r} differs from target {target!r}")
        if new.generation <= prev_generation:
            return False
        key = self._assign_key(target)
        value, chunks, nonce = await _encode(new)
        hist_key = self._history_prefix(target) + f"{new.generation:020d}".encode()
        if chunks:  # too large for one request: the chunks first, then the CAS of a manifest naming them
            base = self._chunk_prefix(target, new.generation, nonce)
            for i, chunk in enumerate(chunks):
                await self._retry("put chunk", functools.partial(self.client.put, base + f"{i:06d}".encode(), chunk))
        ok = await self._swap(target, prev_generation, new, key, hist_key, value)
        if not ok and chunks:  # nobody will read them: a manifest names its own nonce
            with contextlib.suppress(StoreError):
                await self._retry("delete chunks", lambda: self.client.delete_prefix(base))
        return ok

    async def _swap(
        self, target: str, prev_generation: int, new: Versioned, key: bytes, hist_key: bytes, value: bytes
    ) -> bool:
        tx = self.client.transactions
        for _ in range(3):
            if prev_generation == 0:
                compare = [tx.create(key) == 0]
            else:
                cached = self._mod_rev.get(target)
                if cached is None or cached[0] != prev_generation:
                    cur = await self.get(target)
                    if cur is None or cur.generation != prev_generation:
                        return False
                    cached = self._mod_rev[target]
                compare = [tx.mod(key) == cached[1]]
            fence = self._fence_rev
            if fence is not None:
                # fenced: the write lands only while the leader key is still the one our election created
                compare.append(tx.create(self._leader_key) == fence)
            ok, responses = await self._retry(
                "compare-and-swap",
                lambda c=compare: self.client.transaction(  # type: ignore[misc]
                    compare=c,
                    success=[tx.put(key, value), tx.put(hist_key, value)],
                    failure=[tx.get(key), tx.get(self._leader_key)],
                ),
            )
            if not ok and fence is not None and not self._fence_holds(responses):
                self._lose_leadership("a write was fenced: the leader key is no longer ours")
                return False
            if ok:
                self._mod_rev[target] = (new.generation, int(responses[0].response_put.header.revision))
                await self._trim_history(target)
                return True
            found = responses[0] if responses else []
            if not found:
                self._mod_rev.pop(target, None)
                if prev_generation == 0:
                    continue  # deleted between compare and read: try again
                return False
            raw, kv = found[0]
            cur_gen = _generation(target, raw)
            self._mod_rev[target] = (cur_gen, kv.mod_revision)
            if raw == value:
                await self._trim_history(target)
                return True  # an earlier attempt whose reply was lost went through
            if cur_gen != prev_generation:
                return False
            # same generation, other revision (rewritten): compare again with the fresh revision
        return False

    @staticmethod
    def _leader_kvs(responses: Any) -> list[Any]:
        return list(responses[1]) if responses is not None and len(responses) > 1 else []

    def _fence_holds(self, responses: Any) -> bool:
        found = self._leader_kvs(responses)
        return bool(found) and int(found[0][1].create_revision) == self._fence_rev

    async def _trim_history(self, target: str) -> None:
        prefix = self._history_prefix(target)
        try:
            res = await self._retry(
                "list history keys",
                lambda: self.client.get_prefix(prefix, sort_order="descend", sort_target="key", keys_only=True),
            )
            keys = [kv.key for kv in res]
            if len(keys) > self.history_limit:
                oldest_kept = keys[self.history_limit - 1]
                await self._retry("trim history", lambda: self.client.delete_range(prefix, oldest_kept))
                # and the chunks of every generation below the oldest kept (a failed writer's too)
                chunks = self._chunk_prefix(target)
                below = chunks + oldest_kept[len(prefix) :]
                await self._retry("trim chunks", lambda: self.client.delete_range(chunks, below))
        except StoreError as e:  # the CAS is done; the next one trims
            log.warning("could not trim history of %r: %s", target, e)

    async def history(self, target: str, limit: int = 0) -> list[Versioned]:
        prefix = self._history_prefix(target)
        res = await self._retry(
            "history", lambda: self.client.get_prefix(prefix, sort_order="descend", sort_target="key", keys_only=True)
        )  # keys first: the values of a whole history may be far more than one response carries
        keys = [kv.key for kv in res][: self.history_limit]
        keys = keys[:limit] if limit > 0 else keys
        kvs = await asyncio.gather(*(self._retry("history entry", functools.partial(self.client.get, k)) for k in keys))
        return [await self._load(target, kv.value) for kv in kvs if kv is not None]

    def watch(self, target: str | None = None, from_generation: int = 0) -> AsyncIterator[Versioned]:
        return self._watch(target, from_generation)

    async def _snapshot(self, target: str | None) -> tuple[list[Versioned], int]:
        """Current generation of ``target`` (None: of every target) and the store revision it was read at."""
        if target is not None:
            key = self._assign_key(target)
            res = await self._retry("watch snapshot", lambda: self.client.get_range(key, key + b"\x00"))
        else:
            res = await self._retry("watch snapshot", lambda: self.client.get_prefix(self._k("assign", "")))
        items = [await self._load(self._target_of(kv.key), kv.value) for kv in res]
        return sorted(items, key=lambda v: v.target), int(res.header.revision)

    async def _watch(self, target: str | None, from_generation: int) -> AsyncIterator[Versioned]:
        seen: dict[str, int] = {}

        def fresh(v: Versioned) -> bool:
            if v.generation > seen.get(v.target, from_generation):
                seen[v.target] = v.generation
                return True
            return False

        key = self._assign_key(target) if target is not None else self._k("assign", "")
        range_end = None if target is not None else aetcd.utils.prefix_range_end(key)
        next_rev: int | None = None
        backoff = 0.05
        while not self._closed:
            try:
                if next_rev is None:
                    items, rev = await self._snapshot(target)
                    for v in items:
                        if fresh(v):
                            yield v
                    next_rev = rev + 1
                w = await asyncio.wait_for(
                    self.client.watch(key, range_end=range_end, start_revision=next_rev),
                    timeout=self.request_timeout_s,
                )
                try:
                    async for ev in w:
                        backoff = 0.05
                        next_rev = int(ev.kv.mod_revision) + 1
                        if ev.kind != "PUT":
                            continue
                        name = target if target is not None else self._target_of(ev.kv.key)
                        if _generation(name, ev.kv.value) > seen.get(name, from_generation):
                            v = await self._load(name, ev.kv.value)
                            if fresh(v):
                                yield v
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.cancel(), timeout=1.0)
            except aetcd.RevisionCompactedError:
                next_rev = None  # missed generations were compacted away: resync from the current ones
            except StoreError as e:
                if self._closed:
                    return
                log.debug("watch %r: %s; resyncing", target, e)
            except Exception as e:
                if self._closed:
                    return
                log.debug("watch %r broke: %r; re-establishing", target, e)
            if self._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    # pods ----------------------------------------------------------------------------------
    async def put_pod(self, pod_id: str, data: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        key = self._pod_key(pod_id)
        ttl = max(1, math.ceil(ttl_s))

        async def attempt() -> None:
            client = self.client
            cached = self._pod_leases.get(pod_id)
            lease_id = cached[0] if cached is not None and cached[1] == ttl else None
            if lease_id is not None:
                reply = await client.refresh_lease(lease_id)
                if reply is None or reply.TTL <= 0:
                    lease_id = None
            if lease_id is None:
                lease = await client.lease(ttl)
                lease_id = int(lease.id)
                self._pod_leases[pod_id] = (lease_id, ttl)
            try:
                await client.put(key, bytes(data), lease=lease_id)
            except aetcd.ClientError as e:
                if "lease not found" in str(e):
                    self._pod_leases.pop(pod_id, None)
                    raise _Retry(str(e)) from e
                raise

        await self._retry("put pod", attempt)

    async def list_pods(self) -> dict[str, bytes]:
        prefix = self._k("pods", "")
        res = await self._retry("list pods", lambda: self.client.get_prefix(prefix))
        return {urllib.parse.unquote(kv.key[len(prefix) :].decode()): bytes(kv.value) for kv in res}

    async def delete_pod(self, pod_id: str) -> None:
        key = self._pod_key(pod_id)
        await self._retry("delete pod", lambda: self.client.delete(key))
        cached = self._pod_leases.pop(pod_id, None)
        if cached is not None:
            with contextlib.suppress(StoreError):
                await self._retry("revoke pod lease", lambda: self.client.revoke_lease(cached[0]), deadline_s=1.0)

    # meta ----------------------------------------------------------------------------------
    async def put_meta(self, key: str, data: bytes) -> None:
        k = self._meta_key(key)
        await self._retry("put meta", lambda: self.client.put(k, bytes(data)))

    async def get_meta(self, key: str) -> bytes | None:
        k = self._meta_key(key)
        kv = await self._retry("get meta", lambda: self.client.get(k))
        return None if kv is None else bytes(kv.value)

    async def list_meta(self, prefix: str) -> dict[str, bytes]:
        base = self._k("meta", "")
        res = await self._retry("list meta", lambda: self.client.get_prefix(base + prefix.encode()))
        return {kv.key[len(base) :].decode(): bytes(kv.value) for kv in res}

    async def delete_meta(self, key: str) -> None:
        k = self._meta_key(key)
        await self._retry("delete meta", lambda: self.client.delete(k))

    async def cas_meta(self, key: str, expected: bytes | None, data: bytes) -> bool:
        k = self._meta_key(key)
        tx = self.client.transactions
        compare = [tx.create(k) == 0] if expected is None else [tx.value(k) == bytes(expected)]
        # A txn whose reply was lost and that the retry then finds changed reads as a conflict: the caller re-reads
        # (for a quota ledger: the orphaned allotment expires; conservative, never a double grant).
        ok, _ = await self._retry(
            "compare-and-swap meta",
            lambda: self.client.transaction(compare=compare, success=[tx.put(k, bytes(data))], failure=[]),
        )
        return bool(ok)

    # leader election -----------------------------------------------------------------------
    def _leader_value(self, me: LeaderInfo) -> bytes:
        return json.dumps({"candidate_id": me.candidate_id, "address": me.address, "token": self._token}).encode()

    async def campaign(self, me: LeaderInfo, ttl_s: float) -> bool:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        ttl = max(1, math.ceil(ttl_s))
        if self.is_leader():
            kv = await self._retry("check leader", lambda: self.client.get(self._leader_key))
            if kv is not None and kv.lease == self._leader_lease:
                return True
            self._lose_leadership("leader key gone or taken")
        await self._stop_leader_task()
        old_lease, self._leader_lease = self._leader_lease, None
        t0 = time.monotonic()
        lease = await self._retry("grant leader lease", lambda: self.client.lease(ttl))
        lease_id = int(lease.id)
        tx = self.client.transactions
        value = self._leader_value(me)
        ok, responses = await self._retry(
            "campaign",
            lambda: self.client.transaction(
                compare=[tx.create(self._leader_key) == 0],
                success=[tx.put(self._leader_key, value, lease=lease_id)],
                failure=[tx.get(self._leader_key)],
            ),
        )
        created = int(responses[0].response_put.header.revision) if ok else 0
        if not ok:
            found = responses[0] if responses else []
            holder = int(found[0][1].lease) if found else 0
            ok = holder == lease_id  # an earlier attempt of ours went through
            if ok:
                created = int(found[0][1].create_revision)
            if holder and old_lease is not None and holder == old_lease:
                # the key still sits on the lease we gave up for lost: free it so the next campaign can win
                with contextlib.suppress(StoreError):
                    await self._retry("revoke lost lease", lambda: self.client.revoke_lease(old_lease), deadline_s=1.0)
        if not ok:
            with contextlib.suppress(StoreError):
                await self._retry("revoke lease", lambda: self.client.revoke_lease(lease_id), deadline_s=1.0)
            return False
        self._leader_lease = lease_id
        self._fence_rev = created
        self._leader_valid_until = t0 + ttl
        self._leader_lost = False
        self._leader_task = asyncio.get_running_loop().create_task(self._keep_leading(lease_id, ttl))
        log.info("%s is leader (lease %x, ttl %ss)", me.candidate_id, lease_id, ttl)
        return True

    def _lose_leadership(self, why: str) -> None:
        if not self._leader_lost:
            log.warning("leadership lost: %s", why)
        self._leader_lost = True

    async def _keep_leading(self, lease_id: int, ttl: int) -> None:
        period = ttl / 3
        delay = period
        while not self._leader_lost:
            await asyncio.sleep(delay)
            t = time.monotonic()
            if t >= self._leader_valid_until:
                self._lose_leadership("lease keepalive failed past its ttl")
                return
            try:
                timeout = min(self.request_timeout_s, max(0.05, self._leader_valid_until - t))
                reply = await asyncio.wait_for(self.client.refresh_lease(lease_id), timeout=timeout)
                if reply is None or reply.TTL <= 0:
                    self._lose_leadership("lease expired")
                    return
                self._leader_valid_until = t + int(reply.TTL)
                kv = await asyncio.wait_for(self.client.get(self._leader_key), timeout=timeout)
                if kv is None or int(kv.lease) != lease_id:
                    self._lose_leadership("leader key gone or taken")
                    return
                delay = period
            except StoreError:
                return  # closed
            except Exception as e:
                log.debug("leader keepalive: %r", e)
                delay = min(period, 0.1)

    async def _stop_leader_task(self) -> None:
        task, self._leader_task = self._leader_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _resign(self, deadline_s: float | None = None) -> None:
        await self._stop_leader_task()
        lease_id, self._leader_lease = self._leader_lease, None
        self._leader_lost = True
        if lease_id is not None and self._client is not None:
            await self._retry("resign", lambda: self.client.revoke_lease(lease_id), deadline_s=deadline_s)

    async def resign(self) -> None:
        await self._resign()

    def is_leader(self) -> bool:
        return (
            not self._closed
            and self._leader_lease is not None
            and not self._leader_lost
            and time.monotonic() < self._leader_valid_until
        )

    async def leader(self) -> LeaderInfo | None:
        kv = await self._retry("get leader", lambda: self.client.get(self._leader_key))
        if kv is None:
            return None
        try:
            doc = json.loads(kv.value)
            return LeaderInfo(candidate_id=str(doc["candidate_id"]), address=str(doc["address"]))
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"leader key holds an unreadable value: {e}") from e

    def simulate_crash(self) -> None:
        """Test hook: stop the leadership keepalive without resigning, as a hung or dead process would;
        ``is_leader()`` turns False and the lease expires in etcd ``ttl`` after its last refresh."""
        if self._leader_task is not None:
            self._leader_task.cancel()
            self._leader_task = None
