"""One look for every figure in the book: style, colour meaning and a few shared plots.

Colours (mostly the Okabe–Ito colour-blind-safe palette) always mean the same thing: branch 0
(deployed) and a PAN model blue, branch 1 (true passport) green, forged vermillion, the
attacker's own result pink, plain model grey, DeepIPR-style baseline brown, trigger set sky
blue, signature detection near-black. A figure that compares schemes colours by scheme; one
that shows several quantities of one model colours by quantity. Categories without a meaning
in the book (layers, draws) take ``shades``, one neutral hue.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import seaborn as sns

__all__ = ["COLORS", "chance_line", "fig_png", "percent_axis", "shades", "use_style"]

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
