"""The trust checks of ``docs/trust.md`` per explained domain, for ``explain --trust``.

Per domain on the working grid: cascading model randomisation (pass/fail per method), deletion
and insertion curves (SmoothGrad, Grad-CAM++ and random orders) and the radial saliency profile
of the SmoothGrad map. The maps are recomputed here with the run's settings, so ``--trust``
costs about one more explanation plus the randomisation steps per domain.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from instasal.instances import Instance
from instasal.io import atomic_write_text
from instasal.pipeline.lesions import SubjectSpace
from instasal.pipeline.outputs import RunLayout
from instasal.pipeline.settings import ExplainSettings
from instasal.saliency import SmoothGradConfig, instance_gradcam_many
from instasal.saliency.smoothgrad import smoothgrad_maps
from instasal.trust import deletion_insertion, radial_profile, randomisation
from instasal.typing import Context

RANDOMISATION_STEPS = 5
"""Cascading randomisation blocks per domain (output layer first)."""


def trust_checks(
    records: list[Instance],
    space: SubjectSpace,
    settings: ExplainSettings,
    *,
    context: Context,
    target: int,
    layer: str | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the trust checks on the working-grid domains ``records``.

    Parameters
    ----------
    records
        Domains of ``space.instances`` to check.
    space
        The subject on both grids.
    settings
        The run's settings (SmoothGrad, Grad-CAM++ and seed).
    context, target, layer
        As resolved by :func:`instasal.pipeline.explain_subject`.

    Returns
    -------
    columns : pandas.DataFrame
        One row per domain keyed by the stored ``id``: ``randomisation_passes_<method>``,
        ``randomisation_crossing_<method>`` and the numbers of
        :func:`instasal.trust.deletion_insertion` (``deletion_auc``, ``deletion_auc_random``, ...).
    profiles : pandas.DataFrame
        The radial profiles of :func:`instasal.trust.radial_profile` with ``id`` and ``type``.
    """
    prepared = space.prepared
    spacing = prepared.working.spacing
    config = SmoothGradConfig(
        n_samples=settings.n_samples,
        noise_level=settings.noise_level,
        noise_range=settings.noise_range,
        aggregation=settings.aggregation,
        context=context,
        target=target,
        seed=settings.seed,
        engine=settings.engine,
    )
    gradcam_layer = layer if settings.gradcam else None
    rows: list[dict[str, Any]] = []
    profiles: list[pd.DataFrame] = []
    for record in records:
        omega = space.instances.mask(record.id)
        native_id = space.native_ids[record.id]
        sanity = randomisation(
            prepared.network,
            prepared.x,
            omega,
            spacing=spacing,
            smoothgrad=config,
            gradcam_layer=gradcam_layer,
            gradcam_variant=settings.gradcam_variant,
            steps=RANDOMISATION_STEPS,
            modes=("cascading",),
            seed=settings.seed,
        )
        row: dict[str, Any] = {"id": native_id}
        for method in sorted(set(sanity.table["method"])):
            verdict = sanity.verdict(method)
            row[f"randomisation_passes_{method}"] = verdict["passes"]
            row[f"randomisation_crossing_{method}"] = verdict["crossing_step"]
        maps = {"smoothgrad": smoothgrad_maps(prepared.network, prepared.x, {0: omega}, config)[0]}
        if gradcam_layer:
            maps["gradcam"] = instance_gradcam_many(
                prepared.network,
                prepared.x,
                {0: omega},
                layer=gradcam_layer,
                variant=settings.gradcam_variant,
                target=target,
                context=context,
            )[0]
        arrays = {name: m.detach().cpu().numpy() for name, m in maps.items()}
        faithful = deletion_insertion(
            prepared.network,
            prepared.x,
            omega,
            arrays,
            spacing=spacing,
            target=target,
            context=context,
            seed=settings.seed,
        )
        rows.append(row | faithful.numbers)
        profile = radial_profile(
            arrays["smoothgrad"], omega, spacing, channel_names=prepared.working.channel_names
        )
        profiles.append(profile.assign(id=native_id, type=record.kind))
    columns = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["id"])
    crossing = [c for c in columns.columns if c.startswith("randomisation_crossing_")]
    columns[crossing] = columns[crossing].astype("Int64")  # a step number, n/a when never
    profile_table = pd.concat(profiles, ignore_index=True) if profiles else pd.DataFrame()
    return columns, profile_table


TRUST_COLUMNS: dict[str, str] = {
    "randomisation_passes": "Map changed at the last cascading randomisation step (docs/trust.md)",
    "randomisation_crossing": "First cascading step at which the map changed (n/a: never)",
    "deletion_auc_random_sd": "SD over random orders of the deletion area",
    "insertion_auc_random_sd": "SD over random orders of the insertion area",
    "deletion_auc_random": "Mean deletion area over random orders",
    "insertion_auc_random": "Mean insertion area over random orders",
    "deletion_auc": "Area under the deletion curve of the domain's mean (no suffix: probability)",
    "insertion_auc": "Area under the insertion curve of the domain's mean (no suffix: probability)",
    "deletion_gain": "Random deletion area minus the map's (> 0: better than chance)",
    "insertion_gain": "The map's insertion area minus the random one (> 0: better than chance)",
}
"""Sidecar descriptions of the trust columns by name prefix, longest first (``_gradcam``: that
map's order; ``_logit``: of the mean logit)."""


def with_trust(
    table: pd.DataFrame,
    sidecar: dict[str, dict[str, str]],
    records: list[Instance],
    space: SubjectSpace,
    layout: RunLayout,
    settings: ExplainSettings,
    *,
    context: Context,
    target: int,
    layer: str | None,
) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """The lesion table and its sidecar with the trust columns; writes ``layout.profiles``.

    See :func:`trust_checks` for the columns; the profile TSV holds one row per domain, channel
    and distance shell.
    """
    columns, profiles = trust_checks(
        records, space, settings, context=context, target=target, layer=layer
    )
    atomic_write_text(
        layout.profiles, profiles.to_csv(sep="\t", index=False, na_rep="n/a"), overwrite=True
    )
    merged = table.merge(columns, on="id", how="left") if len(columns) else table
    described = dict(sidecar)
    for name in columns.columns.drop("id"):
        prefix = next((p for p in TRUST_COLUMNS if name.startswith(p)), None)
        described[name] = {"Description": TRUST_COLUMNS[prefix] if prefix else name}
    return merged, described
