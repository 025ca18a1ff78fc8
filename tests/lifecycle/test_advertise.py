"""Bind vs advertise with real processes: each server names its advertised host in ready files and registrations
(bound on loopback here: the tests never listen beyond it)."""

from __future__ import annotations

import json
import pathlib
import urllib.request

import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc
from sharder.launch import ManagedProcess, ProcessGroup, python_module
from tests.router.conftest import _policy_args
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ADV = "localhost"


def test_assigner_runtime_and_router_advertise_the_given_host(tmp_path: pathlib.Path) -> None:
    with ProcessGroup() as g:
        a = g.add(ManagedProcess("assigner", python_module(
            "sharder.assigner.main", "--store", "embedded", "--port", "0", "--advertise-host", ADV, "--target", "adv",
            *_policy_args(),
        ), log_dir=tmp_path).start())  # fmt: skip
        addr = a.wait_ready(60)["grpc"]
        assert addr.startswith(f"{ADV}:")
        rt = g.add(ManagedProcess("runtime", python_module(
            "runtime.main", "--pod-id", "adv-pod", "--target", "adv", "--assigner", addr, "--advertise-host", ADV,
            "--report-interval", "0.3",
        ), log_dir=tmp_path).start())  # fmt: skip
        ro = g.add(ManagedProcess("router", python_module(
            "axon_router.main", "--assigner", addr, "--http-port", "0", "--grpc-port", "0", "--advertise-host", ADV,
        ), log_dir=tmp_path).start())  # fmt: skip
        rts, ros = rt.wait_ready(60), ro.wait_ready(60)
        assert rts["http"].startswith(f"http://{ADV}:") and rts["grpc"].startswith(f"{ADV}:")
        assert ros["http"].startswith(f"http://{ADV}:") and ros["grpc"].startswith(f"{ADV}:")
        with urllib.request.urlopen(ros["http"] + "/health", timeout=5) as r:  # the advertised address works
            assert json.loads(r.read())["status"] == "ok"

        def registered() -> object:
            with grpc.insecure_channel(addr) as ch:
                stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
                pods = stub.ListPods(assigner_pb2.ListPodsRequest(), timeout=5).pods
            return next((p.pod for p in pods if p.pod.id == "adv-pod"), None)

        pod = wait_until(registered, 30, "the runtime's registration")
        assert pod.address == rts["grpc"] and pod.http_address == rts["http"]
