"""Ablations: brunoise with one mechanism switched off, as router knob flags and target-config overrides."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Ablation:
    """One mechanism switched off: the router knobs and the TargetConfig fields that do it."""

    name: str
    what: str
    router_knobs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    target_config: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The pods keep the run's KV connector (False: none, so a warm-up prefills what it would have read).
    kv_transfer: bool = True


#: Every ablation ``--ablate`` knows, and how it maps onto the router's knobs and the target's config.
ABLATIONS: dict[str, Ablation] = {
    a.name: a
    for a in (
        Ablation("flat_keys", "SliceKey = the app key hashed whole (no group bits)", {"key_layout": "flat"}),
        Ablation("no_bounded_load", "no bounded-load cap inside the subset", {"load_cap": "0"}),
        Ablation("no_sticky", "no stickiness escape in the pick", {"sticky": "false"}),
        Ablation("no_calm", "the assigner acts on every round's noise (no hysteresis/cooldown)", {}, {"calm": "false"}),
        Ablation("no_replica_true", "equal replica shares of a slice", {}, {"replica_true_load": "false"}),
        Ablation("no_held", "stickiness stops at the subset (no held tier)", {"sticky_outside": "false"}),
        Ablation("no_overflow", "no fleet-wide cap: new sessions never leave their subset", {"fleet_cap": "0"}),
        Ablation(
            "no_cap_escape", "a strict load cap: no escape to the holder of a long document", {"cap_escape_s": "0"}
        ),
        Ablation("no_balance", "new sessions by estimated TTFT alone (not by recent load)", {"balance_slack_s": "0"}),
        Ablation(
            "short_hash", "the hit estimate hashes 256 prompt chunks (16 KB), as before", {"max_prefix_chunks": "256"}
        ),
        Ablation(
            "no_warmup", "no warm-up on reshard: a new replica warms on live traffic", {}, {"warm_deadline_s": "0"}
        ),
        Ablation("no_kv_read", "warm-ups prefill a donor's prompts (the pods have no KV connector)", kv_transfer=False),
        Ablation(
            "two_replicas",
            "two replicas per slice (the default before stop 4)",
            {},
            {"min_replicas": "2", "max_replicas": "2"},
        ),
        Ablation(
            "three_replicas",
            "three replicas per slice (the default from stop 4 to stop 19)",
            {},
            {"min_replicas": "3", "max_replicas": "3"},
        ),
        Ablation("no_kv_room", "a crowded pod keeps every session (stickiness alone)", {"kv_room": "0"}),
        Ablation(
            "no_kv_pull",
            "a request picked away from the pod holding its prefix computes it again (no KV pull hint)",
            {"kv_pull_min_chunks": "0"},
        ),
        Ablation(
            "no_memory_trust",
            "the router's memory of what it sent outranks cache summaries for its whole minute",
            {"prefix_memory_trust_s": "0"},
        ),
        Ablation(
            "no_miss_weight",
            "pods ranked by estimated TTFT alone (not the prefill a request adds)",
            {"miss_weight": "0"},
        ),
        Ablation(
            "no_drain_keep",
            "a draining pod takes no request: its sessions move the moment the drain begins",
            {"drain_keep_s": "0"},
        ),
    )
}


def select(spec: str) -> tuple[Ablation, ...]:
    """Ablations from ``--ablate``: comma-separated names ("" = none)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
    return tuple(ABLATIONS[n] for n in names)


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """``key=value`` strings (repeatable CLI options) as a dict; later ones win."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} wants key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


# ------------------------------------------------------------------------------------------------ router knobs


def _knob_parser() -> argparse.ArgumentParser:
    from axon_router.settings import router_parser

    p = router_parser()
    p.exit_on_error = False
    return p


def _parse_quietly(p: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse without printing or exiting: a bad value raises ValueError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return p.parse_args(list(argv))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ValueError(f"{' '.join(argv)}: {exc} {err.getvalue().strip()}") from None


_FALSE = ("false", "0", "no", "off")
_TRUE = ("true", "1", "yes", "on")


def router_knob_argv(knobs: Mapping[str, str]) -> list[str]:
    """The brunoise-router flags that set ``knobs`` (knob name -> value as text), checked against its own parser.

    The flag of each knob comes from ``axon_router.settings.router_parser`` (the router's flags are generated
    from its knob table), and each value is parsed by that same parser to make sure the router gets what was meant:
    a boolean knob declared as ``type=bool`` turns any non-empty text into True, so False is spelt as the empty
    string there; a ``BooleanOptionalAction`` knob gets ``--name`` / ``--no-name``.
    """
    if not knobs:
        return []
    p = _knob_parser()
    from axon_router.knobs import Knobs, parse_bool

    by_dest = {a.dest: a for a in p._actions if a.dest not in ("help", "config")}
    argv: list[str] = []
    for name, text in knobs.items():
        action = by_dest.get(name)
        if action is None:
            known = sorted(Knobs.field_names())
            raise ValueError(f"brunoise-router has no knob {name!r} in this checkout; knobs: {', '.join(known)}")
        flag = action.option_strings[0]
        if isinstance(action.default, bool) or action.type is parse_bool:
            want = _bool(text, f"knob {name}")
            if isinstance(action, argparse.BooleanOptionalAction):
                positive = next(s for s in action.option_strings if not s.startswith("--no-"))
                argv.append(positive if want else "--no-" + positive[2:])
                continue
            spellings = ("true", "1", "") if want else ("false", "0", "")
            for spelt in spellings:
                with contextlib.suppress(ValueError):
                    if getattr(_parse_quietly(p, [flag, spelt]), action.dest) is want:
                        argv += [flag, spelt]
                        break
            else:
                raise ValueError(f"no spelling of {want} that the router parses for knob {name}")
            continue
        _parse_quietly(p, [flag, text])
        argv += [flag, text]
    return argv


def _bool(text: str, what: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{what} wants true or false, got {text!r}")


# ------------------------------------------------------------------------------------------------ target config


def apply_target_config(cfg: Any, overrides: Mapping[str, str]) -> None:
    """Set ``overrides`` (field name -> value as text) on a ``slicing_pb2.TargetConfig`` message, by field type."""
    from google.protobuf.descriptor import FieldDescriptor as F

    fields = cfg.DESCRIPTOR.fields_by_name
    for name, text in overrides.items():
        f = fields.get(name)
        if f is None or f.message_type is not None:
            scalar = sorted(n for n, d in fields.items() if d.message_type is None)
            raise ValueError(f"TargetConfig has no scalar field {name!r} in this checkout; fields: {', '.join(scalar)}")
        if f.cpp_type == F.CPPTYPE_BOOL:
            value: Any = _bool(text, f"target config {name}")
        elif f.cpp_type in (F.CPPTYPE_DOUBLE, F.CPPTYPE_FLOAT):
            value = float(text)
        elif f.cpp_type in (F.CPPTYPE_INT32, F.CPPTYPE_INT64, F.CPPTYPE_UINT32, F.CPPTYPE_UINT64):
            value = int(text)
        elif f.cpp_type == F.CPPTYPE_STRING:
            value = text
        else:
            raise ValueError(f"TargetConfig field {name!r} has a type the benchmark cannot set from text")
        setattr(cfg, name, value)


def check_target_config(overrides: Mapping[str, str]) -> None:
    """Raise ValueError now (before any process starts) if ``overrides`` cannot be applied."""
    from brunoise_api.v1 import slicing_pb2

    apply_target_config(slicing_pb2.TargetConfig(), overrides)
