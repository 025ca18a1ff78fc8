"""The bench's assigner view runs on the CLI's AdminClient against a real assigner: target, pods, drain, history."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.pods import MODEL, TARGET, AssignerAdmin
from brunoise_api.v1 import assigner_pb2
from tests.assigner.conftest import Assigner, pod_msg, start_assigner
from tests.waiting import until

__all__ = ["start_assigner"]

pytestmark = pytest.mark.slow


async def test_bench_admin_configures_drains_and_reads_history(start_assigner: Callable[..., Assigner]) -> None:
    a = start_assigner(targets_from_reports=False, round_s=0.2)
    admin = AssignerAdmin(a.addr)
    try:
        await admin.configure_target({"calm": "false", "churn_budget": "0.3"})
        cfg = await admin.target_config()
        assert cfg["target"] == TARGET and cfg["model"] == MODEL
        assert cfg["calm"] is False and cfg["churn_budget"] == pytest.approx(0.3)
        for i, pid in enumerate(("b0", "b1")):
            await a.stub.Report(assigner_pb2.ReportRequest(pod=pod_msg(pid, 9300 + i, target=TARGET, model=MODEL)),
                                timeout=5)  # fmt: skip
        assert await until(admin.assigned_pods, 10, "slices on the pods") <= {"b0", "b1"}
        assert await admin.registrations() == {"b0": "127.0.0.1:9300", "b1": "127.0.0.1:9301"}
        await until(lambda: _holds(admin, "b1"), 10, "b1 to hold slices")  # before the drain
        await admin.drain("b1")
        await until(lambda: _none_on(admin, "b1"), 10, "b1 to hold nothing")
        assert await admin.drain_progress("b1") == (0, 0, 0)  # what the bench's restart waits for
        history = await admin.history()
        assert history and history[-1]["generation"] >= 1
        assert {"moves", "splits", "churn", "imbalance"} <= set(history[-1])
    finally:
        await admin.close()


async def _holds(admin: AssignerAdmin, pod: str) -> bool:
    held, _, _ = await admin.drain_progress(pod)
    return held > 0


async def _none_on(admin: AssignerAdmin, pod: str) -> bool:
    return (await admin.slices_held()).get(pod, 0) == 0 and pod not in await admin.assigned_pods()
