"""Conversions between the core dataclasses and brunoise.v1 protobuf messages (decoding validates)."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.message import DecodeError

from brunoise_api.v1 import slicing_pb2 as pb
from sharder.assignment import Assignment, AssignmentDiff, RoundStats, SliceAssignment, check_invariants
from sharder.config import TargetConfig
from sharder.errors import BrunoiseError, ConfigError, InvalidSliceError, InvariantError, LoadReportError, OverrideError
from sharder.keyspace import KEYSPACE_END, Slice
from sharder.load import EngineLoad, LoadReport, RequestOutcomes, SliceLoad
from sharder.overrides import MergeOverride, MoveOverride, Override, SplitOverride, validate_override
from sharder.pods import Pod, PodState

_STATE_TO_PB = {
    PodState.ACTIVE: pb.POD_STATE_ACTIVE,
    PodState.DRAINING: pb.POD_STATE_DRAINING,
    PodState.DEAD: pb.POD_STATE_DEAD,
}
_STATE_FROM_PB = {
    pb.POD_STATE_UNSPECIFIED: PodState.ACTIVE,  # proto3 default: a registration without a state is active
    pb.POD_STATE_ACTIVE: PodState.ACTIVE,
    pb.POD_STATE_DRAINING: PodState.DRAINING,
    pb.POD_STATE_DEAD: PodState.DEAD,
}

# Settings for which 0 is not a valid value: a proto3 zero means "unset" and decodes to the default.
_CONFIG_ZERO_IS_DEFAULT = (
    "min_replicas",
    "max_replicas",
    "imbalance_tolerance",
    "churn_budget",
    "split_threshold",
    "hot_key_fraction",
    "max_slices_per_pod",
    "initial_slices",
)
_CONFIG_DEFAULTS = TargetConfig(target="-")
# Settings sent as proto3 ``optional`` fields: decoded only when present, so older senders get the defaults.
_CONFIG_OPTIONAL = (
    "calm",
    "imbalance_target",
    "act_after_rounds",
    "cooldown_rounds",
    "load_smoothing",
    "move_cost_weight",
    "replica_true_load",
    "warm_deadline_s",
)


# --- Slice ------------------------------------------------------------------------------------------------
def slice_to_proto(s: Slice) -> pb.Slice:
    return pb.Slice(lo=s.lo, hi=0 if s.hi == KEYSPACE_END else s.hi)


def slice_from_proto(m: pb.Slice, field: str = "slice") -> Slice:
    hi = KEYSPACE_END if m.hi == 0 else m.hi
    try:
        return Slice(m.lo, hi)
    except InvalidSliceError as e:
        raise InvalidSliceError(e.message, field=f"{field}.{e.field}") from None


# --- Pod --------------------------------------------------------------------------------------------------
def pod_to_proto(p: Pod) -> pb.Pod:
    return pb.Pod(
        id=p.id,
        address=p.address,
        labels=dict(p.labels),
        state=_STATE_TO_PB[p.state],
        http_address=p.http_address,
        target=p.target,
    )


def pod_from_proto(m: pb.Pod, field: str = "pod") -> Pod:
    if not m.id:
        raise InvariantError(f"{field}.id must be a non-empty pod id", field=f"{field}.id")
    state = _STATE_FROM_PB.get(m.state)
    if state is None:
        raise InvariantError(f"{field}.state {m.state} is not a known PodState", field=f"{field}.state")
    return Pod(
        id=m.id,
        address=m.address,
        labels=dict(m.labels),
        state=state,
        http_address=m.http_address,
        target=m.target,
    )


# --- TargetConfig -----------------------------------------------------------------------------------------
def config_to_proto(c: TargetConfig) -> pb.TargetConfig:
    return pb.TargetConfig(
        target=c.target,
        min_replicas=c.min_replicas,
        max_replicas=c.max_replicas,
        imbalance_tolerance=c.imbalance_tolerance,
        churn_budget=c.churn_budget,
        split_threshold=c.split_threshold,
        merge_threshold=c.merge_threshold,
        dereplicate_threshold=c.dereplicate_threshold,
        hot_key_fraction=c.hot_key_fraction,
        min_slices_per_pod=c.min_slices_per_pod,
        max_slices_per_pod=c.max_slices_per_pod,
        initial_slices=c.initial_slices,
        eligibility=dict(c.eligibility),
        model=c.model,
        calm=c.calm,
        imbalance_target=c.imbalance_target,
        act_after_rounds=c.act_after_rounds,
        cooldown_rounds=c.cooldown_rounds,
        load_smoothing=c.load_smoothing,
        move_cost_weight=c.move_cost_weight,
        replica_true_load=c.replica_true_load,
        warm_deadline_s=c.warm_deadline_s,
    )


def config_from_proto(m: pb.TargetConfig) -> TargetConfig:
    """Decode and validate (ConfigError). Zero in a setting for which zero is invalid means the default."""
    kw: dict[str, Any] = {
        "target": m.target,
        "min_replicas": m.min_replicas,
        "max_replicas": m.max_replicas,
        "imbalance_tolerance": m.imbalance_tolerance,
        "churn_budget": m.churn_budget,
        "split_threshold": m.split_threshold,
        "merge_threshold": m.merge_threshold,
        "dereplicate_threshold": m.dereplicate_threshold,
        "hot_key_fraction": m.hot_key_fraction,
        "min_slices_per_pod": m.min_slices_per_pod,
        "max_slices_per_pod": m.max_slices_per_pod,
        "initial_slices": m.initial_slices,
        "eligibility": dict(m.eligibility),
        "model": m.model,
    }
    for name in _CONFIG_ZERO_IS_DEFAULT:
        if kw[name] == 0:
            kw[name] = getattr(_CONFIG_DEFAULTS, name)
    for name in _CONFIG_OPTIONAL:  # proto3 optional: unset means the default, a set zero/false stays
        if m.HasField(name):
            kw[name] = getattr(m, name)
    if not m.HasField("imbalance_target"):  # an older sender's tolerance may be below the default target
        kw["imbalance_target"] = min(_CONFIG_DEFAULTS.imbalance_target, kw["imbalance_tolerance"])
    return TargetConfig(**kw).validate()


# --- load -------------------------------------------------------------------------------------------------
def engine_load_to_proto(e: EngineLoad) -> pb.EngineLoad:
    return pb.EngineLoad(
        running=e.running,
        waiting=e.waiting,
        kv_usage=e.kv_usage,
        tokens_in_flight=e.tokens_in_flight,
        prefix_hit_rate=e.prefix_hit_rate,
        capacity=e.capacity,
        load=e.load,
    )


def engine_load_from_proto(m: pb.EngineLoad) -> EngineLoad:
    """Decode (capacity 0 means unset: 1.0). Validated as part of a LoadReport."""
    return EngineLoad(
        running=m.running,
        waiting=m.waiting,
        kv_usage=m.kv_usage,
        tokens_in_flight=m.tokens_in_flight,
        prefix_hit_rate=m.prefix_hit_rate,
        capacity=m.capacity if m.capacity != 0 else 1.0,
        load=m.load,
    )


def slice_load_to_proto(s: SliceLoad) -> pb.SliceLoad:
    return pb.SliceLoad(
        slice=slice_to_proto(s.slice),
        load=s.load,
        top_keys=[pb.KeyCount(key=k, count=c) for k, c in s.top_keys],
        requests=s.requests,
        misrouted=s.misrouted,
    )


def slice_load_from_proto(m: pb.SliceLoad, field: str = "slice") -> SliceLoad:
    try:
        s = slice_from_proto(m.slice, field)
    except InvalidSliceError as e:
        raise LoadReportError(e.message, field=e.field) from None
    return SliceLoad(
        slice=s,
        load=m.load,
        top_keys=tuple((kc.key, kc.count) for kc in m.top_keys),
        requests=m.requests,
        misrouted=m.misrouted,
    )


def load_report_to_proto(r: LoadReport) -> pb.LoadReport:
    return pb.LoadReport(
        pod_id=r.pod_id,
        target=r.target,
        engine=engine_load_to_proto(r.engine),
        slices=[slice_load_to_proto(s) for s in r.slices],
        seq=r.seq,
        unix_ms=r.unix_ms,
        outcomes=(
            pb.RequestOutcomes(
                requests=r.outcomes.requests, errors=r.outcomes.errors, ttft_ms_buckets=list(r.outcomes.ttft_ms_buckets)
            )
            if r.outcomes is not None
            else None
        ),
        warm=[slice_to_proto(s) for s in r.warm],
    )


def load_report_from_proto(m: pb.LoadReport) -> LoadReport:
    """Decode and validate (LoadReportError naming the field)."""
    return LoadReport(
        pod_id=m.pod_id,
        target=m.target,
        engine=engine_load_from_proto(m.engine),
        slices=tuple(slice_load_from_proto(s, f"slices[{i}].slice") for i, s in enumerate(m.slices)),
        seq=m.seq,
        unix_ms=m.unix_ms,
        outcomes=(
            RequestOutcomes(m.outcomes.requests, m.outcomes.errors, tuple(m.outcomes.ttft_ms_buckets))
            if m.HasField("outcomes")
            else None
        ),
        warm=tuple(slice_from_proto(s, f"warm[{i}]") for i, s in enumerate(m.warm)),
    ).validate()


# --- overrides --------------------------------------------------------------------------------------------
def override_to_proto(o: Override) -> pb.Override:
    if isinstance(o, MoveOverride):
        return pb.Override(id=o.id, move=pb.MoveOverride(key=o.key, pods=list(o.pods)))
    if isinstance(o, SplitOverride):
        return pb.Override(id=o.id, split=pb.SplitOverride(at=o.at))
    return pb.Override(id=o.id, merge=pb.MergeOverride(lo=o.lo, hi=0 if o.hi == KEYSPACE_END else o.hi))


def override_from_proto(m: pb.Override) -> Override:
    kind = m.WhichOneof("kind")
    o: Override
    if kind == "move":
        o = MoveOverride(id=m.id, key=m.move.key, pods=tuple(m.move.pods))
    elif kind == "split":
        o = SplitOverride(id=m.id, at=m.split.at)
    elif kind == "merge":
        o = MergeOverride(id=m.id, lo=m.merge.lo, hi=KEYSPACE_END if m.merge.hi == 0 else m.merge.hi)
    else:
        raise OverrideError("override must set one of move, split or merge", field="kind")
    validate_override(o)
    return o


# --- stats ------------------------------------------------------------------------------------------------
def stats_to_proto(s: RoundStats) -> pb.RoundStats:
    return pb.RoundStats(
        moves=s.moves,
        splits=s.splits,
        merges=s.merges,
        replications=s.replications,
        dereplications=s.dereplications,
        fills=s.fills,
        churn=s.churn,
        imbalance=s.imbalance,
        dropped_pods=s.dropped_pods,
    )


def stats_from_proto(m: pb.RoundStats) -> RoundStats:
    if not (math.isfinite(m.churn) and math.isfinite(m.imbalance)):
        raise InvariantError("stats.churn and stats.imbalance must be finite", field="stats")
    return RoundStats(
        moves=m.moves,
        splits=m.splits,
        merges=m.merges,
        replications=m.replications,
        dereplications=m.dereplications,
        fills=m.fills,
        churn=m.churn,
        imbalance=m.imbalance,
        dropped_pods=m.dropped_pods,
    )


# --- assignments ------------------------------------------------------------------------------------------
def slice_assignment_to_proto(sa: SliceAssignment) -> pb.SliceAssignment:
    return pb.SliceAssignment(
        slice=slice_to_proto(sa.slice),
        replicas=list(sa.replicas),
        leaving=list(sa.leaving),
        load=sa.load,
        since_generation=sa.since_generation,
        warming=list(sa.warming),
    )


def slice_assignment_from_proto(m: pb.SliceAssignment, field: str = "slice") -> SliceAssignment:
    if not math.isfinite(m.load) or m.load < 0:
        raise InvariantError(f"{field}.load must be finite and >= 0, got {m.load}", field=f"{field}.load")
    return SliceAssignment(
        slice=slice_from_proto(m.slice, f"{field}.slice"),
        replicas=tuple(m.replicas),
        leaving=tuple(m.leaving),
        load=m.load,
        since_generation=m.since_generation,
        warming=tuple(m.warming),
    )


def assignment_to_proto(a: Assignment) -> pb.Assignment:
    return pb.Assignment(
        target=a.target,
        generation=a.generation,
        slices=[slice_assignment_to_proto(sa) for sa in a.slices],
        pods=[pod_to_proto(p) for p in a.pods],
        config=config_to_proto(a.config),
        overrides=[override_to_proto(o) for o in a.overrides],
        stats=stats_to_proto(a.stats),
        created_unix_ms=a.created_unix_ms,
    )


def assignment_from_proto(m: pb.Assignment) -> Assignment:
    """Decode an assignment and check every invariant (InvariantError / ConfigError / InvalidSliceError /
    OverrideError naming the field)."""
    config = config_from_proto(m.config)
    if m.target != config.target:
        raise InvariantError(
            f"assignment target {m.target!r} differs from its config's target {config.target!r}", field="target"
        )
    a = Assignment(
        target=m.target,
        generation=m.generation,
        slices=tuple(slice_assignment_from_proto(s, f"slices[{i}]") for i, s in enumerate(m.slices)),
        pods=tuple(pod_from_proto(p, f"pods[{i}]") for i, p in enumerate(m.pods)),
        config=config,
        overrides=tuple(override_from_proto(o) for o in m.overrides),
        stats=stats_from_proto(m.stats),
        created_unix_ms=m.created_unix_ms,
    )
    check_invariants(a)
    return a


def diff_to_proto(d: AssignmentDiff) -> pb.AssignmentDiff:
    return pb.AssignmentDiff(
        target=d.target,
        from_generation=d.from_generation,
        to_generation=d.to_generation,
        upserts=[slice_assignment_to_proto(sa) for sa in d.upserts],
        removed_los=list(d.removed_los),
        pods=[pod_to_proto(p) for p in d.pods],
        config=config_to_proto(d.config),
        overrides=[override_to_proto(o) for o in d.overrides],
        stats=stats_to_proto(d.stats),
        created_unix_ms=d.created_unix_ms,
    )


def diff_from_proto(m: pb.AssignmentDiff) -> AssignmentDiff:
    """Decode a diff (its pieces are validated; the result is checked when applied with ``apply_diff``)."""
    config = config_from_proto(m.config)
    return AssignmentDiff(
        target=m.target,
        from_generation=m.from_generation,
        to_generation=m.to_generation,
        upserts=tuple(slice_assignment_from_proto(s, f"upserts[{i}]") for i, s in enumerate(m.upserts)),
        removed_los=tuple(m.removed_los),
        pods=tuple(pod_from_proto(p, f"pods[{i}]") for i, p in enumerate(m.pods)),
        config=config,
        overrides=tuple(override_from_proto(o) for o in m.overrides),
        stats=stats_from_proto(m.stats),
        created_unix_ms=m.created_unix_ms,
    )


# --- bytes helpers (store payloads) -----------------------------------------------------------------------
def encode_assignment(a: Assignment) -> bytes:
    """Serialized brunoise.v1.Assignment."""
    return assignment_to_proto(a).SerializeToString(deterministic=True)


def decode_assignment(data: bytes) -> Assignment:
    """Parse and validate a serialized brunoise.v1.Assignment (InvariantError when it does not parse)."""
    m = pb.Assignment()
    try:
        m.ParseFromString(data)
    except DecodeError as e:
        raise InvariantError(f"assignment bytes do not parse as brunoise.v1.Assignment: {e}", field="data") from None
    return assignment_from_proto(m)


def encode_load_report(r: LoadReport) -> bytes:
    return load_report_to_proto(r).SerializeToString(deterministic=True)


def decode_load_report(data: bytes) -> LoadReport:
    m = pb.LoadReport()
    try:
        m.ParseFromString(data)
    except DecodeError as e:
        raise LoadReportError(f"report bytes do not parse as brunoise.v1.LoadReport: {e}", field="data") from None
    return load_report_from_proto(m)


def encode_pod(p: Pod) -> bytes:
    return pod_to_proto(p).SerializeToString(deterministic=True)


def decode_pod(data: bytes) -> Pod:
    m = pb.Pod()
    try:
        m.ParseFromString(data)
    except DecodeError as e:
        raise InvariantError(f"pod bytes do not parse as brunoise.v1.Pod: {e}", field="data") from None
    return pod_from_proto(m)


__all__ = [
    "BrunoiseError",
    "ConfigError",
    "assignment_from_proto",
    "assignment_to_proto",
    "config_from_proto",
    "config_to_proto",
    "decode_assignment",
    "decode_load_report",
    "decode_pod",
    "diff_from_proto",
    "diff_to_proto",
    "encode_assignment",
    "encode_load_report",
    "encode_pod",
    "engine_load_from_proto",
    "engine_load_to_proto",
    "load_report_from_proto",
    "load_report_to_proto",
    "override_from_proto",
    "override_to_proto",
    "pod_from_proto",
    "pod_to_proto",
    "slice_assignment_from_proto",
    "slice_assignment_to_proto",
    "slice_from_proto",
    "slice_load_from_proto",
    "slice_load_to_proto",
    "slice_to_proto",
    "stats_from_proto",
    "stats_to_proto",
]


# ------------------------------------------------------------------ diffs on the wire messages (Watch)
def _upserts(old: pb.Assignment, new: pb.Assignment) -> tuple[list[pb.SliceAssignment], list[int]]:
    """The slices of ``new`` that are new or changed against ``old`` (by lo), and the los ``new`` no longer has.
    Slices compare as messages (in C). When the boundaries did not change (the common case: no split or merge)
    the two lists are walked in step, without building an index."""
    olds, news = old.slices, new.slices
    if len(olds) == len(news):
        ups: list[pb.SliceAssignment] = []
        for o, s in zip(olds, news, strict=True):
            if o != s:
                if o.slice != s.slice:  # a boundary moved: index by lo below
                    break
                ups.append(s)
        else:
            return ups, []
    old_by_lo = {s.slice.lo: s for s in olds}
    new_los = set()
    ups = []
    for s in news:
        lo = s.slice.lo
        new_los.add(lo)
        was = old_by_lo.get(lo)
        if was is None or was != s:
            ups.append(s)
    return ups, sorted(lo for lo in old_by_lo if lo not in new_los)


def diff_message(old: pb.Assignment, new: pb.Assignment) -> pb.AssignmentDiff:
    """The AssignmentDiff message that turns ``old`` into ``new`` (slices keyed by lo), computed on the wire
    messages so the assigner encodes each generation once for every watcher (``sharder.assignment.diff`` is
    the same on the dataclasses)."""
    d = pb.AssignmentDiff(
        target=new.target,
        from_generation=old.generation,
        to_generation=new.generation,
        created_unix_ms=new.created_unix_ms,
    )
    ups, removed = _upserts(old, new)
    d.upserts.extend(ups)
    d.removed_los.extend(removed)
    d.pods.extend(new.pods)
    d.config.CopyFrom(new.config)
    d.overrides.extend(new.overrides)
    d.stats.CopyFrom(new.stats)
    return d


def apply_diff_message(old: pb.Assignment, d: pb.AssignmentDiff) -> pb.Assignment:
    """Rebuild the new full assignment from ``old`` and a diff whose from_generation is old's generation."""
    if d.from_generation != old.generation or d.target != old.target:
        raise ValueError(
            f"diff {d.target}@{d.from_generation}->{d.to_generation} does not apply to {old.target}@{old.generation}"
        )
    by_lo = {s.slice.lo: s for s in old.slices}
    for lo in d.removed_los:
        by_lo.pop(lo, None)
    for s in d.upserts:
        by_lo[s.slice.lo] = s
    new = pb.Assignment(target=d.target, generation=d.to_generation, created_unix_ms=d.created_unix_ms)
    new.slices.extend(by_lo[lo] for lo in sorted(by_lo))
    new.pods.extend(d.pods)
    new.config.CopyFrom(d.config)
    new.overrides.extend(d.overrides)
    new.stats.CopyFrom(d.stats)
    return new
