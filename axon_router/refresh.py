"""``Refreshed``: a record set the router reads from the assigners, once before serving and then on an interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("axon_router")


class Refreshed:
    """Subclasses implement ``refresh`` (read the records from any assigner replica) and set ``interval_s``.

    ``start`` reads once, so a (re)started router knows the records before it serves, then every ``interval_s``
    in a task; a failed read keeps the last records (``refresh_failed`` is told, and ``failures`` counts it)."""

    interval_s: float = 1.0
    what: str = "records"
    failures: int = 0
    _task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        raise NotImplementedError

    def refresh_failed(self, error: Exception, first: bool) -> None:
        """A read failed (``first``: the first of a run of failures); default: one warning per run."""
        if first:
            log.warning("%s refresh failed; routing on the last ones", self.what, extra={"error": str(error)})

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()
        self._task = asyncio.create_task(self._loop(), name=f"refresh-{self.what}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception as e:  # keep routing on the last records
                self.failures += 1
                self.refresh_failed(e, not failing)
                failing = True
            else:
                failing = False


__all__ = ["Refreshed"]
