"""The shared figure and table helpers."""

import pandas as pd
import pytest

from pnorm import plots


def test_marks_turn_only_booleans_into_ticks_and_crosses():
    table = pd.DataFrame({"passed": [True, False], "count": [1, 0], "share": [1.0, 0.0],
                          "name": ["a", "b"]})
    marked = plots.marks(table)
    assert list(marked["passed"]) == ["✓", "✗"]
    assert list(marked["count"]) == [1, 0] and list(marked["share"]) == [1.0, 0.0]
    assert list(marked["name"]) == ["a", "b"] and list(table["passed"]) == [True, False]


def test_shades_are_distinct():
    assert len(set(plots.shades(5))) == 5


def test_smallest_text_accounts_for_shrinking_to_the_column():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.use_style()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.set_title("title", fontsize=12)
    ax.annotate("tiny", (0.5, 0.5), fontsize=5)
    px, text = plots.smallest_text(fig)
    assert text == "tiny" and px == pytest.approx(5 * 100 / 72, rel=0.01)  # fits: not shrunk
    wide, _ = plt.subplots(figsize=(20, 3))
    wide.axes[0].set_title("wide", fontsize=10)
    px, text = plots.smallest_text(wide)
    assert px < 10 * 100 / 72 * 0.5  # 2,000 px shown in 688
    plt.close("all")
