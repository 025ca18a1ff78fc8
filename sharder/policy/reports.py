"""Phase 0: validate load reports and attribute their per-slice loads and hot keys to the current slices."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from sharder.config import TargetConfig
from sharder.errors import LoadReportError, UnknownPodError
from sharder.load import LoadReport
from sharder.pods import Pod
from sharder.policy.round_state import Rec


def check_reports(reports: Sequence[LoadReport], pods: Mapping[str, Pod], config: TargetConfig) -> list[LoadReport]:
    """Validate every report before anything is applied; keep the newest (highest ``seq``, then the last
    given) report per pod. UnknownPodError for a pod not in ``pods``; LoadReportError for anything malformed
    or for another target."""
    newest: dict[str, LoadReport] = {}
    for i, r in enumerate(reports):
        if not isinstance(r, LoadReport):
            raise LoadReportError(f"reports[{i}] must be a LoadReport, got {type(r).__name__}", field=f"reports[{i}]")
        r.validate()
        if r.pod_id not in pods:
            raise UnknownPodError(
                f"reports[{i}] comes from pod {r.pod_id!r}, which is not among the pods; register it first",
                field="pod_id",
            )
        if r.target and r.target != config.target:
            raise LoadReportError(
                f"reports[{i}] is for target {r.target!r}, not {config.target!r}", field=f"reports[{i}].target"
            )
        prev = newest.get(r.pod_id)
        if prev is None or r.seq >= prev.seq:
            newest[r.pod_id] = r
    return [newest[p] for p in sorted(newest)]


def attribute(recs: list[Rec], reports: list[LoadReport]) -> None:
    """Set each slice's load to the sum of what pods reported for it. A reported range that is not a current
    slice is spread over the slices it overlaps in proportion to the overlap; hot keys go to the slice that
    contains them. A slice nobody reported on and none of whose holders reported keeps its previous load."""
    if not reports:
        return
    n = len(recs)
    los = [r.lo for r in recs]
    by_lo = {lo: i for i, lo in enumerate(los)}
    sums = [0.0] * n
    covered = bytearray(n)
    reporters = set()
    for rep in reports:
        pod = rep.pod_id
        reporters.add(pod)
        for sl in rep.slices:
            s = sl.slice
            lo, hi = s.lo, s.hi
            i = by_lo.get(lo)
            if i is not None and (rec := recs[i]).hi == hi:
                load = sl.load
                sums[i] += load
                covered[i] = 1
                served = rec.served
                if served is None:
                    rec.served = served = {}
                served[pod] = served.get(pod, 0.0) + load
                if sl.top_keys:
                    rec.add_keys(sl.top_keys)
                continue
            width = hi - lo
            j = bisect.bisect_right(los, lo) - 1
            load = sl.load
            while j < n and recs[j].lo < hi:
                rec = recs[j]
                ov = min(hi, rec.hi) - max(lo, rec.lo)
                if ov > 0:
                    sums[j] += load * (ov / width)
                    covered[j] = 1
                j += 1
            for k, w in sl.top_keys:
                recs[bisect.bisect_right(los, k) - 1].add_keys(((k, w),))
    for rec, hit, total in zip(recs, covered, sums, strict=True):
        if hit:
            rec.load = total
        elif any(p in reporters for p in rec.replicas) or any(p in reporters for p in rec.leaving):
            rec.load = 0.0


__all__ = ["attribute", "check_reports"]
