"""Admission: in-subset when a subset pod is under its limits, else spill-over outside the subset, else shed."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence

from axon_router.knobs import Knobs
from axon_router.picker import Limits, Picker, PickInput, Scored
from axon_router.pod_view import PodView


class Priority(enum.IntEnum):
    INTERACTIVE = 1
    BATCH = 2


class Outcome(enum.Enum):
    IN_SUBSET = "in_subset"
    SPILL = "spill"  # every subset pod over its limit: best eligible pod outside the subset
    FALLBACK = "fallback"  # no usable subset pod (none assigned, unhealthy, or none with the labels)
    SHED = "shed"  # the whole eligible pool is over its limits
    UNAVAILABLE = "unavailable"  # no healthy eligible pod at all


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    pick: Scored | None


class Admission:
    """Limits per priority: batch sees ``batch_admit_fraction`` of the interactive ones, so it sheds first."""

    def __init__(self, knobs: Knobs) -> None:
        self.interactive = Limits(float(knobs.admit_max_outstanding), knobs.admit_ttft_slo_s)
        f = knobs.batch_admit_fraction
        self.batch = Limits(max(1.0, knobs.admit_max_outstanding * f), knobs.admit_ttft_slo_s * f)

    def limits(self, priority: Priority) -> Limits:
        return self.batch if priority is Priority.BATCH else self.interactive

    def decide(
        self,
        picker: Picker,
        subset: Sequence[PodView],
        outside: Sequence[PodView],
        req: PickInput,
        now: float,
        priority: Priority,
    ) -> Decision:
        """``subset`` / ``outside``: usable (healthy, circuit not open), label-eligible pods in / out of the subset."""
        if not subset and not outside:
            return Decision(Outcome.UNAVAILABLE, None)
        lim = self.limits(priority)
        if subset:
            s = picker.choose(subset, req, now, lim)
            if s is not None:
                return Decision(Outcome.IN_SUBSET, s)
        if outside:
            s = picker.choose(outside, req, now, lim)
            if s is not None:
                return Decision(Outcome.SPILL if subset else Outcome.FALLBACK, s)
        if picker.choose([PodView("", "")], req, now, lim) is None:
            # Over the TTFT limit even on an idle pod (a huge prompt): load is not why, so shedding with a retry
            # hint would have clients retry forever. The best pod under the outstanding limit takes it; the pod
            # decides (vLLM answers 400 for a prompt over its context).
            by_count = Limits(lim.max_outstanding, math.inf)
            s = picker.choose(subset, req, now, by_count) if subset else None
            if s is not None:
                return Decision(Outcome.IN_SUBSET, s)
            s = picker.choose(outside, req, now, by_count) if outside else None
            if s is not None:
                return Decision(Outcome.SPILL if subset else Outcome.FALLBACK, s)
        return Decision(Outcome.SHED, None)
