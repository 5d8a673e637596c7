"""Summary figures and table wording of the subject report, checked against hand-made tables."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.contour import ContourSet

from instasal.report.html import _region_text, _volume_text
from instasal.report.lesion_panels import lesion_scales, shared_scale
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
        [anatomy, anatomy], ["FLAIR", "T1w"], saliency, domain, np.eye(4), scales=[1.0, 1.0]
    )
    i, j, k = centre
    for axis, (x, y) in zip(figure.axes[:3], [(i, j), (i, k), (j, k)], strict=True):
        halo, outline = [c for c in axis.get_children() if isinstance(c, ContourSet)]
        for contour in (halo, outline):
            vertices = np.concatenate([path.vertices for path in contour.get_paths()])
            np.testing.assert_allclose(vertices.min(axis=0), [x - 0.5, y - 0.5])
        np.testing.assert_allclose(vertices.max(axis=0), [x + 0.5, y + 0.5])
    assert figure_png(figure).startswith(b"\x89PNG")


def _lesion_figure_with_gradcam() -> tuple[matplotlib.figure.Figure, tuple[int, int, int]]:
    shape = (20, 18, 16)
    anatomy = np.ones(shape, np.float32)
    domain = np.zeros(shape, bool)
    domain[9:12, 7:10, 6:9] = True  # centre voxel (10, 8, 7)
    saliency = np.stack([np.where(domain, 0.2, 0.0), np.where(domain, -0.05, 0.0)])
    cam = np.zeros(shape, np.float32)
    cam[2, 2, 7] = 1.0  # the hot spot, far from the domain
    cam[3, 2, 7] = 0.1
    figure = lesion_figure(
        [anatomy, anatomy],
        ["FLAIR", "T1w"],
        saliency,
        domain,
        np.eye(4),
        scales=[0.2, 0.05],
        gradcam=cam,
        gradcam_peak=0.0123,
    )
    return figure, (10, 8, 7)


def test_every_panel_points_at_the_domain_centre_from_its_edges() -> None:
    figure, (i, j, k) = _lesion_figure_with_gradcam()
    panels = [axis for axis in figure.axes if axis.get_xticks().size == 0][:15]
    assert len(panels) == 15  # 5 rows (2 images, 2 SmoothGrad, Grad-CAM++) x 3 planes
    for index, axis in enumerate(panels):
        # windows start at 0 on this small image, so plane positions are voxel indices
        x, y = [(i, j), (i, k), (j, k)][index % 3]
        ticks = {line.get_marker(): line for line in axis.get_lines()}
        assert np.asarray(ticks["^"].get_xdata())[0] == x
        assert np.asarray(ticks[">"].get_ydata())[0] == y


def test_each_saliency_row_has_its_range_on_its_colour_bar_and_gradcam_its_peak() -> None:
    figure, _ = _lesion_figure_with_gradcam()
    bars = {axis.get_ylabel(): axis for axis in figure.axes if axis.get_ylabel()}
    assert bars["±0.2 logit / unit"].get_ylim() == pytest.approx((-0.2, 0.2))
    assert bars["±0.05 logit / unit"].get_ylim() == pytest.approx((-0.05, 0.05))
    assert bars["fraction of raw peak 0.0123"].get_ylim() == pytest.approx((0.0, 1.0))


def test_gradcam_opacity_grows_with_its_value() -> None:
    figure, _ = _lesion_figure_with_gradcam()
    axial_cam = [axis for axis in figure.axes if axis.get_xticks().size == 0][12]
    overlay = np.asarray(axial_cam.get_images()[-1].get_array())
    # axial plane at k = 7, shown transposed: [y, x]
    assert overlay[2, 2, 3] == pytest.approx(0.85)
    assert overlay[2, 3, 3] == pytest.approx(0.17)
    assert overlay[8, 10, 3] == 0.0  # no Grad-CAM++ at the domain: anatomy shows


def test_each_map_has_its_own_range_and_the_run_one_shared_range() -> None:
    table = pd.DataFrame(
        {
            "peak_FLAIR": [0.12, 3.0, 0.0],
            "trough_FLAIR": [-0.05, -0.2, 0.0],
            "peak_T1w": [0.02, 0.4, np.nan],
            "trough_T1w": [-0.15, -3.5, np.nan],
        }
    )
    rows = table.to_dict(orient="records")
    channels = ["FLAIR", "T1w"]
    assert lesion_scales(rows[0], channels, fallback=9.0) == {"FLAIR": 0.12, "T1w": 0.15}
    assert lesion_scales(rows[1], channels, fallback=9.0) == {"FLAIR": 3.0, "T1w": 3.5}
    # nothing to draw: the fallback
    assert lesion_scales(rows[2], channels, fallback=9.0) == {"FLAIR": 9.0, "T1w": 9.0}
    assert shared_scale(table, ["FLAIR", "T1w"]) == 3.5
    assert shared_scale(table.iloc[[2]], ["FLAIR", "T1w"]) == 1.0


@pytest.mark.parametrize(
    ("volume", "shown"),
    [(7.999999999999998, "8"), (23.999999999999993, "24"), (2.43, "2.4"), (12345.64, "12345.6")],
)
def test_volumes_are_shown_to_a_tenth_of_a_cubic_millimetre(volume: float, shown: str) -> None:
    assert _volume_text(volume) == shown
