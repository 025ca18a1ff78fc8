"""Router-side rollouts: the model-version records polled from the assigners, and each request's version target.

Every ``poll_s`` (``interval_s``) the router asks any assigner replica for every rollout (``ListRollouts``, reader role) and keeps
the newest generation of each model's record (a reply older than what it holds is ignored). A request naming a model
under a rollout goes to ``sharder.rollout.version_for(slice_key, record)``: green below ``fraction x 2^64``, blue
above; a request naming its target explicitly (``x-brunoise-target``) is not redirected. Staleness: a change reaches
the router within one poll after it is written (the record's generation is exported as
``brunoise_router_rollout_generation{model}``); while the assigners cannot be reached the router keeps routing on
the last record it has (never on a guess).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

from prometheus_client import CollectorRegistry, Gauge

from axon_router.assigner_client import AssignerCalls
from axon_router.refresh import Refreshed
from brunoise_api.v1 import assigner_pb2
from sharder.assigner.rollouts import rollout_from_proto
from sharder.errors import BrunoiseError
from sharder.rollout import Rollout, version_for

log = logging.getLogger("axon_router.rollout")

T = TypeVar("T")


class RolloutView(Refreshed):
    """The rollout records this router routes by, refreshed from the assigners every ``poll_s`` (``interval_s``); failed polls count in ``failures``."""

    def __init__(self, calls: AssignerCalls, registry: CollectorRegistry | None = None, poll_s: float = 0.25) -> None:
        self.calls = calls
        self.by_model: dict[str, Rollout] = {}
        self.polls = 0
        self.version_failovers = 0  # requests sent to the other version because theirs had no usable pod
        self.interval_s = poll_s
        self.what = "rollouts"
        reg = registry if registry is not None else CollectorRegistry()
        self.generation_gauge = Gauge(
            "brunoise_router_rollout_generation", "Generation of the rollout record the router routes by", ["model"],
            registry=reg,
        )  # fmt: skip
        self.fraction_gauge = Gauge(
            "brunoise_router_rollout_green_fraction", "Share of the keyspace the router sends to green", ["model"],
            registry=reg,
        )  # fmt: skip

    def refresh_failed(self, error: Exception, first: bool) -> None:
        log.debug("rollout poll failed: %s", error)

    async def refresh(self) -> None:
        resp: assigner_pb2.ListRolloutsResponse = await self.calls.call(
            "ListRollouts", assigner_pb2.ListRolloutsRequest()
        )
        self.polls += 1
        seen: dict[str, Rollout] = {}
        for m in resp.rollouts:
            try:
                r = rollout_from_proto(m)
            except (BrunoiseError, ValueError) as e:
                log.warning("ignoring a malformed rollout record of %r: %s", m.model, e)
                continue
            held = self.by_model.get(r.model)
            seen[r.model] = r if held is None or r.generation >= held.generation else held
        for model, r in seen.items():
            self.generation_gauge.labels(model).set(r.generation)
            self.fraction_gauge.labels(model).set(r.fraction)
        for gone in set(self.by_model) - set(seen):
            with contextlib.suppress(KeyError):
                self.generation_gauge.remove(gone)
                self.fraction_gauge.remove(gone)
        self.by_model = seen

    def target_for(self, model: str, slice_key: int) -> str | None:
        """The version target of ``model`` for ``slice_key``, None when the model has no rollout."""
        r = self.by_model.get(model)
        return version_for(slice_key, r) if r is not None else None

    def pick(
        self, model: str, slice_key: int, targets: Mapping[str, T], usable: Callable[[T], bool] | None = None
    ) -> T | None:
        """The state of the version target this router knows, else of blue (a green this router does not know
        yet gets nothing), else None (the router resolves the model as without a rollout). With ``usable``: a
        version with no usable pod (all unhealthy or behind open breakers) while the other has one gives way to
        the other (availability before version stickiness: the session switches back when its version recovers)."""
        r = self.by_model.get(model)
        if r is None:
            return None
        name = version_for(slice_key, r)
        got = targets.get(name)
        if got is None:
            return targets.get(r.blue)
        if usable is not None and not usable(got):
            other = targets.get(r.blue if name == r.green else r.green)
            if other is not None and usable(other):
                self.version_failovers += 1
                return other
        return got
