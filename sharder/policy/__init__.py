"""The pure resharding policy: ``reshard(assignment, pods, reports) -> next assignment`` (one module per phase)."""

from sharder.policy.memory import PolicyMemory
from sharder.policy.round import reshard

__all__ = ["PolicyMemory", "reshard"]
