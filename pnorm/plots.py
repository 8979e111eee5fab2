"""One look for every figure and table in the book: style, colour meaning, shared helpers.

Colours (mostly the Okabe–Ito colour-blind-safe palette) always mean the same thing: branch 0
(deployed) and a PAN model blue, branch 1 (true passport) green, forged vermillion, the
attacker's own result pink, plain model grey, DeepIPR-style baseline brown, trigger set sky
blue, signature detection near-black. A figure that compares schemes colours by scheme; one
that shows several quantities of one model colours by quantity. Categories without a meaning
in the book (layers, draws) take ``shades``, one neutral hue.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from matplotlib.text import Text

__all__ = ["BOOK_COLUMN_PX", "COLORS", "MIN_TEXT_PX", "chance_line", "fig_png", "marks",
           "percent_axis", "shades", "smallest_text", "use_style"]

# A page's content column at 1,280 px (688 px, as tests/test_book.py measures it); a wider
# figure is shrunk to it, and so is its text. The smallest text a figure may show there, in px.
BOOK_COLUMN_PX = 688
MIN_TEXT_PX = 9.0

COLORS = {
    "branch0": "#0072B2",
    "branch1": "#009E73",
    "forged": "#D55E00",
    "attacked": "#CC79A7",
    "plain": "#595959",
    "deepipr": "#8C564B",
    "pan": "#0072B2",  # a PAN model's deployed branch
    "trigger": "#56B4E9",
    "detection": "#222222",  # signature bits read back
    "chance": "#AAAAAA",
}


def use_style() -> None:
    """Apply the book's matplotlib/seaborn style (call once in each chapter's setup cell)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update(
        {
            "figure.figsize": (7.0, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "savefig.bbox": "tight",
            "axes.titleweight": "bold",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "image.cmap": "RdBu_r",
        }
    )
    if os.environ.get("PNORM_CHECK_FIGURES") and not getattr(FigureCanvasBase.print_figure,
                                                             "_checked", False):
        _check_text_on_render()


def smallest_text(fig: Figure, column_px: float = BOOK_COLUMN_PX) -> tuple[float, str]:
    """The smallest visible text of ``fig`` in pixels as a page shows it, and that text.

    Saved at ``fig.dpi`` with a tight bounding box, the image is shrunk to ``column_px`` when
    wider, and its text with it.
    """
    renderer = fig.canvas.get_renderer()
    width_px = fig.get_tightbbox(renderer).width * fig.dpi
    scale = fig.dpi / 72 * min(1.0, column_px / width_px)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and t.get_window_extent(renderer).width > 0]
    if not texts:
        return math.inf, ""
    smallest = min(texts, key=lambda t: t.get_fontsize())
    return smallest.get_fontsize() * scale, smallest.get_text()


def _check_text_on_render() -> None:
    """Report every figure rendered (inline or saved) whose smallest text is below
    ``MIN_TEXT_PX``, on stderr, which the notebook tests read; PNORM_CHECK_FIGURES turns it on."""
    render = FigureCanvasBase.print_figure

    def checked(canvas: FigureCanvasBase, *args, **kwargs):
        px, text = smallest_text(canvas.figure)
        if px < MIN_TEXT_PX:
            print(f"[pnorm figure check] text of {px:.1f} px < {MIN_TEXT_PX:g} px at book width: "
                  f"{text[:40]!r}", file=sys.stderr)
        return render(canvas, *args, **kwargs)

    checked._checked = True
    FigureCanvasBase.print_figure = checked


def chance_line(ax: plt.Axes, level: float, label: str = "chance") -> None:
    """A dashed horizontal line at chance level, labelled at the right edge."""
    ax.axhline(level, color=COLORS["chance"], ls="--", lw=1, zorder=0)
    ax.annotate(label, (1.0, level), xycoords=("axes fraction", "data"), ha="right",
                va="bottom", fontsize=8, color="#777777")


def fig_png(fig: plt.Figure) -> bytes:
    """Render a figure to PNG bytes and close it (for precomputed widget frames)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def percent_axis(ax: plt.Axes, axis: str = "y", limits: Sequence[float] | None = (0, 100)) -> None:
    """Label an axis in percent and (by default) fix it to 0–100."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0f}%"))
    if limits is not None:
        (ax.set_ylim if axis == "y" else ax.set_xlim)(*limits)


def shades(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinguishable shades of one neutral hue, for categories with no book colour."""
    cmap = plt.get_cmap("cividis")
    return [cmap(0.1 + 0.8 * i / max(1, n - 1)) for i in range(n)]


def marks(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its booleans as ✓ and ✗ (other values, 0 and 1 included, unchanged).

    A column of marks reads at a glance; a column of True and False reads like a program.
    """
    return table.map(lambda v: ("✓" if v else "✗") if isinstance(v, bool) else v)
