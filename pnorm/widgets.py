"""Sliders over precomputed figures that move in a live notebook *and* in the static book.

The sweep is computed once; each value's figure becomes a PNG frame in an ipywidgets ``Stack``,
and the slider is ``jslink``-ed to the stack on the client side, so the rendered HTML (no kernel)
still switches frames: the widget manager draws every frame, and the link runs in the browser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt

from .plots import fig_png

__all__ = ["frame_slider", "render_frames"]


def render_frames(draw: Callable[[Any], plt.Figure], values: Sequence[Any]) -> list[bytes]:
    """PNG frames from ``draw(value)`` for every value (each figure is closed after use)."""
    return [fig_png(draw(v)) for v in values]


def frame_slider(
    frames: Sequence[bytes],
    labels: Sequence[str],
    description: str,
    start: int = 0,
    css_class: str = "pnorm-frame-slider",
):
    """A slider over ``labels`` that shows the matching PNG frame (client-side link).

    Returns a ``VBox``; keep a reference to it (e.g. a notebook variable) so its state is
    saved into the executed notebook and the static page can replay it.
    """
    import ipywidgets as widgets

    if len(frames) != len(labels) or not frames:
        raise ValueError(f"need one label per frame, got {len(frames)} frames and "
                         f"{len(labels)} labels")
    if not 0 <= start < len(frames):
        raise ValueError(f"start must index a frame (0..{len(frames) - 1}), got {start}")
    stack = widgets.Stack(
        [widgets.Image(value=png, format="png") for png in frames], selected_index=start
    )
    slider = widgets.SelectionSlider(
        options=[(label, i) for i, label in enumerate(labels)], index=start,
        description=description, continuous_update=True,
        style={"description_width": "initial"}, layout=widgets.Layout(width="420px"),
    )
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    box = widgets.VBox([slider, stack])
    box.add_class(css_class)
    return box
