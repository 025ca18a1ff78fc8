"""The comparison's report: the table, the ablation table, the verdict against issue 9's bar, the chart, the JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench import peers

BRUNOISE = "brunoise"

#: (header, dotted path into a row of results, format) of the main table.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("router", "router", "s"),
    ("hit", "hit_rate", "pct"),
    ("hit/orc", "hit_over_oracle", "f2"),
    ("ttft50", "ttft_p50_ms", "ms"),
    ("ttft99", "ttft_p99_ms", "ms"),
    ("req max/mean", "load_max_over_mean_requests", "f2"),
    ("infl max/mean", "inflight_max_over_mean", "f2"),
    ("pods/sess", "pods_per_session", "f2"),
    ("moves/rnd", "assigner.moves_per_round_steady", "f2"),
    ("rst/stdy", "restart_hit_rate_vs_steady", "f2"),
    ("errors", "error_count", "d"),
)

#: The ablation table's columns.
ABLATION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("row", "router", "s"),
    ("hit", "hit_rate", "pct"),
    ("hit/orc", "hit_over_oracle", "f2"),
    ("ttft99", "ttft_p99_ms", "ms"),
    ("infl max/mean", "inflight_max_over_mean", "f2"),
    ("pods/sess", "pods_per_session", "f2"),
    ("moves/rnd", "assigner.moves_per_round_steady", "f2"),
    ("rst/stdy", "restart_hit_rate_vs_steady", "f2"),
    ("rst/stdy raw", "restart_hit_rate_vs_steady_raw", "f2"),
    ("rst ttft99/stdy", "restart_ttft_p99_vs_steady", "f2"),
    ("errors", "error_count", "d"),
)

#: The figures a row of medians (``--repeat``) carries: every table column's, the verdict's and the chart's.
MEDIAN_PATHS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [path for _, path, kind in COLUMNS + ABLATION_COLUMNS if kind != "s"]
        + ["phase_figures.hot_inflight_max_over_mean", "phase_figures.hot_inflight_sticky_best"]
        + [f"per_phase.{p}.hit_rate" for p in ("steady", "hot_tenant", "restart")]
    )
)
#: Figures summed over the runs instead (one run's errors must show).
SUMMED_PATHS = ("error_count",)
#: The spread table's columns (each figure's lowest and highest over the runs).
SPREAD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("hit", "hit_rate", "pct"),
    ("ttft99", "ttft_p99_ms", "ms"),
    ("infl max/mean", "inflight_max_over_mean", "f2"),
    ("hot infl", "phase_figures.hot_inflight_max_over_mean", "f2"),
    ("pods/sess", "pods_per_session", "f2"),
    ("rst/stdy", "restart_hit_rate_vs_steady", "f2"),
)

# The bar (issue 9): what brunoise must reach on every workload.
HIT_MARGIN = 0.005  # hit rate >= the best peer's minus half a point
HIT_ORACLE_FRACTION = 0.95
INFLIGHT_MAX_OVER_MEAN = 1.15
PODS_PER_SESSION = 1.10
MOVES_PER_ROUND = 0.1
RESTART_OVER_STEADY = 0.90


def get(d: Mapping[str, Any], path: str) -> Any:
    """``d["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _put(d: dict[str, Any], path: str, v: Any) -> None:
    """``d["a"]["b"] = v`` for ``"a.b"``, making the inner dicts."""
    *inner, last = path.split(".")
    for part in inner:
        d = d.setdefault(part, {})
    d[last] = v


def median_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The runs of a repeated comparison (``--repeat``) as one row per router or ablation (by ``router``, in the
    order first seen): each of ``MEDIAN_PATHS`` the median of the runs that measured it (``SUMMED_PATHS``: the sum),
    ``runs`` how many ran and how many failed, ``spread`` each figure's [lowest, highest]. A row whose runs all
    failed is an error row with the first error."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        by.setdefault(str(r["router"]), []).append(r)
    out: list[dict[str, Any]] = []
    for rs in by.values():
        ok = [r for r in rs if "error" not in r]
        failed = [str(r["error"]) for r in rs if "error" in r]
        first = ok[0] if ok else rs[0]
        row: dict[str, Any] = {k: first[k] for k in ("router", "router_kind", "ablation") if k in first}
        row["runs"] = {"ran": len(rs), "failed": len(failed), "errors": failed}
        if not ok:
            row["error"] = f"{failed[0]} (all {len(rs)} runs failed)"
            out.append(row)
            continue
        spread: dict[str, list[float]] = {}
        for path in MEDIAN_PATHS:
            vals = [float(v) for r in ok if (v := get(r, path)) is not None]
            if not vals:
                continue
            if path in SUMMED_PATHS:
                total = math.fsum(vals)
                _put(row, path, int(total) if total.is_integer() else total)
            else:
                _put(row, path, statistics.median(vals))
            spread[path] = [min(vals), max(vals)]
        row["spread"] = spread
        out.append(row)
    return out


def fmt(v: Any, kind: str) -> str:
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


def _grid(headers: Sequence[str], groups: Sequence[tuple[str, Sequence[Sequence[str]]]]) -> list[str]:
    """Fixed-width rows under one header, each group under a title line; the first column left-aligned."""
    rows = [list(headers)] + [list(r) for _, rs in groups for r in rs]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(headers))]
    total = sum(widths) + 2 * (len(widths) - 1)

    def line(row: Sequence[str]) -> str:
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        return "  ".join(cells).rstrip()

    out = [line(headers)]
    for title, rs in groups:
        out.append(f"-- {title} ".ljust(total, "-"))
        out += [line(r) for r in rs]
    return out


def _is_ablation(r: Mapping[str, Any]) -> bool:
    return bool(r.get("ablation"))


def _failed(r: Mapping[str, Any]) -> str:
    return f"{r['router']}: FAILED: " + " ".join(str(r["error"]).split())[:200]


def _of_runs(g: Mapping[str, Any]) -> str:
    """What a table's group title adds when its rows are medians of repeated runs ("" otherwise)."""
    return f", the median of {g.get('repeat', '?')} runs" if "runs" in g else ""


def table(rep: Mapping[str, Any]) -> str:
    """Every workload's routers as one fixed-width table, each workload's oracle (infinite shared cache) last, then
    one LRU cache of the pool's size (``bench.workload.pool_lru``, a pod fewer while pods restart)."""
    groups: list[tuple[str, list[list[str]]]] = []
    failed: list[str] = []
    for name, g in rep["workloads"].items():
        rows: list[list[str]] = []
        for r in g["routers"]:
            if _is_ablation(r):
                continue
            if "error" in r:
                failed.append(f"{name}/{_failed(r)}")
                continue
            rows.append([fmt(get(r, path), kind) for _, path, kind in COLUMNS])
        rows.append(["oracle", fmt(g["oracle"]["hit_rate"], "pct"), "1.00"] + [""] * (len(COLUMNS) - 3))
        pool = g.get("pool_lru")
        if pool:
            shown = ("hit", "hit/orc", "rst/stdy")  # a replay has no latency, load or moves
            rows.append(["pool LRU"] + [fmt(get(pool, path), kind) if h in shown else "" for h, path, kind in COLUMNS[1:]])
        title = f"{name}: {g['kv_blocks']} KV blocks/pod, {g['workload'].get('requests', '?')} requests{_of_runs(g)}"
        groups.append((title, rows))
    return "\n".join(_grid([h for h, _, _ in COLUMNS], groups) + failed)


def ablation_table(rep: Mapping[str, Any]) -> str:
    """brunoise and its ablation rows per workload ("" when no ablation ran)."""
    groups: list[tuple[str, list[list[str]]]] = []
    failed: list[str] = []
    for name, g in rep["workloads"].items():
        abl = [r for r in g["routers"] if _is_ablation(r)]
        if not abl:
            continue
        rows: list[list[str]] = []
        for r in [r for r in g["routers"] if r.get("router") == BRUNOISE] + abl:
            if "error" in r:
                failed.append(f"{name}/{_failed(r)}")
                continue
            rows.append([fmt(get(r, path), kind) for _, path, kind in ABLATION_COLUMNS])
        groups.append((name + _of_runs(g), rows))
    if not groups:
        return ""
    return "\n".join(_grid([h for h, _, _ in ABLATION_COLUMNS], groups) + failed)


def spread_table(rep: Mapping[str, Any]) -> str:
    """Where runs were repeated: each row's runs and each figure's lowest-highest over them ("" otherwise)."""
    groups: list[tuple[str, list[list[str]]]] = []
    for name, g in rep["workloads"].items():
        if "runs" not in g:
            continue
        rows: list[list[str]] = []
        for r in g["routers"]:
            n = r.get("runs") or {}
            cells = [str(r["router"]), f"{n.get('ran', 0) - n.get('failed', 0)}/{n.get('ran', 0)}"]
            for _, path, kind in SPREAD_COLUMNS:
                lo_hi = (r.get("spread") or {}).get(path)
                cells.append("-" if lo_hi is None else f"{fmt(lo_hi[0], kind)}-{fmt(lo_hi[1], kind)}")
            rows.append(cells)
        groups.append((f"{name}: lowest-highest of {g.get('repeat', '?')} runs", rows))
    if not groups:
        return ""
    return "\n".join(_grid(["router", "ok runs", *(h for h, _, _ in SPREAD_COLUMNS)], groups))


# ------------------------------------------------------------------------------------------------ verdict


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One line of the verdict: the bar, whether brunoise meets it (None: cannot tell), the figures."""

    name: str
    ok: bool | None
    detail: str


def _ok_rows(g: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in g["routers"] if "error" not in r and not _is_ablation(r)]


def _best(rows: Sequence[Mapping[str, Any]], key: str, *, low: bool) -> Mapping[str, Any] | None:
    have = [r for r in rows if r.get(key) is not None]
    if not have:
        return None
    return (min if low else max)(have, key=lambda r: float(r[key]))


def _at_most(name: str, v: Any, bar: float) -> Check:
    if v is None:
        return Check(name, None, "not measured")
    return Check(name, float(v) <= bar, f"{float(v):.2f}")


def verdict(g: Mapping[str, Any]) -> list[Check]:
    """brunoise against issue 9's bar on one workload's results (its row named ``brunoise``, no ablation)."""
    rows = _ok_rows(g)
    b = next((r for r in rows if r["router"] == BRUNOISE), None)
    if b is None:
        return [Check("brunoise ran", False, "no brunoise result")]
    peer_rows = [r for r in rows if r["router"] in peers.PEERS]
    checks: list[Check] = []
    # hit rate: the best peer's minus half a point, and 95 % of the oracle's
    oracle = float(g["oracle"]["hit_rate"])
    hit = float(b["hit_rate"])
    best = _best(peer_rows, "hit_rate", low=False)
    name = f"hit >= best peer - {100 * HIT_MARGIN:.1f} pt and >= {100 * HIT_ORACLE_FRACTION:.0f}% of oracle"
    vs_oracle = hit >= HIT_ORACLE_FRACTION * oracle
    detail = f"{100 * hit:.1f}% vs oracle {100 * oracle:.1f}% ({hit / oracle if oracle else 0:.2f})"
    pool = g.get("pool_lru")
    if pool:
        detail += f", one LRU cache of the pool {100 * float(pool['hit_rate']):.1f}%"
    if best is None:
        checks.append(Check(name, None if vs_oracle else False, detail + ", no peer ran"))
    else:
        b_hit = float(best["hit_rate"])
        detail += f", best peer {100 * b_hit:.1f}% ({best['router']})"
        checks.append(Check(name, vs_oracle and hit >= b_hit - HIT_MARGIN, detail))
    # p99 TTFT: the best cache-aware peer's
    ca = [r for r in peer_rows if peers.PEERS[r["router"]].cache_aware]
    best_ca = _best(ca, "ttft_p99_ms", low=True)
    name = "p99 TTFT <= best cache-aware peer's"
    if b.get("ttft_p99_ms") is None or best_ca is None:
        checks.append(Check(name, None, "no cache-aware peer ran" if best_ca is None else "not measured"))
    else:
        p99, bar = float(b["ttft_p99_ms"]), float(best_ca["ttft_p99_ms"])
        checks.append(Check(name, p99 <= bar, f"{p99:.0f} ms vs {bar:.0f} ms ({best_ca['router']})"))
    # over the run, and in the hot phase from 3 assigner rounds after it starts ("within 3 rounds of its start")
    inflight = _at_most(
        f"in-flight max/mean <= {INFLIGHT_MAX_OVER_MEAN}", b.get("inflight_max_over_mean"), INFLIGHT_MAX_OVER_MEAN
    )
    hot = get(b, "phase_figures.hot_inflight_max_over_mean")
    if hot is not None:
        hot_ok = float(hot) <= INFLIGHT_MAX_OVER_MEAN
        detail = f"{inflight.detail}, hot phase after 3 rounds {float(hot):.2f}"
        best = get(b, "phase_figures.hot_inflight_sticky_best")
        if best is not None:
            detail += f" (a sticky placement's best there: {float(best):.2f})"
        inflight = Check(inflight.name, inflight.ok if hot_ok else False, detail)
    checks.append(inflight)
    checks.append(_at_most(f"pods/session <= {PODS_PER_SESSION}", b.get("pods_per_session"), PODS_PER_SESSION))
    checks.append(
        _at_most(f"steady moves/round <= {MOVES_PER_ROUND}", get(b, "assigner.moves_per_round_steady"), MOVES_PER_ROUND)
    )
    rel = b.get("restart_hit_rate_vs_steady")
    name = f"restart hit >= {100 * RESTART_OVER_STEADY:.0f}% of steady"
    pool_rel = get(g, "pool_lru.restart_hit_rate_vs_steady")
    ref = f" (one LRU cache of the pool, a pod down: {float(pool_rel):.2f})" if pool_rel is not None else ""
    checks.append(
        Check(name, None, "not measured")
        if rel is None
        else Check(name, float(rel) >= RESTART_OVER_STEADY, f"{rel:.2f}{ref}")
    )
    return checks


def overall(checks: Sequence[Check]) -> str:
    """PASS when every check passes, FAIL when one fails, else INCOMPLETE."""
    if any(c.ok is False for c in checks):
        return "FAIL"
    return "PASS" if all(c.ok for c in checks) else "INCOMPLETE"


def verdicts(rep: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict of every workload, for the JSON."""
    out: dict[str, Any] = {}
    for name, g in rep["workloads"].items():
        checks = verdict(g)
        out[name] = {"result": overall(checks), "checks": [dataclasses.asdict(c) for c in checks]}
        if "runs" in g:
            out[name]["median_of_runs"] = g.get("repeat")
    return out


def verdict_text(rep: Mapping[str, Any]) -> str:
    lines = ["verdict: brunoise against issue 9's bar"]
    for name, v in verdicts(rep).items():
        of = f" (the median of {v['median_of_runs']} runs)" if "median_of_runs" in v else ""
        lines.append(f"{name}: {v['result']}{of}")
        width = max(len(c["name"]) for c in v["checks"])
        for c in v["checks"]:
            mark = {True: "PASS", False: "FAIL", None: "n/a "}[c["ok"]]
            lines.append(f"  {mark}  {c['name'].ljust(width)}  {c['detail']}")
    return "\n".join(lines)


def render(rep: Mapping[str, Any]) -> str:
    """Everything printed at the end of a run: the table, the ablation table if any, the verdict."""
    parts = [table(rep)]
    spread = spread_table(rep)
    if spread:
        parts.append("the runs' spread (the table and the verdict are on the medians)\n" + spread)
    abl = ablation_table(rep)
    if abl:
        parts.append("ablations (brunoise with one mechanism off)\n" + abl)
    parts.append(verdict_text(rep))
    return "\n\n".join(parts)


def save(path: pathlib.Path, rep: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(rep, indent=1))


# ------------------------------------------------------------------------------------------------ chart


def chart(rep: Mapping[str, Any], path: pathlib.Path) -> None:
    """One row per workload: hit rate per phase (oracle dashed), TTFT p50/p99, pod load max/mean."""
    from brunoise.plotting import pyplot

    plt = pyplot()

    groups = [(n, g, [r for r in g["routers"] if "error" not in r]) for n, g in rep["workloads"].items()]
    groups = [x for x in groups if x[2]]
    if not groups:
        return
    fig, axes = plt.subplots(len(groups), 3, figsize=(16, 3.8 * len(groups)), squeeze=False)

    def bars(ax: Any, names: list[str], series: Sequence[tuple[str, Sequence[float]]], title: str, ylabel: str) -> None:
        x = list(range(len(names)))
        width = 0.8 / len(series)
        for k, (label, vals) in enumerate(series):
            ax.bar([i + (k - (len(series) - 1) / 2) * width for i in x], vals, width, label=label)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel)
        top = max((v for _, vals in series for v in vals), default=0.0)
        ax.set_ylim(0, max(top, 1.0) * 1.3)  # head room for the legend above the bars
        ax.legend(fontsize=6, loc="upper center", ncol=len(series), framealpha=0.9)

    for row, (name, g, runs) in enumerate(groups):
        names = [r["router"] for r in runs]
        hit = [("overall", [100 * r["hit_rate"] for r in runs])]
        hit += [
            (p, [100 * (get(r, f"per_phase.{p}.hit_rate") or 0.0) for r in runs])
            for p in ("steady", "hot_tenant", "restart")
        ]
        ax = axes[row][0]
        bars(ax, names, hit, f"{name}: prefix-cache hit rate", "%")
        ax.axhline(100 * g["oracle"]["hit_rate"], color="black", linestyle="--", linewidth=1)
        ttft = [("p50", [r["ttft_p50_ms"] or 0 for r in runs]), ("p99", [r["ttft_p99_ms"] or 0 for r in runs])]
        bars(axes[row][1], names, ttft, f"{name}: TTFT (client, streaming)", "ms")
        load = [
            ("requests", [r.get("load_max_over_mean_requests") or 0 for r in runs]),
            ("in-flight (time avg)", [r.get("inflight_max_over_mean") or 0 for r in runs]),
        ]
        bars(axes[row][2], names, load, f"{name}: pod load max/mean", "ratio")
        axes[row][2].axhline(INFLIGHT_MAX_OVER_MEAN, color="black", linestyle="--", linewidth=1)
    fig.suptitle(f"brunoise bench: {rep['bench']['pods']} sim pods per router")
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.25 / len(groups) / 3.8))  # room for the title
    fig.savefig(path, dpi=100)
    plt.close(fig)
