"""The keymap: the keyspace over recent generations, coloured by owner pod and shaded by load (PNG/SVG + terminal)."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

from rich.text import Text

from brunoise.cli.client import hi_of
from brunoise.cli.output import KEYSPACE_END, CliError
from brunoise.plotting import pyplot
from brunoise_api.v1 import slicing_pb2

#: tab20-like palette, shared by the image and the terminal so the legend reads the same in both.
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#9edae5", "#dbdb8d", "#c7c7c7",
)
UNASSIGNED = "#444444"
#: Terminal shading by load quartile (light to full block).
SHADES = ("░", "▒", "▓", "█")


@dataclasses.dataclass(frozen=True, slots=True)
class Cell:
    """One slice in one generation."""

    lo: int
    hi: int
    owner: str  # first replica ("" when the slice has none)
    replicas: tuple[str, ...]
    leaving: tuple[str, ...]
    load: float


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One generation of the keymap."""

    generation: int
    created_unix_ms: int
    cells: tuple[Cell, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Keymap:
    """What both renderings draw: rows oldest first, a colour per owner pod, the largest load seen."""

    target: str
    rows: tuple[Row, ...]
    colors: dict[str, str]
    max_load: float

    def shade(self, load: float) -> float:
        """0..1: the slice's load relative to the busiest slice in the window."""
        return 0.0 if self.max_load <= 0 else max(0.0, min(1.0, load / self.max_load))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "max_load": self.max_load,
            "colors": self.colors,
            "rows": [
                {
                    "generation": r.generation,
                    "created_unix_ms": r.created_unix_ms,
                    "slices": [
                        {"lo": c.lo, "hi": c.hi, "owner": c.owner, "replicas": list(c.replicas),
                         "leaving": list(c.leaving), "load": c.load}
                        for c in r.cells
                    ],
                }
                for r in self.rows
            ],
        }


def build_keymap(target: str, assignments: Sequence[slicing_pb2.Assignment]) -> Keymap:
    """Rows (oldest generation first) from full assignments in any order."""
    rows: list[Row] = []
    owners: set[str] = set()
    max_load = 0.0
    for a in sorted(assignments, key=lambda a: a.generation):
        cells = []
        for sa in a.slices:
            owner = sa.replicas[0] if sa.replicas else ""
            if owner:
                owners.add(owner)
            max_load = max(max_load, sa.load)
            cells.append(Cell(int(sa.slice.lo), hi_of(sa.slice), owner, tuple(sa.replicas), tuple(sa.leaving), sa.load))
        rows.append(Row(int(a.generation), int(a.created_unix_ms), tuple(cells)))
    colors = {pod: PALETTE[i % len(PALETTE)] for i, pod in enumerate(sorted(owners))}
    return Keymap(target, tuple(rows), colors, max_load)


def _cell_at(cells: Sequence[Cell], key: int) -> Cell | None:
    for c in cells:  # a few dozen slices: a scan is fine
        if c.lo <= key < c.hi:
            return c
    return None


def render_terminal(km: Keymap, width: int = 64) -> Text:
    """One line per generation: a block per 1/width of the keyspace, coloured by owner, shaded by load."""
    width = max(8, width)
    out = Text()
    label_w = max((len(str(r.generation)) for r in km.rows), default=1) + 2
    out.append(" " * label_w + "0" + " " * (width - 5) + "2^64\n", style="dim")
    for r in km.rows:
        out.append(f"g{r.generation}".rjust(label_w - 1) + " ", style="bold")
        for i in range(width):
            key = ((2 * i + 1) * KEYSPACE_END) // (2 * width)
            c = _cell_at(r.cells, key)
            if c is None or not c.owner:
                out.append("·", style=UNASSIGNED)
                continue
            shade = SHADES[min(len(SHADES) - 1, int(km.shade(c.load) * len(SHADES)))]
            out.append(shade, style=km.colors.get(c.owner, UNASSIGNED))
        out.append(f"  {len(r.cells)} slices\n", style="dim")
    out.append("legend: ", style="dim")
    for pod, color in km.colors.items():
        out.append("██", style=color)
        out.append(f" {pod}  ")
    out.append("\nshade = slice load (░ low … █ high); colour = first replica\n", style="dim")
    return out


def write_image(km: Keymap, path: pathlib.Path) -> None:
    """Draw the keymap with matplotlib (Agg) to ``path``; the suffix (.png or .svg) picks the format."""
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise CliError(f"--out must end in .png or .svg, got '{path.name}'", 2)
    try:
        plt = pyplot()
    except RuntimeError as exc:
        raise CliError(str(exc), 2) from exc
    from matplotlib.patches import Patch

    n = max(1, len(km.rows))
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.32 * n))
    try:
        for y, r in enumerate(km.rows):
            for c in r.cells:
                lo, width = c.lo / KEYSPACE_END, (c.hi - c.lo) / KEYSPACE_END
                color = km.colors.get(c.owner, UNASSIGNED)
                alpha = 0.25 + 0.75 * km.shade(c.load)
                ax.broken_barh([(lo, width)], (y - 0.42, 0.84), facecolors=color, alpha=alpha, edgecolor="none")
                ax.broken_barh([(lo, width)], (y - 0.42, 0.84), facecolors="none", edgecolor="white", linewidth=0.6)
                if c.leaving:
                    ax.broken_barh([(lo, width)], (y - 0.42, 0.84), facecolors="none", edgecolor="black",
                                   linewidth=0, hatch="//")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_yticks(range(len(km.rows)))
        ax.set_yticklabels([f"gen {r.generation}" for r in km.rows], fontsize=8)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_xticklabels(["0", "2^62", "2^63", "3·2^62", "2^64"])
        ax.set_xlabel("SliceKey (keyspace)")
        ax.invert_yaxis()  # newest generation at the bottom, read top to bottom like the terminal
        gens = f"generations {km.rows[0].generation}-{km.rows[-1].generation}" if km.rows else "no generations"
        ax.set_title(f"brunoise keymap — target {km.target}, {gens}  (colour: owner pod; shade: load; hatched: moving)",
                     fontsize=10, loc="left")
        handles = [Patch(facecolor=c, label=p) for p, c in km.colors.items()]
        if handles:
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format=fmt, dpi=120)
    finally:
        plt.close(fig)
