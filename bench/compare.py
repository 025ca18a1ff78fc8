"""Side-by-side benchmark: brunoise vs. peer routers on one pool of simulated runtimes, one seeded workload, one run."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from bench import peers
from bench.workload import (
    PHASE_HOT,
    PHASE_RESTART,
    PHASE_STEADY,
    PHASE_WARMUP,
    Request,
    Workload,
    WorkloadConfig,
    generate,
    summary,
    workload_oracle,
)
from brunoise.launch import LaunchError, ManagedProcess, ProcessGroup

BRUNOISE = "brunoise"
ALL_ROUTERS: tuple[str, ...] = (BRUNOISE, *peers.PEERS)
PHASES: tuple[str, ...] = (PHASE_WARMUP, PHASE_STEADY, PHASE_HOT, PHASE_RESTART)
TARGET = "bench"
MODEL = "sim"
POD_ID_HEADER = "x-brunoise-pod-id"  # set by the runtime (peers pass it through)
ROUTER_POD_HEADER = "x-brunoise-pod"  # set by brunoise-router

_M_QUERIES = "vllm:prefix_cache_queries_total"
_M_HITS = "vllm:prefix_cache_hits_total"
_M_PROMPT = "vllm:prompt_tokens_total"
_M_SUCCESS = "vllm:request_success_total"


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """The children's environment: this checkout first on PYTHONPATH (an editable install may predate its packages)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _bin(name: str) -> str:
    """An entry point of this project: next to the running interpreter first, then on PATH."""
    here = pathlib.Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"{name} not found next to {sys.executable} or on PATH; `pip install -e .` the project")
    return found


# ------------------------------------------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True, slots=True)
class BenchConfig:
    """Knobs of one comparison run (the workload's own are in ``workload``)."""

    workload: WorkloadConfig
    routers: tuple[str, ...] = ALL_ROUTERS
    pods: int = 4
    time_scale: float = 1.0
    #: KV blocks (16 tokens each) per simulated pod: small enough that the pool cannot keep every prefix everywhere.
    kv_blocks: int = 1024
    max_model_len: int = 4096
    concurrency: int = 32
    round_interval_s: float = 0.5
    request_timeout_s: float = 60.0
    #: How long the drain of a pod may take before it is stopped anyway.
    drain_timeout_s: float = 3.0
    #: Drain the peers too before a restart, through their own admin APIs (remove the worker, wait until the pod
    #: is idle; add it back once it serves again). False: peers see the pod vanish and come back.
    peer_drain: bool = True
    log_dir: str = ""


# ------------------------------------------------------------------------------------------------ pod counters


@dataclasses.dataclass(frozen=True, slots=True)
class Counters:
    """The pod counters the benchmark reads (cumulative, in tokens or requests)."""

    queries: float = 0.0
    hits: float = 0.0
    prompt_tokens: float = 0.0
    requests: float = 0.0

    def __add__(self, o: Counters) -> Counters:
        return Counters(
            self.queries + o.queries,
            self.hits + o.hits,
            self.prompt_tokens + o.prompt_tokens,
            self.requests + o.requests,
        )

    def __sub__(self, o: Counters) -> Counters:
        return Counters(
            self.queries - o.queries,
            self.hits - o.hits,
            self.prompt_tokens - o.prompt_tokens,
            self.requests - o.requests,
        )

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries > 0 else 0.0


def parse_metrics(text: str) -> Counters:
    """Sum the counters we need over all label sets of a Prometheus text exposition."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        if name in (_M_QUERIES, _M_HITS, _M_PROMPT, _M_SUCCESS):
            with contextlib.suppress(ValueError):
                sums[name] = sums.get(name, 0.0) + float(value)
    return Counters(
        sums.get(_M_QUERIES, 0.0), sums.get(_M_HITS, 0.0), sums.get(_M_PROMPT, 0.0), sums.get(_M_SUCCESS, 0.0)
    )


class Pod:
    """One simulated runtime: a stable pod id and HTTP port across restarts, counters summed across incarnations."""

    def __init__(self, index: int, cfg: BenchConfig, log_dir: pathlib.Path, assigner: str | None) -> None:
        self.index = index
        self.pod_id = f"pod-{index}"
        self.cfg = cfg
        self.log_dir = log_dir
        self.assigner = assigner
        self.proc: ManagedProcess | None = None
        self.http = ""
        self.http_port = 0
        self.incarnation = 0
        self.base = Counters()  # totals of the incarnations before the current one
        self.last = Counters()  # the current incarnation's latest scrape

    def argv(self) -> list[str]:
        c = self.cfg
        argv = [
            _bin("brunoise-runtime"), "--engine", "sim", "--pod-id", self.pod_id, "--target", TARGET,
            "--model", MODEL, "--time-scale", str(c.time_scale), "--kv-blocks", str(c.kv_blocks),
            "--max-model-len", str(c.max_model_len), "--http-port", str(self.http_port),
        ]  # fmt: skip
        if self.assigner:
            argv += ["--assigner", self.assigner]
        return argv

    def start(self, group: ProcessGroup) -> ManagedProcess:
        self.incarnation += 1
        name = f"{self.pod_id}.{self.incarnation}"
        self.proc = group.add(ManagedProcess(name, self.argv(), env=_env(), log_dir=self.log_dir).start())
        return self.proc

    def ready(self, timeout_s: float = 60.0) -> None:
        assert self.proc is not None
        addrs = self.proc.wait_ready(timeout_s)
        self.http = addrs["http"].rstrip("/")
        self.http_port = int(self.http.rsplit(":", 1)[1])

    def total(self) -> Counters:
        return self.base + self.last

    async def scrape(self, session: aiohttp.ClientSession) -> Counters:
        """Read the current incarnation's counters (keeps the last good reading when the pod does not answer)."""
        if self.proc is None or not self.proc.alive() or not self.http:
            return self.total()
        incarnation = self.incarnation
        try:
            async with session.get(f"{self.http}/metrics", timeout=aiohttp.ClientTimeout(total=3.0)) as resp:
                if resp.status == 200:
                    counters = parse_metrics(await resp.text())
                    if incarnation == self.incarnation:  # not a late answer from a pod restarted meanwhile
                        self.last = counters
        except (aiohttp.ClientError, TimeoutError):
            pass
        return self.total()

    def retire(self) -> None:
        """The current incarnation is gone: fold its last counters into the base."""
        self.base = self.base + self.last
        self.last = Counters()


# ------------------------------------------------------------------------------------------------ brunoise admin


class AssignerAdmin:
    """The few assigner admin RPCs the benchmark uses (Drain, ListPods, History, GetAssignment)."""

    def __init__(self, address: str) -> None:
        import grpc

        from brunoise.v1 import assigner_pb2_grpc

        self._channel = grpc.aio.insecure_channel(address)
        self.stub = assigner_pb2_grpc.AssignerStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close(None)

    async def drain(self, pod_id: str, undrain: bool = False) -> None:
        from brunoise.v1 import assigner_pb2

        await self.stub.Drain(assigner_pb2.DrainRequest(pod_id=pod_id, undrain=undrain), timeout=5.0)

    async def slices_held(self) -> dict[str, int]:
        from brunoise.v1 import assigner_pb2

        resp = await self.stub.ListPods(assigner_pb2.ListPodsRequest(target=TARGET), timeout=5.0)
        return {p.pod.id: p.slices_held for p in resp.pods}

    async def configure_target(self, timeout_s: float = 20.0) -> None:
        """Create the bench target with the same settings ``brunoise cluster up`` uses (retried until a leader)."""
        from brunoise.v1 import assigner_pb2, slicing_pb2

        cfg = slicing_pb2.TargetConfig(
            target=TARGET, model=MODEL, min_replicas=1, max_replicas=3, imbalance_tolerance=0.10, churn_budget=0.10,
            split_threshold=0.25, merge_threshold=0.05, dereplicate_threshold=0.05, hot_key_fraction=0.5,
            min_slices_per_pod=0, max_slices_per_pod=1000, initial_slices=64,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.stub.ConfigureTarget(assigner_pb2.ConfigureTargetRequest(config=cfg), timeout=5.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def assigned_pods(self) -> set[str]:
        from brunoise.v1 import assigner_pb2

        a = await self.stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target=TARGET), timeout=5.0)
        return {r for s in a.slices for r in s.replicas}

    async def history(self) -> list[dict[str, Any]]:
        from brunoise.v1 import assigner_pb2

        resp = await self.stub.History(assigner_pb2.HistoryRequest(target=TARGET, limit=0), timeout=10.0)
        out = []
        for e in resp.entries:
            s = e.stats
            out.append(
                {
                    "generation": e.generation, "unix_ms": e.created_unix_ms, "slices": e.slices, "moves": s.moves,
                    "splits": s.splits, "merges": s.merges, "replications": s.replications,
                    "dereplications": s.dereplications, "fills": s.fills, "churn": s.churn,
                    "imbalance": s.imbalance, "dropped_pods": s.dropped_pods,
                }
            )  # fmt: skip
        return out


# ------------------------------------------------------------------------------------------------ one router's run


@dataclasses.dataclass(slots=True)
class Result:
    """What the client saw for one request."""

    index: int
    phase: str
    status: int = 0
    error: str = ""
    ttft_s: float | None = None
    e2e_s: float | None = None
    late_s: float = 0.0
    pod: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


async def send(session: aiohttp.ClientSession, base: str, req: Request, timeout_s: float) -> Result:
    """One streaming chat completion; TTFT is the arrival of the first non-empty content delta."""
    res = Result(req.index, req.phase)
    body = {
        "model": MODEL, "messages": list(req.messages), "max_tokens": req.max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    headers = {"x-session-id": req.session_id, "content-type": "application/json"}
    t0 = time.monotonic()
    done = False
    try:
        async with session.post(
            f"{base}/v1/chat/completions", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            res.status = resp.status
            res.pod = resp.headers.get(POD_ID_HEADER) or resp.headers.get(ROUTER_POD_HEADER) or ""
            if resp.status != 200:
                res.error = f"http_{resp.status}"
                await resp.read()
                return res
            buf = b""
            async for raw in resp.content:
                buf += raw
                if not buf.endswith(b"\n"):
                    continue
                line = buf.strip()
                buf = b""
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError:
                    res.error = "bad_sse"
                    continue
                if "error" in obj:
                    res.error = "stream_error"
                    continue
                for ch in obj.get("choices") or ():
                    delta = ch.get("delta") or {}
                    if res.ttft_s is None and (delta.get("content") or ch.get("text")):
                        res.ttft_s = time.monotonic() - t0
                usage = obj.get("usage")
                if usage:
                    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    res.completion_tokens = int(usage.get("completion_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    res.cached_tokens = int(details.get("cached_tokens") or 0)
    except TimeoutError:
        res.error = "timeout"
    except aiohttp.ClientError as exc:
        res.error = type(exc).__name__
    res.e2e_s = time.monotonic() - t0
    if not res.error and not done:
        res.error = "truncated_stream"
    return res


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[k]


class RouterRun:
    """Start a fresh pool (and the router under test), replay the workload through it, and measure."""

    def __init__(self, name: str, cfg: BenchConfig, wl: Workload, log_dir: pathlib.Path) -> None:
        self.name = name
        self.oracle = workload_oracle(wl)
        self.cfg = cfg
        self.wl = wl
        self.log_dir = log_dir
        self.group = ProcessGroup()
        self.pods: list[Pod] = []
        self.admin: AssignerAdmin | None = None
        self.base_url = ""
        self.restart_log: list[dict[str, Any]] = []
        self.snapshots: dict[str, list[Counters]] = {}

    # -- processes --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        assigner_addr: str | None = None
        if self.name == BRUNOISE:
            a = self.group.add(
                ManagedProcess(
                    "assigner",
                    [_bin("brunoise-assigner"), "--store", "embedded", "--port", "0",
                     "--round-interval", str(self.cfg.round_interval_s), "--report-interval", "0.5"],
                    env=_env(),
                    log_dir=self.log_dir,
                ).start()
            )  # fmt: skip
            assigner_addr = (await asyncio.to_thread(a.wait_ready, 60.0))["grpc"]
            self.admin = AssignerAdmin(assigner_addr)
            await self.admin.configure_target()
        self.pods = [Pod(i, self.cfg, self.log_dir, assigner_addr) for i in range(self.cfg.pods)]
        for p in self.pods:
            p.start(self.group)
        await asyncio.gather(*(asyncio.to_thread(p.ready) for p in self.pods))
        if self.name == BRUNOISE:
            assert self.admin is not None and assigner_addr is not None
            await self._wait_registered_all({p.pod_id for p in self.pods})
            r = self.group.add(
                ManagedProcess(
                    "router", [_bin("brunoise-router"), "--assigner", assigner_addr, "--http-port", "0", "--grpc-port", "0", "--log-level", "warning", "--wait-ready-s", "15"],
                    env=_env(),
                    log_dir=self.log_dir,
                ).start()
            )  # fmt: skip
            self.base_url = (await asyncio.to_thread(r.wait_ready, 60.0))["http"].rstrip("/")
        else:
            spec = peers.PEERS[self.name]
            proc, self.base_url = await asyncio.to_thread(
                peers.start_peer, spec, [p.http for p in self.pods], log_dir=self.log_dir
            )
            self.group.add(proc)
        await self._wait_routes()

    async def _wait_registered_all(self, pod_ids: set[str], timeout_s: float = 30.0) -> None:
        """Every pod is registered with the assigner and every slice has a replica.

        Which pods hold slices is the policy's business: with no load yet they may sit on the first pods that
        registered until the warm-up's load makes the rounds spread them (that is part of what is measured)."""
        assert self.admin is not None
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                seen = set(await self.admin.slices_held())
                if pod_ids <= seen and await self.admin.assigned_pods():
                    return
            await asyncio.sleep(0.2)
        raise LaunchError(f"the assigner lists pods {sorted(seen)}, not all of {sorted(pod_ids)}")

    async def _wait_routes(self, timeout_s: float = 30.0) -> None:
        """One tiny request through the router must succeed (it is not part of the measured workload)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                try:
                    async with s.post(
                        f"{self.base_url}/v1/chat/completions", json=body, headers={"x-session-id": "warmup"},
                        timeout=aiohttp.ClientTimeout(total=5),
                    ) as resp:  # fmt: skip
                        last = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.3)
        raise LaunchError(f"{self.name}: no successful request through {self.base_url} in {timeout_s:.0f}s ({last})")

    async def stop(self) -> None:
        # stop the processes first and synchronously (this also runs while the run is being cancelled), all at
        # once: each by its PID (SIGTERM, then SIGKILL), in parallel threads; exited ones are left alone
        procs = [p for p in self.group.procs if p.alive()]
        if procs:
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(procs)) as pool:
                list(pool.map(lambda p: p.stop(), procs))
        for p in reversed(self.group.procs):
            if p.alive():
                p.stop()
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()

    # -- restarts ---------------------------------------------------------------------------------------------

    async def restart_pod(self, pod: Pod, session: aiohttp.ClientSession) -> dict[str, Any]:
        """Drain (brunoise: via the assigner), stop, and start the pod again with the same id and HTTP port."""
        t0 = time.monotonic()
        rec: dict[str, Any] = {"pod": pod.pod_id}
        if self.admin is not None:
            try:
                await self.admin.drain(pod.pod_id)
                deadline = time.monotonic() + self.cfg.drain_timeout_s
                while time.monotonic() < deadline:
                    held = await self.admin.slices_held()
                    if held.get(pod.pod_id, 0) == 0:
                        break
                    await asyncio.sleep(0.1)
                rec["drained_s"] = round(time.monotonic() - t0, 3)
                rec["slices_left"] = (await self.admin.slices_held()).get(pod.pod_id, 0)
                # requests already on the pod finish before it stops (new ones go elsewhere)
                rec["busy_at_drain"] = await self._wait_idle(pod, session, time.monotonic() + self.cfg.drain_timeout_s)
                rec["idle_s"] = round(time.monotonic() - t0, 3)
            except Exception as exc:
                rec["drain_error"] = repr(exc)
        elif self.cfg.peer_drain:
            spec = peers.PEERS[self.name]
            try:
                await peers.remove_worker(spec, self.base_url, pod.http, session)
                rec["drained_s"] = round(time.monotonic() - t0, 3)
                rec["busy_at_drain"] = await self._wait_idle(pod, session, time.monotonic() + self.cfg.drain_timeout_s)
                rec["idle_s"] = round(time.monotonic() - t0, 3)
            except Exception as exc:
                rec["drain_error"] = repr(exc)
        await pod.scrape(session)
        assert pod.proc is not None
        await asyncio.to_thread(pod.proc.stop)
        rec["stopped_s"] = round(time.monotonic() - t0, 3)
        pod.retire()
        pod.start(self.group)
        await asyncio.to_thread(pod.ready)
        rec["ready_s"] = round(time.monotonic() - t0, 3)
        if self.admin is not None:
            try:
                await self._wait_registered(pod)
                await self.admin.drain(pod.pod_id, undrain=True)
            except Exception as exc:
                rec["undrain_error"] = repr(exc)
        elif self.cfg.peer_drain:
            try:
                await peers.add_worker(peers.PEERS[self.name], self.base_url, pod.http, session)
            except Exception as exc:
                rec["undrain_error"] = repr(exc)
        rec["down_s"] = round(time.monotonic() - t0, 3)
        return rec

    async def _wait_idle(self, pod: Pod, session: aiohttp.ClientSession, deadline: float) -> float:
        """Wait until the pod runs no request (or the deadline); returns the requests it had when first asked."""
        first: float | None = None
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{pod.http}/metrics", timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                break
            busy = 0.0
            for line in text.splitlines():
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                    busy += float(line.rpartition(" ")[2])
            if first is None:
                first = busy
            if busy == 0:
                break
            await asyncio.sleep(0.05)
        return first or 0.0

    async def _wait_registered(self, pod: Pod, timeout_s: float = 10.0) -> None:
        assert self.admin is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if pod.pod_id in await self.admin.slices_held():
                    return
            await asyncio.sleep(0.1)

    # -- the measured replay ----------------------------------------------------------------------------------

    async def replay(self) -> tuple[list[Result], float]:
        cfg = self.cfg
        sem = asyncio.Semaphore(cfg.concurrency)
        results: list[Result] = []
        connector = aiohttp.TCPConnector(limit=cfg.concurrency + 8, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session, aiohttp.ClientSession() as admin_session:
            await asyncio.gather(*(p.scrape(admin_session) for p in self.pods))
            start = time.monotonic()

            async def at(t: float) -> None:
                delay = start + t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

            async def run_session(reqs: Sequence[Request]) -> None:
                for r in reqs:
                    await at(r.t)
                    async with sem:
                        late = time.monotonic() - (start + r.t)
                        res = await send(session, self.base_url, r, cfg.request_timeout_s)
                        res.late_s = late
                        results.append(res)

            async def snapshot(name: str, t: float) -> None:
                await at(t)
                self.snapshots[name] = list(await asyncio.gather(*(p.scrape(admin_session) for p in self.pods)))

            async def keep_scraping(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    await asyncio.gather(*(p.scrape(admin_session) for p in self.pods))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)

            async def restarts() -> None:
                for ev in self.wl.restarts:
                    if ev.pod >= len(self.pods):
                        continue
                    await at(ev.t)
                    t_ev = time.monotonic() - start
                    rec = await self.restart_pod(self.pods[ev.pod], admin_session)
                    rec["t"] = round(t_ev, 3)
                    self.restart_log.append(rec)

            stop = asyncio.Event()
            scraper = asyncio.create_task(keep_scraping(stop))
            snaps = [asyncio.create_task(snapshot(ph.name, ph.start)) for ph in self.wl.phases]
            tasks = [asyncio.create_task(run_session(s.requests)) for s in self.wl.sessions]
            tasks.append(asyncio.create_task(restarts()))
            await asyncio.gather(*tasks, *snaps)
            wall = time.monotonic() - start
            stop.set()
            await scraper
            self.snapshots["end"] = list(await asyncio.gather(*(p.scrape(admin_session) for p in self.pods)))
        return results, wall

    # -- metrics ----------------------------------------------------------------------------------------------

    def _pods_per_session(self, results: Sequence[Result]) -> float | None:
        """Mean number of distinct pods that served one session's turns (from the pod-id response header;
        None when the router does not pass that header through)."""
        by_index = {r.index: r for r in results}
        spans: list[int] = []
        for s in self.wl.sessions:
            pods = {by_index[q.index].pod for q in s.requests if q.index in by_index and by_index[q.index].pod}
            if pods:
                spans.append(len(pods))
        return sum(spans) / len(spans) if spans else None

    def summarize(
        self, results: list[Result], wall: float, history: list[dict[str, Any]], t_start_ms: int
    ) -> dict[str, Any]:
        ok = [r for r in results if not r.error]
        errors: dict[str, int] = {}
        for r in results:
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
        ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
        first = self.snapshots.get(self.wl.phases[0].name, [Counters()] * len(self.pods))
        end = self.snapshots["end"]
        per_pod = [e - f for e, f in zip(end, first, strict=True)]
        total = sum(per_pod, Counters())
        req_loads = [c.requests for c in per_pod]
        tok_loads = [c.prompt_tokens for c in per_pod]
        mean_req = sum(req_loads) / len(req_loads) if req_loads else 0.0
        mean_tok = sum(tok_loads) / len(tok_loads) if tok_loads else 0.0
        # per-phase deltas of the pods' own counters between the phase-boundary snapshots
        bounds = [ph.name for ph in self.wl.phases] + ["end"]
        per_phase: dict[str, dict[str, Any]] = {}
        for a, b in itertools.pairwise(bounds):
            if a not in self.snapshots or b not in self.snapshots:
                continue
            d = sum((y - x for x, y in zip(self.snapshots[a], self.snapshots[b], strict=True)), Counters())
            ph_ok = [r for r in ok if r.phase == a]
            ph_ttft = [r.ttft_s for r in ph_ok if r.ttft_s is not None]
            q_client = sum(r.prompt_tokens for r in ph_ok)
            per_phase[a] = {
                "hit_rate": d.hit_rate,
                "hit_rate_client": (sum(r.cached_tokens for r in ph_ok) / q_client) if q_client else None,
                "requests": len([r for r in results if r.phase == a]),
                "errors": len([r for r in results if r.phase == a and r.error]),
                "ttft_p50_ms": _ms(_pct(ph_ttft, 0.5)),
                "ttft_p99_ms": _ms(_pct(ph_ttft, 0.99)),
            }
        q_client = sum(r.prompt_tokens for r in ok)
        steady = per_phase.get(PHASE_STEADY, {}).get("hit_rate") or 0.0
        restart = per_phase.get(PHASE_RESTART, {}).get("hit_rate")
        o_steady = self.oracle.phase_hit_rate(PHASE_STEADY)
        o_restart = self.oracle.phase_hit_rate(PHASE_RESTART)
        # each phase's hit rate as a fraction of what one infinite cache gets on the same requests, so the
        # restart phase's longer histories do not flatter it against the steady phase
        restart_rel = (
            (restart / o_restart) / (steady / o_steady)
            if restart is not None and steady and o_steady and o_restart
            else None
        )
        out: dict[str, Any] = {
            "router": self.name,
            "requests": len(results),
            "ok": len(ok),
            "errors": errors,
            "error_count": len(results) - len(ok),
            "hit_rate": total.hit_rate,
            "hit_rate_client": (sum(r.cached_tokens for r in ok) / q_client) if q_client else None,
            "ttft_p50_ms": _ms(_pct(ttfts, 0.5)),
            "ttft_p99_ms": _ms(_pct(ttfts, 0.99)),
            "e2e_p50_ms": _ms(_pct([r.e2e_s for r in ok if r.e2e_s is not None], 0.5)),
            "late_p99_ms": _ms(_pct([r.late_s for r in results], 0.99)),
            "wall_s": round(wall, 3),
            "throughput_rps": len(ok) / wall if wall > 0 else 0.0,
            "throughput_prompt_tok_s": total.prompt_tokens / wall if wall > 0 else 0.0,
            "output_tok_s": sum(r.completion_tokens for r in ok) / wall if wall > 0 else 0.0,
            "pods_per_session": self._pods_per_session(results),
            "pod_requests": req_loads,
            "pod_prompt_tokens": tok_loads,
            "load_max_over_mean_requests": (max(req_loads) / mean_req) if mean_req else None,
            "load_max_over_mean_tokens": (max(tok_loads) / mean_tok) if mean_tok else None,
            "per_phase": per_phase,
            "restart_hit_rate_vs_steady_raw": (restart / steady) if restart is not None and steady else None,
            "restart_hit_rate_vs_steady": restart_rel,
            "restarts": self.restart_log,
        }
        if self.name == BRUNOISE:
            rounds = [h for h in history if h["unix_ms"] >= t_start_ms]
            n_rounds = max(1, round(wall / self.cfg.round_interval_s))
            moves = [h["moves"] for h in rounds]
            out["assigner"] = {
                "generations": len(rounds),
                "rounds_estimated": n_rounds,
                "moves_total": sum(moves),
                "moves_per_round": sum(moves) / n_rounds,
                "moves_per_generation_max": max(moves, default=0),
                "splits": sum(h["splits"] for h in rounds),
                "merges": sum(h["merges"] for h in rounds),
                "replications": sum(h["replications"] for h in rounds),
                "dereplications": sum(h["dereplications"] for h in rounds),
                "churn_mean": (sum(h["churn"] for h in rounds) / len(rounds)) if rounds else 0.0,
                "history": rounds,
            }
        return out


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 2)


async def run_router(name: str, cfg: BenchConfig, wl: Workload, log_root: pathlib.Path) -> dict[str, Any]:
    """Fresh pool + router, the replay, the numbers; processes are stopped whatever happens."""
    log_dir = log_root / name
    log_dir.mkdir(parents=True, exist_ok=True)
    run = RouterRun(name, cfg, wl, log_dir)
    t_setup = time.monotonic()
    try:
        await run.start()
        setup_s = time.monotonic() - t_setup
        t_start_ms = int(time.time() * 1000)
        results, wall = await run.replay()
        history: list[dict[str, Any]] = []
        if run.admin is not None:
            with contextlib.suppress(Exception):
                history = await run.admin.history()
        out = run.summarize(results, wall, history, t_start_ms)
        out["setup_s"] = round(setup_s, 3)
        out["logs"] = str(log_dir)
        return out
    finally:
        await run.stop()


# ------------------------------------------------------------------------------------------------ report


COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("router", "router", "s"),
    ("hit", "hit_rate", "pct"),
    ("steady", "per_phase.steady.hit_rate", "pct"),
    ("hot", "per_phase.hot_tenant.hit_rate", "pct"),
    ("restart", "per_phase.restart.hit_rate", "pct"),
    ("rst/stdy", "restart_hit_rate_vs_steady", "f2"),
    ("ttft50", "ttft_p50_ms", "ms"),
    ("ttft99", "ttft_p99_ms", "ms"),
    ("req/s", "throughput_rps", "f1"),
    ("max/mean", "load_max_over_mean_tokens", "f2"),
    ("pods/sess", "pods_per_session", "f2"),
    ("errors", "error_count", "d"),
    ("moves/rnd", "assigner.moves_per_round", "f2"),
)


def _get(d: Mapping[str, Any], path: str) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "pct":
        return f"{100.0 * v:.1f}%"
    if kind == "ms":
        return f"{v:.0f}"
    if kind == "f1":
        return f"{v:.1f}"
    if kind == "f2":
        return f"{v:.2f}"
    return str(v)


def table(report: Mapping[str, Any]) -> str:
    """The comparison as a fixed-width text table, the oracle (one infinite shared cache) as the last row."""
    rows = [[h for h, _, _ in COLUMNS]]
    failed: list[str] = []
    for r in report["routers"]:
        if "error" in r:
            failed.append(f"{r['router']}: FAILED: " + " ".join(r["error"].split())[:200])
            continue
        rows.append([_fmt(_get(r, path), kind) for _, path, kind in COLUMNS])
    o = report["oracle"]
    oracle_row = ["oracle", _fmt(o["hit_rate"], "pct")] + [
        _fmt(o["per_phase"].get(p), "pct") for p in (PHASE_STEADY, PHASE_HOT, PHASE_RESTART)
    ]
    rows.append(oracle_row + [""] * (len(COLUMNS) - len(oracle_row)))
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0 or n == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + failed)


def chart(report: Mapping[str, Any], path: pathlib.Path) -> None:
    """Grouped bars: hit rate per phase (with the oracle), TTFT p50/p99, pod load max/mean, errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report["routers"] if "error" not in r]
    if not runs:
        return
    names = [r["router"] for r in runs]
    x = list(range(len(runs)))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))

    def bars(ax: Any, series: Sequence[tuple[str, Sequence[float]]], title: str, ylabel: str) -> None:
        n = len(series)
        width = 0.8 / n
        for k, (label, vals) in enumerate(series):
            ax.bar([i + (k - (n - 1) / 2) * width for i in x], vals, width, label=label)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        top = max((v for _, vals in series for v in vals), default=0.0)
        ax.set_ylim(0, max(top, 1.0) * 1.3)  # head room for the legend above the bars
        ax.legend(fontsize=7, loc="upper center", ncol=len(series), framealpha=0.9)

    hit = [("overall", [100 * r["hit_rate"] for r in runs])]
    hit += [(p, [100 * (_get(r, f"per_phase.{p}.hit_rate") or 0.0) for r in runs]) for p in PHASES]
    bars(axes[0][0], hit, "prefix-cache hit rate (pods' counters)", "%")
    axes[0][0].axhline(100 * report["oracle"]["hit_rate"], color="black", linestyle="--", linewidth=1)
    axes[0][0].text(len(runs) - 0.5, 100 * report["oracle"]["hit_rate"], " oracle", va="bottom", ha="right", fontsize=8)
    bars(
        axes[0][1],
        [("p50", [r["ttft_p50_ms"] or 0 for r in runs]), ("p99", [r["ttft_p99_ms"] or 0 for r in runs])],
        "TTFT (client, streaming)",
        "ms",
    )
    bars(
        axes[1][0],
        [
            ("prompt tokens", [r["load_max_over_mean_tokens"] or 0 for r in runs]),
            ("requests", [r["load_max_over_mean_requests"] or 0 for r in runs]),
        ],
        "pod load max/mean",
        "ratio",
    )

    def err_pct(r: Mapping[str, Any], phase: str | None) -> float:
        if phase is None:
            return 100.0 * float(r["error_count"]) / max(1, int(r["requests"]))
        ph = r["per_phase"].get(phase) or {}
        return 100.0 * float(ph.get("errors") or 0) / max(1, int(ph.get("requests") or 0))

    bars(
        axes[1][1],
        [
            ("all phases", [err_pct(r, None) for r in runs]),
            ("restart phase", [err_pct(r, PHASE_RESTART) for r in runs]),
        ],
        "failed requests",
        "% of requests",
    )
    fig.suptitle(f"brunoise bench: {report['bench']['pods']} sim pods, seed {report['workload']['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ CLI


def build_config(args: argparse.Namespace) -> BenchConfig:
    if args.quick:
        wl = WorkloadConfig(
            seed=args.seed, warmup_s=2.0, steady_s=2.5, hot_s=2.5, restart_s=5.0, session_rate=2.0, think_s=0.6
        )
    else:
        wl = WorkloadConfig(seed=args.seed)
    over = {k: v for k, v in (("warmup_s", args.warmup_s), ("steady_s", args.steady_s), ("hot_s", args.hot_s), ("restart_s", args.restart_s),
                              ("session_rate", args.session_rate), ("tenants", args.tenants)) if v is not None}  # fmt: skip
    wl = dataclasses.replace(wl, pods=args.pods, **over)
    routers = tuple(r.strip() for r in args.routers.split(",") if r.strip())
    unknown = [r for r in routers if r not in ALL_ROUTERS]
    if unknown:
        raise SystemExit(f"unknown router(s) {unknown}; choose from {', '.join(ALL_ROUTERS)}")
    return BenchConfig(
        workload=wl, routers=routers, pods=args.pods, time_scale=args.time_scale, kv_blocks=args.kv_blocks,
        concurrency=args.concurrency, round_interval_s=args.round_interval, log_dir=args.log_dir or "",
        peer_drain=args.peer_drain,
    )  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    p.add_argument("--routers", default=",".join(ALL_ROUTERS), help=f"comma-separated, from: {', '.join(ALL_ROUTERS)}")
    p.add_argument("--pods", type=int, default=4, help="simulated runtimes in the pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a ~1 minute run: short phases")
    p.add_argument("--time-scale", type=float, default=1.0, help="sim time / wall time (>1 runs the engines faster)")
    p.add_argument("--kv-blocks", type=int, default=1024, help="KV blocks (16 tokens) per simulated pod")
    p.add_argument("--concurrency", type=int, default=32, help="most requests in flight at once")
    p.add_argument("--round-interval", type=float, default=0.5, help="brunoise assigner round interval, seconds")
    p.add_argument("--warmup-s", type=float, default=None, help="cold-start phase (not the steady reference)")
    p.add_argument("--steady-s", type=float, default=None)
    p.add_argument("--hot-s", type=float, default=None)
    p.add_argument("--restart-s", type=float, default=None)
    p.add_argument("--session-rate", type=float, default=None, help="new sessions per second (steady)")
    p.add_argument("--tenants", type=int, default=None)
    p.add_argument(
        "--peer-drain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before restarting a pod, take it out of a peer router through the peer's admin API and put it back "
        "after (brunoise pods are always drained through the assigner)",
    )
    p.add_argument("--out", default="out/bench/results.json", help="JSON results (/out/ is gitignored)")
    p.add_argument("--chart", default=None, help="PNG chart (default: --out with .png)")
    p.add_argument("--log-dir", default=None, help="process logs (default: a temporary directory, kept)")
    return p.parse_args(argv)


def save(path: pathlib.Path, report: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2))


async def amain(cfg: BenchConfig, out: pathlib.Path, chart_path: pathlib.Path) -> dict[str, Any]:
    wl = generate(cfg.workload)
    orc = workload_oracle(wl)
    log_root = pathlib.Path(cfg.log_dir) if cfg.log_dir else pathlib.Path(tempfile.mkdtemp(prefix="brunoise-bench-"))
    missing = peers.peers_available()
    report: dict[str, Any] = {
        "bench": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workload"},
        "workload": {**dataclasses.asdict(cfg.workload), **summary(wl)},
        "oracle": {"hit_rate": orc.hit_rate, "per_phase": {p: orc.phase_hit_rate(p) for p in orc.per_phase}},
        "routers": [],
        "logs": str(log_root),
    }
    print(
        f"workload: {len(wl.requests)} requests in {len(wl.sessions)} sessions over {cfg.workload.duration_s:.0f}s, "
        f"oracle hit rate {100 * orc.hit_rate:.1f}%; logs in {log_root}",
        flush=True,
    )
    for name in cfg.routers:
        spec = peers.PEERS.get(name)
        if spec is not None and spec.program in missing:
            report["routers"].append({"router": name, "error": missing[spec.program]})
            print(f"[{name}] skipped: {missing[spec.program]}", flush=True)
            continue
        t0 = time.monotonic()
        print(f"[{name}] starting {cfg.pods} pods + router ...", flush=True)
        try:
            res = await run_router(name, cfg, wl, log_root)
        except Exception as exc:
            res = {"router": name, "error": f"{type(exc).__name__}: {exc}"}
            print(f"[{name}] FAILED: {res['error'][:2000]}", flush=True)
        else:
            print(
                f"[{name}] done in {time.monotonic() - t0:.0f}s: hit {100 * res['hit_rate']:.1f}%, "
                f"ttft p50 {res['ttft_p50_ms']} ms, errors {res['error_count']}",
                flush=True,
            )
        report["routers"].append(res)
        save(out, report)  # keep partial results
    save(out, report)
    try:
        chart(report, chart_path)
    except Exception as exc:  # a chart is a convenience; the JSON and the table are the result
        print(f"chart failed: {exc}", flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    out = pathlib.Path(args.out)
    chart_path = pathlib.Path(args.chart) if args.chart else out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BRUNOISE_LOG_LEVEL", "WARNING")
    # SIGTERM unwinds like Ctrl-C, so every started process is stopped by the ``finally`` blocks
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = asyncio.run(amain(cfg, out, chart_path))
    print(f"\nresults: {out}  chart: {chart_path}\n")
    print(table(report))
    return 0 if all("error" not in r for r in report["routers"]) else 1


if __name__ == "__main__":
    sys.exit(main())
