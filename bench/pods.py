"""The processes of one run: simulated pods (stable id and port across restarts) and the assigner's admin RPCs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from bench.ablation import apply_target_config
from bench.metrics import Counters, counters_of
from sharder.launch import LaunchError, ManagedProcess, ProcessGroup

TARGET = "bench"
MODEL = "sim"

ROOT = pathlib.Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The children's environment: this checkout first on PYTHONPATH (an editable install may predate its packages)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def entry_point(name: str) -> str:
    """An entry point of this project: next to the running interpreter first, then on PATH."""
    here = pathlib.Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"{name} not found next to {sys.executable} or on PATH; `pip install -e .` the project")
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class PodSizing:
    """How every simulated pod of a run is started."""

    kv_blocks: int
    max_model_len: int
    time_scale: float = 1.0
    #: The pods' KV connector bandwidth, GB/s (0: none; see ``runtime.engines.sim``).
    kv_transfer_gb_per_s: float = 0.0


class Pod:
    """One simulated runtime: a stable pod id and HTTP port across restarts, counters summed across incarnations."""

    def __init__(self, index: int, sizing: PodSizing, log_dir: pathlib.Path, assigner: str | None) -> None:
        self.index = index
        self.pod_id = f"pod-{index}"
        self.sizing = sizing
        self.log_dir = log_dir
        self.assigner = assigner
        self.proc: ManagedProcess | None = None
        self.http = ""
        self.http_port = 0
        self.grpc = ""  # the current incarnation's gRPC address (its registration with the assigner names it)
        self.incarnation = 0
        self.base = Counters()  # totals of the incarnations before the current one
        self.last = Counters()  # the current incarnation's latest scrape

    def argv(self) -> list[str]:
        c = self.sizing
        argv = [
            entry_point("brunoise-runtime"), "--engine", "sim", "--pod-id", self.pod_id, "--target", TARGET,
            "--model", MODEL, "--time-scale", str(c.time_scale), "--kv-blocks", str(c.kv_blocks),
            "--max-model-len", str(c.max_model_len), "--http-port", str(self.http_port),
            "--kv-transfer-gb-per-s", str(c.kv_transfer_gb_per_s),
        ]  # fmt: skip
        if self.assigner:
            argv += ["--assigner", self.assigner]
        return argv

    def start(self, group: ProcessGroup) -> ManagedProcess:
        self.incarnation += 1
        name = f"{self.pod_id}.{self.incarnation}"
        self.proc = group.add(ManagedProcess(name, self.argv(), env=child_env(), log_dir=self.log_dir).start())
        return self.proc

    def ready(self, timeout_s: float = 60.0) -> None:
        assert self.proc is not None
        addrs = self.proc.wait_ready(timeout_s)
        self.grpc = addrs["grpc"]
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
                    counters = counters_of(await resp.text())
                    if incarnation == self.incarnation:  # not a late answer from a pod restarted meanwhile
                        self.last = counters
        except (aiohttp.ClientError, TimeoutError, ValueError):  # ValueError: a truncated exposition
            pass
        return self.total()

    async def inflight(self, session: aiohttp.ClientSession, timeout_s: float = 1.0) -> float | None:
        """Requests running + waiting on the pod now (its /load); 0 while it is down, None if it does not answer."""
        if self.proc is None or not self.proc.alive():
            return 0.0
        if not self.http:
            return None
        try:
            async with session.get(
                f"{self.http}/load", params={"cache": "0"}, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                if resp.status != 200:
                    return None
                engine = (await resp.json())["engine"]
                return float(engine["running"]) + float(engine["waiting"])
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            return None

    def retire(self) -> None:
        """The current incarnation is gone: fold its last counters into the base."""
        self.base = self.base + self.last
        self.last = Counters()


# ------------------------------------------------------------------------------------------------ brunoise admin


class AssignerAdmin:
    """The bench's view of the assigner (drain, slices held, the target, its history) over the CLI's
    ``AdminClient`` (one admin client for both), its blocking calls run off the event loop."""

    def __init__(self, address: str) -> None:
        from brunoise.cli.client import AdminClient
        from sharder.security.client import ClientAuth

        self.client = AdminClient(address, timeout_s=10.0, auth=ClientAuth())  # the bench's assigner is open

    async def close(self) -> None:
        self.client.close()

    async def drain(self, pod_id: str, undrain: bool = False) -> None:
        await asyncio.to_thread(self.client.drain, pod_id, undrain)

    async def drain_progress(self, pod_id: str) -> tuple[int, int, int]:
        """Slices held, requests running and waiting: what ``brunoise drain --wait`` waits on (all 0: drained)."""
        return await asyncio.to_thread(self.client.drain_progress, pod_id, TARGET)

    async def registrations(self) -> dict[str, str]:
        """Pod id -> the gRPC address it is registered with."""
        resp = await asyncio.to_thread(self.client.list_pods, TARGET)
        return {p.pod.id: p.pod.address for p in resp.pods}

    async def slices_held(self) -> dict[str, int]:
        resp = await asyncio.to_thread(self.client.list_pods, TARGET)
        return {p.pod.id: p.slices_held for p in resp.pods}

    async def configure_target(self, overrides: Mapping[str, str] | None = None, timeout_s: float = 20.0) -> None:
        """Create the bench target with the policy's default settings (``sharder.config.TargetConfig``, encoded by
        the codec, so a field added there arrives with its default), then ``overrides`` (field -> value as text,
        e.g. an ablation's ``calm=false``); retried until there is a leader."""
        from brunoise.cli.output import CliError
        from sharder.codec import config_to_proto
        from sharder.config import TargetConfig

        cfg = config_to_proto(TargetConfig(target=TARGET, model=MODEL))
        apply_target_config(cfg, overrides or {})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await asyncio.to_thread(self.client.configure_target, cfg)
                return
            except CliError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def target_config(self) -> dict[str, Any]:
        """The scalar fields of the target's config as the assigner holds it (what the overrides became)."""
        a = await asyncio.to_thread(self.client.get_assignment, TARGET)
        return {f.name: getattr(a.config, f.name) for f in a.config.DESCRIPTOR.fields if f.message_type is None}

    async def assigned_pods(self) -> set[str]:
        a = await asyncio.to_thread(self.client.get_assignment, TARGET)
        return {r for s in a.slices for r in s.replicas}

    async def history(self) -> list[dict[str, Any]]:
        from brunoise.cli.client import scalars

        resp = await asyncio.to_thread(self.client.history, TARGET)
        keep = ("moves", "splits", "merges", "replications", "dereplications", "fills", "churn", "imbalance",
                "dropped_pods")  # fmt: skip
        out = []
        for e in resp.entries:
            stats = {k: v for k, v in scalars(e.stats).items() if k in keep}
            out.append({"generation": e.generation, "unix_ms": e.created_unix_ms, "slices": e.slices, **stats})
        return out
