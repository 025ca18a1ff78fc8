"""Fixtures for the product tests: one real local cluster (the `cluster up` code path) per module, and CLI runners."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from brunoise.cli.cluster import ClusterOptions, LocalCluster
from brunoise.cli.main import app

RUNTIMES = 3


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """Keep every test away from ~/.brunoise and from a developer's $BRUNOISE_ASSIGNER."""
    d = tmp_path_factory.mktemp("brunoise-state")
    keys = ("BRUNOISE_STATE_DIR", "BRUNOISE_ASSIGNER", "BRUNOISE_TOKEN", "BRUNOISE_TOKEN_FILE", "BRUNOISE_TLS_CA")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["BRUNOISE_STATE_DIR"] = str(d)
    for k in keys[1:]:
        os.environ.pop(k, None)
    yield d
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """An assigner (embedded store), RUNTIMES sim runtimes and a router, stopped by PID afterwards."""
    opts = ClusterOptions(runtimes=RUNTIMES, slices=8, round_interval_s=0.5, log_dir=tmp_path_factory.mktemp("cluster"))
    cl = LocalCluster(opts)
    cl.start()
    try:
        yield cl
    finally:
        cl.close()
        assert not [p.name for p in cl.group.procs if p.alive()], "a child outlived close()"


Invoke = Callable[..., Result]


@pytest.fixture()
def cli(cluster: LocalCluster) -> Invoke:
    """Run `brunoise ARGS...` in-process against the module's cluster."""
    runner = CliRunner()

    def invoke(*args: str, assigner: str | None = None) -> Result:
        env = {"BRUNOISE_ASSIGNER": assigner or cluster.assigner_addr, "COLUMNS": "200",
               "BRUNOISE_TOKEN": cluster.admin_token, "BRUNOISE_TLS_CA": cluster.tls_ca}  # fmt: skip
        return runner.invoke(app, list(args), env=env)

    return invoke


@pytest.fixture()
def cli_json(cli: Invoke) -> Callable[..., Any]:
    """Run a command with -o json, assert it succeeded, return the parsed output."""

    def run(*args: str) -> Any:
        r = cli(*args, "-o", "json")
        assert r.exit_code == 0, f"brunoise {' '.join(args)} -> {r.exit_code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        return json.loads(r.stdout)

    return run
