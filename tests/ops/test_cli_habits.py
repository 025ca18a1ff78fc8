"""CLI habits: --version from the package metadata, shell completion, several -a endpoints (tried in order, writes
following the leader), and `clear` asking before it clears (refusing without a terminal unless --yes)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from brunoise.cli import admin
from brunoise.cli.client import resolve_assigner, split_endpoints
from brunoise.cli.main import COMPLETE_VAR, app
from brunoise_api.v1 import assigner_pb2
from sharder.etcd_server import EtcdCluster
from tests.assigner.conftest import Assigner
from tests.waiting import until

DEAD = "127.0.0.1:1"  # nothing listens on port 1: a replica that cannot be reached


def invoke(*args: str, stdin: str | None = None, env: dict[str, str | None] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=stdin, env=env)


def test_version_is_the_installed_distributions() -> None:
    r = invoke("--version")
    assert r.exit_code == 0
    assert r.stdout.strip() == f"brunoise {importlib.metadata.version('brunoise')}"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_for_each_shell(shell: str) -> None:
    r = invoke("completion", shell)
    assert r.exit_code == 0, r.stderr
    assert COMPLETE_VAR in r.stdout and "brunoise" in r.stdout
    assert f"complete_{shell}" in r.stdout  # the instruction the script sends back to the CLI
    assert invoke("completion", "tcsh").exit_code == 2


def test_the_cli_answers_what_the_bash_script_asks() -> None:
    env = {**os.environ, COMPLETE_VAR: "complete_bash", "COMP_WORDS": "brunoise tar", "COMP_CWORD": "1"}
    out = subprocess.run([sys.executable, "-m", "brunoise.cli.main"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()  # fmt: skip
    assert set(out) == {"target", "targets"}
    env.update(COMP_WORDS="brunoise clear chat --y", COMP_CWORD="3")
    out = subprocess.run([sys.executable, "-m", "brunoise.cli.main"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()  # fmt: skip
    assert out == ["--yes"]


def test_endpoints_from_repeats_commas_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_endpoints(["a:1,b:2", "c:3", "a:1", " "]) == ["a:1", "b:2", "c:3"]
    monkeypatch.setenv("BRUNOISE_ASSIGNER", "e:1, f:2")
    assert resolve_assigner(None) == ["e:1", "f:2"]
    assert resolve_assigner(["g:3"]) == ["g:3"]


def test_clear_refuses_without_a_terminal_and_yes() -> None:
    r = invoke("clear", "chat", "-a", DEAD)
    assert r.exit_code == 2
    assert "--yes" in r.stderr and "terminal" in r.stderr
    r = invoke("clear", "chat", "-a", DEAD, "--yes")  # confirmed: it goes on to call the (unreachable) assigner
    assert r.exit_code == 3 and DEAD in r.stderr


def test_clear_asks_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "stdin_is_a_terminal", lambda: True)
    r = invoke("clear", "chat", "pin-1", "-a", DEAD, stdin="n\n")
    assert r.exit_code == 1 and "nothing changed" in r.stderr
    assert "Clear overrides pin-1 on target chat?" in r.stderr
    r = invoke("clear", "chat", "-a", DEAD, stdin="y\n")
    assert "ALL manual overrides" in r.stderr and r.exit_code == 3  # said yes: it tried the assigner


async def _leader_of(reps: list[Assigner]) -> Assigner:
    """The elected replica, once every replica names the same one and knows the target "chat"."""

    async def agreed() -> Assigner | None:
        views = [await r.stub.ListTargets(assigner_pb2.ListTargetsRequest(), timeout=2) for r in reps]
        if not all("chat" in {t.target for t in v.targets} for v in views):
            return None
        return next((x for x in reps if {v.leader_id for v in views} == {x.id}), None)

    found: Assigner = await until(agreed, 20, "every replica to name one leader and know the target")
    return found


@pytest.mark.etcd
@pytest.mark.slow
async def test_several_endpoints_skip_the_unreachable_and_writes_follow_the_leader(
    start_assigner: Callable[..., Assigner], make_etcd_cluster: Callable[..., EtcdCluster]
) -> None:
    cluster = make_etcd_cluster(1)
    prefix = f"/brunoise-test/{uuid.uuid4().hex[:8]}"
    opts: dict[str, Any] = {"store": "etcd", "etcd": list(cluster.endpoints), "prefix": prefix}
    reps = [start_assigner(**opts, targets_from_reports=False, extra=("--target", "chat=m")) for _ in range(2)]
    leader = await _leader_of(reps)
    follower = next(r for r in reps if r is not leader)
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # what the CLI must get around: a follower refuses writes
        await follower.stub.Drain(assigner_pb2.DrainRequest(pod_id="nobody"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    def cli_json(*args: str) -> Any:
        r = invoke(*args, "-o", "json")
        assert r.exit_code == 0, (args, r.stdout, r.stderr)
        return json.loads(r.stdout)

    got = await asyncio.to_thread(cli_json, "target", "get", "chat", "-a", DEAD, "-a", follower.addr)
    assert got["target"] == "chat"
    # a write: the dead replica is skipped, the follower names the leader, the leader applies it
    await asyncio.to_thread(cli_json, "target", "set", "chat", "churn_budget=0.25", "-a", f"{DEAD},{follower.addr}")
    got = await asyncio.to_thread(cli_json, "target", "get", "chat", "-a", leader.addr)
    assert got["churn_budget"] == pytest.approx(0.25)
    r = invoke("targets", "-a", DEAD, "-a", "127.0.0.1:2")
    assert r.exit_code == 3 and "127.0.0.1:2" in r.stderr  # every replica unreachable: named is the last one tried
