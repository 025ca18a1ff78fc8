"""What the calm policy carries from one round to the next: smoothed slice and replica loads, the imbalance streak."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from sharder.policy.round_state import Rec, RoundState

FORGET_BELOW = 1e-9  # a pod's smoothed served load under this is dropped


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyMemory:
    """The calm policy's state after a round (read-only by convention; the round builds a new one).

    ``over_rounds``: consecutive rounds whose smoothed imbalance (max/mean pod load) was above
    ``1 + imbalance_tolerance``; ``acting``: balancing is on (it stays on until the imbalance is at most
    ``1 + imbalance_target``); ``counting``: count balancing is under way (it goes on until the slice counts
    are back in their narrow band); ``slices``: the round's final slice records, in keyspace order, with their
    smoothed ``load`` and per-pod ``served`` loads; ``rounds``: how many rounds the smoothing has seen (capped),
    so the gate does not judge imbalance on loads that are not yet smoothed. Not part of the wire format: a new
    leader starts with an empty memory, so its first rounds only fix invariants while their smoothing warms up."""

    over_rounds: int = 0
    acting: bool = False
    counting: bool = False
    slices: tuple[Rec, ...] = ()
    rounds: int = 0


#: ``PolicyMemory.rounds`` stops counting here (it only needs to reach the smoothing's warm-up).
ROUNDS_CAP = 1 << 16

EMPTY = PolicyMemory()


def smooth(recs: list[Rec], memory: PolicyMemory, alpha: float) -> None:
    """Replace each slice's load and served loads by ``alpha`` x this round + (1 - alpha) x the remembered value
    (a slice the memory does not know, by lo and hi, keeps this round's values; so does a pod's first report on
    a slice, so a new replica's load is not underestimated while it ramps up; a pod that stops reporting on a
    slice fades out)."""
    old = memory.slices
    if alpha >= 1.0 or not old:
        return
    keep = 1.0 - alpha
    # the common case: this round's slices are the remembered round's output, in the same order
    pairs: Iterable[tuple[Rec, Rec | None]]
    if len(old) == len(recs) and old[-1].lo == recs[-1].lo:
        pairs = zip(recs, old, strict=True)
    else:
        by_lo = {r.lo: r for r in old}
        pairs = ((rec, by_lo.get(rec.lo)) for rec in recs)
    by_lo2: dict[int, Rec] | None = None
    for rec, m in pairs:
        if m is None:
            continue
        if m.lo != rec.lo:  # misaligned after all
            if by_lo2 is None:
                by_lo2 = {r.lo: r for r in old}
            m = by_lo2.get(rec.lo)
            if m is None:
                continue
        if m.hi != rec.hi:
            continue
        rec.load = alpha * rec.load + keep * m.load
        served = m.served
        if served is None:
            continue
        now = rec.served  # this round's dict, built for this record alone
        if now is None:
            rec.served = {p: x for p, v in served.items() if (x := keep * v) > FORGET_BELOW}
            continue
        if len(now) == 1 and len(served) == 1:  # fast path: one replica, the same pod as last round
            ((p, v),) = now.items()
            w = served.get(p)
            if w is not None:
                now[p] = alpha * v + keep * w
                continue
        for p, v in served.items():
            cur = now.get(p)
            x = keep * v if cur is None else alpha * cur + keep * v
            if x > FORGET_BELOW:
                now[p] = x
            elif p in now:
                del now[p]


def remember(state: RoundState, over_rounds: int, acting: bool, rounds: int = 0) -> PolicyMemory:
    """The memory to carry into the next round: the round's final slices with their smoothed loads; ``rounds``:
    the rounds seen before this one."""
    if not state.config.calm:
        return EMPTY
    return PolicyMemory(
        over_rounds=over_rounds,
        acting=acting,
        counting=state.counting,
        slices=tuple(state.recs),
        rounds=min(rounds + 1, ROUNDS_CAP),
    )


__all__ = ["EMPTY", "PolicyMemory", "remember", "smooth"]
