"""`brunoise cluster up --once` end to end as a user runs it: a real subprocess, a demo, a summary, every child stopped."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from brunoise.cli.demo import DemoResult, parse_prefix_metrics
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _pids_in(table: str) -> list[int]:
    """PIDs from the endpoints table (last column of the assigner/runtime/router rows)."""
    pids = []
    for line in table.splitlines():
        m = re.match(r"\s*(assigner|runtime|router)\s.*\s(\d+)\s*$", line)
        if m:
            pids.append(int(m.group(2)))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _logs(log_dir: pathlib.Path, n: int = 15) -> str:
    """The last lines of every process log under ``log_dir`` (for failure messages)."""
    out = []
    for f in sorted(log_dir.glob("*.log")):
        lines = f.read_text(errors="replace").splitlines()[-n:]
        out.append(f"--- {f.name}\n" + "\n".join(lines))
    return "\n".join(out)


def _run_cli(args: list[str], tmp_path: pathlib.Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BRUNOISE_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    env.pop("BRUNOISE_ASSIGNER", None)
    return subprocess.run([sys.executable, "-m", "brunoise.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s, check=False)


def test_cluster_up_once_runs_the_demo_and_stops_everything(tmp_path: pathlib.Path) -> None:
    p = _run_cli(["cluster", "up", "--once", "--runtimes", "2", "--sessions", "4", "--log-dir", str(tmp_path / "logs")],
                 tmp_path, timeout_s=120)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}\n{_logs(tmp_path / 'logs')}"
    out = p.stdout
    for needle in ("assigner", "pod-1", "pod-2", "router", "demo summary", "requests", "prefix cache hit rate",
                   "TTFT p50 / p99", "export BRUNOISE_ASSIGNER=127.0.0.1:"):
        assert needle in out, f"{needle!r} missing from:\n{out}"
    shape = re.search(r"sessions x turns\s+(\d+) x (\d+)", out)
    assert shape and int(shape.group(1)) == 4, out
    m = re.search(r"requests\s+(\d+) \((\d+) ok, (\d+) failed\)", out)
    assert m and int(m.group(1)) == 4 * int(shape.group(2)) and int(m.group(3)) == 0, out
    hit = re.search(r"prefix cache hit rate\s+([\d.]+)%", out)
    assert hit and float(hit.group(1)) > 0.0, "multi-turn sessions with shared system prompts must hit the cache"
    pids = _pids_in(out)
    assert len(pids) == 4, out  # assigner, 2 runtimes, router
    assert not [pid for pid in pids if _alive(pid)], "cluster up left children running"
    assert not (tmp_path / "state" / "cluster.json").exists(), "the cluster file must be removed on exit"


def test_cluster_up_stays_up_until_sigterm_and_records_itself(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "BRUNOISE_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    env.pop("BRUNOISE_ASSIGNER", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "brunoise.cli.main", "cluster", "up", "--runtimes", "1", "--sessions", "0",
         "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    record = tmp_path / "state" / "cluster.json"
    try:
        wait_until(record.exists, timeout_s=60)
        r = _run_cli(["pods", "-o", "json"], tmp_path, timeout_s=60)  # found through the cluster file
        assert r.returncode == 0, r.stderr
        assert '"pod-1"' in r.stdout
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    assert "every process stopped" in out
    pids = _pids_in(out)
    assert len(pids) == 3 and not [pid for pid in pids if _alive(pid)]
    assert not record.exists()


def test_cluster_up_bad_engine_is_one_line(tmp_path: pathlib.Path) -> None:
    p = _run_cli(["cluster", "up", "--once", "--engine", "nope"], tmp_path, timeout_s=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_prefix_metrics_parsing() -> None:
    text = (
        "# HELP vllm:prefix_cache_hits_total hits\n"
        'vllm:prefix_cache_hits_total{model_name="m",engine="0"} 30.0\n'
        'vllm:prefix_cache_queries_total{model_name="m",engine="0"} 120.0\n'
        "vllm:prefix_cache_hits_created 1.7e9\n"
    )
    assert parse_prefix_metrics(text) == (30.0, 120.0)
    r = DemoResult(sessions=1, turns=1, ttft_s=[0.1, 0.2, 0.3, 0.4], prefix_hits=1, prefix_queries=4)
    assert r.hit_rate == 0.25 and r.ttft_pct(0.5) in (0.2, 0.3) and r.ttft_pct(0.99) == 0.4


def test_cluster_up_vllm_without_vllm_is_one_clear_line(tmp_path: pathlib.Path) -> None:
    env_py = {"BRUNOISE_VLLM_PYTHON": str(tmp_path / "no-such-python")}
    os.environ.update(env_py)
    try:
        p = _run_cli(["cluster", "up", "--once", "--engine", "vllm", "--model", "some/model"], tmp_path, timeout_s=60)
    finally:
        os.environ.pop("BRUNOISE_VLLM_PYTHON", None)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "vLLM" in lines[0] and "Traceback" not in p.stderr


@pytest.mark.etcd
def test_cluster_up_on_etcd(tmp_path: pathlib.Path) -> None:
    from sharder.etcd_server import EtcdNotFound, find_etcd_binary

    try:
        find_etcd_binary()
    except EtcdNotFound as exc:
        pytest.skip(str(exc))
    p = _run_cli(["cluster", "up", "--once", "--store", "etcd", "--runtimes", "1", "--sessions", "2", "--turns", "2",
                  "--log-dir", str(tmp_path / "logs")], tmp_path, timeout_s=120)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}\n{_logs(tmp_path / 'logs')}"
    assert "store: etcd" in p.stdout and "demo summary" in p.stdout
    etcd_row = next(ln for ln in p.stdout.splitlines() if ln.lstrip().startswith("etcd"))
    pids = [int(x) for x in etcd_row.split()[-1].split(",") if x.isdigit()]
    assert pids and not [pid for pid in pids + _pids_in(p.stdout) if _alive(pid)]
