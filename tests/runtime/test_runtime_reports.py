"""A runtime's slicelet reports reach a real assigner (embedded store) and show up in its view of pod load."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc
from sharder.keyspace import slice_key
from sharder.launch import ManagedProcess
from tests.runtime.procs import start_assigner, start_runtime
from tests.waiting import until


def _post(url: str, body: dict[str, object], headers: dict[str, str]) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **headers}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status


async def test_runtime_load_reaches_the_assigner(tmp_path: Path) -> None:
    assigner = start_assigner(tmp_path)
    runtime: ManagedProcess | None = None
    try:
        addr = assigner.wait_ready(30)["grpc"]
        runtime = start_runtime(
            tmp_path,
            "--pod-id", "pod-a", "--target", "chat", "--model", "m",
            "--assigner", addr, "--report-interval", "0.2", "--time-scale", "20",
        )  # fmt: skip
        http = runtime.addresses["http"]
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)

            async def pod_status() -> assigner_pb2.PodStatus | None:
                pods = await stub.ListPods(assigner_pb2.ListPodsRequest(target="chat"))
                return next((p for p in pods.pods if p.pod.id == "pod-a"), None)

            async def status_where(ok: Callable[[assigner_pb2.PodStatus], bool]) -> assigner_pb2.PodStatus | None:
                st = await pod_status()
                return st if st is not None and ok(st) else None

            st = await until(lambda: status_where(lambda s: s.slices_held > 0), 20, "the pod to register with slices")
            # the pod learns its slices from the answer to its next report (the target came from configuration,
            # so the first answers named none); requests recorded before that would count as misrouted
            seen = st.last_report_unix_ms
            st = await until(lambda: status_where(lambda s: s.last_report_unix_ms > seen), 20,
                             "a report after the pod got its slices")  # fmt: skip
            assert st.pod.http_address == http
            assert st.engine.load == 0.0 and st.slice_load == 0.0  # idle pod: nothing served yet

            # serve traffic for a few sessions, telling the pod which SliceKey each request was routed on
            for i in range(12):
                key = slice_key(f"session-{i % 3}")
                status = await asyncio.to_thread(
                    _post,
                    http + "/v1/completions",
                    {"model": "m", "prompt": f"hello from session {i % 3} " * 20, "max_tokens": 8},
                    {"x-brunoise-slice-key": str(key)},
                )
                assert status == 200

            st = await until(lambda: status_where(lambda s: s.engine.load > 0 and s.slice_load > 0), 20,
                             "the load to show up in the assigner's view")  # fmt: skip
            assert st.last_report_unix_ms > 0
            assert 0.0 <= st.engine.kv_usage <= 1.0
            assert st.engine.prefix_hit_rate > 0  # the same session prompts repeated: the pod's cache hit
    finally:
        if runtime is not None:
            runtime.stop()
        assigner.stop()
