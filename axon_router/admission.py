"""Admission: in-subset when a subset pod is under its limits, else spill-over outside the subset, else shed."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence

from axon_router.cost import CostModel, Limits, PickInput, Scored
from axon_router.knobs import Knobs
from axon_router.pick import FALLBACK, SPILL, SUBSET, Candidates, PickPolicy
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


_OUTCOME_OF_TIER = {SUBSET: Outcome.IN_SUBSET, SPILL: Outcome.SPILL, FALLBACK: Outcome.FALLBACK}


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    pick: Scored | None
    rule: str = ""  # how the subset pick was made (``axon_router.pick`` RULE_*), "" outside the subset


class Admission:
    """Limits per priority: batch sees ``batch_admit_fraction`` of the interactive ones, so it sheds first."""

    def __init__(self, knobs: Knobs) -> None:
        self.interactive = Limits(float(knobs.admit_max_outstanding), knobs.admit_ttft_slo_s)
        f = knobs.batch_admit_fraction
        self.batch = Limits(max(1.0, knobs.admit_max_outstanding * f), knobs.admit_ttft_slo_s * f)
        self.cost = CostModel(knobs)

    def limits(self, priority: Priority) -> Limits:
        return self.batch if priority is Priority.BATCH else self.interactive

    def decide(
        self,
        policy: PickPolicy,
        subset: Sequence[str],
        outside: Sequence[str],
        views: Mapping[str, PodView],
        req: PickInput,
        now: float,
        priority: Priority,
    ) -> Decision:
        """``subset`` / ``outside``: ids of usable (healthy, circuit not open), label-eligible pods in / out of the
        subset; the first pod of the policy's first non-empty tier under this priority's limits is the pick."""
        if not subset and not outside:
            return Decision(Outcome.UNAVAILABLE, None)
        lim = self.limits(priority)
        ranking = policy.choose_replicas(req, Candidates(subset, outside, lim), views, now)
        first = ranking.first()
        if first is None and self.cost.score(PodView("", ""), req, now).cost > lim.ttft_slo_s:
            # Over the TTFT limit even on an idle pod (a huge prompt): load is not why, so shedding with a retry
            # hint would have clients retry forever. The best pod under the outstanding limit takes it; the pod
            # decides (vLLM answers 400 for a prompt over its context).
            by_count = Limits(lim.max_outstanding, math.inf)
            ranking = policy.choose_replicas(req, Candidates(subset, outside, by_count), views, now)
            first = ranking.first()
        if first is None:
            return Decision(Outcome.SHED, None)
        tier, pick = first
        return Decision(_OUTCOME_OF_TIER[tier], pick, ranking.rule if tier == SUBSET else "")
