"""A rollout step waits for green's warm-up: the leader's driver does not hand green keys while a green replica is
still warming (warm-up on reshard), and steps once the marks clear."""

from __future__ import annotations

import dataclasses

from sharder import rollout as ro
from sharder.assigner.pod_loads import PodLoadView
from sharder.assigner.rollouts import RolloutDriver, Rollouts, green_warm
from sharder.assignment import Assignment, initial_assignment
from sharder.config import TargetConfig
from sharder.pods import Pod
from sharder.store.embedded import EmbeddedStore


def _green(warming: bool) -> Assignment:
    pods = [Pod(f"g{i}", f"127.0.0.1:{7000 + i}", http_address=f"http://127.0.0.1:{8000 + i}") for i in range(2)]
    a = initial_assignment(TargetConfig("chat-v2", min_replicas=2, initial_slices=4), pods)
    if not warming:
        return a
    slices = list(a.slices)
    slices[2] = dataclasses.replace(slices[2], warming=(slices[2].replicas[0],))  # one replica of one slice
    return dataclasses.replace(a, slices=tuple(slices))


def test_green_is_warm_only_when_no_slice_has_a_warming_replica() -> None:
    assert green_warm(_green(warming=False))
    assert not green_warm(_green(warming=True))


class _Leader:
    """What the driver asks of the leader: leadership and a target's current assignment."""

    is_leader = True

    def __init__(self, green: Assignment) -> None:
        self.green = green

    def current(self, target: str) -> Assignment | None:
        return self.green if target == "chat-v2" else None


async def test_a_step_waits_until_green_has_warmed() -> None:
    now = [1_000]
    rollouts = Rollouts(EmbeddedStore(), clock=lambda: now[0])
    leader = _Leader(_green(warming=True))
    probed: list[list[str]] = []

    async def ready(addresses: list[str]) -> bool:
        probed.append(addresses)
        return True

    driver = RolloutDriver(rollouts, leader, PodLoadView(), ready=ready)  # type: ignore[arg-type]
    await rollouts.update("chat", lambda cur, t: ro.start("chat", "chat-v1", "chat-v2", t, step_interval_s=5.0))
    for _ in range(3):  # ready, the first step due at once, and still no step while a replica warms
        now[0] += 10_000
        await driver.tick()
        r = await rollouts.get("chat")
        assert r is not None and r.step == 0 and r.fraction == 0.0
    assert probed  # it was ready: warm-up alone held the step
    leader.green = _green(warming=False)  # the warm report (or the deadline) cleared the mark
    now[0] += 1_000
    await driver.tick()
    r = await rollouts.get("chat")
    assert r is not None and r.step == 1 and r.fraction == r.steps[0] > 0
