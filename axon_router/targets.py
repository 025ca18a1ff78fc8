"""The router's picture of the assignments: one TargetState per target and generation, pod views, model lookup."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from axon_router.errors import BadRequest, NotFound
from axon_router.knobs import Knobs
from axon_router.metrics import RouterMetrics
from axon_router.pick import load_cap
from axon_router.pod_view import PodView
from axon_router.routing_key import RouteRequest
from sharder.headers import TARGET_HEADER
from sharder.keyspace import key_parts


class ClerkLike(Protocol):
    """The part of ``sharder.clerk.Clerk`` the router uses (all synchronous, no I/O)."""

    def targets(self) -> list[str]: ...
    def assignment(self, target: str) -> Any: ...
    def generation(self, target: str) -> int: ...
    def staleness_s(self, target: str) -> float: ...


#: Label sets whose eligible pods a TargetState remembers per generation. Labels come from clients
#: (``x-brunoise-labels``), so past this many a new set is computed and not kept: memory stays bounded.
MAX_CACHED_LABEL_SETS = 64


class TargetState:
    """One target's generation, precomputed: pods by id, the pool of serving pods, eligible pools per label set."""

    __slots__ = ("_eligible", "assignment", "generation", "listed", "models", "name", "pods", "pool")

    def __init__(self, name: str, assignment: Any, views: dict[str, PodView]) -> None:
        self.name = name
        self.assignment = assignment
        self.generation: int = assignment.generation
        self.pods = {p.id: views[p.id] for p in assignment.pods if p.id in views}
        self.pool: list[PodView] = [views[p.id] for p in assignment.pods if p.id in views and p.state.value != "dead"]
        models = {name}
        cfg_model = getattr(assignment.config, "model", "")
        if cfg_model:
            models.add(cfg_model)
        for p in assignment.pods:
            m = p.labels.get("model")
            if m:
                models.add(m)
        self.models = models
        self.listed = sorted(models - {name}) or [name]  # what GET /v1/models shows
        self._eligible: dict[frozenset[tuple[str, str]], tuple[list[PodView], frozenset[str]]] = {}

    def eligible(self, labels: dict[str, str]) -> tuple[list[PodView], frozenset[str]]:
        """Pods of the pool carrying every label (cached per label set for this generation, up to
        MAX_CACHED_LABEL_SETS sets)."""
        key = frozenset(labels.items())
        hit = self._eligible.get(key)
        if hit is None:
            pods = [p for p in self.pool if all(p.labels.get(k) == v for k, v in labels.items())]
            hit = (pods, frozenset(p.id for p in pods))
            if len(self._eligible) < MAX_CACHED_LABEL_SETS:
                self._eligible[key] = hit
        return hit


def new_session_replicas(
    sa: Any, views: Mapping[str, PodView], hashes: Sequence[int], session_chunks: int, now: float, knobs: Knobs
) -> Sequence[str]:
    """The replicas of slice ``sa`` a request may start on. Warming replicas (they gained the slice and are still
    prefilling its hot prompts) take no new session that a warm replica under the bounded-load cap holds more of
    (the group's system prompt, a document: the warm-up is copying it, and the session would miss it there); a
    warming replica that already holds this request's session (at least ``session_chunks`` leading chunks) keeps
    it, so sticky sessions are unaffected, and one holding as much of the prompt as every warm replica takes it
    (nobody warm has anything to offer it: keeping it off the warming replica gained no hit and left that pod's
    capacity idle while it warmed; a fresh query over a document no pod holds, in docs' restart phase). A slice
    whose replicas all warm (a move) sends new sessions to the pods still leaving it instead (for the generation
    they stay): they hold its cache. A slice with no warm pod, or whose warm ones are all over the cap, is routed
    to every replica: warming never makes a slice unroutable."""
    warming = getattr(sa, "warming", ())
    if not warming:
        return sa.replicas  # type: ignore[no-any-return]
    warm = [p for p in sa.replicas if p not in warming and p in views]
    if not warm:
        warm = [p for p in getattr(sa, "leaving", ()) if p in views]
        if not warm:
            return sa.replicas  # type: ignore[no-any-return]
    stale = knobs.report_stale_s
    out = {p: views[p].outstanding(now, stale)[0] for p in (*sa.replicas, *warm) if p in views}
    cap = load_cap(list(out.values()), knobs.load_cap)
    if not any(out[p] + 1 <= cap for p in warm):
        return sa.replicas  # type: ignore[no-any-return]
    need = max(1, session_chunks)

    def held(p: str) -> int:
        v = views.get(p)
        if v is None or not hashes:
            return 0
        return v.matched_chunks(hashes, now, knobs.prefix_memory_s, knobs.prefix_memory_trust_s)

    best_warm: int | None = None  # the warm pods' longest match, looked up once, when a warming replica asks

    def takes(p: str) -> bool:
        """A warming replica holding the session's own cache, or at least as much of the prompt as every warm pod
        (nothing, for a prompt no warm pod has seen; a long shared document served there before the slice came
        back or copied there by the warm-up itself)."""
        nonlocal best_warm
        n = held(p)
        if n >= need:
            return True
        if best_warm is None:
            best_warm = max((held(w) for w in warm), default=0)
        return n >= best_warm

    return [p for p in warm if p not in sa.replicas] + [p for p in sa.replicas if p not in warming or takes(p)]


def not_outside(sa: Any, subset: Iterable[str]) -> frozenset[str]:
    """The pods a request's outside tiers (held, overflow, spill, fallback) never list: its slice's replicas,
    warming ones included, and the subset it was given. A pod leaving the slice (a move this generation) is
    outside: it still holds the caches of the sessions it served, and the held tier keeps those there while
    make-before-break sends only new sessions to the new replicas (a drain's pod is leaving too, and the held
    tier keeps its sessions there for ``drain_keep_s``)."""
    return frozenset(sa.replicas).union(subset)


class TargetTable:
    """Target states by name and by model, rebuilt from the clerk when a generation changes, and one PodView
    per pod of any target (``on_new_pod`` / ``on_gone_pod`` start and stop its pollers)."""

    def __init__(
        self,
        clerk: ClerkLike,
        knobs: Knobs,
        metrics: RouterMetrics,
        on_new_pod: Callable[[PodView], None],
        on_gone_pod: Callable[[str], None],
    ) -> None:
        self.clerk = clerk
        self.knobs = knobs
        self.metrics = metrics
        self.on_new_pod = on_new_pod
        self.on_gone_pod = on_gone_pod
        self.pods: dict[str, PodView] = {}
        self.targets: dict[str, TargetState] = {}
        self.by_model: dict[str, list[TargetState]] = {}

    def refresh(self) -> bool:
        """Rebuild target states whose generation changed; add and drop pod views. True when anything changed."""
        m = self.metrics
        with contextlib.suppress(Exception):
            m.clerk_connected.set(1.0 if getattr(self.clerk, "connected", False) else 0.0)
        names = list(self.clerk.targets())
        changed = set(names) != set(self.targets)
        for t in names:
            with contextlib.suppress(Exception):
                m.staleness.labels(t).set(self.clerk.staleness_s(t))
            gen = self.clerk.generation(t)
            ts = self.targets.get(t)
            if ts is not None and ts.generation == gen:
                continue
            a = self.clerk.assignment(t)
            if a is None:
                continue
            changed = True
            self._sync_pods(a.pods, time.monotonic())
            self.targets[t] = TargetState(t, a, self.pods)
            m.generation.labels(t).set(a.generation)
        if not changed:
            return False
        for t in [t for t in self.targets if t not in names]:
            del self.targets[t]
        by_model: dict[str, list[TargetState]] = {}
        for ts in sorted(self.targets.values(), key=lambda s: s.name):
            for model in ts.models:
                by_model.setdefault(model, []).append(ts)
        self.by_model = by_model
        live = {pid for ts in self.targets.values() for pid in ts.pods}
        for pid in [p for p in self.pods if p not in live]:
            del self.pods[pid]
            self.on_gone_pod(pid)
        return True

    def _sync_pods(self, pods: Iterable[Any], now: float) -> None:
        for p in pods:
            v = self.pods.get(p.id)
            if v is None:
                v = self.pods[p.id] = PodView(
                    p.id, p.http_address, p.address, p.labels, memory_max=self.knobs.prefix_memory_max,
                    load_halflife_s=self.knobs.load_halflife_s, resident_window_s=self.knobs.resident_window_s,
                )  # fmt: skip
                v.inflight_gauge = self.metrics.pod_inflight.labels(p.id)
                self.metrics.pod_healthy.labels(p.id).set(1)
                self.metrics.pod_breaker.labels(p.id).set(0)
                self.on_new_pod(v)
            else:
                v.labels = dict(p.labels)
                v.address = p.address
                if p.http_address and p.http_address.rstrip("/") != v.http_address:
                    v.http_address = p.http_address.rstrip("/")
            v.set_draining(p.state.value == "draining", now)

    def models(self) -> list[str]:
        return sorted({m for ts in self.targets.values() for m in ts.listed})

    def resolve(self, req: RouteRequest) -> TargetState:
        """The target of a request: the one it names (which must serve its model), else the first serving it."""
        if req.target is not None:
            ts = self.targets.get(req.target)
            if ts is None:
                raise NotFound(
                    f"target {req.target!r} is not known to this router (known: {sorted(self.targets)})",
                    param=TARGET_HEADER,
                    code="target_not_found",
                )
            if req.model not in ts.models:
                raise BadRequest(
                    f"target {req.target!r} does not serve model {req.model!r} (it serves {sorted(ts.models)})",
                    param="model",
                    code="model_not_found",
                )
            return ts
        cands = self.by_model.get(req.model)
        if not cands:
            raise NotFound(
                f"the model {req.model!r} does not exist; served models: {self.models()}",
                param="model",
                code="model_not_found",
            )
        return cands[0]

    def lookup(self, target: str, slice_key: int) -> dict[str, Any]:
        """Debug view of a key: target, generation, slice and its subset, and the key's grouped-layout parts."""
        ts = self.targets.get(target)
        if ts is None:
            raise NotFound(f"target {target!r} is not known", param="target")
        sa = ts.assignment.lookup(slice_key)
        group_part, session_part = key_parts(slice_key)
        return {
            "target": target,
            "generation": ts.generation,
            "slice_key": slice_key,
            "group_part": group_part,
            "session_part": session_part,
            "slice": [sa.slice.lo, sa.slice.hi],
            "replicas": list(sa.replicas),
            "leaving": list(sa.leaving),
            "warming": list(getattr(sa, "warming", ())),
        }

    def pod_states(self, now: float) -> list[dict[str, Any]]:
        """Debug view of every pod at monotonic ``now``: health, breaker, load estimates, cache size."""
        out = []
        for v in sorted(self.pods.values(), key=lambda p: p.id):
            reqs, toks = v.outstanding(now, self.knobs.report_stale_s)
            pre_r, pre_t = v.prefill_ahead(now, self.knobs.report_stale_s)
            out.append(
                {
                    "id": v.id,
                    "http": v.http_address,
                    "labels": v.labels,
                    "healthy": v.healthy,
                    "breaker": v.breaker.state.name.lower(),
                    "inflight": v.inflight,
                    "outstanding": reqs,
                    "tokens": toks,
                    "prefill_ahead_reqs": pre_r,
                    "prefill_ahead_tokens": pre_t,
                    "cache_chunks": len(v.cache),
                    "draining": v.draining,
                }
            )
        return out
