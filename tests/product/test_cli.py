"""Every admin command against a real local cluster (assigner, sim runtimes, router), asserting on -o json."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from brunoise.cli.client import AdminClient
from brunoise.cli.cluster import LocalCluster
from brunoise.cli.main import app
from brunoise_api.v1 import slicing_pb2
from sharder.keyspace import slice_key
from tests.waiting import wait_until

from .conftest import RUNTIMES, Invoke

END = 2**64
JsonCli = Callable[..., Any]

pytestmark = pytest.mark.slow


def _slices(cli_json: JsonCli, target: str) -> list[dict[str, Any]]:
    return list(cli_json("slices", target)["slices"])


def _slice_of(slices: list[dict[str, Any]], key: int) -> dict[str, Any]:
    return next(s for s in slices if s["lo"] <= key < s["hi"])


def _assert_one_error_line(stderr: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {stderr!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------------- reads
def test_targets_lists_the_target(cluster: LocalCluster, cli_json: JsonCli, cli: Invoke) -> None:
    out = cli_json("targets")
    names = {t["target"]: t for t in out["targets"]}
    assert cluster.opts.target in names
    assert names[cluster.opts.target]["pods"] == RUNTIMES
    assert names[cluster.opts.target]["config"]["model"] == cluster.opts.model
    table = cli("targets")
    assert table.exit_code == 0 and cluster.opts.target in table.stdout


def test_slices_tile_the_keyspace(cluster: LocalCluster, cli_json: JsonCli, cli: Invoke) -> None:
    out = cli_json("slices", cluster.opts.target)
    assert out["generation"] >= 1
    slices = out["slices"]
    assert slices[0]["lo"] == 0 and slices[-1]["hi"] == END
    for a, b in itertools.pairwise(slices):
        assert a["hi"] == b["lo"]
    assert all(s["replicas"] for s in slices)
    assert all(s["age"] >= 0 for s in slices)
    table = cli("slices", cluster.opts.target)
    assert table.exit_code == 0 and "2^64" in table.stdout and "replicas" in table.stdout


def test_pods_lists_every_runtime(cluster: LocalCluster, cli_json: JsonCli, cli: Invoke) -> None:
    pods = cli_json("pods")["pods"]
    assert sorted(p["id"] for p in pods) == sorted(r.pod_id for r in cluster.runtimes)
    assert all(p["state"] == "active" for p in pods)
    assert sum(p["slices_held"] for p in pods) >= len(_slices(cli_json, cluster.opts.target))
    assert all(0.0 <= p["prefix_hit_rate"] <= 1.0 for p in pods)
    assert cli_json("pods", "--target", "no-such-target")["pods"] == []
    table = cli("pods")
    assert table.exit_code == 0 and "hit rate" in table.stdout and "pod-1" in table.stdout


def test_explain_gives_the_slice_holding_the_key(cluster: LocalCluster, cli_json: JsonCli, cli: Invoke) -> None:
    out = cli_json("explain", cluster.opts.target, "session-42")
    assert out["slice_key"] == slice_key("session-42")
    s = out["slice"]
    assert s["lo"] <= out["slice_key"] < s["hi"]
    assert s["replicas"] and {p["id"] for p in out["pods"]} >= set(s["replicas"])
    assert out["why"]
    raw = cli_json("explain", cluster.opts.target, hex(out["slice_key"]), "--slice-key")
    assert raw["slice"]["lo"] == s["lo"]
    table = cli("explain", cluster.opts.target, "session-42")
    assert table.exit_code == 0 and f"{out['slice_key']:016x}" in table.stdout and "why" in table.stdout


def test_history_is_not_empty(cluster: LocalCluster, cli_json: JsonCli, cli: Invoke) -> None:
    entries = cli_json("history", cluster.opts.target)["entries"]
    assert entries
    gens = [e["generation"] for e in entries]
    assert gens == sorted(gens) and len(set(gens)) == len(gens)
    assert cli("history", cluster.opts.target, "--limit", "3").exit_code == 0


def test_watch_count_exits(cluster: LocalCluster, cli: Invoke) -> None:
    r = cli("watch", cluster.opts.target, "--count", "1", "-o", "json")
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0]["target"] == cluster.opts.target and lines[0]["generation"] >= 1
    table = cli("watch", cluster.opts.target, "--count", "1")
    assert table.exit_code == 0 and "gen " in table.stdout


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_keymap_writes_a_picture_and_prints_a_rendering(
    cluster: LocalCluster, cli: Invoke, tmp_path: pathlib.Path, suffix: str
) -> None:
    out = tmp_path / f"keymap.{suffix}"
    r = cli("keymap", cluster.opts.target, "--out", str(out), "--width", "48")
    assert r.exit_code == 0, r.stderr
    data = out.read_bytes()
    if suffix == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert ET.fromstring(data).tag.endswith("svg")
    assert "legend" in r.stdout and any(rt.pod_id in r.stdout for rt in cluster.runtimes)
    rows = [ln for ln in r.stdout.splitlines() if ln.lstrip().startswith("g") and "slices" in ln]
    assert rows, r.stdout


def test_keymap_json(cluster: LocalCluster, cli_json: JsonCli) -> None:
    km = cli_json("keymap", cluster.opts.target, "--generations", "4")
    assert 1 <= len(km["rows"]) <= 4
    for row in km["rows"]:
        assert row["slices"][0]["lo"] == 0 and row["slices"][-1]["hi"] == END
    assert set(km["colors"]) <= {r.pod_id for r in cluster.runtimes}


# ----------------------------------------------------------------------------- writes
def test_move_pins_the_slice(cluster: LocalCluster, cli_json: JsonCli) -> None:
    target = cluster.opts.target
    key = slice_key("move-me")
    out = cli_json("move", target, "move-me", "pod-3", "--id", "pin-test")
    assert out["slice_key"] == key
    assert any(o["id"] == "pin-test" and o["kind"] == "move" for o in out["overrides"])

    wait_until(lambda: _slice_of(_slices(cli_json, target), key)["replicas"] == ["pod-3"], 20)
    cli_json("clear", target, "pin-test", "--yes")
    assert all(o["id"] != "pin-test" for o in cli_json("slices", target)["overrides"])


def test_split_and_merge_change_the_slices(cluster: LocalCluster, cli_json: JsonCli) -> None:
    target = cluster.opts.target
    s0 = _slices(cli_json, target)[0]
    at = (s0["lo"] + s0["hi"]) // 2 + 12345
    out = cli_json("split", target, hex(at), "--id", "split-test")
    assert any(o["id"] == "split-test" for o in out["overrides"])
    wait_until(lambda: any(s["lo"] == at for s in _slices(cli_json, target)), 20)

    slices = _slices(cli_json, target)
    lo, hi = slices[-2]["lo"], slices[-1]["hi"]
    assert hi == END
    cli_json("merge", target, hex(lo), "end", "--id", "merge-test")
    wait_until(lambda: any(s["lo"] == lo and s["hi"] == END for s in _slices(cli_json, target)), 20)

    cleared = cli_json("clear", target, "--yes")
    assert cleared["overrides"] == []


def test_drain_and_undo(cluster: LocalCluster, cli_json: JsonCli) -> None:
    out = cli_json("drain", "pod-2")
    assert out["pod"]["id"] == "pod-2" and out["pod"]["state"] == "draining"
    wait_until(lambda: {p["id"]: p["state"] for p in cli_json("pods")["pods"]}["pod-2"] == "draining", 20)
    back = cli_json("drain", "pod-2", "--undo")
    assert back["pod"]["state"] == "active"
    wait_until(lambda: {p["id"]: p["state"] for p in cli_json("pods")["pods"]}["pod-2"] == "active", 20)


# ----------------------------------------------------------------------------- errors
def test_unknown_target_is_one_line(cli: Invoke) -> None:
    for args in (["slices", "no-such-target"], ["explain", "no-such-target", "k"], ["keymap", "no-such-target"],
                 ["history", "no-such-target"]):
        r = cli(*args)
        assert r.exit_code == 4, (args, r.exit_code, r.stderr)
        _assert_one_error_line(r.stderr)
        assert "no-such-target" in r.stderr


def test_bad_input_is_one_line(cluster: LocalCluster, cli: Invoke, tmp_path: pathlib.Path) -> None:
    target = cluster.opts.target
    cases = [
        (["split", target, "not-a-key"], 2),
        (["split", target, "0"], 2),
        (["merge", target, "0x10", "0x5"], 2),
        (["keymap", target, "--out", str(tmp_path / "k.txt")], 2),
        (["move", target, "k", " , "], 2),
        (["drain", "no-such-pod"], 4),
        (["clear", target, "no-such-override", "--yes"], 4),
    ]
    for args, code in cases:
        r = cli(*args)
        assert r.exit_code == code, (args, r.exit_code, r.stdout, r.stderr)
        _assert_one_error_line(r.stderr)
    r = cli("move", target, "k", "no-such-pod")
    assert r.exit_code != 0
    _assert_one_error_line(r.stderr)


def test_unreachable_assigner_is_one_line(cli: Invoke) -> None:
    r = cli("targets", assigner="127.0.0.1:1")
    assert r.exit_code == 3
    _assert_one_error_line(r.stderr)
    assert "127.0.0.1:1" in r.stderr


def test_real_entry_point_error_has_no_traceback(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "BRUNOISE_ASSIGNER": "127.0.0.1:1", "BRUNOISE_STATE_DIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "brunoise.cli.main", "pods"], capture_output=True, text=True, env=env,
                       timeout=60, check=False)
    assert p.returncode == 3
    _assert_one_error_line(p.stderr)


def test_cluster_file_points_the_cli_at_the_cluster(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    from typer.testing import CliRunner

    from brunoise.cli.cluster import remove_cluster_file, write_cluster_file
    from brunoise.cli.main import app

    path = write_cluster_file(cluster.record())
    try:
        r = CliRunner().invoke(app, ["targets", "-o", "json"], env={"BRUNOISE_ASSIGNER": None})
        assert r.exit_code == 0, r.stderr
        assert cluster.opts.target in {t["target"] for t in json.loads(r.stdout)["targets"]}
    finally:
        remove_cluster_file()
    assert not path.exists()


def test_cli_without_a_token_is_refused_in_one_line(cluster: LocalCluster) -> None:
    """The cluster is secure by default: no token (or a wrong one) is UNAUTHENTICATED, exit code 6."""
    runner = CliRunner()
    for token in ("", "not-the-admin-token"):
        env = {"BRUNOISE_ASSIGNER": cluster.assigner_addr, "BRUNOISE_TLS_CA": cluster.tls_ca, "BRUNOISE_TOKEN": token}
        r = runner.invoke(app, ["drain", "pod-1"], env=env)
        assert r.exit_code == 6, (r.stdout, r.stderr)
        assert "refused" in r.stderr and "token" in r.stderr and "Traceback" not in r.stderr
    with AdminClient(cluster.assigner_addr, auth=cluster.auth) as c:
        assert all(p.pod.state == slicing_pb2.POD_STATE_ACTIVE for p in c.list_pods().pods)


def _chat(router_http: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"model": "brunoise-sim", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
    req = urllib.request.Request(router_http + "/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json", "x-session-id": "s1", **headers})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_router_needs_the_api_key_the_cluster_file_holds(cluster: LocalCluster) -> None:
    """`cluster up` runs the router with an API keys file; the demo key is in the 0600 cluster record, so the
    README's curl works with it and fails without it."""
    rec = cluster.record()
    key = rec["api_key"]
    assert key and rec["router_http"] == cluster.router_http
    code, body = _chat(cluster.router_http, {})
    assert code == 401 and body["error"]["code"] == "invalid_api_key", body
    code, body = _chat(cluster.router_http, {"authorization": "Bearer not-the-key"})
    assert code == 401, body
    code, body = _chat(cluster.router_http, {"authorization": f"Bearer {key}"})
    assert code == 200 and body["choices"][0]["message"]["content"], body
    keys_file = pathlib.Path(cluster.api_keys_file)
    assert key not in keys_file.read_text(), "the keys file holds digests, never keys"
    assert keys_file.stat().st_mode & 0o077 == 0


def _stored_generation(snapshot: pathlib.Path, copy: pathlib.Path, target: str) -> int:
    """The target's generation in a copy of an embedded store's snapshot file (0: none yet)."""
    from sharder.store import open_store

    if not snapshot.exists():
        return 0
    copy.write_bytes(snapshot.read_bytes())

    async def read() -> int:
        store = open_store("embedded", snapshot_path=str(copy))
        await store.start()
        try:
            v = await store.get(target)
            return v.generation if v is not None else 0
        finally:
            await store.close()

    return asyncio.run(read())


def test_cluster_up_persists_the_assigner_store(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    """Finding 3: `cluster up` ran the embedded store without a snapshot file, so an assigner restarted after
    a crash began again at a low generation. Its committed generations now reach a snapshot file."""
    with AdminClient(cluster.assigner_addr, auth=cluster.auth) as c:
        gen = c.get_assignment(cluster.opts.target).generation
    snapshot = cluster.log_dir / "assigner-snapshot.json"
    assigner = next(p for p in cluster.group.procs if p.name == "assigner")
    assert str(snapshot) in assigner.argv
    wait_until(lambda: _stored_generation(snapshot, tmp_path / "copy.json", cluster.opts.target) >= gen, 10)
