"""Golden-file tests: hand-written scenarios (config, pods, assignment before, load reports) and the exact
assignment the policy produces. BRUNOISE_UPDATE_GOLDEN=1 rewrites the [after] sections."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sharder.assignment import Assignment, SliceAssignment, check_invariants
from sharder.config import TargetConfig
from sharder.keyspace import KEYSPACE_END, Slice
from sharder.load import EngineLoad, LoadReport, SliceLoad
from sharder.overrides import MergeOverride, MoveOverride, Override, SplitOverride
from sharder.pods import Pod, PodState
from sharder.policy import reshard

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("BRUNOISE_UPDATE_GOLDEN") == "1"


def _key(tok: str) -> int:
    return KEYSPACE_END if tok == "END" else int(tok, 0)


def _fmt_key(k: int) -> str:
    return "END" if k == KEYSPACE_END else f"0x{k:016x}"


def _ids(tok: str) -> tuple[str, ...]:
    return tuple(x for x in tok.split(",") if x and x != "-")


def _fields(line: str) -> tuple[list[str], dict[str, str]]:
    pos: list[str] = []
    kv: dict[str, str] = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            kv[k] = v
        else:
            pos.append(tok)
    return pos, kv


def parse(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if raw.startswith("[") and raw.rstrip().endswith("]"):
            cur = sections.setdefault(raw.strip()[1:-1], [])
            continue
        if cur is not None and (line.strip() or raw.startswith("[")):
            cur.append(line.strip())
    return sections


def build(sections: dict[str, list[str]]) -> tuple[Assignment, list[Pod], list[LoadReport], dict[str, Any]]:
    cfg_kw: dict[str, Any] = {}
    run_kw: dict[str, Any] = {"now_ms": 0}
    for line in sections.get("config", []):
        k, v = (x.strip() for x in line.split("=", 1))
        if k == "eligibility":
            cfg_kw[k] = dict(x.split(":", 1) for x in v.split(",") if x)
        elif k == "now_ms":
            run_kw[k] = int(v)
        elif k in ("target", "model"):
            cfg_kw[k] = v
        elif v in ("true", "false"):
            cfg_kw[k] = v == "true"
        else:
            cfg_kw[k] = float(v) if "." in v else int(v)
    cfg = TargetConfig(**cfg_kw).validate()
    pods = []
    for line in sections["pods"]:
        pos, kv = _fields(line)
        pods.append(Pod(pos[0], f"{pos[0]}:50051", dict(kv), PodState(pos[1])))
    gen = 1
    slices = []
    overrides: list[Override] = []
    for line in sections["before"]:
        pos, kv = _fields(line)
        if pos[0] == "generation":
            gen = int(pos[1])
            continue
        if pos[0] == "override":
            kind, oid = pos[1], kv["id"]
            if kind == "move":
                overrides.append(MoveOverride(oid, _key(kv["key"]), _ids(kv["pods"])))
            elif kind == "split":
                overrides.append(SplitOverride(oid, _key(kv["at"])))
            else:
                overrides.append(MergeOverride(oid, _key(kv["lo"]), _key(kv["hi"])))
            continue
        slices.append(
            SliceAssignment(
                Slice(_key(pos[0]), _key(pos[1])),
                _ids(kv.get("replicas", "")),
                _ids(kv.get("leaving", "")),
                float(kv.get("load", "0")),
                int(kv.get("since", "0")),
            )
        )
    listed = tuple(sorted((p for p in pods if p.state is not PodState.DEAD), key=lambda p: p.id))
    before = Assignment(cfg.target, gen, tuple(slices), listed, cfg, tuple(overrides))
    per_pod: dict[str, list[SliceLoad]] = {}
    caps: dict[str, float] = {}
    for line in sections.get("reports", []):
        pos, kv = _fields(line)
        if pos[1] == "capacity":
            caps[pos[0]] = float(kv["value"])
            continue
        top = tuple((_key(k), float(w)) for k, w in (x.split(":") for x in kv.get("top", "").split(",") if x))
        per_pod.setdefault(pos[0], []).append(SliceLoad(Slice(_key(pos[1]), _key(pos[2])), float(kv["load"]), top))
    reports = [
        LoadReport(p, cfg.target, EngineLoad(capacity=caps.get(p, 1.0)), tuple(per_pod.get(p, ())))
        for p in sorted(set(per_pod) | set(caps))
    ]
    return before, pods, reports, run_kw


def render(a: Assignment) -> list[str]:
    s = a.stats
    out = [
        f"generation {a.generation}",
        f"stats moves={s.moves} splits={s.splits} merges={s.merges} replications={s.replications} "
        f"dereplications={s.dereplications} fills={s.fills} churn={s.churn:.4f} imbalance={s.imbalance:.4f} "
        f"dropped_pods={s.dropped_pods}",
        "pods " + ",".join(p.id for p in a.pods),
    ]
    for sa in a.slices:
        out.append(
            f"{_fmt_key(sa.slice.lo)} {_fmt_key(sa.slice.hi)} replicas={','.join(sa.replicas) or '-'} "
            f"leaving={','.join(sa.leaving) or '-'} load={sa.load:.4f} since={sa.since_generation}"
        )
    return out


CASES = sorted(GOLDEN.glob("*.txt"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path) -> None:
    text = path.read_text()
    sections = parse(text)
    before, pods, reports, run_kw = build(sections)
    after = reshard(before, pods, reports, **run_kw)
    check_invariants(after, pods)
    got = render(after)
    if UPDATE:
        head = text.split("\n[after]", 1)[0].rstrip("\n")
        path.write_text(head + "\n\n[after]\n" + "\n".join(got) + "\n")
        return
    assert "after" in sections, f"{path.name} has no [after] section; run with BRUNOISE_UPDATE_GOLDEN=1"
    assert sections["after"] == got, "\n".join(got)


def test_golden_files_exist() -> None:
    assert len(CASES) >= 3
