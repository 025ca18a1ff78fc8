"""Admission: in-subset when a subset pod is under its limits, else spill-over outside the subset, else shed.

Fair shedding: a tenant above its weighted fair share of the router's recent demand (``share_ratio`` > 1) sees
its outstanding limit (not its TTFT limit) scaled by max(``FAIR_RESERVE``, 1 / ratio²) (smooth at 1, at least 1 outstanding per pod): it is never
shed while pods are below a quarter of their limits (no saturation, no fair shedding). While some tenant is above
its share, a tenant within its share may go ``FAIR_RESERVE`` above the limits (admission judges on views a
report old, and two routers' floods together overshoot the cap they each keep), and when pods fill up the tenant furthest above its share is shed first, while a
tenant within its share keeps the full limits (and pods stay short of them, so its TTFT holds). Batch still sheds
before interactive (its limits are a fraction of those). A lone tenant is never above its share.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from axon_router.cost import CostModel, Limits, PickInput, Scored
from axon_router.knobs import Knobs
from axon_router.pick import FALLBACK, HELD, OVERFLOW, SPILL, SUBSET, Candidates, PickPolicy, Ranking
from axon_router.pod_view import PodView


class Priority(enum.IntEnum):
    INTERACTIVE = 1
    BATCH = 2


class Outcome(enum.Enum):
    IN_SUBSET = "in_subset"
    OVERFLOW = "overflow"  # the subset over the fleet-wide bounded-load cap: a pod outside takes the new session
    HELD = "held"  # the session's pod outside its subset (its slice moved away): its cache is there
    SPILL = "spill"  # every subset pod over its limit: best eligible pod outside the subset
    FALLBACK = "fallback"  # no usable subset pod (none assigned, unhealthy, or none with the labels)
    SHED = "shed"  # the whole eligible pool is over its limits
    UNAVAILABLE = "unavailable"  # no healthy eligible pod at all


_OUTCOME_OF_TIER = {OVERFLOW: Outcome.OVERFLOW, HELD: Outcome.HELD, SUBSET: Outcome.IN_SUBSET, SPILL: Outcome.SPILL, FALLBACK: Outcome.FALLBACK}


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    pick: Scored | None
    rule: str = ""  # how the subset pick was made (``axon_router.pick`` RULE_*), "" outside the subset
    ranking: Ranking | None = None  # the policy's ranking the pick came from (``pick.pull_source`` reads it)


#: The least fraction of the admission limits a tenant above its fair share keeps: the rest of each pod's limits
#: is held for tenants within their share once the fleet fills up.
FAIR_RESERVE = 0.25


class _Weights(Protocol):
    def get(self, key: str, default: float, /) -> float: ...


class DemandMeter:
    """Each tenant's recent request rate (arrivals, shed ones included, per second), an exponentially decaying count
    with half-life ``half_life_s`` over the window it has had to fill; time is passed in. Demand, not admitted work,
    is what fair shares compare: a tenant being shed has little in flight, and measured by that, the tenant within
    its share would look above it. The window starts at a tenant's first request (at least ``min_window_s``): a
    bare decayed count ramps up over a half-life, so a flood just begun looked within its share, and the tenant
    sending steadily before it above, until the count caught up."""

    def __init__(self, half_life_s: float = 2.0, forget_below: float = 0.05, min_window_s: float = 1.0) -> None:
        self.decay_per_s = math.log(2) / half_life_s
        self.forget_below = forget_below
        self.min_window_s = min_window_s
        self._rate: dict[str, tuple[float, float, float]] = {}  # tenant -> (decayed count, at, first seen)

    def observe(self, tenant: str, now: float) -> None:
        c, at, first = self._rate.get(tenant, (0.0, now, now))
        self._rate[tenant] = (c * math.exp(-self.decay_per_s * max(0.0, now - at)) + 1.0, now, first)

    def rates(self, now: float) -> dict[str, float]:
        """Requests per second at ``now``: the decayed count over the decayed length of the time since the tenant's
        first request; tenants gone quiet (decayed count under ``forget_below``) are forgotten."""
        out: dict[str, float] = {}
        lam = self.decay_per_s
        for t, (c, at, first) in list(self._rate.items()):
            v = c * math.exp(-lam * max(0.0, now - at))
            if v < self.forget_below:
                del self._rate[t]
            else:
                window = -math.expm1(-lam * max(0.0, now - first)) / lam
                out[t] = v / max(self.min_window_s, window)
        return out


def contended(demand: Mapping[str, float]) -> bool:
    """Whether some active tenant is above its (equal-weight) fair share of ``demand``."""
    active = [d for d in demand.values() if d > 0]
    return len(active) >= 2 and max(active) * len(active) > sum(active) * (1 + 1e-9)


def share_ratio(tenant: str, demand: Mapping[str, float], weights: _Weights | None = None) -> float:
    """``tenant``'s demand over its weighted fair share of the demand of every active tenant (demand > 0);
    0 when it is the only active tenant."""
    active = {t: d for t, d in demand.items() if d > 0}
    if tenant not in active or len(active) < 2:
        return 0.0
    w = weights if weights is not None else {}
    total_w = sum(w.get(t, 1.0) for t in active)
    fair = sum(active.values()) * w.get(tenant, 1.0) / total_w
    return active[tenant] / fair if fair > 0 else math.inf


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
        share: float = 0.0,
        contended: bool = False,
    ) -> Decision:
        """``subset`` / ``outside``: ids of usable (healthy, circuit not open), label-eligible pods in / out of the
        subset; the first pod of the policy's first non-empty tier under this priority's limits is the pick."""
        if not subset and not outside:
            return Decision(Outcome.UNAVAILABLE, None)
        lim = self.limits(priority)
        if share > 1.0:  # above its fair share: a tighter outstanding limit, the tighter the further above, so it
            # sheds first under saturation; the TTFT limit is not scaled (a long prompt on a pod that is not
            # saturated is slow, not unfair: scaling it shed long agentic turns on an idle fleet)
            f = max(FAIR_RESERVE, 1.0 / (share * share))
            lim = Limits(max(1.0, lim.max_outstanding * f), lim.ttft_slo_s)
        elif contended:  # within its share while another tenant is above its own: the reserve is for this tenant
            f = 1.0 + FAIR_RESERVE
            lim = Limits(lim.max_outstanding * f, lim.ttft_slo_s * f)
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
        return Decision(_OUTCOME_OF_TIER[tier], pick, ranking.rule if tier in (SUBSET, HELD) else "", ranking)
