"""The router's and the runtime's settings: one declared model each; flags over BRUNOISE_ROUTER_* /
BRUNOISE_RUNTIME_* variables over the YAML file over defaults; --help describes every knob."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from axon_router.knobs import Knobs
from axon_router.main import parse_args as router_args
from axon_router.settings import RouterSettings, parse_router_settings, router_parser
from runtime.main import parse_args as runtime_args
from runtime.settings import RuntimeSettings, runtime_parser
from sharder.server_settings import ServerSettings

A = ["--assigner", "127.0.0.1:1"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("BRUNOISE_ROUTER_", "BRUNOISE_RUNTIME_")):
            monkeypatch.delenv(k)


def test_router_flag_beats_env_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text("http_port: 9001\ngrpc_port: 9002\nwait_ready_s: 3\nload_cap: 2.5\nsticky: false\n"
                   "assigner: [a1:1, a2:2]\n")  # fmt: skip
    monkeypatch.setenv("BRUNOISE_ROUTER_GRPC_PORT", "9102")
    monkeypatch.setenv("BRUNOISE_ROUTER_WAIT_READY_S", "4")
    monkeypatch.setenv("BRUNOISE_ROUTER_STEP_S", "0.01")
    s, knobs = parse_router_settings(["--config", str(cfg), "--wait-ready-s", "5"])
    assert s.wait_ready_s == 5.0  # flag over env over file
    assert s.grpc_port == 9102  # env over file
    assert s.http_port == 9001 and s.assigner == ["a1:1", "a2:2"]  # file over default
    assert s.host == "127.0.0.1" and s.drain_timeout_s == 30.0  # defaults
    assert (knobs.load_cap, knobs.sticky, knobs.step_s) == (2.5, False, 0.01)  # knobs: file, file, env
    assert knobs.max_attempts == Knobs().max_attempts
    assert router_args([*A, "--sticky", "true", "--config", str(cfg)]).sticky is True  # a knob flag over the file


def test_router_config_file_from_env_and_missing_assigner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        router_args([])
    assert "--assigner" in capsys.readouterr().err
    cfg = tmp_path / "r.yaml"
    cfg.write_text("quotas: true\n")
    monkeypatch.setenv("BRUNOISE_ROUTER_CONFIG", str(cfg))
    monkeypatch.setenv("BRUNOISE_ROUTER_ASSIGNER", '["e1:1", "e2:2"]')
    s = router_args([])
    assert s.quotas is True and s.assigner == ["e1:1", "e2:2"]
    cfg.write_text("load_capp: 1\n")
    with pytest.raises(SystemExit):
        router_args([])
    assert "load_capp" in capsys.readouterr().err
    monkeypatch.setenv("BRUNOISE_ROUTER_LOAD_CAP", "0.5")
    cfg.write_text("")
    with pytest.raises(SystemExit):
        router_args([])
    assert "load_cap" in capsys.readouterr().err


def test_runtime_flag_beats_env_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "runtime.yaml"
    cfg.write_text("kv_blocks: 111\nmax_num_seqs: 7\nseed: 3\nlabels: {zone: a}\nengine_arg: [base_url=http://x]\n")
    monkeypatch.setenv("BRUNOISE_RUNTIME_MAX_NUM_SEQS", "8")
    monkeypatch.setenv("BRUNOISE_RUNTIME_SEED", "4")
    s = runtime_args(["--config", str(cfg), "--seed", "5", "--target", "chat"])
    assert s.seed == 5  # flag over env over file
    assert s.max_num_seqs == 8  # env over file
    assert s.kv_blocks == 111 and s.labels == {"zone": "a"}  # file over default
    assert s.engine_options() == {"base_url": "http://x"}
    assert s.time_scale == 1.0 and s.engine == "sim" and s.target == "chat"  # defaults and a flag
    assert runtime_args(["--labels", "zone=b, rack=r1", "--config", str(cfg)]).labels == {"zone": "b", "rack": "r1"}


def test_runtime_bad_values_are_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, name in (
        (["--labels", "nokey"], "--labels"),
        (["--engine-arg", "novalue"], "--engine-arg"),
        (["--header-timeout-s", "0"], "header_timeout_s"),
        (["--assigner", "a:1"], "--target"),
    ):
        with pytest.raises(SystemExit):
            runtime_args(argv)
        assert name in capsys.readouterr().err, argv


@pytest.mark.parametrize(
    ("model", "parser", "prefix"),
    [(RouterSettings, router_parser, "BRUNOISE_ROUTER_"), (RuntimeSettings, runtime_parser, "BRUNOISE_RUNTIME_")],
)
def test_help_describes_every_knob(model: type[ServerSettings], parser: object, prefix: str) -> None:
    assert callable(parser)
    text = " ".join(parser().format_help().split())
    for name, info in model.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text, name
        assert info.description, name
        assert " ".join(info.description.split())[:30] in text, name
        assert f"${prefix}{name.upper()}" in text, name
