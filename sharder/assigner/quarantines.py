"""The store-backed quarantine records: one per (target, SliceKey) in store meta, changed only by compare-and-swap."""

from __future__ import annotations

import time
from collections.abc import Callable

from brunoise_api.v1 import assigner_pb2
from sharder.quarantine import KeyRecord, QuarantinePolicy, meta_key, note_fault
from sharder.store.base import Store, StoreError

PREFIX = "quarantine/"
CAS_ATTEMPTS = 16


def _now_ms() -> int:
    return int(time.time() * 1000)


class Quarantines:
    """Key fault records in ``store``; any assigner replica may serve them (the CAS linearizes the updates)."""

    def __init__(self, store: Store, clock: Callable[[], int] = _now_ms) -> None:
        self.store = store
        self.clock = clock

    async def report(
        self, target: str, slice_key: int, pod: str, cause: str, policy: QuarantinePolicy
    ) -> tuple[KeyRecord, int]:
        """Record a fault; the record after it and the time (ms) it was judged at."""
        key = meta_key(target, slice_key)
        for _ in range(CAS_ATTEMPTS):
            raw = await self.store.get_meta(key)
            now = self.clock()
            cur = KeyRecord.from_json(raw) if raw is not None else None
            new = note_fault(cur, target, slice_key, pod, cause, now, policy)
            if new == cur or await self.store.cas_meta(key, raw, new.to_json()):
                return new, now
        raise StoreError(f"the fault record of key {slice_key:#x} kept changing; retry")

    async def list(self, target: str = "") -> list[KeyRecord]:
        found = await self.store.list_meta(PREFIX + (f"{target}/" if target else ""))
        return [KeyRecord.from_json(v) for _, v in sorted(found.items())]

    async def clear(self, target: str, slice_key: int | None) -> int:
        """Forget the records of ``slice_key`` (None: every key) of ``target`` ("": every target)."""
        gone = [r for r in await self.list(target) if slice_key is None or r.slice_key == slice_key]
        for r in gone:
            await self.store.delete_meta(meta_key(r.target, r.slice_key))
        return len(gone)


def record_to_proto(r: KeyRecord, now_ms: int) -> assigner_pb2.KeyFaultRecord:
    return assigner_pb2.KeyFaultRecord(
        target=r.target, slice_key=r.slice_key, pods=list(r.pods), first_unix_ms=r.first_ms, last_unix_ms=r.last_ms,
        quarantined_until_unix_ms=r.quarantined_until_ms, cause=r.cause, state=r.state(now_ms),
        suspected_until_unix_ms=r.suspected_until_ms,
    )  # fmt: skip


def policy_from_proto(req: assigner_pb2.ReportKeyFaultRequest) -> QuarantinePolicy:
    d = QuarantinePolicy()
    p = QuarantinePolicy(req.quarantine_pods or d.pods, req.window_ms or d.window_ms, req.cooldown_ms or d.cooldown_ms)
    p.validate()
    return p
