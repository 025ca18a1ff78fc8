"""Key-of-death containment, pure: a SliceKey whose requests coincide with engine faults on distinct pods.

A fault (a crash, hang or timeout of the pod while it served the key's request) on one pod makes the key
*suspected*: routers keep it inside its subset (no retry, spill or fallback beyond it). Faults on
``QuarantinePolicy.pods`` distinct pods within ``window_ms`` *quarantine* it for ``cooldown_ms``: its requests are
refused (``key_quarantined``) and never retried. No clock inside: every function takes ``now_ms``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sharder.errors import BrunoiseError


class QuarantineError(BrunoiseError, ValueError):
    """A quarantine policy or record is invalid."""


@dataclasses.dataclass(frozen=True, slots=True)
class QuarantinePolicy:
    pods: int = 2
    window_ms: int = 120_000
    cooldown_ms: int = 300_000

    def validate(self) -> None:
        if self.pods < 1:
            raise QuarantineError("pods must be >= 1", "pods")
        if not 1_000 <= self.window_ms <= 86_400_000:
            raise QuarantineError("window_ms must be in [1000, 86400000]", "window_ms")
        if not 1_000 <= self.cooldown_ms <= 86_400_000:
            raise QuarantineError("cooldown_ms must be in [1000, 86400000]", "cooldown_ms")


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known of one key of one target: the pods it faulted, since when, and its quarantine (0: none)."""

    target: str
    slice_key: int
    pods: tuple[str, ...]
    first_ms: int
    last_ms: int
    quarantined_until_ms: int = 0
    cause: str = ""
    suspected_until_ms: int = 0

    def state(self, now_ms: int) -> str:
        """``quarantined``, ``suspected`` or ``clear`` at ``now_ms`` (a quarantine that ended clears the key)."""
        if self.quarantined_until_ms > now_ms:
            return "quarantined"
        if self.quarantined_until_ms == 0 and self.suspected_until_ms > now_ms:
            return "suspected"
        return "clear"

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> KeyRecord:
        d: dict[str, Any] = json.loads(raw)
        return cls(
            str(d["target"]), int(d["slice_key"]), tuple(str(p) for p in d["pods"]), int(d["first_ms"]),
            int(d["last_ms"]), int(d.get("quarantined_until_ms", 0)), str(d.get("cause", "")),
            int(d.get("suspected_until_ms", 0)),
        )  # fmt: skip


def note_fault(
    rec: KeyRecord | None, target: str, slice_key: int, pod: str, cause: str, now_ms: int, policy: QuarantinePolicy
) -> KeyRecord:
    """The record after a fault of ``slice_key``'s request on ``pod``. A record whose suspicion window or quarantine
    has passed starts over; a quarantined key stays quarantined (its cool-down is not extended)."""
    if rec is not None and rec.state(now_ms) == "quarantined":
        return rec
    if rec is None or rec.state(now_ms) == "clear":
        rec = KeyRecord(target, slice_key, (), now_ms, now_ms)
    pods = rec.pods if pod in rec.pods else (*rec.pods, pod)
    until = now_ms + policy.cooldown_ms if len(pods) >= policy.pods else 0
    last = max(rec.last_ms, now_ms)
    return dataclasses.replace(
        rec,
        pods=pods,
        last_ms=last,
        quarantined_until_ms=until,
        cause=cause,
        suspected_until_ms=last + policy.window_ms,
    )


def meta_key(target: str, slice_key: int) -> str:
    """Where a key's record lives in the store's meta."""
    return f"quarantine/{target}/{slice_key:016x}"
