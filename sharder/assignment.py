"""Assignments: slices with their replica sets, O(log n) lookup, invariant checks, diffs between generations."""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sharder.config import TargetConfig
from sharder.errors import GenerationError, InvariantError
from sharder.keyspace import KEYSPACE_END, Slice, check_slice_key, slice_key, split_evenly
from sharder.overrides import Override
from sharder.pods import Pod, PodState, serves

if TYPE_CHECKING:
    from sharder.policy.memory import PolicyMemory


@dataclasses.dataclass(frozen=True, slots=True)
class RoundStats:
    """What one policy round did (``churn``: fraction of total load moved by budgeted actions;
    ``imbalance``: max/mean capacity-normalised pod load after the round, 0 without load)."""

    moves: int = 0
    splits: int = 0
    merges: int = 0
    replications: int = 0
    dereplications: int = 0
    fills: int = 0
    churn: float = 0.0
    imbalance: float = 0.0
    dropped_pods: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SliceAssignment:
    """One slice and the ordered pods serving it; ``leaving`` pods still hold it for this generation only
    (make-before-break) and take no new traffic unless ``replicas`` is empty. ``warming`` replicas (a subset of
    ``replicas``) gained the slice recently and are prefilling its hot prompts: they take no new sessions while a
    warm replica can (but a slice whose replicas all warm is still routed to them)."""

    slice: Slice
    replicas: tuple[str, ...]
    leaving: tuple[str, ...] = ()
    load: float = 0.0
    since_generation: int = 0
    warming: tuple[str, ...] = ()

    def same_placement(self, other: SliceAssignment) -> bool:
        return (
            self.slice == other.slice
            and self.replicas == other.replicas
            and self.leaving == other.leaving
            and self.warming == other.warming
        )

    def warm_replicas(self) -> tuple[str, ...]:
        """The replicas not warming, in order."""
        if not self.warming:
            return self.replicas
        return tuple(p for p in self.replicas if p not in self.warming)


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """One generation of a target's assignment. Construction checks that the slices tile [0, 2**64) in order
    and that pod ids are unique (InvariantError otherwise); see ``check_invariants`` for the rest.

    Replica bounds: a slice has between ``min(config.min_replicas, E)`` and ``config.max_replicas``
    replicas, where E is the number of eligible ACTIVE pods; with no eligible active pod a slice may have
    none (routers then fall back to ``leaving`` or fail the request with UNAVAILABLE).

    ``memory`` is what the policy round that produced it carries into the next round (smoothed loads, the
    imbalance streak); it is not compared, hashed or sent on the wire.
    """

    target: str
    generation: int
    slices: tuple[SliceAssignment, ...]
    pods: tuple[Pod, ...]
    config: TargetConfig
    overrides: tuple[Override, ...] = ()
    stats: RoundStats = dataclasses.field(default_factory=RoundStats)
    created_unix_ms: int = 0
    memory: PolicyMemory | None = dataclasses.field(default=None, repr=False, compare=False, hash=False)
    _los: list[int] = dataclasses.field(init=False, repr=False, compare=False, hash=False)
    _pod_index: dict[str, Pod] = dataclasses.field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        if not isinstance(self.slices, tuple):
            setattr_(self, "slices", tuple(self.slices))
        if not isinstance(self.pods, tuple):
            setattr_(self, "pods", tuple(self.pods))
        if not isinstance(self.overrides, tuple):
            setattr_(self, "overrides", tuple(self.overrides))
        if not isinstance(self.generation, int) or isinstance(self.generation, bool) or self.generation < 0:
            raise InvariantError(f"generation must be an int >= 0, got {self.generation!r}", field="generation")
        slices = self.slices
        if not slices:
            raise InvariantError("an assignment needs at least one slice covering [0, 2**64)", field="slices")
        los = [sa.slice.lo for sa in slices]
        expect = 0
        for i, sa in enumerate(slices):
            s = sa.slice
            if s.lo != expect:
                raise InvariantError(
                    f"slices must tile [0, 2**64) in order: slices[{i}] starts at {s.lo}, expected {expect}",
                    field=f"slices[{i}].slice",
                )
            expect = s.hi
        if expect != KEYSPACE_END:
            raise InvariantError(f"slices must tile [0, 2**64): the last slice ends at {expect}", field="slices")
        index: dict[str, Pod] = {}
        for p in self.pods:
            if p.id in index:
                raise InvariantError(f"pod id {p.id!r} appears twice in pods", field="pods")
            index[p.id] = p
        setattr_(self, "_los", los)
        setattr_(self, "_pod_index", index)

    def lookup(self, slice_key: int) -> SliceAssignment:
        """The slice containing ``slice_key`` (O(log n)). KeyTypeError / KeyRangeError for a bad key."""
        if type(slice_key) is not int or not 0 <= slice_key < KEYSPACE_END:
            check_slice_key(slice_key)
        return self.slices[bisect.bisect_right(self._los, slice_key) - 1]

    def lookup_app_key(self, app_key: str | bytes) -> SliceAssignment:
        """The slice containing the SliceKey of ``app_key``."""
        return self.lookup(slice_key(app_key))

    def index_of(self, key: int) -> int:
        """Position in ``slices`` of the slice containing ``key``."""
        if type(key) is not int or not 0 <= key < KEYSPACE_END:
            check_slice_key(key)
        return bisect.bisect_right(self._los, key) - 1

    def pod(self, pod_id: str) -> Pod | None:
        return self._pod_index.get(pod_id)

    def same_placement(self, other: Assignment) -> bool:
        """Equal slices, replicas, leaving and pods (loads, stats and generations aside)."""
        if self.pods != other.pods or len(self.slices) != len(other.slices):
            return False
        return all(a.same_placement(b) for a, b in zip(self.slices, other.slices, strict=True))

    def slices_of(self, pod_id: str, *, include_leaving: bool = False) -> tuple[SliceAssignment, ...]:
        """Slices ``pod_id`` is a replica of (and, with ``include_leaving``, those it is leaving)."""
        if include_leaving:
            return tuple(sa for sa in self.slices if pod_id in sa.replicas or pod_id in sa.leaving)
        return tuple(sa for sa in self.slices if pod_id in sa.replicas)

    def peers_of(self, pod_id: str) -> tuple[Pod, ...]:
        """The other live pods with an address holding a slice (replica or leaving) with ``pod_id``, and every
        draining pod (the sessions it served move to its slices' new replicas, which read them from it until it
        stops, also once the drain has handed its last slice on): the peers a request's KV pull may read from
        (``ReportResponse.peers``), by id."""
        ids = {q for sa in self.slices_of(pod_id, include_leaving=True) for q in (*sa.replicas, *sa.leaving)}
        ids.update(p.id for p in self.pods if p.state is PodState.DRAINING)
        ids.discard(pod_id)
        return tuple(
            p for q in sorted(ids) if (p := self.pod(q)) is not None and p.address and p.state is not PodState.DEAD
        )

    def pod_loads(self) -> dict[str, float]:
        """Load of each pod: sum over its slices of slice load / number of replicas (not capacity-normalised)."""
        out: dict[str, float] = {p.id: 0.0 for p in self.pods}
        for sa in self.slices:
            r = sa.replicas
            if r:
                share = sa.load / len(r)
                for p in r:
                    out[p] = out.get(p, 0.0) + share
        return out


def eligible_active(config: TargetConfig, pods: Iterable[Pod]) -> list[Pod]:
    """Pods that may take slices of ``config.target``, sorted by id."""
    return sorted((p for p in pods if serves(p, config.target, config.eligibility)), key=lambda p: p.id)


def assignment_pods(config: TargetConfig, pods: Iterable[Pod]) -> tuple[Pod, ...]:
    """The pods an assignment lists: every pod not DEAD and not bound to another target, sorted by id."""
    seen: dict[str, Pod] = {}
    for p in pods:
        if p.id in seen:
            raise InvariantError(f"pod id {p.id!r} appears twice in pods", field="pods")
        seen[p.id] = p
    return tuple(
        sorted(
            (p for p in seen.values() if p.state is not PodState.DEAD and (not p.target or p.target == config.target)),
            key=lambda p: p.id,
        )
    )


def initial_assignment(config: TargetConfig, pods: Sequence[Pod], generation: int = 1) -> Assignment:
    """A fresh assignment: ``config.initial_slices`` equal-width slices, replicas spread round-robin over the
    eligible active pods (sorted by id). With fewer eligible active pods than ``min_replicas`` each slice
    gets all of them (possibly none)."""
    config.validate()
    listed = assignment_pods(config, pods)
    elig = [p.id for p in eligible_active(config, listed)]
    e = len(elig)
    r = min(config.min_replicas, e)
    slices = []
    for i, s in enumerate(split_evenly(config.initial_slices)):
        reps = tuple(elig[(i * r + j) % e] for j in range(r)) if r else ()
        slices.append(SliceAssignment(slice=s, replicas=reps, since_generation=generation))
    return Assignment(target=config.target, generation=generation, slices=tuple(slices), pods=listed, config=config)


def check_invariants(assignment: Assignment, pods: Iterable[Pod] | None = None) -> None:
    """Raise InvariantError unless: slices tile the keyspace; each slice has between min(min_replicas, E) and
    max_replicas distinct replicas (E = eligible active pods), all ACTIVE, eligible and listed in the
    assignment's pods; ``leaving`` pods are distinct, disjoint from the replicas, listed and not DEAD; loads are
    finite and >= 0; ``warming`` pods are distinct replicas. ``pods`` (default: the assignment's own) is the truth for states and labels."""
    cfg = assignment.config
    truth: dict[str, Pod] = {}
    for tp in assignment.pods if pods is None else pods:
        if tp.id in truth:
            raise InvariantError(f"pod id {tp.id!r} appears twice in pods", field="pods")
        truth[tp.id] = tp
    listed = assignment._pod_index
    target, elig_map = cfg.target, cfg.eligibility
    ok: dict[str, bool] = {pid: serves(p, target, elig_map) for pid, p in truth.items()}
    e = sum(1 for v in ok.values() if v)
    need = min(cfg.min_replicas, e)
    mx = cfg.max_replicas
    expect = 0
    gen = assignment.generation
    for i, sa in enumerate(assignment.slices):
        s = sa.slice
        if s.lo != expect:
            raise InvariantError(f"slices[{i}] starts at {s.lo}, expected {expect}", field=f"slices[{i}].slice")
        expect = s.hi
        reps = sa.replicas
        n = len(reps)
        if n < need or n > mx:
            raise InvariantError(
                f"slices[{i}] {s} has {n} replicas; needs between {need} and {mx} ({e} eligible active pods)",
                field=f"slices[{i}].replicas",
            )
        if n > 1 and len(set(reps)) != n:
            raise InvariantError(f"slices[{i}] repeats a replica: {reps}", field=f"slices[{i}].replicas")
        for pid in reps:
            if pid not in listed:
                raise InvariantError(
                    f"slices[{i}] names pod {pid!r} missing from the assignment's pods", field=f"slices[{i}].replicas"
                )
            if not ok.get(pid, False):
                bad = truth.get(pid)
                why = "unknown" if bad is None else f"{bad.state.value}, labels {bad.labels}"
                raise InvariantError(
                    f"slices[{i}] replica {pid!r} is not an eligible active pod ({why})", field=f"slices[{i}].replicas"
                )
        for pid in sa.leaving:
            if pid in reps:
                raise InvariantError(
                    f"slices[{i}] pod {pid!r} is both replica and leaving", field=f"slices[{i}].leaving"
                )
            lp = truth.get(pid)
            if pid not in listed or lp is None or lp.state is PodState.DEAD:
                raise InvariantError(
                    f"slices[{i}] leaving pod {pid!r} is unknown or dead", field=f"slices[{i}].leaving"
                )
        if len(set(sa.leaving)) != len(sa.leaving):
            raise InvariantError(f"slices[{i}] repeats a leaving pod", field=f"slices[{i}].leaving")
        if sa.warming and (len(set(sa.warming)) != len(sa.warming) or not set(sa.warming) <= set(reps)):
            raise InvariantError(
                f"slices[{i}] warming {sa.warming} must be distinct replicas of {reps}", field=f"slices[{i}].warming"
            )
        if not math.isfinite(sa.load) or sa.load < 0:
            raise InvariantError(f"slices[{i}] load must be finite and >= 0", field=f"slices[{i}].load")
        if sa.since_generation > gen:
            raise InvariantError(
                f"slices[{i}] since_generation {sa.since_generation} is after generation {gen}",
                field=f"slices[{i}].since_generation",
            )
    if expect != KEYSPACE_END:
        raise InvariantError("slices do not reach the end of the keyspace", field="slices")


@dataclasses.dataclass(frozen=True, slots=True)
class AssignmentDiff:
    """The changes from generation ``from_generation`` to ``to_generation`` (mirrors brunoise.v1.AssignmentDiff)."""

    target: str
    from_generation: int
    to_generation: int
    upserts: tuple[SliceAssignment, ...]
    removed_los: tuple[int, ...]
    pods: tuple[Pod, ...]
    config: TargetConfig
    overrides: tuple[Override, ...] = ()
    stats: RoundStats = dataclasses.field(default_factory=RoundStats)
    created_unix_ms: int = 0


def diff(old: Assignment, new: Assignment) -> AssignmentDiff:
    """The diff that turns ``old`` into ``new`` (slices keyed by lo: new or changed ones are upserted)."""
    if old.target != new.target:
        raise GenerationError(f"cannot diff target {old.target!r} against {new.target!r}", field="target")
    if new.generation <= old.generation:
        raise GenerationError(
            f"new generation {new.generation} must be greater than old generation {old.generation}", field="generation"
        )
    old_by_lo = {sa.slice.lo: sa for sa in old.slices}
    new_los = set()
    upserts = []
    for sa in new.slices:
        lo = sa.slice.lo
        new_los.add(lo)
        prev = old_by_lo.get(lo)
        if prev is None or prev != sa:
            upserts.append(sa)
    removed = tuple(sorted(lo for lo in old_by_lo if lo not in new_los))
    return AssignmentDiff(
        target=new.target,
        from_generation=old.generation,
        to_generation=new.generation,
        upserts=tuple(upserts),
        removed_los=removed,
        pods=new.pods,
        config=new.config,
        overrides=new.overrides,
        stats=new.stats,
        created_unix_ms=new.created_unix_ms,
    )


def apply_diff(old: Assignment, d: AssignmentDiff) -> Assignment:
    """``old`` with ``d`` applied. GenerationError unless ``d`` starts at ``old``'s generation and target;
    InvariantError when the result does not tile the keyspace."""
    if d.target != old.target:
        raise GenerationError(f"diff is for target {d.target!r}, not {old.target!r}", field="target")
    if d.from_generation != old.generation:
        raise GenerationError(
            f"diff starts at generation {d.from_generation} but the assignment is at {old.generation}; "
            "fetch the full assignment",
            field="from_generation",
        )
    if d.to_generation <= d.from_generation:
        raise GenerationError(
            f"to_generation {d.to_generation} must be greater than from_generation {d.from_generation}",
            field="to_generation",
        )
    by_lo = {sa.slice.lo: sa for sa in old.slices}
    for lo in d.removed_los:
        if by_lo.pop(lo, None) is None:
            raise InvariantError(f"diff removes slice at lo={lo}, which does not exist", field="removed_los")
    for sa in d.upserts:
        by_lo[sa.slice.lo] = sa
    slices = tuple(by_lo[lo] for lo in sorted(by_lo))
    return Assignment(
        target=d.target,
        generation=d.to_generation,
        slices=slices,
        pods=d.pods,
        config=d.config,
        overrides=d.overrides,
        stats=d.stats,
        created_unix_ms=d.created_unix_ms,
    )


__all__ = [
    "Assignment",
    "AssignmentDiff",
    "RoundStats",
    "SliceAssignment",
    "apply_diff",
    "assignment_pods",
    "check_invariants",
    "diff",
    "eligible_active",
    "initial_assignment",
]
