"""An operator's drain of a running pod stays until undone: the pod does not take it for its previous life's drain."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.launch import ManagedProcess
from tests.runtime.procs import start_assigner, start_runtime
from tests.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: Reports the drained pod must send (0.2 s apart) while the drain still stands: several of the runtime's
#: 0.5 s health polls, where it undoes a drain it finds at its first registration.
REPORTS_AFTER_DRAIN = 10


async def test_a_drained_pod_stays_draining_and_holds_nothing_until_undrained(tmp_path: Path) -> None:
    assigner = start_assigner(tmp_path)
    runtimes: list[ManagedProcess] = []
    try:
        addr = assigner.wait_ready(30)["grpc"]
        for pid in ("pod-a", "pod-b"):
            runtimes.append(start_runtime(
                tmp_path, "--pod-id", pid, "--target", "chat", "--model", "m", "--assigner", addr,
                "--report-interval", "0.2", "--time-scale", "20", name=pid,
            ))  # fmt: skip
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]

            async def pod_a() -> assigner_pb2.PodStatus | None:
                pods = await stub.ListPods(assigner_pb2.ListPodsRequest(target="chat"))
                return next((p for p in pods.pods if p.pod.id == "pod-a"), None)

            async def holding() -> bool:
                st = await pod_a()
                return st is not None and st.slices_held > 0

            await until(holding, 30, "pod-a to hold slices")
            await stub.Drain(assigner_pb2.DrainRequest(pod_id="pod-a"))
            seen: list[assigner_pb2.PodStatus] = []

            async def drained_for_a_while() -> bool:
                st = await pod_a()
                if (
                    st is not None
                    and st.slices_held == 0
                    and (not seen or st.last_report_unix_ms > seen[-1].last_report_unix_ms)
                ):
                    seen.append(st)  # the drain done, then each later report of the pod
                return len(seen) > REPORTS_AFTER_DRAIN or (
                    st is not None and st.pod.state != slicing_pb2.POD_STATE_DRAINING
                )

            await until(drained_for_a_while, 30, "pod-a to hold nothing and keep reporting")
            st = await pod_a()
            assert st is not None
            assert st.pod.state == slicing_pb2.POD_STATE_DRAINING, "the pod undid the operator's drain"
            assert st.slices_held == 0 and len(seen) > REPORTS_AFTER_DRAIN
            assert "undrained it" not in (tmp_path / "pod-a.log").read_text(errors="replace")
            await stub.Drain(assigner_pb2.DrainRequest(pod_id="pod-a", undrain=True))  # the operator's undo
            await until(holding, 30, "pod-a to hold slices again")
    finally:
        for r in runtimes:
            r.stop()
        assigner.stop()
