"""Calm resharding: when balancing starts and stops (streak + hysteresis), and what a move must gain to be worth it."""

from __future__ import annotations

import math

from sharder.policy.memory import PolicyMemory
from sharder.policy.round_state import Rec, RoundState

EPS = 1e-12
COLD_FRACTION = 0.05  # a slice serving at most this x mean pod load (or merge_threshold, if higher) is cold


def imbalance(state: RoundState) -> float:
    """Max over mean capacity-normalised pod load (0 without load)."""
    mean = state.mean_ref()
    if mean <= 0:
        return 0.0
    return max((state.norm(p) for p in state.eligible), default=0.0) / mean


def gate(state: RoundState, memory: PolicyMemory) -> tuple[int, bool]:
    """Decide whether this round balances load; sets ``state.acting`` and ``state.balance_to`` and returns the
    (imbalance streak, acting) pair to remember.

    Without ``calm`` every round balances down to ``imbalance_tolerance``. With it, balancing starts once the
    smoothed imbalance has been above ``1 + imbalance_tolerance`` for ``act_after_rounds`` consecutive rounds
    and goes on until it is at most ``1 + imbalance_target`` or until a round moved load (``reshard`` then ends
    the episode: the streak starts over)."""
    cfg = state.config
    if not cfg.calm:
        state.acting = True
        state.balance_to = cfg.imbalance_tolerance
        return 0, False
    imb = imbalance(state)
    # loads are smoothed over about 1 / load_smoothing rounds: before the memory holds that many, a reading is
    # one round's noise, and a streak of them says nothing (a new leader, a fresh target)
    warm = memory.rounds + 1 >= math.ceil(1.0 / cfg.load_smoothing - EPS)
    over = memory.over_rounds + 1 if warm and imb > 1.0 + cfg.imbalance_tolerance + EPS else 0
    acting = over >= cfg.act_after_rounds or (memory.acting and imb > 1.0 + cfg.imbalance_target + EPS)
    state.acting = acting
    state.balance_to = cfg.imbalance_target
    return over, acting


def cold_limit(state: RoundState) -> float:
    """Calm only (infinite otherwise): the most load a slice may serve on a pod and still count as cold there."""
    cfg = state.config
    if not cfg.calm:
        return float("inf")
    return max(cfg.merge_threshold, COLD_FRACTION) * state.mean_ref()


def cache_value(state: RoundState, rec: Rec, donor: str) -> float:
    """The load ``donor`` served from ``rec`` (its warm cache, which a move throws away): what it reported for
    exactly this range (0 when others did and it did not), its share of the slice's load when nobody did."""
    served = rec.served
    if served is not None:
        return served.get(donor, 0.0)
    return state.share_of(rec, donor)


def worth_moving(state: RoundState, rec: Rec, donor: str, receiver: str, amount: float) -> bool:
    """Calm only (always True otherwise): moving ``amount`` of load from ``donor`` to ``receiver`` narrows the
    gap between their capacity-normalised loads by more than ``move_cost_weight`` x the cache it destroys
    (also normalised by the donor's capacity)."""
    cfg = state.config
    if not cfg.calm:
        return True
    cap = state.capacity
    gap = state.norm(donor) - state.norm(receiver)
    after = gap - amount / cap[donor] - amount / cap[receiver]
    gain = gap - abs(after)
    return gain > cfg.move_cost_weight * cache_value(state, rec, donor) / cap[donor] + EPS


__all__ = ["COLD_FRACTION", "cache_value", "cold_limit", "gate", "imbalance", "worth_moving"]
