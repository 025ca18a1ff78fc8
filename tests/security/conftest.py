"""Fixtures for the security suite: the assigner suite's real-process fixtures (assigners by PID, slicelets)."""

from __future__ import annotations

from tests.assigner.conftest import slicelets, start_assigner  # noqa: F401  (re-exported fixtures)
