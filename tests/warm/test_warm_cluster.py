"""Warm-up on reshard with real processes: a replica added to a hot slice prefills the donor's prompts before it
takes new sessions, so its first new session hits the cache (and, without warm-up, misses)."""

from __future__ import annotations

import json
import pathlib
import re
import time
import urllib.request
from typing import Any

import pytest

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from runtime.warm import WARM_PROMPTS
from tests.router.conftest import MODEL, ROUTER_ARGS, TARGET, TARGET_CONFIG, Cluster, post
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

SYSTEM = "You are the support assistant of the brunoise test tenant. " * 40  # ~2.4 KB shared by every session
TENANT = "acme"


class WarmCluster(Cluster):
    """An embedded assigner, one router, sim runtimes added one at a time; one slice, so every session shares it."""

    def __init__(self, log_dir: pathlib.Path, warm_deadline_s: float) -> None:
        super().__init__(log_dir, n_routers=1, router_args=ROUTER_ARGS)
        self.warm_deadline_s = warm_deadline_s

    def configure_target(self, max_replicas: int = 2) -> None:
        cfg = slicing_pb2.TargetConfig(
            **{**TARGET_CONFIG, "initial_slices": 1, "max_replicas": max_replicas},
            warm_deadline_s=self.warm_deadline_s,
        )
        with self.assigner_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            wait_until(lambda: stub.ConfigureTarget(assigner_pb2.ConfigureTargetRequest(config=cfg), timeout=5), 30,
                     "ConfigureTarget")  # fmt: skip

    def assignment(self) -> Any:
        with self.assigner_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            return stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5)

    def pin(self, pods: list[str]) -> None:
        """Pin the one slice to ``pods`` (a move override): the way to add a replica on purpose."""
        ov = slicing_pb2.Override(id="pin", move=slicing_pb2.MoveOverride(key=0, pods=pods))
        with self.assigner_channel(self.assigner_addr) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            stub.SetOverride(assigner_pb2.SetOverrideRequest(target=TARGET, override=ov), timeout=5)


def _chat(session: str, turns: list[str]) -> dict[str, Any]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    for i, t in enumerate(turns):
        if i:
            msgs.append({"role": "assistant", "content": f"answer {i}"})
        msgs.append({"role": "user", "content": t})
    return {"model": MODEL, "messages": msgs, "max_tokens": 4, "user": session}


def _headers(session: str) -> dict[str, str]:
    return {"x-tenant-id": TENANT, "x-session-id": session}


def _cached(raw: bytes) -> tuple[int, int]:
    usage = json.loads(raw)["usage"]
    return usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _run(tmp_path: pathlib.Path, warm_deadline_s: float) -> dict[str, Any]:
    """pod0 serves 6 sessions of one tenant; pod1 joins and is pinned as the slice's second replica; then a new
    new sessions go through the router until one lands on pod1, then an old session's next turn goes to pod1."""
    c = WarmCluster(tmp_path, warm_deadline_s)
    try:
        c.start_assigners()
        c.configure_target()
        c.start_runtime("pod0", "eu").wait_ready(60)
        c.add_router(c.router_args, wait=False).wait_ready(60)
        c.wait_router(c.routers[0], pods=1)
        wait_until(lambda: all(s.replicas for s in c.assignment().slices), 30, "pod0 holds the slice")
        sessions = [f"old-{i}" for i in range(6)]
        for turn in range(2):
            for s in sessions:
                st, hdr, _ = post(c.http() + "/v1/chat/completions", _chat(s, [f"{s} question {t}" for t in range(turn + 1)]),
                                  _headers(s))  # fmt: skip
                assert st == 200 and hdr["x-brunoise-pod"] == "pod0"
        c.start_runtime("pod1", "eu").wait_ready(60)
        wait_until(lambda: "pod1" in {p.id for p in c.assignment().pods}, 30, "pod1 registered")
        t_pin = time.monotonic()
        c.pin(["pod0", "pod1"])
        marked = wait_until(lambda: [s for s in c.assignment().slices if "pod1" in s.replicas], 30, "pod1 a replica")
        out: dict[str, Any] = {"marked_at_once": list(marked[0].warming)}
        pod1 = c.pod_http("pod1")
        if warm_deadline_s > 0:
            wait_until(lambda: _metric(pod1, "brunoise_runtime_warmup_completed_total") >= 1, 30, "pod1 warmed")
            wait_until(lambda: not any(s.warming for s in c.assignment().slices), 30, "the warming mark cleared")
            out["cleared_after_s"] = time.monotonic() - t_pin
            out["warm_requests"] = _metric(pod1, "brunoise_runtime_warmup_requests_total")
            out["donor_served"] = _metric(c.pod_http("pod0"), "brunoise_runtime_warmup_prompts_served_total")
        # new sessions through the router until one lands on pod1: its first request
        c.wait_router(c.routers[0], pods=2)
        for i in range(24):
            s = f"new-{i}"
            st, hdr, raw = post(c.http() + "/v1/chat/completions", _chat(s, [f"{s} hello"]), _headers(s))
            assert st == 200
            if hdr["x-brunoise-pod"] == "pod1":
                out["first_new_on_pod1"] = _cached(raw)
                break
        # the hottest old session's next turn (all served twice; the latest first), straight on pod1: its whole
        # history was prefilled there
        st, _, raw = post(pod1 + "/v1/chat/completions", _chat("old-5", ["old-5 question 0", "old-5 question 1", "again"]))
        assert st == 200
        out["old_session_on_pod1"] = _cached(raw)
        return out
    finally:
        c.close()


def test_added_replica_prefills_the_donors_prompts_before_new_sessions(tmp_path: pathlib.Path) -> None:
    got = _run(tmp_path / "warm", warm_deadline_s=20.0)
    print("WARM", json.dumps(got))
    assert got["marked_at_once"] == ["pod1"]  # the new replica is warming in the generation that adds it
    assert got["cleared_after_s"] < 20.0  # cleared by pod1's warm report, not by the deadline
    # the donor's hottest sessions' latest turns, within the warmer's budget
    # (each prompt prefilled in pieces of at most WARM_PIECE_BYTES: one request or more per prompt)
    assert got["donor_served"] == min(6, WARM_PROMPTS) <= got["warm_requests"]
    prompt, cached = got["old_session_on_pod1"]
    assert cached >= 0.8 * prompt  # the session's history is already on pod1
    assert "first_new_on_pod1" in got, "no new session went to pod1 once it was warm"
    prompt, cached = got["first_new_on_pod1"]
    assert cached >= 0.5 * prompt  # the tenant's system prompt was prefilled: the first new session hits


def test_without_warm_up_the_added_replica_starts_cold(tmp_path: pathlib.Path) -> None:
    got = _run(tmp_path / "cold", warm_deadline_s=0.0)
    print("COLD", json.dumps(got))
    assert got["marked_at_once"] == []
    _prompt, cached = got["old_session_on_pod1"]
    assert cached == 0  # nothing was prefilled: the ablation the warm test is measured against
