"""Trust-check figures of the subject report: data drawn = data given (hand-made tables)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from instasal.report.trust_figures import (
    curve_summary,
    deletion_figure,
    profile_figure,
    randomisation_figure,
)


def _lines(axis: matplotlib.axes.Axes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        str(line.get_label()): (
            np.asarray(line.get_xdata(), float),
            np.asarray(line.get_ydata(), float),
        )
        for line in axis.get_lines()
        if not str(line.get_label()).startswith("_")
    }


def _legend(axis: matplotlib.axes.Axes) -> list[str]:
    legend = axis.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_curve_summary_centres_and_ranges_per_x() -> None:
    frame = pd.DataFrame({"x": [1, 1, 1, 2, 2], "y": [0.0, 3.0, 9.0, 5.0, np.nan]})
    summary = curve_summary(frame, "x", "y", pd.Series.median)
    assert summary["x"].tolist() == [1, 2]
    assert summary["centre"].tolist() == [3.0, 5.0]
    assert summary["low"].tolist() == [0.0, 5.0] and summary["high"].tolist() == [9.0, 5.0]
    assert summary["n"].tolist() == [3, 1]  # the NaN left out


def _steps() -> pd.DataFrame:
    rows = []
    # domain 1: SmoothGrad falls to 0.2 (passes); domain 2: stays at 0.9 (fails); null at 0.4
    for lesion, values in ((1, [0.8, 0.2]), (2, [0.9, 0.9])):
        for step, value in enumerate(values, start=1):
            changed = value <= 0.4
            for region in ("near", "window"):
                shift = 0.0 if region == "near" else 0.05  # the other region is not drawn
                similarity = (value + shift, value / 2)
                rows.append((lesion, "smoothgrad", step, region, *similarity, 0.4, 0.3, changed))
                rows.append((lesion, "gradcam", step, region, 0.1, 0.1, 0.4, 0.3, True))
    columns = ["id", "method", "step", "region", "spearman_abs", "ssim"]
    columns += ["spearman_abs_null_max", "ssim_null_max", "changed"]
    return pd.DataFrame(rows, columns=columns)


def test_randomisation_figure_draws_median_per_step_and_the_null() -> None:
    figure = randomisation_figure(_steps())
    spearman, ssim = figure.axes
    lines = _lines(spearman)
    x, y = lines["SmoothGrad (max): 1 of 2 pass"]
    assert x.tolist() == [1, 2]
    np.testing.assert_allclose(y, [0.85, 0.55], atol=1e-12)  # medians of (0.8, 0.9), (0.2, 0.9)
    np.testing.assert_allclose(_lines(ssim)["SmoothGrad (max): 1 of 2 pass"][1], [0.425, 0.275])
    assert "Grad-CAM++: 2 of 2 pass" in lines
    null = lines["SmoothGrad (max): null (two random copies)"][1]
    assert set(null.tolist()) == {0.4}
    assert set(_lines(ssim)["Grad-CAM++: null (two random copies)"][1].tolist()) == {0.3}


def _curves() -> pd.DataFrame:
    rows = []
    fractions = [0.0, 0.5, 1.0]
    for lesion, scale in ((1, 1.0), (2, 0.5)):
        for kind in ("deletion", "insertion"):
            for order, seed, values in (
                ("smoothgrad", -1, [0.9, 0.1, 0.0]),
                ("random", 0, [0.9, 0.6, 0.0]),
                ("random", 1, [0.9, 0.4, 0.0]),
            ):
                for fraction, value in zip(fractions, values, strict=True):
                    curve = value if kind == "deletion" else 0.9 - value
                    for variant, shift in (("neighbourhood", 0.0), ("outside", 0.01)):
                        value = scale * curve + shift  # only the neighbourhood is drawn
                        rows.append((lesion, order, seed, variant, kind, fraction, value))
    columns = ["id", "order", "seed", "variant", "kind", "fraction", "prob_mean"]
    return pd.DataFrame(rows, columns=columns)


def test_deletion_figure_averages_random_orders_per_domain_then_over_domains() -> None:
    deletion, insertion = deletion_figure(_curves()).axes
    lines = _lines(deletion)
    assert set(lines) == {"SmoothGrad (max)", "random (2 orders)"}
    # random at 0.5: per domain mean of (0.6, 0.4) = 0.5 and 0.25; over domains 0.375
    np.testing.assert_allclose(lines["random (2 orders)"][1], [0.675, 0.375, 0.0], atol=1e-12)
    np.testing.assert_allclose(lines["SmoothGrad (max)"][1], [0.675, 0.075, 0.0], atol=1e-12)
    np.testing.assert_allclose(
        _lines(insertion)["SmoothGrad (max)"][1], [0.0, 0.6, 0.675], atol=1e-12
    )
    assert _legend(deletion) == ["SmoothGrad (max)", "random (2 orders)"]


def test_profile_figure_plots_mean_per_type_at_shell_middles() -> None:
    rows = []
    shells = [(0, 0.0, 0.0), (1, 0.0, 2.0), (2, 2.0, 4.0)]
    for lesion, kind, values in ((1, "TP", [2.0, 0.5, -0.2]), (2, "TP", [1.0, 0.3, -0.4])):
        for (shell, inner, outer), value in zip(shells, values, strict=True):
            rows.append((lesion, kind, "FLAIR", shell, inner, outer, value))
            rows.append((lesion, kind, "T1w", shell, inner, outer, -value))
    rows.append((3, "FP", "FLAIR", 0, 0.0, 0.0, 0.7))
    rows.append((3, "FP", "T1w", 0, 0.0, 0.0, 0.1))
    columns = ["id", "type", "channel", "shell", "inner_mm", "outer_mm", "mean"]
    figure = profile_figure(pd.DataFrame(rows, columns=columns), ["FLAIR", "T1w"])
    flair, t1w = figure.axes
    x, y = _lines(flair)["TP (n=2)"]
    assert x.tolist() == [0.0, 1.0, 3.0]  # Ω at 0, shells at their middles
    np.testing.assert_allclose(y, [1.5, 0.4, -0.3], atol=1e-12)
    np.testing.assert_allclose(_lines(t1w)["TP (n=2)"][1], [-1.5, -0.4, 0.3], atol=1e-12)
    assert _lines(flair)["FP (n=1)"][1] == pytest.approx([0.7])
    assert _legend(flair) == ["FP (n=1)", "TP (n=2)"]
