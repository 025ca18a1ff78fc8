"""The store interface: versioned assignments with compare-and-swap, watches, pod leases, leader election."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator


class StoreError(Exception):
    """The store could not be reached or answered an error (retryable)."""


class StoreUnavailable(StoreError):
    """No store member answered within the deadline."""


@dataclasses.dataclass(frozen=True, slots=True)
class Versioned:
    """One stored generation of a target's assignment (opaque bytes: a serialized brunoise.v1.Assignment)."""

    target: str
    generation: int
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class LeaderInfo:
    candidate_id: str
    address: str


class Store(abc.ABC):
    """What the assigner needs from its store. Every method may raise StoreError."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers now (drives the assigner's readiness)."""

    # assignments -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def list_targets(self) -> list[str]: ...

    @abc.abstractmethod
    async def get(self, target: str) -> Versioned | None:
        """The current generation of ``target``, or None when it has none."""

    @abc.abstractmethod
    async def compare_and_swap(self, target: str, prev_generation: int, new: Versioned) -> bool:
        """Write ``new`` iff the current generation is ``prev_generation`` (0: none yet) and
        ``new.generation > prev_generation``; append it to the bounded history. False on conflict."""

    @abc.abstractmethod
    async def history(self, target: str, limit: int = 0) -> list[Versioned]:
        """Kept generations of ``target``, newest first (``limit`` 0: all kept)."""

    @abc.abstractmethod
    def watch(self, target: str | None = None, from_generation: int = 0) -> AsyncIterator[Versioned]:
        """Every generation newer than ``from_generation`` (current one first), as it is written.
        ``target`` None: every target. Generations per target arrive strictly increasing."""

    # pods ------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def put_pod(self, pod_id: str, data: bytes, ttl_s: float) -> None:
        """Register or refresh a pod; it disappears from ``list_pods`` ``ttl_s`` after its last refresh."""

    @abc.abstractmethod
    async def list_pods(self) -> dict[str, bytes]:
        """Live pods (lease not expired): pod id -> registration bytes."""

    @abc.abstractmethod
    async def delete_pod(self, pod_id: str) -> None: ...

    # small durable settings (drain flags, target configs) --------------------------------------
    @abc.abstractmethod
    async def put_meta(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    async def get_meta(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def list_meta(self, prefix: str) -> dict[str, bytes]: ...

    @abc.abstractmethod
    async def delete_meta(self, key: str) -> None: ...

    @abc.abstractmethod
    async def cas_meta(self, key: str, expected: bytes | None, data: bytes) -> bool:
        """Write ``data`` at ``key`` iff its value is ``expected`` now (None: absent); False on conflict.
        Linearizable (quota ledgers rely on it)."""

    # leader election -------------------------------------------------------------------------
    @abc.abstractmethod
    async def campaign(self, me: LeaderInfo, ttl_s: float) -> bool:
        """Try once to become leader (create-if-absent bound to a lease kept alive by the store);
        True if this process is leader now (also when it already was)."""

    @abc.abstractmethod
    async def resign(self) -> None: ...

    @abc.abstractmethod
    def is_leader(self) -> bool:
        """Whether this process holds leadership now (False as soon as the lease is known lost)."""

    @abc.abstractmethod
    async def leader(self) -> LeaderInfo | None:
        """The current leader, as stored."""
