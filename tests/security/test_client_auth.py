"""Where a router or runtime gets its assigner credentials: --token-file/--tls-ca, else the environment."""

from __future__ import annotations

import pathlib

from pydantic_settings import SettingsConfigDict

from sharder.security.client import ENV_TLS_CA, ENV_TOKEN, ENV_TOKEN_FILE, ClientAuth, ClientAuthSettings
from sharder.server_settings import ServerSettings, build_parser, parse_settings


class _Caller(ServerSettings, ClientAuthSettings):
    model_config = SettingsConfigDict(env_prefix="BRUNOISE_TEST_CALLER_", extra="forbid")


def _parse(argv: list[str]) -> _Caller:
    return parse_settings(_Caller, build_parser(_Caller, "caller", None), argv)


def test_flags_win_over_the_environment(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tok").write_text("from-file\n")
    (tmp_path / "ca.pem").write_bytes(b"flag-ca")
    (tmp_path / "env-ca.pem").write_bytes(b"env-ca")
    env = {ENV_TOKEN: "from-env", ENV_TLS_CA: str(tmp_path / "env-ca.pem")}
    auth = ClientAuth.from_args(_parse(["--token-file", str(tmp_path / "tok"), "--tls-ca", str(tmp_path / "ca.pem")]), env)
    assert auth == ClientAuth(token="from-file", ca_pem=b"flag-ca")
    assert auth.metadata == (("authorization", "Bearer from-file"),)


def test_the_environment_is_the_fallback(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tok").write_text("env-file-token\n")
    (tmp_path / "ca.pem").write_bytes(b"env-ca")
    assert ClientAuth.from_args(_parse([]), {ENV_TOKEN: "t", ENV_TLS_CA: str(tmp_path / "ca.pem")}) == ClientAuth(
        token="t", ca_pem=b"env-ca"
    )
    assert ClientAuth.from_args(_parse([]), {ENV_TOKEN_FILE: str(tmp_path / "tok")}).token == "env-file-token"
    assert ClientAuth.from_args(_parse([]), {}) == ClientAuth()  # neither: an open loopback assigner
