"""The flag / environment / YAML plumbing every server's declared settings model shares (precedence and ``--help``)."""

from __future__ import annotations

import argparse
import contextvars
import os
import pathlib
import typing
from collections.abc import Sequence
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

#: the YAML file's values while ``ServerSettings.load`` builds an instance (the lowest-priority source)
_FILE_VALUES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("settings_file", default=None)

S = TypeVar("S", bound="ServerSettings")


def parse_bool(text: str) -> bool:
    """A boolean flag value: true/false, yes/no, on/off, 1/0 (argparse's ``type=bool`` takes any text as true)."""
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def group(name: str, **more: Any) -> dict[str, Any]:
    """``json_schema_extra`` of a field shown under the ``--help`` heading ``name`` (``more``: see ``build_parser``)."""
    return {"group": name, **more}


class ServerSettings(BaseSettings):
    """Base of a server's settings model. Subclasses set ``model_config`` with their ``env_prefix``; precedence:
    flag, then environment variable (prefix + the name in capitals; lists and mappings as JSON), then the YAML file
    (``--config``, or the prefix + ``CONFIG`` variable), then the declared default."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=_FILE_VALUES.get() or {})

    @classmethod
    def env_prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix") or "")

    @classmethod
    def config_env(cls) -> str:
        """The variable naming the YAML file when ``--config`` is not given."""
        return cls.env_prefix() + "CONFIG"

    @classmethod
    def load(cls, flags: dict[str, Any], config_file: str | None) -> Self:
        """Flags over the environment over ``config_file`` (YAML mapping of these names) over the defaults."""
        values: dict[str, Any] = {}
        if config_file:
            doc = yaml.safe_load(pathlib.Path(config_file).read_text())
            if doc is not None and not isinstance(doc, dict):
                raise ValueError(f"{config_file}: expected a mapping of settings")
            values = {str(k).replace("-", "_"): v for k, v in (doc or {}).items()}
            unknown = sorted(set(values) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"{config_file}: unknown settings {unknown}")
        token = _FILE_VALUES.set(values)
        try:
            return cls(**flags)
        finally:
            _FILE_VALUES.reset(token)


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None or info.default is None or info.default == "":
        return ""
    return f" (default {info.default})"


def build_parser(model: type[ServerSettings], prog: str, description: str | None) -> argparse.ArgumentParser:
    """An argparse front end generated from ``model``: one ``--flag`` per field, its description (and default and
    variable) as the help; flags not given are absent from the result, so the environment and the file can supply
    them. Field extras: ``group`` (help heading), ``hidden``, ``takes_value`` (a bool flag that takes true/false
    instead of being a switch), ``metavar``."""
    p = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    p.add_argument("--config", metavar="YAML", default=None,
                   help=f"YAML file of these settings by name (also ${model.config_env()}); flags and variables win")  # fmt: skip
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, info in model.model_fields.items():
        extra = _extra(info)
        group_name = extra.get("group")
        target: Any = p
        if isinstance(group_name, str):
            target = groups.get(group_name) or groups.setdefault(group_name, p.add_argument_group(group_name))
        flag = "--" + name.replace("_", "-")
        env = f"${model.env_prefix()}{name.upper()}"
        text = f"{info.description or ''}{_default_text(info)} [{env}]".replace("%", "%%")
        help_text = argparse.SUPPRESS if extra.get("hidden") else text
        ann = info.annotation
        args = typing.get_args(ann)
        base = next((a for a in args if a is not type(None)), ann) if args else ann
        metavar = extra.get("metavar")
        if ann is bool and extra.get("takes_value"):
            target.add_argument(flag, type=parse_bool, metavar=metavar or "BOOL", help=help_text)
        elif ann is bool:
            target.add_argument(flag, action="store_true", help=help_text)
        elif typing.get_origin(ann) is list:
            target.add_argument(flag, action="append", metavar=metavar or name.upper(), help=help_text)
        elif typing.get_origin(ann) is Literal:
            target.add_argument(flag, choices=list(args), help=help_text)
        else:
            kind = base if base in (int, float) else str
            target.add_argument(flag, type=kind, metavar=metavar, help=help_text)
    return p


def parse_settings(model: type[S], p: argparse.ArgumentParser, argv: Sequence[str] | None) -> S:
    """Parse ``argv`` and resolve every setting of ``model``; a bad value exits through ``p.error`` naming it."""
    ns = vars(p.parse_args(argv))
    config_file = ns.pop("config", None) or os.environ.get(model.config_env()) or None
    try:
        return model.load(ns, config_file)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        p.error(errs)
    except (OSError, ValueError) as exc:
        p.error(f"--config: {exc}")
