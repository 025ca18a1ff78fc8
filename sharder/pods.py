"""Pods (runtimes a target's slices are assigned to), their states, and label eligibility."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

import xxhash

KNOWN_LABELS: frozenset[str] = frozenset({"model", "model_version", "region"})
"""Labels a TargetConfig's eligibility may name."""

#: The lease a pod's report may ask for (``ReportRequest.lease_ttl_ms``). A pod that stops ends its registration
#: instead (``ReportRequest.leaving``).
MIN_LEASE_TTL_MS = 100
MAX_LEASE_TTL_MS = 600_000


class PodState(enum.Enum):
    """Lifecycle of a pod: active pods take slices, draining pods hand theirs over, dead pods are dropped."""

    ACTIVE = "active"
    DRAINING = "draining"
    DEAD = "dead"


@dataclasses.dataclass(frozen=True, slots=True)
class Pod:
    """One runtime: gRPC ``address``, optional HTTP base URL, labels (model, model_version, region) and state."""

    id: str
    address: str
    labels: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    state: PodState = PodState.ACTIVE
    http_address: str = ""
    target: str = ""

    @property
    def active(self) -> bool:
        return self.state is PodState.ACTIVE


def eligible(pod: Pod, eligibility: Mapping[str, str]) -> bool:
    """True when ``pod`` carries every label of ``eligibility`` with exactly the same value (state is not checked)."""
    labels = pod.labels
    return all(labels.get(k) == v for k, v in eligibility.items())


def serves(pod: Pod, target: str, eligibility: Mapping[str, str]) -> bool:
    """True when ``pod`` is ACTIVE, not bound to another target, and eligible for ``eligibility``."""
    return pod.state is PodState.ACTIVE and (not pod.target or pod.target == target) and eligible(pod, eligibility)


def pod_rank(key: int, pod_id: str) -> int:
    """Stable rank of ``pod_id`` for ``key`` (a SliceKey, a slice's low bound): every process computes the same
    one, so routers agree on ties and the assigner spreads a drain's handoffs over the replicas."""
    return xxhash.xxh3_64_intdigest(pod_id.encode("utf-8"), seed=key)


__all__ = ["KNOWN_LABELS", "Pod", "PodState", "eligible", "pod_rank", "serves"]
