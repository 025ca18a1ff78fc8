"""Unary calls from a router to the assigners (quota allotments, key faults): any replica, tried in turn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from brunoise_api.v1 import assigner_pb2_grpc
from sharder.security.client import ClientAuth


class AssignerCalls:
    """One channel per assigner address; a call goes to the replica that answered last, then the others."""

    def __init__(self, assigners: Sequence[str], auth: ClientAuth | None = None, timeout_s: float = 0.5) -> None:
        if not assigners:
            raise ValueError("at least one assigner address is needed")
        self.assigners = list(assigners)
        self.auth = auth if auth is not None else ClientAuth.from_env()
        self.timeout_s = timeout_s
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[Any] = []
        self._next = 0

    def start(self) -> None:
        self._channels = [self.auth.aio_channel(a) for a in self.assigners]
        self._stubs = [assigner_pb2_grpc.AssignerStub(c) for c in self._channels]  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        for c in self._channels:
            await c.close(None)

    async def call(self, method: str, req: Any) -> Any:
        """``method``'s answer from the first replica that gives one; the last replica's error otherwise."""
        last: grpc.aio.AioRpcError | None = None
        n = len(self._stubs)
        for i in range(n):
            k = (self._next + i) % n
            try:
                out = await getattr(self._stubs[k], method)(
                    req, timeout=self.timeout_s, metadata=self.auth.metadata or None
                )
            except grpc.aio.AioRpcError as e:
                last = e
                continue
            self._next = k
            return out
        assert last is not None, "start() was not called"
        raise last
