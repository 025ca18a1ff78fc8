"""Hypothesis strategies for the core data model (pods, configs, assignments, reports)."""

from __future__ import annotations

from hypothesis import strategies as st

from sharder.assignment import Assignment, RoundStats, initial_assignment
from sharder.config import TargetConfig
from sharder.keyspace import KEYSPACE_END, Slice
from sharder.load import EngineLoad, LoadReport, SliceLoad
from sharder.overrides import MergeOverride, MoveOverride, Override, SplitOverride
from sharder.pods import Pod, PodState

keys = st.integers(min_value=0, max_value=KEYSPACE_END - 1)
finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def slices(draw: st.DrawFn) -> Slice:
    lo = draw(st.integers(min_value=0, max_value=KEYSPACE_END - 1))
    hi = draw(st.integers(min_value=lo + 1, max_value=KEYSPACE_END))
    return Slice(lo, hi)


@st.composite
def pods(draw: st.DrawFn, n_min: int = 1, n_max: int = 10) -> list[Pod]:
    n = draw(st.integers(min_value=n_min, max_value=n_max))
    out = []
    for i in range(n):
        state = draw(st.sampled_from([PodState.ACTIVE] * 4 + [PodState.DRAINING, PodState.DEAD]))
        region = draw(st.sampled_from(["eu", "us"]))
        out.append(
            Pod(
                id=f"p{i}",
                address=f"10.0.0.{i}:50051",
                labels={"region": region, "model": "m"},
                state=state,
                http_address=f"http://10.0.0.{i}:8000",
            )
        )
    return out


@st.composite
def configs(draw: st.DrawFn) -> TargetConfig:
    mn = draw(st.integers(min_value=1, max_value=3))
    mx = draw(st.integers(min_value=mn, max_value=4))
    split = draw(st.sampled_from([0.1, 0.25, 0.5, 1.0]))
    tol = draw(st.sampled_from([0.05, 0.1, 0.3]))
    return TargetConfig(
        target="t",
        min_replicas=mn,
        max_replicas=mx,
        imbalance_tolerance=tol,
        calm=draw(st.booleans()),
        imbalance_target=tol * draw(st.sampled_from([0.0, 0.5, 1.0])),
        act_after_rounds=draw(st.integers(1, 5)),
        cooldown_rounds=draw(st.integers(0, 8)),
        load_smoothing=draw(st.sampled_from([0.2, 0.5, 1.0])),
        move_cost_weight=draw(st.sampled_from([0.0, 1.0, 2.5])),
        replica_true_load=draw(st.booleans()),
        churn_budget=draw(st.sampled_from([0.05, 0.1, 0.5, 1.0])),
        split_threshold=split,
        merge_threshold=split * draw(st.sampled_from([0.0, 0.1, 0.3])),
        dereplicate_threshold=split * draw(st.sampled_from([0.0, 0.2, 0.5])),
        hot_key_fraction=draw(st.sampled_from([0.3, 0.5, 0.9])),
        min_slices_per_pod=draw(st.sampled_from([0, 0, 2, 8])),
        max_slices_per_pod=draw(st.sampled_from([1000, 64])),
        initial_slices=draw(st.integers(min_value=1, max_value=48)),
        eligibility=draw(st.sampled_from([{}, {"region": "eu"}, {"model": "m"}])),
        model=draw(st.sampled_from(["", "llama"])),
    )


@st.composite
def assignments(draw: st.DrawFn) -> tuple[Assignment, list[Pod]]:
    cfg = draw(configs())
    ps = draw(pods())
    return initial_assignment(cfg, ps, generation=draw(st.integers(min_value=0, max_value=10**6))), ps


@st.composite
def reports_for(draw: st.DrawFn, a: Assignment, ps: list[Pod]) -> list[LoadReport]:
    """Reports from a random subset of pods about random slices of ``a`` (some ranges not current)."""
    out = []
    for p in ps:
        if not draw(st.booleans()):
            continue
        sls = []
        held = [sa for sa in a.slices if p.id in sa.replicas]
        for sa in held:
            if draw(st.integers(0, 5)) == 0:
                continue
            s = sa.slice
            load = draw(finite)
            if draw(st.booleans()) and s.width > 1:
                k = draw(st.integers(min_value=s.lo, max_value=s.hi - 1))
                top: tuple[tuple[int, float], ...] = ((k, load * draw(st.floats(0, 1))),)
            else:
                top = ()
            sls.append(SliceLoad(s, load, top, requests=draw(st.integers(0, 100))))
        if draw(st.integers(0, 4)) == 0:
            sls.append(SliceLoad(draw(slices()), draw(finite)))
        out.append(
            LoadReport(
                pod_id=p.id,
                target="t",
                engine=EngineLoad(capacity=draw(st.sampled_from([0.5, 1.0, 2.0])), load=draw(finite)),
                slices=tuple(sls),
                seq=draw(st.integers(0, 5)),
            )
        )
    return out


@st.composite
def overrides(draw: st.DrawFn) -> Override:
    i = draw(st.integers(0, 99))
    kind = draw(st.sampled_from(["move", "split", "merge"]))
    if kind == "move":
        return MoveOverride(
            f"o{i}",
            draw(keys),
            tuple(draw(st.lists(st.sampled_from(["p0", "p1", "p2"]), min_size=1, max_size=3, unique=True))),
        )
    if kind == "split":
        return SplitOverride(f"o{i}", draw(st.integers(1, KEYSPACE_END - 1)))
    lo = draw(keys)
    return MergeOverride(f"o{i}", lo, draw(st.integers(lo + 1, KEYSPACE_END)))


stats = st.builds(
    RoundStats,
    moves=st.integers(0, 1000),
    splits=st.integers(0, 1000),
    merges=st.integers(0, 1000),
    replications=st.integers(0, 1000),
    dereplications=st.integers(0, 1000),
    fills=st.integers(0, 1000),
    churn=st.floats(0, 1),
    imbalance=st.floats(0, 100),
    dropped_pods=st.integers(0, 100),
)
