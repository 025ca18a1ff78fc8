"""`brunoise apply -f` / `target get|set` against a real assigner: dry runs change nothing, an applied churn
budget is what the next rounds spend at most."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from brunoise.cli.main import app
from brunoise_api.v1 import assigner_pb2, slicing_pb2
from tests.assigner.conftest import Assigner, get, pod_msg
from tests.waiting import until

pytestmark = pytest.mark.slow

PODS = [f"p{i}" for i in range(4)]


def run_cli(*args: str) -> Any:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (args, res.stdout, res.stderr)
    return res.stdout


async def cli(*args: str) -> str:
    return str(await asyncio.to_thread(run_cli, *args))


async def report_all(a: Assigner, hot: set[tuple[int, int]]) -> None:
    """Every pod reports: load 1 on each slice it holds that is in ``hot``, 0 on the others."""
    asg = await get(a.stub)
    for i, pid in enumerate(PODS):
        held = [s for s in asg.slices if pid in s.replicas]
        loads = [1.0 if (s.slice.lo, s.slice.hi) in hot else 0.0 for s in held]
        load = slicing_pb2.LoadReport(
            pod_id=pid, target="t",
            engine=slicing_pb2.EngineLoad(running=1, capacity=1.0, load=sum(loads)),
            slices=[slicing_pb2.SliceLoad(slice=s.slice, load=x, requests=10) for s, x in zip(held, loads, strict=True)],
        )  # fmt: skip
        await a.stub.Report(assigner_pb2.ReportRequest(pod=pod_msg(pid, 9200 + i), load=load), timeout=5)


async def test_apply_sets_the_churn_budget_that_next_rounds_obey(
    start_assigner: Callable[..., Assigner], tmp_path: Path
) -> None:
    a = start_assigner()
    addr = ("-a", a.addr)
    spec = tmp_path / "targets.yaml"
    # splits and merges off, one replica per slice: what moves is whole slices, each 1/16 of the hot load
    spec.write_text(
        "targets:\n  - target: t\n    model: m\n    min_replicas: 1\n    max_replicas: 1\n    initial_slices: 64\n"
        "    churn_budget: 0.5\n    split_threshold: 100\n    merge_threshold: 0\n"
    )
    created = json.loads(await cli("apply", "-f", str(spec), *addr, "-o", "json"))
    assert created["changes"][0]["create"] and created["applied"]["t"] >= 1

    hot: set[tuple[int, int]] = set()
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            await report_all(a, hot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.15)

    beat = asyncio.create_task(heartbeat())
    try:
        async def spread() -> bool:
            asg = await get(a.stub)
            return {p for s in asg.slices for p in s.replicas} == set(PODS)

        await until(spread, 30, "slices on all four pods", interval_s=0.1)

        spec.write_text(spec.read_text().replace("churn_budget: 0.5", "churn_budget: 0.07"))
        dry = await cli("apply", "-f", str(spec), "--dry-run", *addr)
        assert "~ target t" in dry and "churn_budget: 0.5 -> 0.07" in dry and "dry run" in dry
        assert json.loads(await cli("target", "get", "t", *addr, "-o", "json"))["churn_budget"] == 0.5
        done = json.loads(await cli("apply", "-f", str(spec), *addr, "-o", "json"))
        assert done["changes"][0]["fields"] == {"churn_budget": {"old": 0.5, "new": 0.07}}
        g0 = done["applied"]["t"]
        assert json.loads(await cli("target", "get", "t", *addr, "-o", "json"))["churn_budget"] == 0.07

        # p0's 16 slices become hot: balancing wants 12 of them elsewhere, 1/16 of the load each
        asg = await get(a.stub)
        hot.update((s.slice.lo, s.slice.hi) for s in asg.slices if "p0" in s.replicas)
        assert len(hot) >= 10

        async def moved_enough() -> list[Any] | None:
            h = await a.stub.History(assigner_pb2.HistoryRequest(target="t"), timeout=5)
            after = [e for e in h.entries if e.generation > g0]
            moving = [e for e in after if e.stats.churn > 0]
            return after if len(moving) >= 4 else None

        after = await until(moved_enough, 60, "load moving off p0 over several rounds", interval_s=0.2)
        churns = [e.stats.churn for e in after]
        assert max(churns) <= 0.07 + 1e-9, churns  # never more than the applied budget in one round
        assert sum(1 for c in churns if c > 0) >= 4  # the work was spread over rounds, as a budget forces
    finally:
        stop.set()
        await beat

    # `target set` changes one knob, keeps the rest, and a dry run of it changes nothing
    out = await cli("target", "set", "t", "churn_budget=0.2", "--dry-run", *addr)
    assert "churn_budget: 0.07 -> 0.2" in out
    await cli("target", "set", "t", "churn_budget=0.2", "imbalance_tolerance=0.2", *addr)
    cfg = json.loads(await cli("target", "get", "t", *addr, "-o", "json"))
    assert (cfg["churn_budget"], cfg["imbalance_tolerance"], cfg["initial_slices"]) == (0.2, 0.2, 64)


def test_bad_knobs_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text("targets:\n  - target: t\n    churn_budgett: 0.1\n")
    res = CliRunner().invoke(app, ["apply", "-f", str(spec), "-a", "127.0.0.1:1"])
    assert res.exit_code == 2 and "unknown target knob 'churn_budgett'" in res.stderr
