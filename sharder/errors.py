"""Typed errors of the sharding core; each names the offending field and says what to change."""

from __future__ import annotations


class BrunoiseError(Exception):
    """Base of every brunoise error. ``field`` names the offending input field (dotted path) when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class ConfigError(BrunoiseError, ValueError):
    """A TargetConfig (or a policy setting) is invalid."""


class KeyTypeError(BrunoiseError, TypeError):
    """An app key or SliceKey has the wrong type (app keys are str or bytes; SliceKeys are ints)."""


class KeyRangeError(KeyTypeError, ValueError):
    """A SliceKey is an int outside [0, 2**64)."""


class InvalidSliceError(BrunoiseError, ValueError):
    """A slice range is not 0 <= lo < hi <= 2**64."""


class UnknownPodError(BrunoiseError, LookupError):
    """A pod id names no known pod."""


class UnknownSliceError(BrunoiseError, LookupError):
    """A slice (by lo or range) names no slice of the assignment."""


class UnknownTargetError(BrunoiseError, LookupError):
    """A target name names no known target."""


class InvariantError(BrunoiseError, ValueError):
    """An assignment breaks an invariant (tiling, replica bounds, eligibility, ...)."""


class OverrideError(BrunoiseError, ValueError):
    """A manual override cannot be applied without breaking an invariant or another override."""


class LoadReportError(BrunoiseError, ValueError):
    """A load report is malformed (negative or non-finite loads, bad ranges, too many slices, ...)."""


class GenerationError(BrunoiseError, ValueError):
    """A generation does not follow the expected one (a diff applied to the wrong base, going backwards)."""


__all__ = [
    "BrunoiseError",
    "ConfigError",
    "GenerationError",
    "InvalidSliceError",
    "InvariantError",
    "KeyRangeError",
    "KeyTypeError",
    "LoadReportError",
    "OverrideError",
    "UnknownPodError",
    "UnknownSliceError",
    "UnknownTargetError",
]
