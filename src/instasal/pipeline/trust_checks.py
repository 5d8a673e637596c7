"""The trust checks of ``docs/trust.md`` per explained domain, for ``explain --trust``.

Per domain on the working grid: cascading model randomisation against its null (pass/fail per
method), deletion and insertion curves (the maps' orders beside the model-free ones) and the
radial saliency profile of the SmoothGrad map. The maps are recomputed here with the run's
settings, so ``--trust`` costs about two more explanations plus ``NULL_SEEDS`` per randomisation
step and the deletion forwards per domain. Besides the table columns, the per-step similarities
and the curves are stored for the report's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from instasal.instances import Instance
from instasal.io import atomic_write_text
from instasal.pipeline.outputs import RunLayout
from instasal.pipeline.per_lesion import SubjectSpace
from instasal.saliency import (
    ExplainedPass,
    GradCamConfig,
    InstanceGradCam,
    InstanceSmoothGrad,
    SmoothGradConfig,
)
from instasal.trust import channel_ablation, deletion_insertion, radial_profile, randomisation

RANDOMISATION_STEPS = 5
"""Cascading randomisation blocks per domain (output layer first)."""


@dataclass(frozen=True)
class TrustTables:
    """What :func:`trust_checks` found for a subject's domains.

    Attributes
    ----------
    columns
        One row per domain keyed by the stored ``id``: ``randomisation_passes_<method>``,
        ``randomisation_crossing_<method>``, the numbers of
        :func:`instasal.trust.deletion_insertion` (``deletion_auc_<order>_logit``, ...), its
        verdicts as ``better_than_image_<order>[_outside]`` and the channel ablation of
        :func:`instasal.trust.channel_ablation` (``ablation_drop_<channel>[_shell]``,
        ``ablation_share_<channel>[_shell]``).
    profiles
        The radial profiles of :func:`instasal.trust.radial_profile` with ``id`` and ``type``.
    randomisation
        The cascading steps of :func:`instasal.trust.randomisation` with ``id`` and ``type`` (one
        row per method, step and region; the columns of its table but ``mode``).
    curves
        The deletion and insertion curves of :func:`instasal.trust.deletion_insertion` with ``id``
        and ``type``: ``order``, ``seed``, ``variant``, ``kind``, ``fraction``, ``prob_mean``,
        ``logit_mean``.
    """

    columns: pd.DataFrame
    profiles: pd.DataFrame
    randomisation: pd.DataFrame
    curves: pd.DataFrame


def _stacked(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


ABLATION_SUFFIXES = {"tissue_mean": "", "shell_mean": "_shell"}
"""Column suffix of each ablation fill: the normal-tissue mean is the primary one."""


def _ablation_columns(
    space: SubjectSpace, omega: np.ndarray, explained: ExplainedPass
) -> dict[str, float]:
    """``ablation_drop_<channel>[_shell]`` and ``ablation_share_<channel>[_shell]`` of a domain."""
    prepared = space.prepared
    table = channel_ablation(
        prepared.network,
        prepared.x,
        omega,
        spacing=prepared.working.spacing,
        channel_names=prepared.working.channel_names,
        explained=explained,
    )
    columns: dict[str, float] = {}
    for row in table.to_dict(orient="records"):
        suffix = f"{row['channel']}{ABLATION_SUFFIXES[str(row['fill'])]}"
        columns[f"ablation_drop_{suffix}"] = float(row["drop"])
        columns[f"ablation_share_{suffix}"] = float(row["share"])
    return columns


def trust_checks(
    records: list[Instance],
    space: SubjectSpace,
    smoothgrad: SmoothGradConfig,
    gradcam: GradCamConfig | None,
    explained: ExplainedPass,
) -> TrustTables:
    """Run the trust checks on the working-grid domains ``records``.

    Parameters
    ----------
    records
        Domains of ``space.instances`` to check.
    space
        The subject on both grids.
    smoothgrad, gradcam, explained
        The run's configs and explained forward pass as :func:`instasal.pipeline.explain_subject`
        resolved them (``gradcam=None``: no Grad-CAM); SmoothGrad's seed also seeds the random
        weights and orders.

    Returns
    -------
    TrustTables
        The table columns, profiles, randomisation steps and curves of every domain.
    """
    prepared = space.prepared
    network, x, spacing = prepared.network, prepared.x, prepared.working.spacing
    rows: list[dict[str, Any]] = []
    profiles: list[pd.DataFrame] = []
    steps: list[pd.DataFrame] = []
    curves: list[pd.DataFrame] = []
    smoothgrad_method = InstanceSmoothGrad(network, smoothgrad)
    gradcam_method = None if gradcam is None else InstanceGradCam(network, gradcam)
    for record in records:
        omega = space.instances.mask(record.id)
        native_id = space.native_ids[record.id]
        sanity = randomisation(
            network,
            x,
            omega,
            spacing=spacing,
            smoothgrad=smoothgrad,
            gradcam=gradcam,
            explained=explained,
            steps=RANDOMISATION_STEPS,
            modes=("cascading",),
            seed=smoothgrad.seed,
        )
        keys = {"id": native_id, "type": record.kind}
        cascade = sanity.table[sanity.table["mode"] == "cascading"]
        steps.append(cascade.drop(columns="mode").assign(**keys))
        row: dict[str, Any] = {"id": native_id}
        for method in sorted(set(sanity.table["method"])):
            verdict = sanity.verdict(method)
            row[f"randomisation_passes_{method}"] = verdict["passes"]
            row[f"randomisation_crossing_{method}"] = verdict["crossing_step"]
            row |= sanity.ring_columns(method)
        maps = {"smoothgrad": smoothgrad_method.attribute(x, {0: omega}, explained)[0]}
        if gradcam_method is not None:
            maps["gradcam"] = gradcam_method.attribute(x, {0: omega}, explained)[0]
        arrays = {name: m.detach().cpu().numpy() for name, m in maps.items()}
        faithful = deletion_insertion(
            network,
            x,
            omega,
            arrays,
            spacing=spacing,
            seed=smoothgrad.seed,
            explained=explained,
        )
        verdicts = {f"better_than_image_{k}": v for k, v in faithful.better_than_image.items()}
        ablation = _ablation_columns(space, omega, explained)
        rows.append(row | faithful.numbers | verdicts | ablation)
        curves.append(faithful.curves.assign(**keys))
        profile = radial_profile(
            arrays["smoothgrad"], omega, spacing, channel_names=prepared.working.channel_names
        )
        profiles.append(profile.assign(**keys))
    columns = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["id"])
    crossing = [c for c in columns.columns if c.startswith("randomisation_crossing_")]
    columns[crossing] = columns[crossing].astype("Int64")  # a step number, n/a when never
    return TrustTables(columns, _stacked(profiles), _stacked(steps), _stacked(curves))


TRUST_COLUMNS: dict[str, str] = {
    "randomisation_passes": "Map changed at the last cascading randomisation step: no closer to "
    "the randomised copies than they are to each other, which differ more than two noise draws "
    "(docs/trust.md)",
    "randomisation_crossing": "First cascading step at which the map changed (n/a: never)",
    "sign_inside": "Mean of the first channel's map over the domain, over the map's largest "
    "magnitude within 8 mm (_random: median over the fully randomised copies)",
    "sign_ring": "Mean of the first channel's map in the named ring outside the domain, over the "
    "map's largest magnitude within 8 mm (_random: median over the fully randomised copies)",
    "ablation_drop": "Mean lesion logit over the domain minus its value with the channel replaced "
    "by the normal-tissue mean (_shell: by the 5-10 mm shell mean)",
    "ablation_share": "The channel's ablation drop over the sum of all channels' absolute drops",
    "better_than_image": "The order beats the best model-free order in both deletion and "
    "insertion of the mean logit (_outside: Ω itself never replaced)",
    "deletion_auc_model_free": "Lowest deletion area of the model-free orders (brightness, "
    "distance, random)",
    "insertion_auc_model_free": "Highest insertion area of the model-free orders (brightness, "
    "distance, random)",
    "deletion_auc_random_sd": "SD over random orders of the deletion area",
    "insertion_auc_random_sd": "SD over random orders of the insertion area",
    "deletion_auc": "Area under the deletion curve of the domain's mean for the named order",
    "insertion_auc": "Area under the insertion curve of the domain's mean for the named order",
    "deletion_gain": "Best model-free deletion area minus the order's (> 0: better than the image)",
    "insertion_gain": "The order's insertion area minus the best model-free one (> 0: better "
    "than the image)",
}
"""Sidecar descriptions of the trust columns by name prefix, longest first (``_outside``: Ω never
replaced; ``_logit``: of the mean logit, else of the mean probability)."""


def with_trust(
    table: pd.DataFrame,
    sidecar: dict[str, dict[str, str]],
    records: list[Instance],
    space: SubjectSpace,
    layout: RunLayout,
    smoothgrad: SmoothGradConfig,
    gradcam: GradCamConfig | None,
    explained: ExplainedPass,
) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """The lesion table and its sidecar with the trust columns; writes the trust TSVs.

    See :func:`trust_checks` for the columns. Written beside the table: ``layout.profiles`` (one
    row per domain, channel and distance shell), ``layout.trust_randomisation`` (one row per
    domain, method and cascading step) and ``layout.trust_curves`` (one row per domain, order,
    curve and point).
    """
    found = trust_checks(records, space, smoothgrad, gradcam, explained)
    for path, frame in (
        (layout.profiles, found.profiles),
        (layout.trust_randomisation, found.randomisation),
        (layout.trust_curves, found.curves),
    ):
        atomic_write_text(path, frame.to_csv(sep="\t", index=False, na_rep="n/a"), overwrite=True)
    columns = found.columns
    merged = table.merge(columns, on="id", how="left") if len(columns) else table
    described = dict(sidecar)
    for name in columns.columns.drop("id"):
        prefix = next((p for p in TRUST_COLUMNS if name.startswith(p)), None)
        described[name] = {"Description": TRUST_COLUMNS[prefix] if prefix else name}
    return merged, described
