"""Terminal output for the CLI: rich tables by default, ``-o json`` machine output, one-line errors."""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

KEYSPACE_END = 2**64

def _width() -> int | None:
    """Terminal width; when stdout is not a terminal, wide enough that tables are not truncated."""
    if sys.stdout.isatty():
        return None
    try:
        cols = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        cols = 0
    return max(cols, 160)


def console() -> Console:
    """A console on the current stdout (recreated per call so test runners capture it)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=False, width=_width())


def err_console() -> Console:
    """A console on the current stderr."""
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


class OutputFormat(enum.StrEnum):
    """How a command prints its result."""

    table = "table"
    json = "json"


class CliError(Exception):
    """A failure reported as one line on stderr with a non-zero exit code (never a traceback)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def print_error(message: str) -> None:
    """One line on stderr: ``error: ...`` (newlines in the message are folded)."""
    line = " ".join(str(message).split())
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()


def print_json(obj: Any) -> None:
    """Pretty JSON on stdout (ints stay exact: SliceKeys are 64-bit)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_json_line(obj: Any) -> None:
    """One compact JSON object per line (streams such as ``watch``)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def make_table(
    title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Sequence[str] = (),
    show_header: bool = True,
) -> Table:
    """A compact rich table; columns named in ``right`` are right-aligned (numbers)."""
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False,
                  show_header=show_header, title_style="bold")
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def fmt_key(k: int) -> str:
    """A SliceKey as 16 hex digits; the end of the keyspace as ``2^64``."""
    if k >= KEYSPACE_END:
        return "2^64"
    return f"{k:016x}"


def fmt_range(lo: int, hi: int) -> str:
    """``[lo, hi)`` in hex."""
    return f"[{fmt_key(lo)}, {fmt_key(hi)})"


def fmt_share(lo: int, hi: int) -> str:
    """The share of the keyspace a range covers, in percent."""
    return f"{100.0 * (hi - lo) / KEYSPACE_END:.1f}%"


def fmt_float(x: float, digits: int = 2) -> str:
    """A float with ``digits`` decimals."""
    return f"{x:.{digits}f}"


def fmt_pct(x: float) -> str:
    """A fraction 0..1 as a percentage."""
    return f"{100.0 * x:.1f}%"


def fmt_age_ms(unix_ms: int) -> str:
    """How long ago a unix-ms timestamp was ("-" when unknown)."""
    if unix_ms <= 0:
        return "-"
    s = max(0.0, time.time() - unix_ms / 1000.0)
    if s < 120:
        return f"{s:.1f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def fmt_time_ms(unix_ms: int) -> str:
    """A unix-ms timestamp as local wall time HH:MM:SS.mmm."""
    if unix_ms <= 0:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(unix_ms / 1000.0)) + f".{unix_ms % 1000:03d}"


def parse_key(text: str) -> int:
    """A SliceKey given on the command line: decimal, ``0x`` hex, or ``end``/``2^64`` for the end of the keyspace."""
    t = text.strip().lower().replace("_", "")
    if t in ("end", "2^64", "2**64"):
        return KEYSPACE_END
    try:
        value = int(t, 16) if t.startswith("0x") else int(t, 10)
    except ValueError:
        raise CliError(f"'{text}' is not a SliceKey: give a decimal or 0x-hex integer in [0, 2^64)", 2) from None
    if not 0 <= value <= KEYSPACE_END:
        raise CliError(f"SliceKey {text} is outside [0, 2^64]", 2)
    return value
