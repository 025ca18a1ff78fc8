"""Side-by-side benchmark: brunoise vs. peer routers on fresh pools of simulated runtimes, per named workload.

The run lives here (pools, routers, replay, measurement); the table, verdict, chart and JSON in ``bench.report``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from bench import ablation, peers, presets, report
from bench.client import Result, send
from bench.metrics import Counters, InflightSample, inflight_stats, moves_per_round, ms, pct, sticky_inflight_best
from bench.pods import MODEL, AssignerAdmin, Pod, PodSizing, child_env, entry_point
from bench.workload import (
    PHASE_HOT,
    PHASE_RESTART,
    PHASE_STEADY,
    PHASE_WARMUP,
    Request,
    Workload,
    WorkloadConfig,
    generate,
    phase_at,
    pool_lru,
    relative_restart,
    restart_vs_steady,
    sent_oracle,
    summary,
    workload_oracle,
)
from sharder.launch import LaunchError, ManagedProcess, ProcessGroup, sigterm_unwinds

BRUNOISE = "brunoise"
ALL_ROUTERS: tuple[str, ...] = (BRUNOISE, *peers.PEERS)
PHASES: tuple[str, ...] = (PHASE_WARMUP, PHASE_STEADY, PHASE_HOT, PHASE_RESTART)


# ------------------------------------------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """One named workload of a run: its generator config and the pods it runs on."""

    name: str
    workload: WorkloadConfig
    kv_blocks: int
    max_model_len: int


#: The pods' KV connector bandwidth by default, GB/s (``BenchConfig.kv_transfer_gb_per_s``).
KV_TRANSFER_GB_PER_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """One row: a router, and for brunoise the router knobs and target-config overrides it runs with."""

    label: str
    router: str
    router_knobs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    target_config: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ablation: str = ""
    #: The pods get the run's KV connector (False: none, so warm-ups prefill).
    kv_transfer: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class BenchConfig:
    """Knobs of one comparison run (each workload's own are in ``workloads``)."""

    workloads: tuple[WorkloadSpec, ...]
    routers: tuple[str, ...] = ALL_ROUTERS
    pods: int = 4
    time_scale: float = 1.0
    concurrency: int = 32
    round_interval_s: float = 0.5
    request_timeout_s: float = 60.0
    #: How long the drain of a pod may take before it is stopped anyway (a safety net: a brunoise restart waits like
    #: ``brunoise drain --wait``, which ends once the replacements are warm or past ``warm_deadline_s``).
    drain_timeout_s: float = 20.0
    #: Drain the peers too before a restart, through their own admin APIs (remove the worker, wait until the pod
    #: is idle; add it back once it serves again). False: peers see the pod vanish and come back.
    peer_drain: bool = True
    #: How often every pod's running + waiting requests are sampled (time-averaged in-flight load).
    inflight_interval_s: float = 0.1
    #: The hot phase's in-flight balance is measured from this many assigner rounds after the phase starts.
    hot_settle_rounds: int = 3
    #: Every pod's KV connector, GB/s (0: none): 10 GB/s is a 100 Gb/s NIC at ~80 %, NIXL over RDMA. Only brunoise's
    #: warm-ups use it (the peers do not move KV), so it changes no peer's figures.
    kv_transfer_gb_per_s: float = KV_TRANSFER_GB_PER_S
    #: Router knobs and target-config overrides of every brunoise row (ablation rows add their own on top).
    router_knobs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    target_config: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ablations: tuple[str, ...] = ()
    log_dir: str = ""
    #: Run every row this many times (each round of rows in the same order, so slow minutes of a shared machine fall
    #: on every router alike); the table and the verdict take each figure's median (``report.median_rows``).
    repeat: int = 1

    def variants(self) -> list[Variant]:
        """The rows of every workload: the routers, then one brunoise row per ablation."""
        rows = [
            Variant(r, r, self.router_knobs, self.target_config) if r == BRUNOISE else Variant(r, r)
            for r in self.routers
        ]
        for a in ablation.select(",".join(self.ablations)):
            rows.append(
                Variant(
                    f"{BRUNOISE}-{a.name}",
                    BRUNOISE,
                    {**self.router_knobs, **a.router_knobs},
                    {**self.target_config, **a.target_config},
                    a.name,
                    a.kv_transfer,
                )
            )
        return rows


# ------------------------------------------------------------------------------------------------ one router's run


def pods_per_session(wl: Workload, results: Sequence[Result], *, skip_restart: bool = True) -> float | None:
    """Mean number of distinct pods that served one session's turns (from the pod-id response header; None when
    the router does not pass that header through). With ``skip_restart`` the turns sent in the rolling-restart
    phase are left out: every router must move a session whose pod restarts, so they say nothing about the
    router's own hopping (the whole-run figure is kept in the JSON as ``pods_per_session_all``). A turn's phase is
    the one it was sent in (``Result.phase``), not the one it was planned in: a session behind its schedule sends
    turns planned before the restarts while pods restart."""
    by_index = {r.index: r for r in results}
    spans: list[int] = []
    for s in wl.sessions:
        pods = {
            res.pod
            for q in s.requests
            if (res := by_index.get(q.index)) is not None
            and res.pod
            and not (skip_restart and res.phase == PHASE_RESTART)
        }
        if pods:
            spans.append(len(pods))
    return sum(spans) / len(spans) if spans else None


class RouterRun:
    """Start a fresh pool (and the router under test), replay the workload through it, and measure."""

    def __init__(
        self, variant: Variant, cfg: BenchConfig, spec: WorkloadSpec, wl: Workload, log_dir: pathlib.Path
    ) -> None:
        self.variant = variant
        self.name = variant.router
        self.oracle = workload_oracle(wl)
        self.cfg = cfg
        gbps = cfg.kv_transfer_gb_per_s if variant.kv_transfer else 0.0
        self.sizing = PodSizing(spec.kv_blocks, spec.max_model_len, cfg.time_scale, gbps)
        self.wl = wl
        self.log_dir = log_dir
        self.group = ProcessGroup()
        self.pods: list[Pod] = []
        self.admin: AssignerAdmin | None = None
        self.base_url = ""
        self.restart_log: list[dict[str, Any]] = []
        self.history_seen: dict[int, dict[str, Any]] = {}  # the assigner's generations, by number, read during the run
        self.snapshots: dict[str, list[Counters]] = {}
        self.inflight: list[InflightSample] = []
        self.start_unix_ms = 0
        self.router_argv: list[str] = []

    # -- processes --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        assigner_addr: str | None = None
        if self.name == BRUNOISE:
            a = self.group.add(
                ManagedProcess(
                    "assigner",
                    [entry_point("brunoise-assigner"), "--store", "embedded", "--port", "0",
                     "--round-interval", str(self.cfg.round_interval_s), "--report-interval", "0.5"],
                    env=child_env(),
                    log_dir=self.log_dir,
                ).start()
            )  # fmt: skip
            assigner_addr = (await asyncio.to_thread(a.wait_ready, 60.0))["grpc"]
            self.admin = AssignerAdmin(assigner_addr)
            await self.admin.configure_target(self.variant.target_config)
        self.pods = [Pod(i, self.sizing, self.log_dir, assigner_addr) for i in range(self.cfg.pods)]
        for p in self.pods:
            p.start(self.group)
        await asyncio.gather(*(asyncio.to_thread(p.ready) for p in self.pods))
        if self.name == BRUNOISE:
            assert self.admin is not None and assigner_addr is not None
            await self._wait_registered_all({p.pod_id for p in self.pods})
            self.router_argv = [
                entry_point("brunoise-router"), "--assigner", assigner_addr, "--http-port", "0", "--grpc-port", "0",
                "--log-level", "warning", "--wait-ready-s", "15", *ablation.router_knob_argv(self.variant.router_knobs),
            ]  # fmt: skip
            r = self.group.add(
                ManagedProcess(
                    "router", self.router_argv,
                    env=child_env(),
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
        # once: each by its PID (SIGTERM, then SIGKILL); exited ones are left alone
        self.group.stop_together()
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
                # as an operator's `brunoise drain --wait`: until the pod holds no slice, not even one it is leaving
                # (it stays leaving while a replacement warms from its prompts) and runs nothing
                deadline = time.monotonic() + self.cfg.drain_timeout_s
                while (left := await self.admin.drain_progress(pod.pod_id)) != (0, 0, 0):
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(0.1)
                rec["drained_s"] = round(time.monotonic() - t0, 3)
                rec["slices_left"] = left[0]
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

    async def read_history(self) -> list[dict[str, Any]]:
        """Add the assigner's kept generations to those read before (it keeps the last 100); every one seen so
        far, oldest first. A failed read adds nothing."""
        if self.admin is not None:
            with contextlib.suppress(Exception):
                for h in await self.admin.history():
                    self.history_seen[h["generation"]] = h
        return sorted(self.history_seen.values(), key=lambda h: h["generation"])

    async def _wait_registered(self, pod: Pod, timeout_s: float = 10.0) -> None:
        """Wait until the pod's new incarnation is registered (its own address, not the stopped one's registration,
        which would otherwise be undrained and given slices no process serves)."""
        assert self.admin is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if (await self.admin.registrations()).get(pod.pod_id) == pod.grpc:
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
            self.start_unix_ms = int(time.time() * 1000)

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
                        # the phase it was sent in, not the one it was planned in: the phases' hit rates, the
                        # restart phase's exclusions and the pods' phase snapshots all go by the clock
                        res.sent_s = r.t + late
                        res.phase = phase_at(self.wl.phases, res.sent_s)
                        results.append(res)

            async def snapshot(name: str, t: float) -> None:
                await at(t)
                self.snapshots[name] = list(await asyncio.gather(*(p.scrape(admin_session) for p in self.pods)))

            async def keep_scraping(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    await asyncio.gather(*(p.scrape(admin_session) for p in self.pods))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)

            async def sample_inflight(stop: asyncio.Event) -> None:
                async with aiohttp.ClientSession() as s:
                    while not stop.is_set():
                        t = time.monotonic() - start
                        values = await asyncio.gather(*(p.inflight(s) for p in self.pods))
                        self.inflight.append((round(t, 3), values))
                        delay = start + t + cfg.inflight_interval_s - time.monotonic()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), max(0.0, delay))

            async def keep_history(stop: asyncio.Event) -> None:
                """The assigner keeps its last 100 generations only, and warm-up marks clearing are generations too:
                read the history every 2 s during the run and keep every generation seen."""
                while not stop.is_set():
                    await self.read_history()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 2.0)

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
            sampler = asyncio.create_task(sample_inflight(stop))
            historian = asyncio.create_task(keep_history(stop))
            snaps = [asyncio.create_task(snapshot(ph.name, ph.start)) for ph in self.wl.phases]
            tasks = [asyncio.create_task(run_session(s.requests)) for s in self.wl.sessions]
            tasks.append(asyncio.create_task(restarts()))
            await asyncio.gather(*tasks, *snaps)
            wall = time.monotonic() - start
            stop.set()
            await scraper
            await historian
            await sampler
            self.snapshots["end"] = list(await asyncio.gather(*(p.scrape(admin_session) for p in self.pods)))
        return results, wall

    # -- metrics ----------------------------------------------------------------------------------------------

    def summarize(self, results: list[Result], wall: float, history: list[dict[str, Any]]) -> dict[str, Any]:
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
        spans = {ph.name: (ph.start, ph.end) for ph in self.wl.phases}
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
                "ttft_p50_ms": ms(pct(ph_ttft, 0.5)),
                "ttft_p99_ms": ms(pct(ph_ttft, 0.99)),
                "inflight": inflight_stats(self.inflight, *spans[a]),
            }
            if self.name == BRUNOISE:
                lo, hi = spans[a]
                per_phase[a]["moves_per_round"] = moves_per_round(
                    history, self.start_unix_ms + 1000 * lo, self.start_unix_ms + 1000 * hi, self.cfg.round_interval_s
                )
        hot_inflight: dict[str, object] | None = None
        settled: float | None = None
        hot_best: float | None = None
        if PHASE_HOT in spans:
            lo, hi = spans[PHASE_HOT]
            settled = lo + self.cfg.hot_settle_rounds * self.cfg.round_interval_s
            hot_inflight = inflight_stats(self.inflight, settled, hi)
            if PHASE_HOT in per_phase:
                per_phase[PHASE_HOT]["inflight_settled"] = hot_inflight
            # each session's requests in flight, send to end, as the client saw them: what a sticky placement packs
            busy: dict[str, list[tuple[float, float]]] = {}
            for r in ok:
                if r.e2e_s is not None:
                    busy.setdefault(self.wl.requests[r.index].session_id, []).append((r.sent_s, r.sent_s + r.e2e_s))
            hot_best = sticky_inflight_best(busy.values(), len(self.pods), settled, hi)
        run_inflight = inflight_stats(self.inflight, 0.0, wall + 1.0)
        q_client = sum(r.prompt_tokens for r in ok)
        steady = per_phase.get(PHASE_STEADY, {}).get("hit_rate") or 0.0
        restart = per_phase.get(PHASE_RESTART, {}).get("hit_rate")
        # the phases' oracles over what was sent in each phase, in the order it was sent (as the pods' counters)
        sent = sent_oracle(self.wl, ((r.sent_s, r.index, r.phase) for r in results))
        o_steady = sent.phase_hit_rate(PHASE_STEADY)
        o_restart = sent.phase_hit_rate(PHASE_RESTART)
        restart_rel = restart_vs_steady(steady, restart, o_steady, o_restart)
        o_all = self.oracle.hit_rate
        hot = per_phase.get(PHASE_HOT, {}).get("hit_rate")
        out: dict[str, Any] = {
            "router": self.variant.label,
            "router_kind": self.name,
            "ablation": self.variant.ablation,
            "router_knobs": dict(self.variant.router_knobs),
            "target_config": dict(self.variant.target_config),
            "router_argv": self.router_argv[1:],
            "requests": len(results),
            "ok": len(ok),
            "errors": errors,
            "error_count": len(results) - len(ok),
            "hit_rate": total.hit_rate,
            "hit_over_oracle": (total.hit_rate / o_all) if o_all else None,
            "hit_rate_client": (sum(r.cached_tokens for r in ok) / q_client) if q_client else None,
            "ttft_p50_ms": ms(pct(ttfts, 0.5)),
            "ttft_p99_ms": ms(pct(ttfts, 0.99)),
            "e2e_p50_ms": ms(pct([r.e2e_s for r in ok if r.e2e_s is not None], 0.5)),
            "late_p99_ms": ms(pct([r.late_s for r in results], 0.99)),
            "wall_s": round(wall, 3),
            "throughput_rps": len(ok) / wall if wall > 0 else 0.0,
            "throughput_prompt_tok_s": total.prompt_tokens / wall if wall > 0 else 0.0,
            "output_tok_s": sum(r.completion_tokens for r in ok) / wall if wall > 0 else 0.0,
            "pods_per_session": pods_per_session(self.wl, results),
            "pods_per_session_all": pods_per_session(self.wl, results, skip_restart=False),
            "kv_pulls": total.pulls(),
            "pod_requests": req_loads,
            "pod_prompt_tokens": tok_loads,
            "load_max_over_mean_requests": (max(req_loads) / mean_req) if mean_req else None,
            "load_max_over_mean_tokens": (max(tok_loads) / mean_tok) if mean_tok else None,
            "inflight": run_inflight,
            "inflight_max_over_mean": run_inflight["max_over_mean"],
            "inflight_samples": self.inflight,
            "per_phase": per_phase,
            "restart_hit_rate_vs_steady_raw": (restart / steady) if restart is not None and steady else None,
            "restart_hit_rate_vs_steady": restart_rel,
            # issue 13: the restart phase's p99 TTFT over the steady phase's (the bar: at most 1.3)
            "restart_ttft_p99_vs_steady": _ratio(
                per_phase.get(PHASE_RESTART, {}).get("ttft_p99_ms"), per_phase.get(PHASE_STEADY, {}).get("ttft_p99_ms")
            ),
            "restarts": self.restart_log,
            # every request as the client saw it, in send order: [index, phase sent in, sent_s, ttft_ms, pod,
            # prompt tokens, cached tokens, error, e2e_ms, pick, pick rule] (to find where a tail comes from: which
            # pod, when, what it hit; and, for brunoise, why that pod: a session's hop by its rule)
            "request_log": [
                [
                    r.index,
                    r.phase,
                    round(r.sent_s, 3),
                    ms(r.ttft_s),
                    r.pod,
                    r.prompt_tokens,
                    r.cached_tokens,
                    r.error,
                    ms(r.e2e_s),
                    r.pick,
                    r.rule,
                ]
                for r in sorted(results, key=lambda r: r.sent_s)
            ],
            # the per-phase figures, flat
            "phase_figures": {
                "steady_hit": per_phase.get(PHASE_STEADY, {}).get("hit_rate"),
                "hot_hit": hot,
                "restart_hit": restart,
                "restart_vs_steady": restart_rel,
                "hot_inflight_max_over_mean": hot_inflight["max_over_mean"] if hot_inflight else None,
                # the best a router keeping sessions on one pod could do there, with hindsight (bench.metrics)
                "hot_inflight_sticky_best": hot_best,
                "hot_inflight_from_s": settled,
            },
        }
        if self.name == BRUNOISE:
            rounds = [h for h in history if h["unix_ms"] >= self.start_unix_ms]
            n_rounds = max(1, round(wall / self.cfg.round_interval_s))
            moves = [h["moves"] for h in rounds]
            out["assigner"] = {
                "generations": len(rounds),
                "rounds_estimated": n_rounds,
                "moves_total": sum(moves),
                "moves_per_round": sum(moves) / n_rounds,
                "moves_per_round_steady": per_phase.get(PHASE_STEADY, {}).get("moves_per_round"),
                "moves_per_generation_max": max(moves, default=0),
                "splits": sum(h["splits"] for h in rounds),
                "merges": sum(h["merges"] for h in rounds),
                "replications": sum(h["replications"] for h in rounds),
                "dereplications": sum(h["dereplications"] for h in rounds),
                "churn_mean": (sum(h["churn"] for h in rounds) / len(rounds)) if rounds else 0.0,
                "history": rounds,
            }
        return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


async def run_variant(
    variant: Variant, cfg: BenchConfig, spec: WorkloadSpec, wl: Workload, log_root: pathlib.Path, run_no: int = 0
) -> dict[str, Any]:
    """Fresh pool + router, the replay, the numbers; processes are stopped whatever happens."""
    # a knob or field this checkout lacks fails the row before anything starts
    ablation.router_knob_argv(variant.router_knobs)
    ablation.check_target_config(variant.target_config)
    log_dir = log_root / spec.name / (variant.label if cfg.repeat == 1 else f"{variant.label}.run{run_no}")
    log_dir.mkdir(parents=True, exist_ok=True)
    run = RouterRun(variant, cfg, spec, wl, log_dir)
    t_setup = time.monotonic()
    try:
        await run.start()
        setup_s = time.monotonic() - t_setup
        results, wall = await run.replay()
        history: list[dict[str, Any]] = []
        effective: dict[str, Any] = {}
        if run.admin is not None:
            history = await run.read_history()
            with contextlib.suppress(Exception):
                effective = await run.admin.target_config()
        out = run.summarize(results, wall, history)
        if effective:
            out["target_config_effective"] = effective
        out["setup_s"] = round(setup_s, 3)
        out["logs"] = str(log_dir)
        return out
    finally:
        await run.stop()


# ------------------------------------------------------------------------------------------------ CLI


def build_config(args: argparse.Namespace) -> BenchConfig:
    over = {k: v for k, v in (("warmup_s", args.warmup_s), ("steady_s", args.steady_s), ("hot_s", args.hot_s), ("restart_s", args.restart_s),
                              ("session_rate", args.session_rate), ("tenants", args.tenants)) if v is not None}  # fmt: skip
    try:
        names = presets.select(args.workload)
        abl = tuple(a.name for a in ablation.select(args.ablate))
        knobs = ablation.parse_pairs(args.router_knob, "--router-knob")
        target = ablation.parse_pairs(args.target_config, "--target-config")
        ablation.router_knob_argv(knobs)  # fail now, not after the first workload
        ablation.check_target_config(target)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    specs = []
    for name in names:
        p = presets.PRESETS[name]
        wl = p.workload(quick=args.quick, seed=args.seed, pods=args.pods, overrides=over)
        kv = args.kv_blocks or p.kv_blocks
        mml = args.max_model_len or p.max_model_len
        if kv * 16 < mml:
            raise SystemExit(f"{name}: --kv-blocks {kv} holds {kv * 16} tokens, fewer than max_model_len {mml}")
        specs.append(WorkloadSpec(name, wl, kv, mml))
    if args.repeat < 1:
        raise SystemExit(f"--repeat {args.repeat}: run each row at least once")
    routers = tuple(r.strip() for r in args.routers.split(",") if r.strip())
    unknown = [r for r in routers if r not in ALL_ROUTERS]
    if unknown:
        raise SystemExit(f"unknown router(s) {unknown}; choose from {', '.join(ALL_ROUTERS)}")
    return BenchConfig(
        workloads=tuple(specs), routers=routers, pods=args.pods, time_scale=args.time_scale,
        concurrency=args.concurrency, round_interval_s=args.round_interval, log_dir=args.log_dir or "",
        peer_drain=args.peer_drain, inflight_interval_s=args.inflight_interval, router_knobs=knobs,
        target_config=target, ablations=abl, kv_transfer_gb_per_s=args.kv_transfer_gb_per_s, repeat=args.repeat,
    )  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    p.add_argument(
        "--workload", default="all", help=f"comma-separated, from: {', '.join(presets.ALL_WORKLOADS)}; or all"
    )
    p.add_argument("--routers", default=",".join(ALL_ROUTERS), help=f"comma-separated, from: {', '.join(ALL_ROUTERS)}")
    p.add_argument(
        "--ablate", default="", help=f"extra brunoise rows, one mechanism off each: {', '.join(ablation.ABLATIONS)}"
    )
    p.add_argument(
        "--router-knob", action="append", default=[], metavar="KEY=VALUE", help="a brunoise-router knob (repeatable)"
    )
    p.add_argument(
        "--target-config", action="append", default=[], metavar="KEY=VALUE",
        help="a TargetConfig field of brunoise's target, set through ConfigureTarget (repeatable)",
    )  # fmt: skip
    p.add_argument("--pods", type=int, default=4, help="simulated runtimes in the pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeat", type=int, default=1,
        help="run every row N times on the same traffic; the table and the verdict take each figure's median",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="short phases (~12-14 s of traffic per router)")
    p.add_argument("--time-scale", type=float, default=1.0, help="sim time / wall time (>1 runs the engines faster)")
    p.add_argument("--kv-blocks", type=int, default=None, help="KV blocks (16 tokens) per pod (default: per workload)")
    p.add_argument("--max-model-len", type=int, default=None, help="the pods' max_model_len (default: per workload)")
    p.add_argument(
        "--kv-transfer-gb-per-s", type=float, default=KV_TRANSFER_GB_PER_S,
        help="the pods' KV connector bandwidth, GB/s (0: none; only brunoise's warm-ups read KV)",
    )  # fmt: skip
    p.add_argument("--concurrency", type=int, default=32, help="most requests in flight at once")
    p.add_argument("--round-interval", type=float, default=0.5, help="brunoise assigner round interval, seconds")
    p.add_argument("--inflight-interval", type=float, default=0.1, help="in-flight sampling interval, seconds")
    p.add_argument("--warmup-s", type=float, default=None, help="cold-start phase (not the steady reference)")
    p.add_argument("--steady-s", type=float, default=None)
    p.add_argument("--hot-s", type=float, default=None)
    p.add_argument("--restart-s", type=float, default=None)
    p.add_argument("--session-rate", type=float, default=None, help="new sessions (docs: queries) per second")
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


async def amain(cfg: BenchConfig, out: pathlib.Path, chart_path: pathlib.Path) -> dict[str, Any]:
    log_root = pathlib.Path(cfg.log_dir) if cfg.log_dir else pathlib.Path(tempfile.mkdtemp(prefix="brunoise-bench-"))
    missing = peers.peers_available()
    rep: dict[str, Any] = {
        "bench": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workloads"},
        "workloads": {},
        "logs": str(log_root),
    }
    print(f"logs in {log_root}", flush=True)
    for spec in cfg.workloads:
        wl = generate(spec.workload)
        orc = workload_oracle(wl)
        pool = pool_lru(wl, cfg.pods, spec.kv_blocks)
        group: dict[str, Any] = {
            "kv_blocks": spec.kv_blocks,
            "max_model_len": spec.max_model_len,
            "workload": {**dataclasses.asdict(spec.workload), **summary(wl)},
            "oracle": {"hit_rate": orc.hit_rate, "per_phase": {p: orc.phase_hit_rate(p) for p in orc.per_phase}},
            "pool_lru": {
                "hit_rate": pool.hit_rate,
                "hit_over_oracle": pool.hit_rate / orc.hit_rate if orc.hit_rate else None,
                "per_phase": {p: pool.phase_hit_rate(p) for p in pool.per_phase},
                "restart_hit_rate_vs_steady": relative_restart(pool, orc),
            },
            "routers": [],
        }
        rep["workloads"][spec.name] = group
        print(
            f"== {spec.name}: {len(wl.requests)} requests in {len(wl.sessions)} sessions over "
            f"{spec.workload.duration_s:.0f}s, {spec.kv_blocks} KV blocks/pod, oracle hit rate {100 * orc.hit_rate:.1f}%, "
            f"one LRU cache of the pool's size {100 * pool.hit_rate:.1f}%",
            flush=True,
        )
        if cfg.repeat > 1:
            group["repeat"] = cfg.repeat
            group["runs"] = []
        for run_no, variant in itertools.product(range(cfg.repeat), cfg.variants()):
            name = variant.label
            tag = f"{spec.name}/{name}" + (f" run {run_no + 1}/{cfg.repeat}" if cfg.repeat > 1 else "")
            peer = peers.PEERS.get(variant.router)
            if peer is not None and peer.program in missing:
                res: dict[str, Any] = {"router": name, "error": missing[peer.program]}
                print(f"[{tag}] skipped: {missing[peer.program]}", flush=True)
            else:
                t0 = time.monotonic()
                print(f"[{tag}] starting {cfg.pods} pods + router ...", flush=True)
                try:
                    res = await run_variant(variant, cfg, spec, wl, log_root, run_no)
                except Exception as exc:
                    res = {"router": name, "ablation": variant.ablation, "error": f"{type(exc).__name__}: {exc}"}
                    print(f"[{tag}] FAILED: {res['error'][:2000]}", flush=True)
                else:
                    print(
                        f"[{tag}] done in {time.monotonic() - t0:.0f}s: hit {100 * res['hit_rate']:.1f}%, "
                        f"ttft p99 {res['ttft_p99_ms']} ms, errors {res['error_count']}",
                        flush=True,
                    )
            if cfg.repeat > 1:
                res["run"] = run_no
                group["runs"].append(res)
                group["routers"] = report.median_rows(group["runs"])
            else:
                group["routers"].append(res)
            report.save(out, rep)  # keep partial results
    rep["verdict"] = report.verdicts(rep)
    report.save(out, rep)
    try:
        report.chart(rep, chart_path)
    except Exception as exc:  # a chart is a convenience; the JSON and the table are the result
        print(f"chart failed: {exc}", flush=True)
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    out = pathlib.Path(args.out)
    chart_path = pathlib.Path(args.chart) if args.chart else out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BRUNOISE_LOG_LEVEL", "WARNING")
    # SIGTERM unwinds like Ctrl-C, so every started process is stopped by the ``finally`` blocks
    with sigterm_unwinds(lambda signum: SystemExit(128 + signum)):
        rep = asyncio.run(amain(cfg, out, chart_path))
    print(f"\nresults: {out}  chart: {chart_path}\n")
    print(report.render(rep))
    failed = [r for g in rep["workloads"].values() for r in g.get("runs", g["routers"]) if "error" in r]
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
