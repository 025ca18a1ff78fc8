"""From command-line values to a run: the traffic source, the FleetSpec (knobs, target config, failures), the sweep."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from axon_router.knobs import Knobs, parse_bool
from brunoise.simulate.fleet import TARGET, Fleet, FleetSpec
from brunoise.simulate.source import Prefetched, Source, TraceSource, bench_source, preset_sizing
from sharder.config import TargetConfig

#: The bench phases' shares of a run when ``duration_s`` rescales them (bench/presets.py's full lengths).
_PHASE_FIELDS = ("warmup_s", "steady_s", "hot_s", "restart_s")


def parse_pairs(pairs: Sequence[str], cls: type, what: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings into fields of dataclass ``cls``, each converted by its default's type."""
    defaults = cls(TARGET) if cls is TargetConfig else cls()
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        k = k.strip().replace("-", "_")
        if not sep or k not in names:
            raise ValueError(f"{what} {pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(names))}")
        typ = type(getattr(defaults, k))
        try:
            out[k] = parse_bool(v) if typ is bool else typ(v)
        except Exception as exc:
            raise ValueError(f"{what} {pair!r}: {exc}") from None
    return out


def bench_importable() -> bool:
    """Whether ``bench.workload`` imports; from a checkout's root the current directory is tried too."""
    try:
        import bench.workload
    except ImportError:
        if os.path.isfile(os.path.join(os.getcwd(), "bench", "workload.py")) and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
            try:
                import bench.workload  # noqa: F401
            except ImportError:
                return False
            return True
        return False
    return True


def make_source(
    *, workload: str, trace: str | None, quick: bool, seed: int, pods: int, sessions: int | None,
    duration_s: float | None, tenants: int | None, hot_factor: float | None, jobs: int,
) -> Source:  # fmt: skip
    """A trace file's requests, or a bench preset rescaled to ``duration_s`` / ``sessions`` (sessions per run)."""
    if trace:
        src: Source = TraceSource(trace)
    else:
        if not bench_importable():
            raise ValueError(
                "the bench workloads need the repository's bench/ package (run from the checkout's root); "
                "otherwise pass --trace FILE"
            )
        from bench import presets

        base = presets.PRESETS.get(workload)
        if base is None:
            raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(presets.ALL_WORKLOADS)}")
        cfg = base.workload(quick=quick, seed=seed, pods=pods, overrides={})
        over: dict[str, Any] = {}
        if duration_s is not None:
            total = cfg.duration_s
            for f in _PHASE_FIELDS:
                over[f] = getattr(cfg, f) * duration_s / total
        if sessions is not None:
            over["session_rate"] = sessions / (duration_s if duration_s is not None else cfg.duration_s)
        if tenants is not None:
            over["tenants"] = tenants
        if hot_factor is not None:
            over["hot_factor"] = hot_factor
        src = bench_source(workload, quick=quick, seed=seed, pods=pods, overrides=over)
    return Prefetched(src) if jobs > 1 else src


def make_spec(
    *, pods: int, workload: str, trace: str | None, capacities: Sequence[float], kv_blocks: int | None,
    max_model_len: int | None, engine: str, routers: int, round_interval_s: float, assignment_lag_s: float,
    concurrency: int, key_layout: str | None, router_knobs: Sequence[str], target_config: Sequence[str],
    deaths: Sequence[str], restarts: bool, seed: int, oracle: bool, registration: str = "auto",
    drain_timeout_s: float | None = None, restart_down_s: float | None = None, request_log: bool = False,
    kv_transfer_gb_per_s: float | None = None,
) -> FleetSpec:  # fmt: skip
    kv, mml = (1024, 4096)
    if not trace and bench_importable():
        kv, mml = preset_sizing(workload)
    knobs = dict(parse_pairs(router_knobs, Knobs, "--router-knob"))
    if key_layout:
        knobs["key_layout"] = key_layout
    death_list: list[tuple[float, int]] = []
    for d in deaths:
        t, sep, i = d.partition(":")
        if not sep:
            raise ValueError(f"--death {d!r}: expected TIME:POD_INDEX, e.g. 30:2")
        death_list.append((float(t), int(i)))
    timings: dict[str, Any] = {
        k: v
        for k, v in (
            ("drain_timeout_s", drain_timeout_s), ("restart_down_s", restart_down_s),
            ("kv_transfer_gb_per_s", kv_transfer_gb_per_s),
        )
        if v is not None
    }  # unset: FleetSpec's defaults  # fmt: skip
    eng = engine if engine != "auto" else ("step" if pods <= 64 else "fluid")
    reg = registration if registration != "auto" else ("staggered" if pods <= 64 else "even")
    return FleetSpec(
        pods=pods, capacities=tuple(capacities) or (1.0,), kv_blocks=kv_blocks or kv, max_model_len=max_model_len or mml,
        engine=eng, routers=routers, knobs=Knobs(**knobs).validate(),
        config=TargetConfig(TARGET, **parse_pairs(target_config, TargetConfig, "--target-config")).validate(),
        round_interval_s=round_interval_s, assignment_lag_s=assignment_lag_s, concurrency=concurrency,
        deaths=tuple(death_list), restarts=restarts, seed=seed, oracle=oracle, registration=reg,
        request_log=request_log, **timings,
    ).validate()  # fmt: skip


def parse_sweep(text: str) -> list[int]:
    """``pods=4,8,16`` into [4, 8, 16]."""
    name, sep, values = text.partition("=")
    if name.strip() != "pods" or not sep:
        raise ValueError(f"--sweep {text!r}: expected pods=N,N,... (only the pod count can be swept)")
    try:
        out = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {text!r}: pod counts must be integers") from None
    if not out or any(n < 1 for n in out):
        raise ValueError(f"--sweep {text!r}: give at least one pod count >= 1")
    return out


def run_one(spec: FleetSpec, source: Source, progress: bool = False) -> dict[str, Any]:
    """One run's summary; ``progress``: a line on stderr every tenth of the run (virtual time, requests, CPU)."""
    cb = None
    if progress:
        import time

        cpu0 = time.process_time()

        def cb(t: float, sent: int, ok: int) -> None:
            print(
                f"  t={t:.0f}/{source.duration_s:.0f} s  requests sent {sent}, ok {ok}  cpu {time.process_time() - cpu0:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    summary = Fleet(spec, source, cb).run().summary
    if progress:
        print(
            f"  done: {summary.get('virtual_s', 0):.0f} s of virtual time, cpu {time.process_time() - cpu0:.0f} s",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    return summary
