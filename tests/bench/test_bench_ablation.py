"""Ablations: the mapping table, router knob flags checked against the router's parser, target-config overrides."""

from __future__ import annotations

import argparse

import pytest

from bench import ablation
from bench.compare import BenchConfig, build_config, parse_args
from brunoise_api.v1 import slicing_pb2


def fake_knob_parser() -> argparse.ArgumentParser:
    """What the router's settings parser generates for knobs, with the boolean spellings the router may use."""
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    p.add_argument("--key-layout", dest="key_layout", type=str, default="grouped")
    p.add_argument("--load-cap", dest="load_cap", type=float, default=1.25)
    p.add_argument("--sticky", dest="sticky", type=bool, default=True)  # bool("false") is True
    p.add_argument("--flag-opt", dest="flag_opt", action=argparse.BooleanOptionalAction, default=True)
    return p


def test_the_table_maps_every_name_the_issue_asks_for() -> None:
    assert ablation.ABLATIONS["flat_keys"].router_knobs == {"key_layout": "flat"}
    assert ablation.ABLATIONS["no_bounded_load"].router_knobs == {"load_cap": "0"}
    assert ablation.ABLATIONS["no_sticky"].router_knobs == {"sticky": "false"}
    assert ablation.ABLATIONS["no_calm"].target_config == {"calm": "false"}
    assert ablation.ABLATIONS["no_replica_true"].target_config == {"replica_true_load": "false"}
    assert [a.name for a in ablation.select("no_calm, flat_keys")] == ["no_calm", "flat_keys"]
    assert ablation.select("") == ()
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation.select("no_such")


def test_router_flags_parse_back_to_the_meant_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ablation, "_knob_parser", fake_knob_parser)
    argv = ablation.router_knob_argv(
        {"key_layout": "flat", "load_cap": "0", "sticky": "false", "flag_opt": "false"}
    )
    ns = fake_knob_parser().parse_args(argv)
    assert ns.key_layout == "flat"
    assert ns.load_cap == 0.0
    assert ns.sticky is False  # spelt so that type=bool really gives False
    assert ns.flag_opt is False and "--no-flag-opt" in argv
    ns = fake_knob_parser().parse_args(ablation.router_knob_argv({"sticky": "true", "flag_opt": "yes"}))
    assert ns.sticky is True and ns.flag_opt is True
    with pytest.raises(ValueError, match="no knob 'nope'"):
        ablation.router_knob_argv({"nope": "1"})
    with pytest.raises(ValueError, match="load-cap"):
        ablation.router_knob_argv({"load_cap": "lots"})
    with pytest.raises(ValueError, match="true or false"):
        ablation.router_knob_argv({"sticky": "maybe"})


def test_real_router_knobs_get_real_flags() -> None:
    from axon_router.knobs import Knobs

    argv = ablation.router_knob_argv({"max_attempts": "2", "step_s": "0.01"})
    assert len(argv) == 4
    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    assert set(flags.values()) == {"2", "0.01"}
    assert Knobs.field_names()  # the flags came from the router's own knob table


def test_target_config_overrides_by_field_type() -> None:
    cfg = slicing_pb2.TargetConfig(max_replicas=3)
    ablation.apply_target_config(cfg, {"max_replicas": "2", "imbalance_tolerance": "0.2", "model": "m"})
    assert (cfg.max_replicas, cfg.imbalance_tolerance, cfg.model) == (2, 0.2, "m")
    with pytest.raises(ValueError, match="no scalar field 'eligibility'"):
        ablation.apply_target_config(cfg, {"eligibility": "x"})
    with pytest.raises(ValueError):
        ablation.apply_target_config(cfg, {"max_replicas": "two"})


def test_parse_pairs() -> None:
    assert ablation.parse_pairs(["a=1", "b-c = x", "a=2"], "--x") == {"a": "2", "b_c": "x"}
    with pytest.raises(ValueError, match="key=value"):
        ablation.parse_pairs(["novalue"], "--x")


def test_ablation_rows_are_brunoise_with_the_overrides_on_top() -> None:
    cfg = BenchConfig(
        workloads=(),
        routers=("brunoise", "round_robin"),
        router_knobs={"max_attempts": "2"},
        target_config={"max_replicas": "2"},
        ablations=("no_calm", "flat_keys"),
    )
    rows = cfg.variants()
    assert [r.label for r in rows] == ["brunoise", "round_robin", "brunoise-no_calm", "brunoise-flat_keys"]
    assert rows[0].router_knobs == {"max_attempts": "2"} and rows[1].router_knobs == {}
    assert rows[2].router == "brunoise" and rows[2].ablation == "no_calm"
    assert rows[2].target_config == {"max_replicas": "2", "calm": "false"}
    assert rows[3].router_knobs == {"max_attempts": "2", "key_layout": "flat"}


def test_cli_builds_one_spec_per_workload() -> None:
    cfg = build_config(parse_args(["--quick", "--workload", "docs,agentic", "--kv-blocks", "4096"]))
    assert [s.name for s in cfg.workloads] == ["docs", "agentic"]
    assert all(s.kv_blocks == 4096 for s in cfg.workloads)
    assert cfg.workloads[1].max_model_len == 32_768
    assert cfg.workloads[0].workload.steady_s == 2.5
    cfg = build_config(parse_args(["--workload", "all", "--steady-s", "3"]))
    assert len(cfg.workloads) == 4 and all(s.workload.steady_s == 3.0 for s in cfg.workloads)
    with pytest.raises(SystemExit):
        build_config(parse_args(["--router-knob", "no_such_knob=1"]))
    with pytest.raises(SystemExit):
        build_config(parse_args(["--workload", "agentic", "--kv-blocks", "64"]))


def test_cli_repeat() -> None:
    assert build_config(parse_args(["--quick"])).repeat == 1
    assert build_config(parse_args(["--quick", "--repeat", "3"])).repeat == 3
    with pytest.raises(SystemExit):
        build_config(parse_args(["--repeat", "0"]))


@pytest.mark.parametrize(("name", "count"), [("two_replicas", 2), ("three_replicas", 3)])
def test_replica_count_ablations_pin_both_bounds_over_the_default(name: str, count: int) -> None:
    # The bench's target starts from TargetConfig's defaults (four replicas, min and max since stop 19), so an
    # ablation that set only min_replicas would leave the assigner free to keep four.
    from sharder.codec import config_from_proto, config_to_proto
    from sharder.config import TargetConfig

    cfg = config_to_proto(TargetConfig(target="t"))
    ablation.apply_target_config(cfg, ablation.ABLATIONS[name].target_config)
    applied = config_from_proto(cfg).validate()
    assert (applied.min_replicas, applied.max_replicas) == (count, count)
