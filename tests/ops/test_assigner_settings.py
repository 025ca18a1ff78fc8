"""The assigner's settings: one declared model; flags over BRUNOISE_ASSIGNER_* variables over the YAML file over
defaults; --help describes every knob; bad values and unknown file keys are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharder.assigner.main import parse_args
from sharder.assigner.settings import AssignerSettings, assigner_parser


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("BRUNOISE_ASSIGNER_") or k == "BRUNOISE_CREDENTIALS":
            monkeypatch.delenv(k)


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "assigner.yaml"
    cfg.write_text("round_interval: 0.7\nlease_ttl: 9\nreport_interval: 0.3\ntarget: [chat=m1, code=m2]\n")
    monkeypatch.setenv("BRUNOISE_ASSIGNER_LEASE_TTL", "4")
    monkeypatch.setenv("BRUNOISE_ASSIGNER_REPORT_INTERVAL", "0.4")
    args = parse_args(["--config", str(cfg), "--report-interval", "0.5"])
    assert args.report_interval == 0.5  # flag
    assert args.lease_ttl == 4.0  # env over file
    assert args.round_interval == 0.7  # file over default
    assert args.port == 0 and args.store == "embedded"  # defaults
    assert [t.target for t in args.targets] == ["chat", "code"] and args.targets[1].model == "m2"


def test_config_file_from_env_and_lists_from_json_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "a.yaml"
    cfg.write_text("store: etcd\n")
    monkeypatch.setenv("BRUNOISE_ASSIGNER_CONFIG", str(cfg))
    monkeypatch.setenv("BRUNOISE_ASSIGNER_ETCD_ENDPOINT", '["e1:2379", "e2:2379"]')
    args = parse_args([])
    assert args.store == "etcd" and args.etcd_endpoint == ["e1:2379", "e2:2379"]
    monkeypatch.setenv("BRUNOISE_CREDENTIALS", "/secrets/c.json")  # the older variable still works
    assert parse_args([]).credentials == "/secrets/c.json"


def test_bad_values_and_unknown_keys_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--round-interval", "0"])
    assert "round_interval" in capsys.readouterr().err
    cfg = tmp_path / "a.yaml"
    cfg.write_text("round_intervall: 1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(cfg)])
    assert "round_intervall" in capsys.readouterr().err
    monkeypatch.setenv("BRUNOISE_ASSIGNER_PORT", "not-a-port")
    with pytest.raises(SystemExit):
        parse_args([])
    assert "port" in capsys.readouterr().err


def test_help_describes_every_visible_knob() -> None:
    text = " ".join(assigner_parser("brunoise-assigner", "").format_help().split())
    for name, info in AssignerSettings.model_fields.items():
        if name == "policy":
            continue
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert info.description and " ".join(info.description.split())[:30] in text, name
        assert f"$BRUNOISE_ASSIGNER_{name.upper()}" in text, name
