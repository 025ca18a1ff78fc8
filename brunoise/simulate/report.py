"""What a simulation measured: per-request and per-pod accounting, the summary (bench/compare.py's columns), tables,
the sweep table and the PNG of load and hit rate over time."""

from __future__ import annotations

import bisect
import itertools
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from brunoise.simulate.source import PHASE_DEFAULT, PHASE_RESTART

if TYPE_CHECKING:
    from brunoise.simulate.fleet import Fleet, FleetSpec, Flight, SimPod
    from brunoise.simulate.source import Source


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (as ``bench.metrics.pct``); None when there are none."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(1000.0 * v, 1)


def _mean(values: Sequence[int]) -> float | None:
    return sum(values) / len(values) if values else None


def _held_shares(acc: Sequence[int] | None) -> dict[str, float] | None:
    """[picked, other, none] chunks as shares of their sum (None without an oracle hit)."""
    total = sum(acc) if acc else 0
    if not acc or total <= 0:
        return None
    return {k: round(v / total, 4) for k, v in zip(("picked", "other", "none"), acc, strict=True)}


def max_over_mean(values: Sequence[float]) -> float | None:
    m = sum(values) / len(values) if values else 0.0
    return max(values) / m if m > 0 else None


class Results:
    """Accumulates during the run; ``summary`` is the result."""

    def __init__(self, source: Source, spec: FleetSpec) -> None:
        self.source = source
        self.spec = spec
        self.phase_names = [p.name for p in source.phases]
        self.sent_n = 0
        self.ok_n = 0
        self.sessions = 0
        self.errors: dict[str, int] = {}
        self.ph_requests: dict[str, int] = {}
        self.ph_errors: dict[str, int] = {}
        self.ph_ttft: dict[str, list[float]] = {}
        self.ph_oracle: dict[str, list[int]] = {}  # phase -> [queries, hits]
        #: phase -> the infinite cache's hit chunks, by where they were at the pick: [picked pod, another, none]
        self.ph_held: dict[str, list[int]] = {}
        self.ttft: list[float] = []
        self.pods_per_session: list[int] = []  # turns sent in the rolling restart left out, as bench/compare.py does
        self.pods_per_session_all: list[int] = []
        #: One row per ended request (``FleetSpec.request_log``), the bench's ``request_log`` columns where they
        #: exist: [number, session, turn, phase sent in, sent s, TTFT ms, pod, prompt tokens, cached tokens, error,
        #: end-to-end ms, pick rule].
        self.request_log: list[list[Any]] | None = [] if spec.request_log else None
        self.outcomes: dict[str, int] = {}
        self.rules: dict[str, int] = {}
        self.retries = 0
        self.marks: dict[str, tuple[float, list[tuple[int, int, int, float]]]] = {}
        self.bucket_s = 1.0
        self.series: list[dict[str, Any]] = []
        self._last: tuple[float, list[tuple[int, int, int, float]]] | None = None
        self._b_oracle = [0, 0]
        self._b_ttft: list[float] = []
        self.summary: dict[str, Any] = {}

    # -- during the run -----------------------------------------------------------------------------------

    def sent(self, f: Flight, t: float) -> None:
        self.sent_n += 1
        ph = f.phase
        self.ph_requests[ph] = self.ph_requests.get(ph, 0) + 1

    def held_at_pick(self, phase: str, picked: int, other: int, none: int) -> None:
        acc = self.ph_held.setdefault(phase, [0, 0, 0])
        acc[0] += picked
        acc[1] += other
        acc[2] += none

    def oracle(self, phase: str, prompt_tokens: int, hit: int) -> None:
        acc = self.ph_oracle.setdefault(phase, [0, 0])
        acc[0] += prompt_tokens
        acc[1] += hit
        self._b_oracle[0] += prompt_tokens
        self._b_oracle[1] += hit

    def outcome(self, outcome: str, rule: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if rule:
            self.rules[rule] = self.rules.get(rule, 0) + 1

    def ended(self, f: Flight, t: float, error: str) -> None:
        ph = f.phase
        if self.request_log is not None:
            self.request_log.append(
                [
                    f.num, f.req.session, f.req.turn, ph, round(f.sent_t, 3),
                    _ms(f.first_t - f.sent_t) if f.first_t is not None and not error else None,
                    f.pod.id if f.pod is not None else "", f.req.prompt_tokens, f.cached if not error else 0, error,
                    _ms(t - f.sent_t), f.rule,
                ]
            )  # fmt: skip
        if error:
            self.errors[error] = self.errors.get(error, 0) + 1
            self.ph_errors[ph] = self.ph_errors.get(ph, 0) + 1
            return
        self.ok_n += 1
        if f.first_t is not None:
            d = f.first_t - f.sent_t
            self.ttft.append(d)
            self.ph_ttft.setdefault(ph, []).append(d)
            self._b_ttft.append(d)

    def session_end(self, cs: Any) -> None:
        if cs.pods:
            self.pods_per_session.append(len(cs.pods))
        if cs.pods_all:
            self.pods_per_session_all.append(len(cs.pods_all))

    @staticmethod
    def _snap(t: float, pods: Sequence[SimPod]) -> list[tuple[int, int, int, float]]:
        out = []
        for p in pods:
            q, h = p.queries_hits()
            out.append((q, h, p.ok, p.area(t)))
        return out

    def mark(self, name: str, t: float, pods: Sequence[SimPod]) -> None:
        self.marks[name] = (t, self._snap(t, pods))

    def bucket(self, t: float, pods: Sequence[SimPod]) -> None:
        snap = self._snap(t, pods)
        last = self._last
        self._last = (t, snap)
        if last is None or t <= last[0]:
            return
        t0, prev = last
        dq = sum(s[0] - p[0] for s, p in zip(snap, prev, strict=True))
        dh = sum(s[1] - p[1] for s, p in zip(snap, prev, strict=True))
        reqs = [s[2] - p[2] for s, p in zip(snap, prev, strict=True)]
        infl = [(s[3] - p[3]) / (t - t0) for s, p in zip(snap, prev, strict=True)]
        oq, oh = self._b_oracle
        self.series.append(
            {
                "t": round(t, 3),
                "hit_rate": dh / dq if dq else None,
                "oracle": oh / oq if oq else None,
                "requests": sum(reqs),
                "req_max_over_mean": max_over_mean(reqs),
                "inflight_mean": sum(infl) / len(infl),
                "inflight_max_over_mean": max_over_mean(infl),
                "ttft_p99_ms": _ms(percentile(self._b_ttft, 0.99)),
            }
        )
        self._b_oracle = [0, 0]
        self._b_ttft = []

    # -- the summary ----------------------------------------------------------------------------------------

    def _between(self, a: str, b: str) -> dict[str, Any] | None:
        if a not in self.marks or b not in self.marks:
            return None
        (ta, sa), (tb, sb) = self.marks[a], self.marks[b]
        dq = sum(y[0] - x[0] for x, y in zip(sa, sb, strict=True))
        dh = sum(y[1] - x[1] for x, y in zip(sa, sb, strict=True))
        reqs = [y[2] - x[2] for x, y in zip(sa, sb, strict=True)]
        span = tb - ta
        infl = [(y[3] - x[3]) / span for x, y in zip(sa, sb, strict=True)] if span > 0 else []
        return {
            "hit_rate": dh / dq if dq else None,
            "pod_requests": reqs,
            "req_max_over_mean": max_over_mean(reqs),
            "inflight_max_over_mean": max_over_mean(infl),
            "span": (ta, tb),
        }

    def finish(self, fleet: Fleet, end: float) -> None:
        phases = self.phase_names
        bounds = [*phases, "end"]
        rounds = fleet.rounds
        r_times = [r.t for r in rounds]

        def moves_in(lo: float, hi: float) -> tuple[float | None, float | None]:
            i, j = bisect.bisect_left(r_times, lo), bisect.bisect_left(r_times, hi)
            rs = rounds[i:j]
            if not rs:
                return None, None
            return sum(r.stats.moves for r in rs) / len(rs), sum(r.stats.churn for r in rs) / len(rs)

        per_phase: dict[str, dict[str, Any]] = {}
        for a, b in itertools.pairwise(bounds):
            d = self._between(a, b)
            if d is None:
                continue
            oq, oh = self.ph_oracle.get(a, [0, 0])
            ttfts = self.ph_ttft.get(a, [])
            mv, ch = moves_in(*d["span"])
            per_phase[a] = {
                "requests": self.ph_requests.get(a, 0),
                "errors": self.ph_errors.get(a, 0),
                "hit_rate": d["hit_rate"],
                "oracle": oh / oq if oq else None,
                "oracle_held": _held_shares(self.ph_held.get(a)),
                "ttft_p50_ms": _ms(percentile(ttfts, 0.5)),
                "ttft_p99_ms": _ms(percentile(ttfts, 0.99)),
                "req_max_over_mean": d["req_max_over_mean"],
                "inflight_max_over_mean": d["inflight_max_over_mean"],
                "moves_per_round": mv,
                "churn_per_round": ch,
            }
        first = phases[0] if phases else "end"
        whole = self._between(first, "end") or {}
        oq = sum(v[0] for v in self.ph_oracle.values())
        oh = sum(v[1] for v in self.ph_oracle.values())
        o_all = oh / oq if oq else None
        hit = whole.get("hit_rate")

        def rel(phase: str) -> float | None:
            p = per_phase.get(phase, {})
            h, o = p.get("hit_rate"), p.get("oracle")
            return h / o if h is not None and o else None

        steady, restart = rel(PHASE_DEFAULT), rel(PHASE_RESTART)
        all_moves = [r.stats.moves for r in rounds]
        spec = self.spec
        self.summary = {
            "source": self.source.name,
            "pods": spec.pods,
            "routers": spec.routers,
            "engine": spec.engine,
            "key_layout": spec.knobs.key_layout,
            "kv_blocks": spec.kv_blocks,
            "capacities": list(spec.capacities),
            "virtual_s": round(end, 3),
            "events": fleet.q.events_run,
            "sessions": self.sessions,
            "requests": self.sent_n,
            "ok": self.ok_n,
            "errors": dict(sorted(self.errors.items())),
            "error_count": sum(self.errors.values()),
            "retries": self.retries,
            "hit_rate": hit,
            "oracle_hit_rate": o_all,
            "hit_over_oracle": hit / o_all if hit is not None and o_all else None,
            # where the infinite cache's hits were when their requests were picked: on the pod picked, only on
            # another (the placement's loss, unless a KV pull reads it), on none (the pool's capacity's loss)
            "oracle_held": _held_shares([sum(v[i] for v in self.ph_held.values()) for i in range(3)]),
            "ttft_p50_ms": _ms(percentile(self.ttft, 0.5)),
            "ttft_p99_ms": _ms(percentile(self.ttft, 0.99)),
            "pods_per_session": _mean(self.pods_per_session),
            "pods_per_session_all": _mean(self.pods_per_session_all),
            "pod_requests": whole.get("pod_requests"),
            "load_max_over_mean_requests": whole.get("req_max_over_mean"),
            "inflight_max_over_mean": whole.get("inflight_max_over_mean"),
            "per_phase": per_phase,
            "restart_vs_steady": restart / steady if restart is not None and steady else None,
            "outcomes": self.outcomes,
            "pick_rules": self.rules,
            "assigner": {
                "rounds": len(rounds),
                "generations": sum(1 for r in rounds if r.committed),
                "moves_total": sum(all_moves),
                "moves_per_round": sum(all_moves) / len(rounds) if rounds else 0.0,
                "moves_per_round_steady": per_phase.get(PHASE_DEFAULT, {}).get("moves_per_round"),
                "moves_per_round_max": max(all_moves, default=0),
                "churn_mean": sum(r.stats.churn for r in rounds) / len(rounds) if rounds else 0.0,
                "churn_max": max((r.stats.churn for r in rounds), default=0.0),
                "splits": sum(r.stats.splits for r in rounds),
                "merges": sum(r.stats.merges for r in rounds),
                "replications": sum(r.stats.replications for r in rounds),
                "dereplications": sum(r.stats.dereplications for r in rounds),
                "slices_end": len(fleet.assignment.slices),
                "slices_max": max((r.slices for r in rounds), default=len(fleet.assignment.slices)),
            },
            "warmups": {
                "marks_warmed": fleet.warm_reports,
                "requests": fleet.warm_n,
                "kv_reads": fleet.warm_reads,
                "kv_read_tokens": fleet.warm_read_tokens,
            },
            "kv_pulls": {"hinted": fleet.pulls_hinted, "read": fleet.pulls_read, "read_tokens": fleet.pull_read_tokens},
            "restarts": fleet.restart_log,
            "phase_starts": [t for name, (t, _) in self.marks.items() if name != "end"],
            "series": self.series,
        }
        if self.request_log is not None:
            self.summary["request_log"] = self.request_log


# ------------------------------------------------------------------------------------------------ rendering


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _x(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def render(s: Mapping[str, Any]) -> str:
    """The run's table (compare's columns), then one row per phase."""
    a = s["assigner"]
    lines = [
        f"{s['source']}: {s['pods']} pods ({s['engine']} engine), {s['routers']} router(s), key_layout={s['key_layout']}, "
        f"{s['sessions']} sessions, {s['requests']} requests over {s['virtual_s']:.0f} s of virtual time",
        "",
        f"{'hit':>7} {'oracle':>7} {'hit/orc':>7} {'ttft50':>8} {'ttft99':>8} {'req max/mean':>12} "
        f"{'infl max/mean':>13} {'pods/sess':>9} {'moves/rnd':>9} {'churn/rnd':>9} {'rst/stdy':>8} {'errors':>6}",
        f"{_pct(s['hit_rate']):>7} {_pct(s['oracle_hit_rate']):>7} {_x(s['hit_over_oracle']):>7} "
        f"{_x(s['ttft_p50_ms'], 1):>8} {_x(s['ttft_p99_ms'], 1):>8} {_x(s['load_max_over_mean_requests']):>12} "
        f"{_x(s['inflight_max_over_mean']):>13} {_x(s['pods_per_session']):>9} {_x(a['moves_per_round']):>9} "
        f"{_x(a['churn_mean'], 3):>9} {_x(s['restart_vs_steady']):>8} {s['error_count']:>6}",
        "",
        f"{'phase':<11} {'requests':>8} {'errors':>6} {'hit':>7} {'oracle':>7} {'ttft50':>8} {'ttft99':>8} "
        f"{'req max/mean':>12} {'infl max/mean':>13} {'moves/rnd':>9} {'churn/rnd':>9}",
    ]
    for name, p in s["per_phase"].items():
        lines.append(
            f"{name:<11} {p['requests']:>8} {p['errors']:>6} {_pct(p['hit_rate']):>7} {_pct(p['oracle']):>7} "
            f"{_x(p['ttft_p50_ms'], 1):>8} {_x(p['ttft_p99_ms'], 1):>8} {_x(p['req_max_over_mean']):>12} "
            f"{_x(p['inflight_max_over_mean']):>13} {_x(p['moves_per_round']):>9} {_x(p['churn_per_round'], 3):>9}"
        )
    lines.append("")
    lines.append(
        f"assigner: {a['rounds']} rounds, {a['generations']} generations, {a['moves_total']} moves "
        f"(max {a['moves_per_round_max']}/round), {a['splits']} splits, {a['merges']} merges, "
        f"{a['replications']} replications, {a['dereplications']} dereplications, {a['slices_end']} slices at the end "
        f"(at most {a['slices_max']})"
    )
    held = [(n, p["oracle_held"]) for n, p in s["per_phase"].items() if p.get("oracle_held")]
    if held:
        lines.append(
            "the oracle's hits at the pick, held by the pod picked / only another (a KV pull can read it) / none: "
            + ", ".join(f"{n} {_pct(h['picked'])} / {_pct(h['other'])} / {_pct(h['none'])}" for n, h in held)
        )
    if s["errors"]:
        lines.append(f"errors: {s['errors']}  (retries before a first token: {s['retries']})")
    return "\n".join(lines)


def render_sweep(rows: Sequence[Mapping[str, Any]], slo_ms: float | None) -> str:
    """One row per fleet size; with an SLO, the smallest size whose p99 TTFT meets it."""
    lines = [
        f"{'pods':>6} {'hit':>7} {'hit/orc':>7} {'ttft50':>8} {'ttft99':>8} {'req max/mean':>12} "
        f"{'infl max/mean':>13} {'pods/sess':>9} {'errors':>6}"
    ]
    for s in rows:
        lines.append(
            f"{s['pods']:>6} {_pct(s['hit_rate']):>7} {_x(s['hit_over_oracle']):>7} {_x(s['ttft_p50_ms'], 1):>8} "
            f"{_x(s['ttft_p99_ms'], 1):>8} {_x(s['load_max_over_mean_requests']):>12} "
            f"{_x(s['inflight_max_over_mean']):>13} {_x(s['pods_per_session']):>9} {s['error_count']:>6}"
        )
    if slo_ms is not None:
        ok = [s for s in rows if s["ttft_p99_ms"] is not None and s["ttft_p99_ms"] <= slo_ms and not s["error_count"]]
        best = min(ok, key=lambda s: s["pods"], default=None)
        lines.append(
            f"smallest fleet with p99 TTFT <= {slo_ms:g} ms and no errors: {best['pods']} pods"
            if best
            else f"no swept fleet keeps p99 TTFT <= {slo_ms:g} ms without errors; try more pods"
        )
    return "\n".join(lines)


def smallest_meeting(rows: Sequence[Mapping[str, Any]], slo_ms: float) -> int | None:
    ok = [
        s["pods"] for s in rows if s["ttft_p99_ms"] is not None and s["ttft_p99_ms"] <= slo_ms and not s["error_count"]
    ]
    return min(ok, default=None)


def chart(s: Mapping[str, Any], path: str | pathlib.Path) -> None:
    """A PNG: hit rate (with the oracle) and load balance (in-flight and requests, max/mean) over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = s["series"]
    t = [r["t"] for r in series]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    fig.suptitle(
        f"brunoise simulate: {s['source']}, {s['pods']} pods, {s['routers']} router(s), {s['key_layout']} keys",
        fontsize=11,
    )
    ax1.plot(t, [r["hit_rate"] for r in series], label="hit rate")
    ax1.plot(t, [r["oracle"] for r in series], "--", label="oracle")
    ax1.set_ylabel("prefix hit rate")
    ax1.set_ylim(0, 1)
    ax1.legend(loc="lower right")
    ax2.plot(t, [r["inflight_max_over_mean"] for r in series], label="in-flight max/mean")
    ax2.plot(t, [r["req_max_over_mean"] for r in series], label="requests max/mean", alpha=0.7)
    ax2.set_ylabel("load max/mean")
    ax2.legend(loc="upper right")
    ax3.plot(t, [r["ttft_p99_ms"] for r in series], label="TTFT p99 (ms)")
    ax3.plot(t, [r["inflight_mean"] for r in series], label="mean in-flight per pod")
    ax3.set_xlabel("virtual time (s)")
    ax3.legend(loc="upper right")
    for ax in (ax1, ax2, ax3):
        for mark in s.get("phase_starts", []):
            ax.axvline(mark, color="grey", lw=0.6, ls=":")
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
