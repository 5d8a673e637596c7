"""The self-contained HTML report of one explain run (images embedded, opens offline)."""

from __future__ import annotations

import base64
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from instasal.io import Subject
from instasal.pipeline.outputs import PREDICTED_KINDS, explained_disagrees, table_sidecar
from instasal.pipeline.results import ExplainResult
from instasal.report.document import HtmlDocument
from instasal.report.lesion_panels import lesion_panel, panel_rows, shared_scale
from instasal.report.subject_figures import (
    HALF_WINDOW_MM,
    figure_png,
    peak_vs_volume_figure,
    reliance_figure,
)
from instasal.report.trust_figures import (
    METHOD_LABELS,
    ORDER_LABELS,
    deletion_figure,
    profile_figure,
    randomisation_figure,
)
from instasal.report.viewer import VIEWER_HALF_WINDOW_MM, niivue_script
from instasal.trust.ablation import ablated_channels, ablation_agreement
from instasal.trust.profiles import SIGN_PLACES, SIGN_ROUNDOFF
from instasal.trust.similarity import NEIGHBOURHOOD_MM
from instasal.typing import Progress

__all__ = ["SubjectReport", "write_subject_report"]

TABLE_COLUMNS_BASE = ["id", "type", "region", "volume_mm3", "prob_mean", "prob_max"]


def _format(value: Any) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


COLUMN_LABELS = {"volume_mm3": "volume (mm³)", "gradcam_peak": "Grad\u2011CAM++ peak"}


def _column_label(column: str) -> str:
    """A column head that wraps: the TSV name with spaces for underscores (a few reworded)."""
    return COLUMN_LABELS.get(column, column.replace("_", " "))


REGION_TEXT = {"n/a": "no region map given", "none": "unlabelled tissue"}


def _region_text(value: Any) -> str:
    """The region as the report shows it: the two kinds of missing region said in words."""
    return REGION_TEXT.get(str(value), str(value))


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _volume_text(value: Any) -> str:
    """A volume in mm³ to 0.1 mm³, without the float noise of voxel count × voxel volume
    (7.999999999999998 is shown as 8)."""
    return "n/a" if pd.isna(value) else f"{round(float(value), 1):g}"


def _read_tsv(path: Any) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def trust_section(result: ExplainResult, channels: tuple[str, ...]) -> dict[str, Any] | None:
    """Figures and verdict lines of the trust checks, from the run's trust TSVs (None without).

    The verdicts follow the rules of ``docs/trust.md``: a domain's map passes randomisation when
    it has changed at the last cascading step; an order of a map is better than the image when
    its deletion and insertion areas of the logit both beat the best model-free order; the
    sign pattern counts the domains whose scaled first-channel SmoothGrad mean is below 0, and
    below the fully randomised networks', in one of the fixed rings.
    """
    layout, table = result.layout, result.table
    paths = (layout.trust_randomisation, layout.trust_curves, layout.profiles)
    if not len(table) or not all(path.exists() for path in paths):
        return None
    steps, curves, profiles = (_read_tsv(path) for path in paths)
    verdicts = []
    for method, label in METHOD_LABELS.items():
        column = f"randomisation_passes_{method}"
        if column not in table.columns:
            continue
        passes = table[column].astype(str).str.lower().isin(["true", "1"])
        verdicts.append(
            f"Randomisation, {label}: {int(passes.sum())} of {len(table)} domains pass (with "
            "every block random the map is no closer to the randomised copies than they are to "
            "each other, and they differ more than two noise draws of the trained map do; "
            f"Spearman of |map| and SSIM within {NEIGHBOURHOOD_MM:g} mm of the domain)."
        )
    for order in ("smoothgrad", "smoothgrad_times_delta", "gradcam"):
        column = f"better_than_image_{order}"
        if column not in table.columns:
            continue
        better = int(table[column].astype(str).str.lower().isin(["true", "1"]).sum())
        area = _format(table[f"deletion_auc_{order}_logit"].mean())
        model_free = _format(table["deletion_auc_model_free_logit"].mean())
        verdicts.append(
            f"Faithfulness, {ORDER_LABELS[order]}: mean deletion area of the logit {area} "
            f"against {model_free} for the best model-free order (FLAIR brightness, distance "
            f"from the domain or random; lower is better); {better} of {len(table)} domains "
            "rank better than the image in both deletion and insertion."
        )
    channels_ablated = ablated_channels(table)
    agreement = ablation_agreement(table, channels_ablated) if channels_ablated else None
    if agreement is not None and agreement["n_lesions"]:
        verdicts.append(
            f"Modality reliance: in {agreement['same_top_channel']:.0%} of the "
            f"{agreement['n_lesions']} domains the channel with the largest saliency reliance is "
            "the one whose replacement by the normal-tissue mean lowers the lesion logit most."
        )
    rings = [f"sign_{place}_smoothgrad" for place in SIGN_PLACES]
    if set(rings) <= set(table.columns) and "type" in table.columns:
        trained = table[rings].to_numpy(float)
        null = table[[f"{ring}_random" for ring in rings]].to_numpy(float)
        below = (trained < -SIGN_ROUNDOFF) & (trained < null - SIGN_ROUNDOFF)
        negative = np.asarray(below.any(axis=1))
        for kind, members in table.groupby("type", sort=True).indices.items():
            verdicts.append(
                f"Sign pattern, {kind}: {int(negative[members].sum())} of {len(members)} domains "
                f"have a {channels[0]} SmoothGrad mean below 0, and below the fully randomised "
                "networks', in one of the fixed rings 0–2, 2–4, 4–6 or 6–8 mm around the domain "
                "(means scaled by each map's largest magnitude)."
            )
    figures = [
        ("model randomisation cascade", randomisation_figure(steps)),
        ("deletion and insertion curves", deletion_figure(curves)),
        ("radial saliency profiles", profile_figure(profiles, channels)),
    ]
    return {
        "verdicts": verdicts,
        "figures": [{"alt": alt, "data": _b64(figure_png(f, dpi=90))} for alt, f in figures],
    }


@dataclass(frozen=True)
class SubjectReport(HtmlDocument):
    """An explain run's report (:class:`~instasal.report.document.HtmlDocument`)."""


def build_subject_report(
    result: ExplainResult,
    subject: Subject,
    provenance: dict[str, Any],
    progress: Progress | None = None,
) -> SubjectReport:
    """Render the report of ``result`` (maps are read back from the run's NIfTI outputs).

    Per-domain panels are drawn for at most ``result.settings.report_panels`` domains
    (:func:`panel_rows`), each reported to ``progress`` as ``"report panels"``.
    """
    channels = subject.channel_names
    table = result.table
    scale = shared_scale(table, channels) if len(table) else 1.0
    panels = panel_rows(table, result.settings.report_panels)
    lesions, viewer_data = _lesion_panels(result, subject, scale, panels, progress)
    totals = {str(k): int(v) for k, v in provenance["counts"].items()}
    settings = provenance["settings"]
    resolved = provenance["resolved"]
    card = provenance["model"]["card"]
    counts = {k: v for k, v in provenance["counts"].items() if v}
    counts_text = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no lesion"
    columns, rows, column_titles = _table_view(table, channels)
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template_text = (
        resources.files("instasal.report").joinpath("templates/subject.html").read_text("utf-8")
    )
    html = environment.from_string(template_text).render(
        subject=provenance["subject"],
        model_name=card.get("name", "user model"),
        counts_text=counts_text,
        model_note=_model_note(card),
        notes=provenance.get("notes", []),
        finished=provenance["finished"],
        version=provenance["versions"]["instasal"],
        reduced=settings["reduced"],
        n_samples=settings["n_samples"],
        max_lesions=settings["max_lesions"],
        run_rows=[(k, _format(v)) for k, v in _run_rows(provenance, channels, counts_text)],
        rows=rows,
        columns=columns,
        column_titles=column_titles,
        column_labels={c: _column_label(c) for c in columns},
        n_domains=len(result.instances),
        lookup_name=result.layout.instances_lookup.name,
        threshold=resolved["threshold"],
        has_reference="reference" in provenance["extra_inputs"],
        aggregation=settings["aggregation"],
        summary_figures=_summary_figures(table, channels, totals),
        lesions=lesions,
        panel_ids={str(lesion["id"]) for lesion in lesions},
        panel_cap=result.settings.report_panels,
        panels_left_out=len(table) - len(lesions),
        scale=f"{scale:.3g}",
        shared_scale=scale,
        window_mm=int(2 * HALF_WINDOW_MM),
        viewer_window_mm=int(2 * VIEWER_HALF_WINDOW_MM),
        channels=channels,
        gradcam=resolved["gradcam_layer"] is not None,
        viewer_data=viewer_data,
        niivue_script=niivue_script() if lesions else "",
        trust=trust_section(result, channels) if settings.get("trust") else None,
        tn_above_tp=_tn_above_tp(table, channels[0]) if len(table) else None,
    )
    return SubjectReport(html)


def _lesion_panels(
    result: ExplainResult,
    subject: Subject,
    scale: float,
    panels: list[dict[Hashable, Any]],
    progress: Progress | None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per domain of ``panels``: its figures and facts, and its viewer's volumes and range."""
    lesions = []
    viewer_data: dict[str, dict[str, Any]] = {}
    if progress is not None:
        progress("report panels", 0, len(panels))
    for row in panels:
        panel = lesion_panel(result, subject, row, scale)
        viewer_data[str(row["id"])] = {"scales": panel.scales, "volumes": panel.volumes}
        lesions.append(
            {
                "id": int(row["id"]),
                "type": row["type"],
                "figure": _b64(panel.own_png),
                "shared_figure": _b64(panel.shared_png),
                "scales": ", ".join(f"{k} ±{v:.3g}" for k, v in panel.scales.items()),
                "facts": _lesion_facts(row, subject.channel_names),
            }
        )
        if progress is not None:
            progress("report panels", len(lesions), len(panels))
    return lesions, viewer_data


def _lesion_facts(row: Mapping[Hashable, Any], channels: tuple[str, ...]) -> list[tuple[str, str]]:
    """The numbers printed beside one domain's figure, from its table row."""
    facts = [
        ("volume", f"{_volume_text(row['volume_mm3'])} mm³ ({row['n_voxels']} voxels)"),
        ("region", _region_text(row["region"])),
        (
            "centroid (RAS mm)",
            f"{row['centroid_x']:.1f}, {row['centroid_y']:.1f}, {row['centroid_z']:.1f}",
        ),
        ("probability mean / max", f"{row['prob_mean']:.3f} / {row['prob_max']:.3f}"),
        ("explained forward: probability mean / max", _explained_text(row)),
    ]
    for name in channels:
        facts.append(
            (
                f"{name} peak / trough",
                f"{_format(row[f'peak_{name}'])} / {_format(row[f'trough_{name}'])}",
            )
        )
        facts.append(
            (
                f"{name} inside / ring mean",
                f"{_format(row[f'inside_mean_{name}'])} / {_format(row[f'ring_mean_{name}'])}",
            )
        )
        facts.append((f"{name} reliance", _format(row[f"reliance_{name}"])))
    facts.append(("Grad-CAM++ peak (raw; its panel ÷ it)", _format(row["gradcam_peak"])))
    return facts


def _explained_text(row: Mapping[Hashable, Any]) -> str:
    """The explained forward pass's probability over the domain, and a warning where that
    forward decides the domain otherwise than the prediction did."""
    if "explained_prob_mean" not in row or pd.isna(row["explained_prob_mean"]):
        return "n/a"
    text = f"{row['explained_prob_mean']:.3f} / {row['explained_prob_max']:.3f}"
    if explained_disagrees(row):
        verb = "would not detect" if str(row.get("type")) in PREDICTED_KINDS else "would detect"
        text += (
            f" ⚠ the forward pass these maps differentiate {verb} this domain, unlike the "
            "prediction: the maps explain that pass, not the prediction's decision"
        )
    return text


def _tn_above_tp(table: pd.DataFrame, channel: str) -> dict[str, str] | None:
    """The median peaks of the TN and TP domains where TN's is the larger (None otherwise)."""
    medians = {
        kind: float(table.loc[table["type"] == kind, f"peak_{channel}"].median())
        for kind in ("TN", "TP")
    }
    if not all(math.isfinite(v) for v in medians.values()) or medians["TN"] <= medians["TP"]:
        return None
    counts = table["type"].value_counts()
    return {
        "channel": channel,
        "tn": f"{medians['TN']:.3g}",
        "tp": f"{medians['TP']:.3g}",
        "n_tn": str(counts["TN"]),
        "n_tp": str(counts["TP"]),
    }


def _summary_figures(
    table: pd.DataFrame, channels: tuple[str, ...], totals: dict[str, int]
) -> list[dict[str, str]]:
    """Peak saliency against volume, and modality reliance when there are two channels or more."""
    if not len(table):
        return []
    figures = [
        {
            "alt": "peak saliency vs volume",
            "data": _b64(figure_png(peak_vs_volume_figure(table, channels[0], totals), dpi=90)),
        }
    ]
    if len(channels) >= 2:
        figures.append(
            {
                "alt": "modality reliance",
                "data": _b64(figure_png(reliance_figure(table, channels, totals), dpi=90)),
            }
        )
    return figures


def _model_note(card: dict[str, Any]) -> str:
    """What a built-in phantom-trained model is (empty for other models)."""
    cohort = card.get("training", {}).get("training_cohort")
    if not (cohort and "n_subjects" in cohort):
        return ""
    return (
        f"{card.get('name', 'This model')} was trained by instasal on {cohort['n_subjects']} "
        "phantom subjects (synthetic lesions on MNI152 anatomy): a small demonstration network, "
        "weaker than the paper's networks trained on patient scans, so expect missed lesions and "
        "false positives. docs/models.md in the instasal sources describes its training and "
        "accuracy; docs/method.md defines every number in this report."
    )


def _run_rows(
    provenance: dict[str, Any], channels: tuple[str, ...], counts_text: str
) -> list[tuple[str, Any]]:
    """The run's inputs, model and settings as (name, value) rows."""
    settings = provenance["settings"]
    resolved = provenance["resolved"]
    card = provenance["model"]["card"]
    return [
        ("subject", provenance["subject"]),
        ("inputs", ", ".join(i.get("path", "in memory") for i in provenance["inputs"])),
        ("model", f"{card.get('name', 'user model')} — {card.get('architecture', '')}"),
        ("channels", ", ".join(channels)),
        ("threshold", resolved["threshold"]),
        (
            "SmoothGrad",
            f"N = {settings['n_samples']}, noise {settings['noise_level']:.0%} "
            f"({settings['noise_range']}), {settings['aggregation']} aggregation, "
            f"{resolved['context']} context, engine {settings['engine']}",
        ),
        ("Grad-CAM", _gradcam_text(settings, resolved)),
        ("seed", settings["seed"]),
        *_nnunet_rows(card, settings),
        ("domains", counts_text),
        ("run time", f"{provenance['timings'].get('total_s', float('nan')):.1f} s"),
        (
            "versions",
            ", ".join(f"{k} {v}" for k, v in provenance["versions"].items() if k != "platform"),
        ),
    ]


def _gradcam_text(settings: dict[str, Any], resolved: dict[str, Any]) -> str:
    """Grad-CAM's variant and layer, or why it did not run."""
    if not settings["gradcam"]:
        return "off"
    if resolved.get("gradcam_skipped"):
        return str(resolved["gradcam_skipped"])
    text = f"{settings['gradcam_variant']} at layer {resolved['gradcam_layer']}"
    if resolved.get("gradcam_context") and resolved["gradcam_context"] != resolved["context"]:
        text += f", {resolved['gradcam_context']} context (a layer belongs to one window)"
    return text


def _table_view(
    table: pd.DataFrame, channels: tuple[str, ...]
) -> tuple[list[str], list[dict[str, str]], dict[str, str]]:
    """The lesion table's shown columns, its rows as text, and each column's title."""
    columns = (
        TABLE_COLUMNS_BASE
        + [c for name in channels for c in (f"peak_{name}", f"trough_{name}", f"reliance_{name}")]
        + ["gradcam_peak"]
    )
    shown = {"region": _region_text, "volume_mm3": _volume_text}
    rows = [
        {c: shown.get(c, _format)(r[c]) for c in columns} for r in table.to_dict(orient="records")
    ]
    sidecar = table_sidecar(channels)
    titles = {
        c: f"{c}: {sidecar[c]['Description']}"
        + (f" ({sidecar[c]['Units']})" if "Units" in sidecar[c] else "")
        for c in columns
    }
    return columns, rows, titles


def write_subject_report(
    result: ExplainResult,
    subject: Subject,
    provenance: dict[str, Any],
    progress: Progress | None = None,
) -> SubjectReport:
    """Build the report of ``result`` and write it to the run's ``report.html``."""
    report = build_subject_report(result, subject, provenance, progress)
    report.save_as_html(result.layout.report, overwrite=True)
    return report


def _nnunet_rows(card: dict[str, Any], settings: dict[str, Any]) -> list[tuple[str, str]]:
    """How an nnU-Net folder segmented and what logit its saliency took (none for other models)."""
    if card.get("architecture") != "nnunetv2":
        return []
    mirroring = "with" if settings.get("tta", True) else "without"
    logit = "mirrored-average" if settings.get("saliency_of") == "tta" else "plain network"
    return [
        (
            "nnU-Net",
            f"segmented as nnUNetv2_predict {mirroring} mirroring TTA; saliency of the "
            f"{logit} logit",
        )
    ]
