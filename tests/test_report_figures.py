"""Summary figures and table wording of the subject report, checked against hand-made tables."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.contour import ContourSet

from instasal.report.html import _region_text
from instasal.report.subject_figures import (
    figure_png,
    lesion_figure,
    peak_vs_volume_figure,
    reliance_figure,
)


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "type": ["TP", "FP", "FP"],
            "volume_mm3": [12.0, 30.0, 400.0],
            "peak_FLAIR": [0.5, 0.2, 0.1],
            "peak_T1w": [0.1, 0.3, 0.05],
        }
    )


def _legend(figure: matplotlib.figure.Figure) -> list[str]:
    legend = figure.axes[0].get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_legend_says_how_many_of_each_type_were_explained() -> None:
    totals = {"TP": 1, "FP": 16}
    assert _legend(peak_vs_volume_figure(_table(), "FLAIR", totals)) == [
        "FP (2 of 16 explained)",
        "TP (n=1)",
    ]
    assert "FP (2 of 16 explained)" in _legend(reliance_figure(_table(), ["FLAIR", "T1w"], totals))


def test_axes_name_the_saliency_unit_and_minor_log_ticks_are_unlabelled() -> None:
    figure = peak_vs_volume_figure(_table(), "FLAIR")
    axis = figure.axes[0]
    figure.canvas.draw()
    assert "logit" in axis.get_ylabel()
    assert all(t.get_text() == "" for t in axis.get_xticklabels(minor=True))
    reliance = reliance_figure(_table(), ["FLAIR", "T1w"]).axes[0]
    assert "logit" in reliance.get_xlabel() and "logit" in reliance.get_ylabel()


def test_missing_regions_are_said_in_words() -> None:
    assert _region_text("n/a") == "no region map given"
    assert _region_text("none") == "unlabelled tissue"
    assert _region_text("frontal") == "frontal"


@pytest.mark.parametrize("shape", [(12, 10, 1), (1, 10, 12), (12, 1, 10), (1, 1, 12), (1, 1, 1)])
def test_a_lesion_of_a_one_voxel_thick_image_is_drawn_with_its_outline(
    shape: tuple[int, int, int],
) -> None:
    """Each plane shows the lesion voxel's outline: the 0.5 level half a voxel round its centre."""
    anatomy = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    domain = np.zeros(shape, bool)
    centre = tuple(n // 2 for n in shape)
    domain[centre] = True
    saliency = np.stack([np.where(domain, 0.5, 0.0)] * 2)
    figure = lesion_figure(
        [anatomy, anatomy], ["FLAIR", "T1w"], saliency, domain, np.eye(4), scale=1.0
    )
    i, j, k = centre
    for axis, (x, y) in zip(figure.axes[:3], [(i, j), (i, k), (j, k)], strict=True):
        (outline,) = [c for c in axis.get_children() if isinstance(c, ContourSet)]
        vertices = np.concatenate([path.vertices for path in outline.get_paths()])
        np.testing.assert_allclose(vertices.min(axis=0), [x - 0.5, y - 0.5])
        np.testing.assert_allclose(vertices.max(axis=0), [x + 0.5, y + 0.5])
    assert figure_png(figure).startswith(b"\x89PNG")
