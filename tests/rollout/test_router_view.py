"""The router's rollout view: newest generation wins, requests go to their version's target, blue when green is new."""

from __future__ import annotations

from typing import Any

from axon_router.rollout import RolloutView
from brunoise_api.v1 import assigner_pb2
from sharder import rollout as ro
from sharder.assigner.rollouts import rollout_to_proto
from sharder.keyspace import KEYSPACE_END


class FakeCalls:
    """Answers ListRollouts with whatever the test put in ``records``."""

    def __init__(self) -> None:
        self.records: list[ro.Rollout] = []

    async def call(self, method: str, req: Any) -> Any:
        assert method == "ListRollouts"
        return assigner_pb2.ListRolloutsResponse(rollouts=[rollout_to_proto(r) for r in self.records])


async def test_view_routes_by_the_newest_record_and_never_goes_back_a_generation() -> None:
    calls = FakeCalls()
    view = RolloutView(calls)  # type: ignore[arg-type]
    r = ro.start("chat", "chat-v1", "chat-v2", 0, steps=(0.5, 1.0))
    r1 = ro.tick(r, 1, ro.GreenWindow(), True)
    assert r1 is not None
    calls.records = [r1]
    await view.refresh()
    targets = {"chat-v1": "BLUE", "chat-v2": "GREEN"}
    assert view.pick("chat", 0, targets) == "GREEN"
    assert view.pick("chat", KEYSPACE_END - 1, targets) == "BLUE"
    assert view.pick("other", 0, targets) is None, "a model without a rollout resolves as before"
    assert view.pick("chat", 0, {"chat-v1": "BLUE"}) == "BLUE", "a green this router does not know yet gets nothing"
    calls.records = [r]  # a replica that answers with an older record
    await view.refresh()
    assert view.by_model["chat"].generation == r1.generation
    back = ro.rollback(r1, 2)
    calls.records = [back]
    await view.refresh()
    assert view.pick("chat", 0, targets) == "BLUE" and view.generation_gauge.labels("chat")._value.get() == back.generation


async def test_a_version_with_no_usable_pod_gives_way_to_the_other() -> None:
    calls = FakeCalls()
    view = RolloutView(calls)  # type: ignore[arg-type]
    r = ro.promote(ro.start("chat", "chat-v1", "chat-v2", 0), 1)
    calls.records = [r]
    await view.refresh()
    targets = {"chat-v1": "BLUE", "chat-v2": "GREEN"}
    assert view.pick("chat", 5, targets, usable=lambda t: True) == "GREEN"
    assert view.pick("chat", 5, targets, usable=lambda t: t == "BLUE") == "BLUE" and view.version_failovers == 1
    assert view.pick("chat", 5, targets, usable=lambda t: False) == "GREEN", "neither usable: its own version decides"
