"""matplotlib, imported only when something is drawn (it is the optional ``plot`` extra)."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError(
            "drawing charts needs matplotlib, which is optional: pip install 'brunoise[plot]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
