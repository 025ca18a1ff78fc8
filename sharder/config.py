"""TargetConfig: the per-target resharding policy settings, their defaults and validation."""

from __future__ import annotations

import dataclasses
import math

from sharder.errors import ConfigError
from sharder.pods import KNOWN_LABELS

MAX_REPLICAS_LIMIT = 64
MAX_INITIAL_SLICES = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class TargetConfig:
    """Policy settings of one target (mirrors brunoise.v1.TargetConfig).

    Load thresholds are fractions of the *mean pod load* (total load / number of eligible active pods),
    so they do not depend on the load unit:

    * ``split_threshold`` (0.25): a slice whose load exceeds 25% of a mean pod splits at its load median
      (or, when one key carries more than ``hot_key_fraction`` of it, is replicated instead);
    * ``merge_threshold`` (0.05): adjacent slices with the same replica set whose combined load is below 5%
      of a mean pod merge (0 disables merging); must be below ``split_threshold`` (hysteresis);
    * ``dereplicate_threshold`` (0.05): a replica is removed (down to ``min_replicas``) when the per-replica
      load is below it and removing it keeps the slice under ``split_threshold`` (0 disables);
    * ``imbalance_tolerance`` (0.25): pods above (1 + tolerance) x mean shed load (the router's pick balances
      finer, inside each slice's replicas: the assigner acts on lasting, coarse imbalance only);
    * ``churn_budget`` (0.10): at most 10% of the total load changes placement per round (moves and
      dereplications; filling lost replicas and replicating hot keys are not limited by it);
    * ``min_slices_per_pod`` (0 = no floor) / ``max_slices_per_pod`` (1000): band of slices per pod kept by
      splitting / merging;
    * ``initial_slices`` (64): slices of a fresh assignment;
    * ``min_replicas`` (4) / ``max_replicas`` (4): pods per slice. Four by default: the router's pick balances
      new sessions between a slice's replicas at once (bounded load, sticky sessions), and with calm balancing
      the assigner moves a slice rarely (it acts after ``act_after_rounds``, 10 s at 0.5 s rounds), so the
      replicas are what spreads a hot group between moves. Two left a hot group's sessions on two pods until
      the next balancing episode (full chat run, in-flight max/mean 1.55 with two, 1.11 with three); three left
      a tenant 10x hotter for 8 s on three of the bench's four pods beside a fourth serving the others (hot
      phase 1.27 / 1.22 on the chats, medians of 12 runs); four: 1.17 / 1.08, the same hit rate (bench/README.md,
      "Stop 19"). A group's shared prompt costs one extra miss per replica, not a hop per session;
    * ``eligibility``: labels (model, model_version, region) a pod must carry exactly to serve the target.

    Calm resharding (``calm``, default on; off = the old act-every-round behaviour, for ablation):

    * ``calm``: smooth loads over rounds (``load_smoothing``), balance only after the smoothed imbalance
      (max/mean pod load) stayed above ``1 + imbalance_tolerance`` for ``act_after_rounds`` consecutive rounds,
      and then in one round, down to ``1 + imbalance_target`` (hysteresis): the round that moves load ends the
      episode and the next one needs a new streak (the moved sessions' load reaches the reports only over the
      following rounds, and acting on that lag moved slices round after round); a balancing round that could not
      move anything stays on; leave a slice alone for ``cooldown_rounds`` after it moved, split or was
      (de)replicated, except to fix invariants (dead or draining pods, min_replicas, overrides); price each move
      by the warm cache it throws away (``move_cost_weight``); merge and count-balance only cold slices, and on a
      target carrying load count-balance only for a pod far below its share (one that joined or came back) or in
      a balancing round;
    * ``imbalance_target`` (0.10): once balancing, pods above (1 + target) x mean shed load; at most
      ``imbalance_tolerance``;
    * ``act_after_rounds`` (20, 10 s at the bench's 0.5 s rounds; was 6): consecutive rounds above the tolerance
      before balancing starts (>= 1). At 6 the bench's full docs run moved 1.75 slices a round in its steady
      phase (76.8 % hit at 20 against 73.5 % at 6): the router's pick balances within seconds on its own;
    * ``cooldown_rounds`` (5): generations a changed slice is left alone (0 = none);
    * ``load_smoothing`` (0.2): EWMA weight of the newest round's reports, in (0, 1] (1 = no smoothing);
    * ``move_cost_weight`` (1.0): a load move must narrow the donor-receiver load gap by more than this times
      the load the donor served from the slice (its warm cache, lost by the move); 0 = moves are free;
    * ``replica_true_load`` (default on): a replica's pod counts the load it reported serving for the slice
      (routers send sessions to the replica holding their cache, so replicas carry unequal shares); off, or
      for a replica with no report, an equal share of the slice's load.

    Warm-up on reshard:

    * ``warm_deadline_s`` (5.0): a replica that gains a slice (move, replication, refill, a new pod) is marked
      warming while it prefills the hot prompts of the slice's warm holders; routers send it no new sessions
      while a warm replica can take them; the leader clears the mark when the pod reports the slice warm or
      after this many seconds. 0 = no warm-up (new replicas warm on live traffic, the ablation).
    """

    target: str
    min_replicas: int = 4
    max_replicas: int = 4
    imbalance_tolerance: float = 0.25
    churn_budget: float = 0.10
    split_threshold: float = 0.25
    merge_threshold: float = 0.05
    dereplicate_threshold: float = 0.05
    hot_key_fraction: float = 0.5
    min_slices_per_pod: int = 0
    max_slices_per_pod: int = 1000
    initial_slices: int = 64
    eligibility: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    model: str = ""
    calm: bool = True
    imbalance_target: float = 0.10
    act_after_rounds: int = 20
    cooldown_rounds: int = 5
    load_smoothing: float = 0.2
    move_cost_weight: float = 1.0
    replica_true_load: bool = True
    warm_deadline_s: float = 5.0

    def validate(self) -> TargetConfig:
        """Raise ConfigError (naming the field) unless every setting is usable; return self."""
        if not isinstance(self.target, str) or not self.target.strip():
            raise ConfigError("target must be a non-empty name, e.g. 'llama-3-8b'", field="target")
        for name in ("calm", "replica_true_load"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}", field=name)
        for name in (
            "min_replicas",
            "max_replicas",
            "min_slices_per_pod",
            "max_slices_per_pod",
            "initial_slices",
            "act_after_rounds",
            "cooldown_rounds",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{name} must be an integer, got {type(v).__name__}", field=name)
        if self.min_replicas < 1:
            raise ConfigError(f"min_replicas must be at least 1, got {self.min_replicas}", field="min_replicas")
        if self.max_replicas > MAX_REPLICAS_LIMIT:
            raise ConfigError(
                f"max_replicas must be at most {MAX_REPLICAS_LIMIT}, got {self.max_replicas}", field="max_replicas"
            )
        if self.min_replicas > self.max_replicas:
            raise ConfigError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas}); "
                "raise max_replicas or lower min_replicas",
                field="min_replicas",
            )
        for name in (
            "imbalance_tolerance",
            "churn_budget",
            "split_threshold",
            "merge_threshold",
            "dereplicate_threshold",
            "hot_key_fraction",
            "imbalance_target",
            "load_smoothing",
            "move_cost_weight",
            "warm_deadline_s",
        ):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise ConfigError(f"{name} must be a number, got {type(v).__name__}", field=name)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v}", field=name)
        if self.imbalance_tolerance <= 0:
            raise ConfigError("imbalance_tolerance must be > 0, e.g. 0.10", field="imbalance_tolerance")
        if self.imbalance_target > self.imbalance_tolerance:
            raise ConfigError(
                f"imbalance_target ({self.imbalance_target}) must not exceed imbalance_tolerance "
                f"({self.imbalance_tolerance}): balancing starts above the tolerance and stops at the target",
                field="imbalance_target",
            )
        if self.act_after_rounds < 1:
            raise ConfigError(f"act_after_rounds must be >= 1, got {self.act_after_rounds}", field="act_after_rounds")
        if self.cooldown_rounds < 0:
            raise ConfigError(f"cooldown_rounds must be >= 0, got {self.cooldown_rounds}", field="cooldown_rounds")
        if not 0 < self.load_smoothing <= 1:
            raise ConfigError(
                f"load_smoothing must be in (0, 1] (1 = no smoothing), got {self.load_smoothing}",
                field="load_smoothing",
            )
        if not 0 < self.churn_budget <= 1:
            raise ConfigError(f"churn_budget must be in (0, 1], got {self.churn_budget}", field="churn_budget")
        if self.split_threshold <= 0:
            raise ConfigError("split_threshold must be > 0, e.g. 0.25", field="split_threshold")
        if self.merge_threshold >= self.split_threshold:
            raise ConfigError(
                f"merge_threshold ({self.merge_threshold}) must be below split_threshold ({self.split_threshold}) "
                "or merged slices would split again",
                field="merge_threshold",
            )
        if self.dereplicate_threshold >= self.split_threshold:
            raise ConfigError(
                f"dereplicate_threshold ({self.dereplicate_threshold}) must be below split_threshold "
                f"({self.split_threshold})",
                field="dereplicate_threshold",
            )
        if not 0 < self.hot_key_fraction <= 1:
            raise ConfigError(
                f"hot_key_fraction must be in (0, 1], got {self.hot_key_fraction}", field="hot_key_fraction"
            )
        if self.min_slices_per_pod < 0:
            raise ConfigError("min_slices_per_pod must be >= 0", field="min_slices_per_pod")
        if self.max_slices_per_pod < 1:
            raise ConfigError("max_slices_per_pod must be >= 1", field="max_slices_per_pod")
        if self.min_slices_per_pod > self.max_slices_per_pod:
            raise ConfigError(
                f"min_slices_per_pod ({self.min_slices_per_pod}) must not exceed max_slices_per_pod "
                f"({self.max_slices_per_pod})",
                field="min_slices_per_pod",
            )
        if not 1 <= self.initial_slices <= MAX_INITIAL_SLICES:
            raise ConfigError(
                f"initial_slices must be in [1, {MAX_INITIAL_SLICES}], got {self.initial_slices}",
                field="initial_slices",
            )
        if not isinstance(self.eligibility, dict):
            raise ConfigError("eligibility must be a mapping of label -> value", field="eligibility")
        for k, v in self.eligibility.items():
            if k not in KNOWN_LABELS:
                raise ConfigError(
                    f"eligibility names unknown label {k!r}; use one of {sorted(KNOWN_LABELS)}",
                    field=f"eligibility.{k}",
                )
            if not isinstance(v, str) or not v:
                raise ConfigError(f"eligibility[{k!r}] must be a non-empty string", field=f"eligibility.{k}")
        if not isinstance(self.model, str):
            raise ConfigError("model must be a string", field="model")
        return self


__all__ = ["MAX_INITIAL_SLICES", "MAX_REPLICAS_LIMIT", "TargetConfig"]
