"""Fan-out of assignment generations to Watch streams: one bounded, skip-to-newest mailbox per watcher."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from brunoise_api.v1 import assigner_pb2, slicing_pb2
from sharder.codec import diff_message


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One generation of one target, encoded once and shared by every watcher."""

    target: str
    generation: int
    msg: slicing_pb2.Assignment
    full: bytes  # serialized WatchResponse(assignment=msg): encoded once, written to every stream


def make_entry(msg: slicing_pb2.Assignment) -> Entry:
    full = assigner_pb2.WatchResponse(assignment=msg).SerializeToString()
    return Entry(msg.target, msg.generation, msg, full)


class Mailbox:
    """A watcher's pending updates: at most one per target, the newest (so memory is bounded and a slow
    watcher skips straight to the newest generation instead of replaying every one)."""

    def __init__(self, target: str | None) -> None:
        self.target = target
        self._pending: dict[str, Entry] = {}
        self._event = asyncio.Event()
        self.closed = False

    def offer(self, entry: Entry) -> None:
        if self.target is not None and entry.target != self.target:
            return
        cur = self._pending.get(entry.target)
        if cur is None or cur.generation < entry.generation:
            self._pending[entry.target] = entry
            self._event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def take(self) -> list[Entry]:
        """Wait for and return the pending entries (sorted by target); empty once closed."""
        while not self._pending and not self.closed:
            self._event.clear()
            await self._event.wait()
        items = [self._pending[t] for t in sorted(self._pending)]
        self._pending.clear()
        self._event.clear()
        return items


class WatchHub:
    """The newest generation of each target this process knows, and the mailboxes of its watchers."""

    def __init__(self) -> None:
        self._current: dict[str, Entry] = {}
        self._mailboxes: set[Mailbox] = set()
        self._diffs: dict[tuple[str, int, int], bytes] = {}

    def diff_bytes(self, old: Entry, new: Entry) -> bytes:
        """Serialized WatchResponse(diff=old->new), computed once for every watcher at the same step."""
        key = (new.target, old.generation, new.generation)
        got = self._diffs.get(key)
        if got is None:
            if len(self._diffs) >= 256:
                self._diffs.clear()
            got = self._diffs[key] = assigner_pb2.WatchResponse(diff=diff_message(old.msg, new.msg)).SerializeToString()
        return got

    def publish(self, msg: slicing_pb2.Assignment) -> bool:
        """Accept ``msg`` if it is newer than what we hold for its target; fan it out. False when stale."""
        cur = self._current.get(msg.target)
        if cur is not None and cur.generation >= msg.generation:
            return False
        entry = make_entry(msg)
        self._current[msg.target] = entry
        for mb in self._mailboxes:
            mb.offer(entry)
        return True

    def current(self, target: str) -> Entry | None:
        return self._current.get(target)

    def targets(self) -> list[str]:
        return sorted(self._current)

    def entries(self) -> Iterable[Entry]:
        return [self._current[t] for t in sorted(self._current)]

    def subscribe(self, target: str | None) -> Mailbox:
        """A new mailbox, pre-filled with the current generation of every matching target."""
        mb = Mailbox(target)
        for entry in self._current.values():
            mb.offer(entry)
        self._mailboxes.add(mb)
        return mb

    def unsubscribe(self, mb: Mailbox) -> None:
        self._mailboxes.discard(mb)
        mb.close()

    def close(self) -> None:
        for mb in list(self._mailboxes):
            self.unsubscribe(mb)

    @property
    def watchers(self) -> int:
        return len(self._mailboxes)
