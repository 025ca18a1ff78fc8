"""`brunoise simulate` through typer's CliRunner: a bench workload, a trace file, the sweep, bad input."""

from __future__ import annotations

import json
import pathlib

from typer.testing import CliRunner

from brunoise.cli.main import app
from brunoise.simulate.report import smallest_meeting

runner = CliRunner()
SMALL = ["--workload", "chat_tenant", "--quick", "--duration", "5", "--sessions", "10", "--seed", "4"]


def test_simulate_prints_the_table_and_writes_json_and_png(tmp_path: pathlib.Path) -> None:
    out, png = tmp_path / "sim.json", tmp_path / "sim.png"
    r = runner.invoke(app, ["simulate", *SMALL, "--pods", "3", "--out", str(out), "--chart", str(png), "--request-log"])
    assert r.exit_code == 0, r.output
    assert "hit/orc" in r.output and "restart" in r.output
    s = json.loads(out.read_text())
    assert s["pods"] == 3 and s["engine"] == "step"
    assert s["ok"] + s["error_count"] == s["requests"] > 0
    assert set(s["per_phase"]) == {"warmup", "steady", "hot_tenant", "restart"}
    assert len(s["request_log"]) == s["requests"]  # --request-log: a row per request
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_flat_layout_and_router_knobs_reach_the_routers(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "flat.json"
    r = runner.invoke(
        app,
        [
            "simulate",
            *SMALL,
            "--key-layout",
            "flat",
            "--router-knob",
            "load_cap=0",
            "--routers",
            "2",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    assert s["key_layout"] == "flat" and s["routers"] == 2
    assert "capped" not in s["pick_rules"]  # the cap is off


def test_sweep_runs_each_fleet_size_and_names_the_smallest_meeting_the_slo(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "sweep.json"
    r = runner.invoke(
        app,
        ["simulate", *SMALL, "--sweep", "pods=1,2,4", "--ttft-p99-slo-ms", "10000", "--no-restarts", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [s["pods"] for s in rows] == [1, 2, 4]
    assert len({s["requests"] for s in rows}) == 1  # the same traffic on each size
    best = smallest_meeting(rows, 10000)
    assert best == 1
    assert f"no errors: {best} pods" in r.output
    r = runner.invoke(app, ["simulate", *SMALL, "--sweep", "pods=1,2", "--ttft-p99-slo-ms", "0.001"])
    assert r.exit_code == 0 and "no swept fleet keeps p99 TTFT" in r.output


def test_a_trace_file_is_replayed(tmp_path: pathlib.Path) -> None:
    trace = tmp_path / "t.jsonl"
    sysmsg = {"role": "system", "content": "You are terse. " * 40}
    lines = []
    for s in range(6):
        for turn in range(3):
            msgs = [sysmsg, *({"role": "user", "content": f"session {s} question {k} " * 8} for k in range(turn + 1))]
            lines.append(
                {"t": 0.2 * s + 0.5 * turn, "session": f"s{s}", "tenant": "acme", "max_tokens": 8, "messages": msgs}
            )
    lines.append({"t": 0.1, "prompt": "no session at all " * 20, "max_tokens": 4, "phase": "steady"})
    lines.append({"t": 0.3, "block_hashes": [11, 12, 13], "prompt_tokens": 60, "max_tokens": 2})
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "trace.json"
    r = runner.invoke(app, ["simulate", "--trace", str(trace), "--pods", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    assert s["requests"] == 20 and s["ok"] == 20
    assert s["sessions"] == 8
    assert s["hit_rate"] > 0  # later turns repeat the system prompt and the history


def test_bad_input_is_one_line_and_exit_2(tmp_path: pathlib.Path) -> None:
    for args, what in (
        (["--sweep", "routers=1,2"], "only the pod count"),
        (["--router-knob", "nope=1"], "--router-knob"),
        (["--death", "abc"], "TIME:POD_INDEX"),
        (["--workload", "nope"], "unknown workload"),
        (["--restart-down", "-1"], "restart_down_s must be"),
        (["--kv-transfer-gb-per-s", "-1"], "kv_transfer_gb_per_s must be"),
        (["--drain-timeout", "nan"], "drain_timeout_s must be"),
    ):
        r = runner.invoke(app, ["simulate", "--quick", *args])
        assert r.exit_code == 2, (args, r.output)
        assert what in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 1}\n')
    r = runner.invoke(app, ["simulate", "--trace", str(bad)])
    assert r.exit_code == 2 and "bad.jsonl:1" in r.output


def test_a_longer_restart_down_time_keeps_each_pod_out_longer(tmp_path: pathlib.Path) -> None:
    """``--restart-down`` (a real vLLM loading its weights takes minutes, the bench's pods 0.7 s) reaches the
    restarts: each pod is back that much later after it stopped."""
    downs = []
    for secs in ("0.7", "3"):
        out = tmp_path / f"down{secs}.json"
        r = runner.invoke(app, ["simulate", *SMALL, "--pods", "3", "--restart-down", secs, "--out", str(out)])
        assert r.exit_code == 0, r.output
        downs.append([x["down_s"] for x in json.loads(out.read_text())["restarts"] if x["event"] == "restart"])
    assert downs[0] and len(downs[0]) == len(downs[1])
    assert all(b > a + 2.0 for a, b in zip(downs[0], downs[1], strict=True)), downs
