"""matplotlib is the optional `plot` extra: without it, drawing fails with a message naming the extra."""

from __future__ import annotations

import sys

import pytest

from brunoise.plotting import pyplot


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without the extra looks like
    with pytest.raises(RuntimeError, match=r"brunoise\[plot\]"):
        pyplot()


def test_pyplot_uses_a_non_interactive_backend() -> None:
    plt = pyplot()
    assert plt.get_backend().lower() == "agg"
