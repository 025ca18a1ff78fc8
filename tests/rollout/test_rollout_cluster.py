"""Model-version rollouts with real processes: an embedded-store assigner, 2 blue + 2 green sim runtimes (targets
chat-v1 / chat-v2, labels model_version=v1 / v2, one model name "chat"), one router; sessions under load, streaming
and not, through the ``brunoise rollout`` CLI.

Acceptance (issue 13, item 2): zero failed requests through start -> steps -> promote; every session sees one version
except at most one switch (v1 -> v2); ``brunoise rollout rollback`` restores blue for every key within one
generation; the automatic rollback fires on an injected error rate (green pods' ``--fault-mode error``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.launch import ManagedProcess, ProcessGroup, python_module
from sharder.promtext import metric_value
from tests.router.conftest import ROUTER_ARGS, http_json, post, scrape
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

MODEL = "chat"
BLUE, GREEN = "chat-v1", "chat-v2"
PODS = {"blue-0": BLUE, "blue-1": BLUE, "green-0": GREEN, "green-1": GREEN}
VERSION = {BLUE: "v1", GREEN: "v2"}
POISON = "POISON-PILL"
SESSIONS = 16


@dataclasses.dataclass
class RolloutCluster:
    """The processes of one test module and how to reach them."""

    group: ProcessGroup
    assigner: ManagedProcess
    router: ManagedProcess
    runtimes: dict[str, ManagedProcess]

    @property
    def assigner_addr(self) -> str:
        return self.assigner.addresses["grpc"]

    @property
    def http(self) -> str:
        return self.router.addresses["http"]

    def cli(self, *args: str) -> dict[str, Any]:
        """``brunoise rollout ARGS -o json`` against the assigner; its JSON answer (the command must succeed)."""
        out = subprocess.run(
            [sys.executable, "-m", "brunoise.cli.main", "rollout", *args, "-a", self.assigner_addr, "-o", "json"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr + out.stdout
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def status(self) -> dict[str, Any]:
        rollouts = self.cli("status", MODEL)["rollouts"]
        assert len(rollouts) == 1
        return dict(rollouts[0])

    def router_fraction(self) -> float:
        return metric_value(scrape(self.http), "brunoise_router_rollout_green_fraction", {"model": MODEL})

    def router_generation(self) -> int:
        return int(metric_value(scrape(self.http), "brunoise_router_rollout_generation", {"model": MODEL}))


def _configure(stub: Any, target: str) -> None:
    cfg = slicing_pb2.TargetConfig(
        target=target, model=MODEL, min_replicas=2, max_replicas=2, initial_slices=4, split_threshold=1e9,
        merge_threshold=0.0, dereplicate_threshold=0.0, min_slices_per_pod=0, max_slices_per_pod=1000,
    )  # fmt: skip
    wait_until(lambda: stub.ConfigureTarget(assigner_pb2.ConfigureTargetRequest(config=cfg), timeout=5), 30, target)


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutCluster]:
    d: pathlib.Path = tmp_path_factory.mktemp("rollout-cluster")
    group = ProcessGroup()
    try:
        a_argv = python_module(
            "sharder.assigner.main", "--store", "embedded", "--port", "0", "--round-interval", "0.5",
            "--rollout-interval", "0.25", "--report-interval", "0.25",
        )  # fmt: skip
        assigner = group.add(ManagedProcess("assigner", a_argv, log_dir=d).start())
        assigner.wait_ready(60)
        with grpc.insecure_channel(assigner.addresses["grpc"]) as ch:
            stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
            for t in (BLUE, GREEN):
                _configure(stub, t)
        runtimes: dict[str, ManagedProcess] = {}
        for pid, target in PODS.items():
            extra = ["--fault-marker", POISON, "--fault-mode", "error"] if target == GREEN else []
            argv = python_module(
                "runtime.main", "--engine", "sim", "--pod-id", pid, "--target", target, "--model", MODEL,
                "--labels", f"model_version={VERSION[target]}", "--assigner", assigner.addresses["grpc"],
                "--lease-ttl", "3", "--report-interval", "0.25", "--time-scale", "20", *extra,
            )  # fmt: skip
            runtimes[pid] = group.add(ManagedProcess(pid, argv, log_dir=d).start())
        r_argv = python_module(
            "axon_router.main", "--assigner", assigner.addresses["grpc"], "--http-port", "0", "--grpc-port", "0",
            *ROUTER_ARGS,
        )  # fmt: skip
        router = group.add(ManagedProcess("router", r_argv, log_dir=d).start())
        for p in [*runtimes.values(), router]:
            p.wait_ready(60)
        cl = RolloutCluster(group, assigner, router, runtimes)

        def ready() -> bool:
            pods = http_json(cl.http + "/debug/pods")["pods"]
            models = [m["id"] for m in http_json(cl.http + "/v1/models")["data"]]
            return models == [MODEL] and sum(1 for p in pods if p["healthy"]) == len(PODS)

        wait_until(ready, 60, "the router to list the model and see all 4 pods")
        yield cl
    finally:
        group.stop_all()
        assert not [p.name for p in group.procs if p.alive()], "a child outlived stop_all()"


# load -------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Answer:
    session: str
    at: float
    status: int
    pod: str
    target: str
    stream: bool


def _send(http: str, session: str, i: int, stream: bool, poison: bool = False) -> Answer:
    text = f"{POISON} turn {i}" if poison else f"turn {i}"
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4, "stream": stream}
    at = time.monotonic()
    if not stream:
        status, hdrs, _ = post(http + "/v1/chat/completions", body, {"x-session-id": session}, timeout=30)
        return Answer(session, at, status, hdrs.get("x-brunoise-pod", ""), hdrs.get("x-brunoise-target", ""), stream)
    req = urllib.request.Request(
        http + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "x-session-id": session},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read().decode()
            ok = raw.rstrip().endswith("data: [DONE]") and '"error"' not in raw
            return Answer(session, at, 200 if ok else 599, r.headers.get("x-brunoise-pod", ""),
                          r.headers.get("x-brunoise-target", ""), stream)  # fmt: skip
    except urllib.error.HTTPError as e:
        return Answer(session, at, e.code, "", "", stream)


class Load:
    """``SESSIONS`` sessions, each its own thread sending turn after turn (even sessions stream); ``poison``: the
    share of requests carrying the fault marker (green fails them with a 500)."""

    def __init__(self, http: str, prefix: str, poison_every: int = 0) -> None:
        self.http = http
        self.prefix = prefix
        self.poison_every = poison_every
        self.stop = threading.Event()
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(s,), daemon=True) for s in range(SESSIONS)]

    def _run(self, s: int) -> None:
        session = f"{self.prefix}-{s}"
        i = 0
        while not self.stop.is_set():
            poison = self.poison_every > 0 and i % self.poison_every == 0
            a = _send(self.http, session, i, stream=s % 2 == 0, poison=poison)
            with self._lock:
                self.answers.append(a)
            i += 1
            self.stop.wait(0.05)  # pacing: about 10 requests/s per session on a shared CPU

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)


def versions_by_session(answers: list[Answer]) -> dict[str, list[str]]:
    """Each session's versions in send order, consecutive repeats collapsed."""
    out: dict[str, list[str]] = {}
    for a in sorted(answers, key=lambda a: a.at):
        v = VERSION[PODS[a.pod]]
        seq = out.setdefault(a.session, [])
        if not seq or seq[-1] != v:
            seq.append(v)
    return out


# the acceptance scenarios (run in file order on one cluster) ----------------------------------------------------
def test_canary_steps_then_promote_under_load_lose_nothing_and_switch_each_session_at_most_once(
    rc: RolloutCluster, request: pytest.FixtureRequest
) -> None:
    with Load(rc.http, "canary") as load:
        wait_until(lambda: len(load.snapshot()) >= 2 * SESSIONS, 30, "load on blue before the rollout")
        started = rc.cli("start", MODEL, "--blue", BLUE, "--green", GREEN, "--steps", "0.25,0.5,1.0",
                         "--interval-s", "1.5", "--max-error-rate", "0.05", "--min-requests", "20")  # fmt: skip
        r0 = started["rollouts"][0]
        assert (r0["state"], r0["step"], r0["fraction"]) == ("running", 0, 0.0)
        seen_fractions: set[float] = set()
        sampling = threading.Event()

        def sample() -> None:
            # every share the router routes by, also while the test waits on a CLI call (a process start, a second
            # or more on a busy machine: a step of 1.5 s could begin and end inside one)
            while not sampling.is_set():
                with contextlib.suppress(OSError):
                    seen_fractions.add(rc.router_fraction())
                sampling.wait(0.05)

        sampler = threading.Thread(target=sample, name="fraction-sampler", daemon=True)
        sampler.start()

        def stop_sampling() -> None:
            sampling.set()
            sampler.join(10)

        request.addfinalizer(stop_sampling)  # also when an assertion fails before the end

        def at(fraction: float) -> bool:
            f = rc.router_fraction()
            seen_fractions.add(f)
            return f >= fraction

        wait_until(lambda: at(0.25), 30, "the first step at the router", interval_s=0.05)
        paused = rc.cli("pause", MODEL)["rollouts"][0]
        assert paused["state"] == "paused", paused
        held = paused["fraction"]
        hold_until = time.monotonic() + 2.5  # longer than the step interval: a paused rollout must not step
        wait_until(lambda: time.monotonic() >= hold_until and at(0.0), 10, "the pause to last", interval_s=0.1)
        assert rc.status()["fraction"] == held and rc.router_fraction() == held, "a paused rollout held its share"
        assert rc.cli("resume", MODEL)["rollouts"][0]["state"] == "running"

        def all_green() -> bool:
            return at(1.0) and rc.status()["fraction"] == 1.0

        wait_until(all_green, 60, "the rollout to step to 1.0", interval_s=0.1)
        gen_full = rc.status()["generation"]
        wait_until(lambda: rc.router_generation() >= gen_full, 10, "the router to route by the last step")
        n_before = len(load.snapshot())
        wait_until(lambda: len(load.snapshot()) >= n_before + 2 * SESSIONS, 30, "load on green at 1.0")
        promoted = rc.cli("promote", MODEL)["rollouts"][0]
        assert promoted["state"] == "promoted" and promoted["generation"] == gen_full + 1, promoted
        wait_until(lambda: rc.router_generation() >= promoted["generation"], 10, "the router to see the promotion")
        n_promoted = len(load.snapshot())
        wait_until(lambda: len(load.snapshot()) >= n_promoted + 2 * SESSIONS, 30, "load after the promotion")
        stop_sampling()
    answers = load.snapshot()
    failed = [a for a in answers if a.status != 200]
    seqs = versions_by_session(answers)
    switched = sum(1 for s in seqs.values() if s == ["v1", "v2"])
    first_green = sorted(min(a.at for a in answers if a.session == s and PODS[a.pod] == GREEN) for s in seqs)
    spread = first_green[-1] - first_green[0] if first_green else 0.0
    print(f"ROLLOUT canary: {len(answers)} requests ({sum(a.stream for a in answers)} streamed), {len(failed)} failed, "
          f"{switched}/{len(seqs)} sessions switched v1->v2 once, over {spread:.1f}s (the steps), steps seen "
          f"{sorted(seen_fractions)}")  # fmt: skip
    assert not failed, failed[:5]
    assert {0.25, 0.5} <= seen_fractions, f"the router did not route by every step: {seen_fractions}"
    for session, seq in seqs.items():
        assert seq in (["v1"], ["v1", "v2"], ["v2"]), f"{session} saw {seq}"
    assert switched >= SESSIONS // 2, seqs
    last = {s: seq[-1] for s, seq in seqs.items()}
    assert set(last.values()) == {"v2"}, "after the promotion every session is on green"


def test_rollback_command_restores_blue_for_every_key_within_one_generation(rc: RolloutCluster) -> None:
    st = rc.cli("start", MODEL, "--blue", BLUE, "--green", GREEN, "--steps", "1.0", "--interval-s", "0")
    assert st["rollouts"][0]["state"] == "running"
    wait_until(lambda: rc.status()["fraction"] == 1.0, 30, "blue-green to switch to green")
    before = rc.status()["generation"]
    wait_until(lambda: rc.router_generation() >= before, 10, "the router on green")
    assert all(_send(rc.http, f"bg-{s}", 0, s % 2 == 0).target == GREEN for s in range(SESSIONS))
    t0 = time.monotonic()
    back = rc.cli("rollback", MODEL, "--reason", "test: bad model")["rollouts"][0]
    assert back["state"] == "rolled_back" and back["generation"] == before + 1 and back["fraction"] == 0.0
    wait_until(lambda: rc.router_generation() >= back["generation"], 10, "the router to see the rollback")
    lag = time.monotonic() - t0
    lag_record = time.time() - back["changed_unix_ms"] / 1000  # from the record's write (an upper bound: polled)
    answers = [_send(rc.http, f"bg-{s}", 1, s % 2 == 0) for s in range(SESSIONS)]
    print(f"ROLLOUT rollback: generation {before} -> {back['generation']}, router routed by it {lag_record:.2f}s after "
          f"its write ({lag:.2f}s after the CLI started); {sum(a.target == BLUE for a in answers)}/{len(answers)} sessions on blue")  # fmt: skip
    assert all(a.status == 200 and a.target == BLUE and PODS[a.pod] == BLUE for a in answers), answers


def test_automatic_rollback_fires_on_an_injected_error_rate(rc: RolloutCluster) -> None:
    rc.cli("start", MODEL, "--blue", BLUE, "--green", GREEN, "--steps", "1.0", "--interval-s", "0",
           "--max-error-rate", "0.1", "--min-requests", "20", "--window-s", "10")  # fmt: skip
    wait_until(lambda: rc.status()["fraction"] == 1.0, 30, "green to take every key")
    gen_green = rc.status()["generation"]
    wait_until(lambda: rc.router_generation() >= gen_green, 10, "the router on green")
    t0_wall = time.time()
    with Load(rc.http, "slo", poison_every=3) as load:  # a third of the requests fail on green
        st = wait_until(lambda: (s := rc.status())["state"] == "rolled_back" and s, 60, "the automatic rollback")
        fired = st["changed_unix_ms"] / 1000 - t0_wall  # by the record's own time, not our polling's
        wait_until(lambda: rc.router_generation() >= st["generation"], 10, "the router to see the rollback")
        # from here the router routes by the rollback: every request sent later must be served by blue (a window
        # ending 0.5 s before the load below was counted took in requests sent before that, whenever those 32
        # answers came back within 0.5 s, and green's open breakers had answered them 503)
        t_seen = time.monotonic()
        n = len(load.snapshot())
        wait_until(lambda: len(load.snapshot()) >= n + 2 * SESSIONS, 30, "load after the rollback")
    answers = load.snapshot()
    green_errors = [a for a in answers if a.status != 200 and a.at < t_seen]
    after = [a for a in answers if a.at > t_seen]
    codes = collections.Counter(a.status for a in green_errors)
    print(f"ROLLOUT auto-rollback: fired {fired:.2f}s into a 1/3 error load ({len(green_errors)} failed requests "
          f"before it, by status {dict(codes)}); reason: {st['reason']}")  # fmt: skip
    assert "automatic rollback" in st["reason"] and "error rate" in st["reason"], st
    assert st["generation"] == gen_green + 1
    assert green_errors, "the injected errors reached the clients (green served the marked requests)"
    assert after and all(a.status == 200 and a.target == BLUE for a in after), [a for a in after if a.status != 200][:5]
