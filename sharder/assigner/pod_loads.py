"""In-memory view of pods as this assigner saw them: registrations, last load reports, report times."""

from __future__ import annotations

import dataclasses
import time

from sharder.load import EngineLoad, LoadReport
from sharder.pods import Pod


@dataclasses.dataclass(slots=True)
class PodRecord:
    """What this assigner process last heard from one pod."""

    pod: Pod
    ttl_s: float
    last_seen: float  # time.monotonic() of the last accepted report
    last_report_unix_ms: int = 0
    report: LoadReport | None = None

    def alive(self, now: float) -> bool:
        return now - self.last_seen <= self.ttl_s


class PodLoadView:
    """Pod registrations and load reports held in memory (invisible-if-stale state: never stored)."""

    def __init__(self) -> None:
        self._pods: dict[str, PodRecord] = {}

    def get(self, pod_id: str) -> PodRecord | None:
        return self._pods.get(pod_id)

    def conflicting_address(self, pod: Pod) -> str | None:
        """The other address ``pod.id`` is registered with while that registration is alive, else None."""
        rec = self._pods.get(pod.id)
        if rec is None or rec.pod.address == pod.address:
            return None
        return rec.pod.address if rec.alive(time.monotonic()) else None

    def update(self, pod: Pod, report: LoadReport | None, ttl_s: float) -> PodRecord:
        now = time.monotonic()
        rec = self._pods.get(pod.id)
        if rec is None:
            rec = PodRecord(pod=pod, ttl_s=ttl_s, last_seen=now)
            self._pods[pod.id] = rec
        rec.pod, rec.ttl_s, rec.last_seen = pod, ttl_s, now
        if report is not None:
            rec.report = report
            rec.last_report_unix_ms = int(time.time() * 1000)
        return rec

    def forget(self, pod_id: str) -> None:
        self._pods.pop(pod_id, None)

    def prune(self, live_ids: set[str]) -> None:
        """Drop pods the store no longer lists as live (their lease expired) and that went quiet here."""
        now = time.monotonic()
        for pid in [p for p, r in self._pods.items() if p not in live_ids and not r.alive(now)]:
            del self._pods[pid]

    def reports(self, pod_ids: set[str]) -> list[LoadReport]:
        """The last report of each of ``pod_ids`` that sent one, ordered by pod id (deterministic input)."""
        out = []
        for pid in sorted(pod_ids):
            rec = self._pods.get(pid)
            if rec is not None and rec.report is not None:
                out.append(rec.report)
        return out

    def engine(self, pod_id: str) -> EngineLoad | None:
        rec = self._pods.get(pod_id)
        return rec.report.engine if rec is not None and rec.report is not None else None

    def last_report_unix_ms(self, pod_id: str) -> int:
        rec = self._pods.get(pod_id)
        return rec.last_report_unix_ms if rec is not None else 0

    def slice_load(self, pod_id: str) -> float:
        rec = self._pods.get(pod_id)
        if rec is None or rec.report is None:
            return 0.0
        return float(sum(s.load for s in rec.report.slices))
