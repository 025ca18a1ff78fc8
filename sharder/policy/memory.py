"""What the calm policy carries from one round to the next: smoothed slice and replica loads, the imbalance streak."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from sharder.policy.state import Rec, RoundState

# lo -> (hi, smoothed slice load, smoothed load each pod served from exactly [lo, hi), or None)
SliceMemo = tuple[int, float, dict[str, float] | None]
FORGET_BELOW = 1e-9  # a pod's smoothed served load under this is dropped


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyMemory:
    """The calm policy's state after a round (read-only by convention; the round builds a new one).

    ``over_rounds``: consecutive rounds whose smoothed imbalance (max/mean pod load) was above
    ``1 + imbalance_tolerance``; ``acting``: balancing is on (it stays on until the imbalance is at most
    ``1 + imbalance_target``); ``counting``: count balancing is under way (it goes on until the slice counts
    are back in their narrow band); ``slices``: per slice (keyed by its lo; used only while its hi matches) the
    exponentially smoothed load and per-pod served load. Not part of the wire format: a new leader starts
    with an empty memory, which only makes the first rounds more cautious."""

    over_rounds: int = 0
    acting: bool = False
    counting: bool = False
    slices: Mapping[int, SliceMemo] = dataclasses.field(default_factory=dict)


EMPTY = PolicyMemory()


def smooth(recs: list[Rec], memory: PolicyMemory, alpha: float) -> None:
    """Replace each slice's load and served loads by ``alpha`` x this round + (1 - alpha) x the remembered value
    (a slice the memory does not know, by lo and hi, keeps this round's values; so does a pod's first report on
    a slice, so a new replica's load is not underestimated while it ramps up; a pod that stops reporting on a
    slice fades out)."""
    if alpha >= 1.0 or not memory.slices:
        return
    keep = 1.0 - alpha
    known = memory.slices
    for rec in recs:
        m = known.get(rec.lo)
        if m is None or m[0] != rec.hi:
            continue
        _, load, served = m
        rec.load = alpha * rec.load + keep * load
        now = rec.served
        if served is None and now is None:
            continue
        out: dict[str, float] = dict(now) if now else {}
        if served:
            for p, v in served.items():
                x = out.get(p)
                x = keep * v if x is None else alpha * x + keep * v
                if x > FORGET_BELOW:
                    out[p] = x
        rec.served = out


def remember(state: RoundState, over_rounds: int, acting: bool) -> PolicyMemory:
    """The memory to carry into the next round: the round's final slices with their smoothed loads."""
    if not state.config.calm:
        return EMPTY
    return PolicyMemory(
        over_rounds=over_rounds,
        acting=acting,
        counting=state.counting,
        slices={rec.lo: (rec.hi, rec.load, rec.served) for rec in state.recs},
    )


__all__ = ["EMPTY", "PolicyMemory", "remember", "smooth"]
